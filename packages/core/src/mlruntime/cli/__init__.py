"""The ``mlruntime`` command: plugins, versions and cluster nodes, datasets, train and predict.

``mlruntime plugins``, ``mlruntime info [--cluster]``, ``mlruntime datasets list|show|delete``,
``mlruntime train|predict <plugin> ...`` for every GBDT estimator plugin, and
``mlruntime <group> <name> ...`` for commands that plugins add. ``--json`` gives machine output.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from mlruntime.__about__ import __version__
from mlruntime.cli import datasets, gbdt, runs
from mlruntime.cli import env as env_command
from mlruntime.errors import MLRuntimeError, PluginWarning
from mlruntime.runtime.environment import FRAMEWORKS, dist_version

__all__ = ["main"]

FRAMEWORK_DISTRIBUTIONS = FRAMEWORKS
"""Distributions whose versions ``mlruntime info`` reports (read from metadata, not imported)."""


def _registry() -> Any:
    from mlruntime.plugins.registry import get_registry

    registry = get_registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)  # the table reports them instead
        registry.ensure_loaded()
    return registry


def _plugin_rows(check: bool) -> list[dict[str, Any]]:
    registry = _registry()
    rows = []
    for info in registry.plugins():
        row = info.to_dict()
        if check and info.ok:
            for kind, names in info.provides.items():
                for name in names:
                    try:
                        registry.load(kind, name)
                    except MLRuntimeError as exc:
                        row["warnings"].append(f"check failed: {exc}")
                        row["status"] = "broken"
                        row["reason"] = row["reason"] or f"{kind} {name!r} does not load"
        rows.append(row)
    return rows


def _cmd_plugins(args: argparse.Namespace) -> int:
    rows = _plugin_rows(args.check)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no mlruntime plugins installed; try: pip install 'mlruntime[all]'")
    else:
        table = [("NAME", "DISTRIBUTION", "VERSION", "STATUS", "PROVIDES")]
        for row in rows:
            provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(row["provides"].items()))
            status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}"
            table.append(
                (
                    row["name"],
                    row["distribution"] or "-",
                    row["version"] or "-",
                    status,
                    provides or "-",
                )
            )
        _print_table(table)
        for row in rows:
            for note in row["warnings"]:
                print(f"  note ({row['name']}): {note}")
    return 1 if args.check and any(r["status"] != "ok" for r in rows) else 0


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def _cmd_info(args: argparse.Namespace) -> int:
    info: dict[str, Any] = {
        "mlruntime": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "plugins": {
            p.name: {"version": p.version, "status": p.status} for p in _registry().plugins()
        },
        "frameworks": {name: dist_version(name) for name in FRAMEWORK_DISTRIBUTIONS},
    }
    if args.cluster:
        from mlruntime.runtime import cluster as runtime

        runtime.init(args.address)
        nodes = runtime.get_nodes()
        info["cluster"] = {
            "resources": runtime.cluster_resources(),
            "nodes": [n.to_dict() for n in nodes],
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"mlruntime {info['mlruntime']}  (Python {info['python']}, {info['platform']})")
    print("plugins:")
    for name, p in info["plugins"].items() or {"(none)": {"version": "", "status": ""}}.items():
        print(f"  {name:<12} {p['version'] or '-':<10} {p['status']}")
    print("frameworks:")
    for name, version in info["frameworks"].items():
        print(f"  {name:<12} {version or 'not installed'}")
    if "cluster" in info:
        print("cluster nodes:")
        for node in info["cluster"]["nodes"]:
            head = " (head)" if node["is_head"] else ""
            print(
                f"  {node['address']:<16} {node['name']}{head}: {node['num_cpus']:g} CPU, "
                f"{node['num_gpus']:g} GPU, {node['memory_bytes'] / 2**30:.1f} GiB"
            )
    return 0


def _build_parser(groups: dict[str, dict[str, Any]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlruntime",
        description="mlruntime: tables to training data, distributed training on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"mlruntime {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("plugins", help="list installed plugins and what they provide")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--check", action="store_true", help="also import every target (exit 1 if any fails)"
    )
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("info", help="versions of mlruntime, plugins, frameworks; cluster nodes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--cluster", action="store_true", help="connect to Ray and list its nodes")
    p.add_argument("--address", default=None, help="Ray address (default: MLRUNTIME_ADDRESS)")
    p.set_defaults(func=_cmd_info)

    datasets.add_parser(sub)
    runs.add_parser(sub)
    env_command.add_parser(sub)

    for group, commands in sorted(groups.items()):
        names = ", ".join(sorted(commands))
        p = sub.add_parser(group, help=f"{group} with a plugin ({names})")
        p.add_argument("name", choices=sorted(commands), help="which plugin command")
        p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of that command")
        p.set_defaults(func=None, group=group)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlruntime`` command line.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The process exit code.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    registry = _registry()
    groups: dict[str, dict[str, Any]] = {}
    for verb, run in (("train", gbdt.train_main), ("predict", gbdt.predict_main)):
        for name in gbdt.gbdt_plugins():
            groups.setdefault(verb, {})[name] = run
    for spec in registry.commands().values():  # a plugin's own command wins
        groups.setdefault(spec.group, {})[spec.name] = spec
    for builtin in ("plugins", "info", "datasets", "env", "runs"):
        groups.pop(builtin, None)
    args = _build_parser(groups).parse_args(argv)
    try:
        if args.func is not None:
            return int(args.func(args))
        command = groups[args.group][args.name]
        if callable(command):
            return int(command(args.name, list(args.args)) or 0)
        command = registry.load("command", f"{args.group} {args.name}")
        return int(command(list(args.args)) or 0)
    except MLRuntimeError as exc:
        print(f"mlruntime: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
