#!/usr/bin/env python3
"""Re-lock the preconfigured environments: environments/{cpu,gpu}/requirements.lock.

Standard library only. Each environment's requirements.in is resolved by uv for Python 3.11 on
x86_64 Linux (glibc 2.28+), with exact versions and sha256 hashes:

    python3 tools/lock_envs.py              # both environments
    python3 tools/lock_envs.py cpu          # one
    python3 tools/lock_envs.py --upgrade    # newest versions the requirements allow

The CPU environment takes PyTorch's CPU build (``torch==X+cpu``) from PyTorch's CPU index when
it is reachable, and from ``--find-links`` folders (default: ``$PIP_FIND_LINKS``) otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = ROOT / "environments"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
COMMAND = "python3 tools/lock_envs.py"


def find_uv() -> list[str]:
    """The uv command: ``$UV``, ``uv`` on PATH, the repo's .venv, or ``python -m uv``."""
    if os.environ.get("UV"):
        return [os.environ["UV"]]
    for candidate in (shutil.which("uv"), ROOT / ".venv" / "bin" / "uv"):
        if candidate and Path(candidate).exists():
            return [str(candidate)]
    return [sys.executable, "-m", "uv"]


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host can be opened."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or 443), timeout):
            return True
    except OSError:
        return False


def lock(name: str, find_links: list[str], upgrade: bool) -> int:
    folder = ENVIRONMENTS / name
    cmd = [
        *find_uv(),
        "pip",
        "compile",
        str((folder / "requirements.in").relative_to(ROOT)),
        "--output-file",
        str((folder / "requirements.lock").relative_to(ROOT)),
        "--generate-hashes",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        PLATFORM,
        "--custom-compile-command",
        f"{COMMAND} {name}",
        "--quiet",
    ]
    if upgrade:
        cmd.append("--upgrade")
    if name == "cpu":
        if reachable(TORCH_CPU_INDEX):
            cmd += ["--extra-index-url", TORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match"]
        for link in find_links:
            cmd += ["--find-links", link]
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="cpu and/or gpu (default: both)")
    parser.add_argument(
        "--find-links",
        action="append",
        default=None,
        help="a folder of wheels (for torch's +cpu build); default: $PIP_FIND_LINKS",
    )
    parser.add_argument("--upgrade", action="store_true", help="allow newer versions")
    args = parser.parse_args(argv)
    find_links = args.find_links
    if find_links is None:
        find_links = [p for p in os.environ.get("PIP_FIND_LINKS", "").split() if p]
    unknown = sorted(set(args.names) - {"cpu", "gpu"})
    if unknown:
        parser.error(f"unknown environment(s) {', '.join(unknown)}; choose from cpu, gpu")
    for name in args.names or ["cpu", "gpu"]:
        code = lock(name, find_links, args.upgrade)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
