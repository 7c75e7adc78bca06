"""``mlruntime datasets list|show|delete``: the versioned datasets under ``MLRUNTIME_HOME``."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Add the ``datasets`` command and its sub-commands to ``sub`` (argparse sub-parsers)."""
    parser = sub.add_parser("datasets", help="list, show or delete versioned datasets")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("list", help="every dataset and its versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_list)

    p = verbs.add_parser("show", help="one version: rows, columns, files, origin")
    p.add_argument("name")
    p.add_argument("version", nargs="?", default=None, help="default: the latest")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--verify", action="store_true", help="check every file's checksum")
    p.set_defaults(func=_show)

    p = verbs.add_parser("delete", help="delete one version")
    p.add_argument("name")
    p.add_argument("version")
    p.set_defaults(func=_delete)


def _list(args: argparse.Namespace) -> int:
    from mlruntime.store.datasets import list_datasets, list_versions, load_dataset

    rows = []
    for name in list_datasets():
        for version in list_versions(name):
            ds = load_dataset(name, version)
            rows.append(
                {
                    "name": name,
                    "version": version,
                    "rows": ds.num_rows,
                    "files": len(ds.manifest["files"]),
                    "created_at": ds.manifest.get("created_at", ""),
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no datasets (create one with mlruntime.create_from_dataframe)")
    else:
        print(f"{'NAME':<24} {'VERSION':<16} {'ROWS':>12} {'FILES':>6}  CREATED")
        for r in rows:
            print(
                f"{r['name']:<24} {r['version']:<16} {r['rows']:>12,} {r['files']:>6}  "
                f"{r['created_at'][:19]}"
            )
    return 0


def _show(args: argparse.Namespace) -> int:
    from mlruntime.store.datasets import load_dataset

    ds = load_dataset(args.name, args.version)
    if args.verify:
        ds.verify()
    if args.json:
        print(json.dumps({k: v for k, v in ds.manifest.items() if k != "schema"}, indent=2))
        return 0
    m = ds.manifest
    print(
        f"dataset {ds.name} version {ds.version}: {ds.num_rows:,} rows in {len(m['files'])} files"
    )
    print(f"  created {m.get('created_at', '?')} by mlruntime {m.get('mlruntime_version', '?')}")
    print(f"  origin  {m.get('origin', '')}")
    print("  columns:")
    for name, typ in m.get("columns", {}).items():
        print(f"    {name}: {typ}")
    if args.verify:
        print("  checksums: ok")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from mlruntime.store.datasets import delete_version

    delete_version(args.name, args.version)
    print(f"deleted dataset {args.name} version {args.version}")
    return 0
