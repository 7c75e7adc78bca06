"""``mlruntime runs list|show``: partition runs on the storage, readable from any process."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Add the ``runs`` command and its sub-commands to ``sub`` (argparse sub-parsers)."""
    parser = sub.add_parser("runs", help="list partition runs or show one run's status")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("list", help="every partition run on the storage, newest first")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_list)

    p = verbs.add_parser("show", help="one run: status, partitions per status, failures")
    p.add_argument("run_id")
    p.add_argument("--prefix", default=None, help="the run's storage prefix (default: indexed)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--partitions", action="store_true", help="list every partition, not only failed ones"
    )
    p.set_defaults(func=_show)


def _summary(run: Any) -> dict[str, Any]:
    view = run._view.refresh()
    meta = view.meta
    age = view.driver_age()
    return {
        "run_id": meta.get("run_id"),
        "kind": meta.get("kind"),
        "status": view.run_status().value,
        "path": run.path,
        "partitions": len(view.order),
        "counts": view.counts(),
        "generation": meta.get("gen"),
        "partition_by": meta.get("partition_by"),
        "source": meta.get("source"),
        "created_at": meta.get("created_at"),
        "finished_at": meta.get("finished_at"),
        "driver": meta.get("driver"),
        "driver_seen_s_ago": None if age is None else round(age, 1),
    }


def _list(args: argparse.Namespace) -> int:
    from mlruntime.partition.layout import run_index
    from mlruntime.partition.run import DPFRun

    rows = []
    for entry in run_index():
        try:
            run = DPFRun.restore(entry["run_id"])
        except LookupError:
            continue
        rows.append(_summary(run))
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no partition runs (start one with mlruntime.partition.DPF(...).run(...))")
    else:
        print(f"{'RUN':<32} {'KIND':<22} {'STATUS':<16} {'PARTITIONS':>10}  CREATED")
        for r in rows:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"] or 0))
            print(
                f"{r['run_id']:<32} {r['kind']:<22} {r['status']:<16} {r['partitions']:>10}  "
                f"{created}"
            )
    return 0


def _show(args: argparse.Namespace) -> int:
    from mlruntime.partition.run import DPFRun

    run = DPFRun.restore(args.run_id, args.prefix)
    summary = _summary(run)
    details = run.partition_details
    shown = [d for d in details.values() if args.partitions or d.status.value not in ("DONE",)]
    if args.json:
        summary["details"] = [
            {
                "partition_id": d.partition_id,
                "status": d.status.value,
                "attempts": d.attempts,
                "rows": d.rows,
                "error": d.error,
                "traceback": d.traceback,
            }
            for d in shown
        ]
        print(json.dumps(summary, indent=2))
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items())) or "none"
    print(f"run {summary['run_id']} ({summary['kind']}): {summary['status']}")
    print(f"  path        {summary['path']}")
    print(f"  input       {summary['source']} by {summary['partition_by']}")
    print(f"  partitions  {summary['partitions']}: {counts}")
    if summary["driver_seen_s_ago"] is not None:
        print(
            f"  driver      {summary['driver']} seen {summary['driver_seen_s_ago']:.0f}s ago"
            + (
                " (gone? finish with on_existing_artifacts='resume')"
                if summary["driver_seen_s_ago"] > 30
                else ""
            )
        )
    for d in shown:
        line = f"  {d.status.value:<15} {d.partition_id}"
        if d.error:
            line += f": {d.error}"
        print(line)
    return 0
