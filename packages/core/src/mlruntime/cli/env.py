"""``mlruntime env [show|check|create]``: what every node runs, against a lock, or a new venv.

``mlruntime env`` shows this process's and every Ray node's Python, mlruntime, plugins,
frameworks (with their CUDA builds), GPUs and driver, and warns where they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Add the ``env`` command and its sub-commands to ``sub`` (argparse sub-parsers)."""
    parser = sub.add_parser(
        "env", help="environments: show every node's versions, check against a lock, create"
    )
    _show_options(parser)
    parser.set_defaults(func=_show)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    p = verbs.add_parser("show", help="this process's and every node's versions (the default)")
    _show_options(p)
    p.set_defaults(func=_show)

    p = verbs.add_parser("check", help="what differs between this environment and a lock")
    p.add_argument("--lock", required=True, help="a lock file, or cpu / gpu")
    p.add_argument("--repo", default=None, help="the repository (default: found from cwd)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-extra", action="store_true", help="do not list packages the lock lacks")
    p.set_defaults(func=_check)

    p = verbs.add_parser("create", help="build a venv exactly from a lock (uv), then mlruntime")
    p.add_argument("name", help="cpu, gpu, or a lock file")
    p.add_argument("path", help="where the virtual environment goes")
    p.add_argument("--repo", default=None, help="the repository (default: found from cwd)")
    p.add_argument(
        "--packages",
        default=",".join(_package_dirs()),
        help="repository packages to install, comma-separated (default: all)",
    )
    p.add_argument(
        "--only-needed",
        action="store_true",
        help="only the part of the lock those packages need (not the data-science set)",
    )
    p.add_argument("--python", default=None, help="interpreter for uv venv (default: 3.11)")
    p.add_argument("--find-links", action="append", default=[], help="a folder of wheels")
    p.add_argument("--extra-index-url", action="append", default=[], help="another index")
    p.set_defaults(func=_create)


def _package_dirs() -> tuple[str, ...]:
    from mlruntime.runtime.locks import PACKAGE_DIRS

    return PACKAGE_DIRS


def _show_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--local", action="store_true", help="only this process (do not connect to Ray)"
    )
    parser.add_argument("--address", default=None, help="Ray address (default: MLRUNTIME_ADDRESS)")


def _show(args: argparse.Namespace) -> int:
    from mlruntime.runtime.environment import cluster_report

    if not args.local:
        from mlruntime.runtime.cluster import init

        init(args.address)
    report = cluster_report(nodes=not args.local)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 1 if report["warnings"] else 0
    _print_env("this process", report["driver"])
    for name, node in report["nodes"].items():
        _print_env(f"node {name}" + (" (head)" if node.get("is_head") else ""), node)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if not report["warnings"]:
        print("every node matches this process" if report["nodes"] else "")
    return 1 if report["warnings"] else 0


def _print_env(title: str, env: dict[str, Any]) -> None:
    print(f"{title}: {env['host']}  Python {env['python']} ({env['executable']})")
    print(f"  mlruntime    {env['mlruntime']}")
    for name, version in env["plugins"].items():
        print(f"  {name:<22} {version}")
    builds = env.get("cuda_builds", {})
    for name, version in env["frameworks"].items():
        if version is None:
            continue
        cuda = ""
        if name in builds:
            built = builds[name].get("cuda")
            cuda = f"  (CUDA {built})" if built else "  (CPU build)"
        print(f"  {name:<12} {version}{cuda}")
    gpus = env.get("gpus", {})
    if gpus.get("gpus"):
        print(
            f"  GPUs: {len(gpus['gpus'])} x {gpus['gpus'][0]['name']}, driver "
            f"{gpus.get('driver')}, CUDA {gpus.get('cuda_driver')}"
        )
    else:
        print("  GPUs: none" + ("" if gpus.get("nvidia_smi") else " (no nvidia-smi)"))


def _check(args: argparse.Namespace) -> int:
    from mlruntime.runtime.locks import check_lock, find_lock

    lock = find_lock(args.lock, args.repo)
    report = check_lock(lock)
    if args.no_extra:
        report["extra"] = []
    if args.json:
        print(json.dumps({"lock": str(lock), **report}, indent=2))
    else:
        for row in report["missing"]:
            print(f"missing    {row['name']}=={row['locked']}")
        for row in report["different"]:
            print(f"different  {row['name']}: locked {row['locked']}, installed {row['installed']}")
        for row in report["extra"]:
            print(f"extra      {row['name']}=={row['installed']} (not in the lock)")
        counts = {k: len(v) for k, v in report.items()}
        if any(counts.values()):
            print(
                f"{lock}: {counts['missing']} missing, {counts['different']} different, "
                f"{counts['extra']} extra"
            )
        else:
            print(f"{lock}: everything installed matches the lock")
    return 1 if report["missing"] or report["different"] else 0


def _create(args: argparse.Namespace) -> int:
    from mlruntime.runtime.locks import PYTHON_VERSION, create_environment, find_lock, run_command

    def show_and_run(cmd: list[str]) -> None:
        print("+ " + " ".join(cmd), flush=True)
        run_command(cmd)

    index_args: list[str] = []
    for folder in args.find_links:
        index_args += ["--find-links", folder]
    for url in args.extra_index_url:
        index_args += ["--extra-index-url", url]
    lock = find_lock(args.name, args.repo)
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    create_environment(
        lock,
        args.path,
        packages=packages,
        repo=args.repo,
        only_needed=args.only_needed,
        python=args.python or PYTHON_VERSION,
        index_args=index_args,
        runner=show_and_run,
    )
    print(f"created {args.path} from {lock}; activate it with: source {args.path}/bin/activate")
    return 0
