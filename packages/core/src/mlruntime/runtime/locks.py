"""The preconfigured environments' lock files: read them, compare them, build venvs from them.

A lock (``environments/{cpu,gpu}/requirements.lock``) is uv's ``pip compile --generate-hashes``
output; ``create_environment`` runs ``uv venv`` + ``uv pip sync`` on it, then installs mlruntime.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlruntime.errors import ConfigError

__all__ = [
    "ENVIRONMENT_NAMES",
    "PACKAGE_DIRS",
    "PYTHON_VERSION",
    "TORCH_CPU_INDEX",
    "LockEntry",
    "check_lock",
    "create_environment",
    "find_lock",
    "find_repo",
    "read_lock",
    "run_command",
]

logger = logging.getLogger(__name__)

ENVIRONMENT_NAMES = ("cpu", "gpu")
PYTHON_VERSION = "3.11"
"""The Python the locks are resolved for (tools/lock_envs.py)."""
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""Where the CPU lock's ``+cpu`` torch build comes from."""
PACKAGE_DIRS = ("core", "xgboost", "lightgbm", "pytorch", "tensorflow")
"""The repository's packages (folders under ``packages/``), installed on top of a lock."""
OWN_DISTRIBUTIONS = frozenset(
    {"mlruntime", "mlruntime-xgboost", "mlruntime-lightgbm", "mlruntime-pytorch"}
    | {"mlruntime-tensorflow"}
)

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Scikit_Learn`` -> ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class LockEntry:
    """One pinned distribution of a lock file.

    Attributes:
        name: Normalized distribution name.
        version: The exact version (``2.13.0+cpu``).
        lines: Its lines in the file (requirement, hashes, comments), to write a subset.
        via: Normalized names of what required it (``requirements.in`` entries excluded).
        top_level: Whether ``requirements.in`` names it.
    """

    name: str
    version: str
    lines: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)
    top_level: bool = False


def read_lock(path: str | os.PathLike[str]) -> dict[str, LockEntry]:
    """Parse a uv/pip-tools lock file.

    Args:
        path: The lock file.

    Returns:
        Normalized name -> entry, in file order.

    Raises:
        ConfigError: If the file does not exist or pins nothing.
    """
    lock = Path(path)
    if not lock.is_file():
        raise ConfigError(f"lock file {str(lock)!r} does not exist")
    entries: dict[str, LockEntry] = {}
    current: LockEntry | None = None
    in_via = False
    for line in lock.read_text().splitlines():
        match = _ENTRY.match(line)
        if match:
            current = LockEntry(normalize(match.group(1)), match.group(3), [line])
            entries[current.name] = current
            in_via = False
            continue
        if current is None or not line.startswith((" ", "\t")):
            current = None if not line.strip() or line.startswith("#") else current
            continue
        current.lines.append(line)
        text = line.strip()
        if text.startswith("# via"):
            rest = text[len("# via") :].strip()
            in_via = not rest
            if rest:
                _add_via(current, rest)
        elif in_via and text.startswith("#   "):
            _add_via(current, text[1:].strip())
    if not entries:
        raise ConfigError(f"lock file {str(lock)!r} pins no package (expected 'name==version')")
    return entries


def _add_via(entry: LockEntry, source: str) -> None:
    if source.startswith("-r ") or source.startswith("-c "):
        entry.top_level = True
    else:
        entry.via.add(normalize(source.split()[0]))


def closure(entries: dict[str, LockEntry], roots: Iterable[str]) -> list[str]:
    """The named entries and everything they pull in (following the lock's ``# via`` notes).

    Raises:
        ConfigError: If a root is not in the lock.
    """
    children: dict[str, set[str]] = {}
    for entry in entries.values():
        for parent in entry.via:
            children.setdefault(parent, set()).add(entry.name)
    wanted = [normalize(r) for r in roots]
    missing = [r for r in wanted if r not in entries]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not in the lock")
    seen: set[str] = set()
    stack = list(wanted)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(children.get(name, ()))
    return [name for name in entries if name in seen]


def installed_versions() -> dict[str, str]:
    """Normalized name -> version of every distribution this Python sees."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


def _same_version(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        from packaging.version import Version

        return Version(a) == Version(b)
    except Exception:
        return False


def check_lock(
    path: str | os.PathLike[str], installed: dict[str, str] | None = None
) -> dict[str, list[dict[str, str | None]]]:
    """What differs between a lock and the installed distributions.

    Args:
        path: The lock file.
        installed: Name -> version to check (default: this Python's distributions).

    Returns:
        ``{"missing": [...], "different": [...], "extra": [...]}``, each a list of
        ``{"name", "locked", "installed"}``; mlruntime's own packages are never "extra".
    """
    entries = read_lock(path)
    have = (
        installed_versions()
        if installed is None
        else {normalize(k): v for k, v in installed.items()}
    )
    report: dict[str, list[dict[str, str | None]]] = {"missing": [], "different": [], "extra": []}
    for name, entry in entries.items():
        version = have.get(name)
        if version is None:
            report["missing"].append({"name": name, "locked": entry.version, "installed": None})
        elif not _same_version(version, entry.version):
            report["different"].append(
                {"name": name, "locked": entry.version, "installed": version}
            )
    for name in sorted(set(have) - set(entries) - OWN_DISTRIBUTIONS):
        report["extra"].append({"name": name, "locked": None, "installed": have[name]})
    return report


def find_repo(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The mlruntime repository holding ``environments/`` (from ``start``, cwd, or this file)."""
    candidates = [Path(start)] if start else [Path.cwd(), Path(__file__).resolve()]
    for origin in candidates:
        for folder in [origin, *origin.parents]:
            if (folder / "environments").is_dir() and (folder / "packages" / "core").is_dir():
                return folder
    return None


def find_lock(name_or_path: str, repo: str | os.PathLike[str] | None = None) -> Path:
    """The lock file of environment ``cpu``/``gpu``, or ``name_or_path`` itself if it is a file.

    Raises:
        ConfigError: If neither a lock file nor a known environment of a found repository.
    """
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    if name_or_path not in ENVIRONMENT_NAMES:
        raise ConfigError(
            f"unknown environment {name_or_path!r}: give one of {', '.join(ENVIRONMENT_NAMES)} "
            "or a lock file path"
        )
    root = find_repo(repo)
    if root is None:
        raise ConfigError(
            "cannot find the mlruntime repository (its environments/ folder); run from a "
            "checkout or pass --repo"
        )
    return root / "environments" / name_or_path / "requirements.lock"


def _uv() -> list[str]:
    from mlruntime.runtime.packages import uv_invocation

    return uv_invocation()


def create_environment(
    lock: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    packages: Sequence[str] = PACKAGE_DIRS,
    repo: str | os.PathLike[str] | None = None,
    only_needed: bool = False,
    python: str = PYTHON_VERSION,
    index_args: Sequence[str] = (),
    runner: Callable[[list[str]], None] | None = None,
) -> list[list[str]]:
    """Build a virtual environment exactly from a lock, then install mlruntime's packages.

    Runs ``uv venv PATH``, ``uv pip sync --require-hashes LOCK`` (the venv then holds exactly
    the lock) and ``uv pip install --no-deps`` of the repository's packages. A lock entry with a
    ``+cpu`` build comes from PyTorch's CPU index unless ``index_args`` name other sources.

    Args:
        lock: The lock file.
        path: Where the venv goes (created; an existing one is synced to the lock).
        packages: Which of the repository's packages to install (``core``, ``xgboost`` ...).
        repo: The repository root (default: found from the working directory).
        only_needed: Install only the part of the lock those packages need (their
            dependencies and what those pull in), not the data-science set.
        python: The interpreter ``uv venv`` uses (a version or a path).
        index_args: Extra uv index options (``--find-links DIR``, ``--extra-index-url URL``).
        runner: Runs each command (default: subprocess, failing on a non-zero exit).

    Returns:
        The commands run, in order.

    Raises:
        ConfigError: For an unknown package, a missing repository, or a failing uv command
            (with its output).
    """
    unknown = [p for p in packages if p not in PACKAGE_DIRS]
    if unknown:
        raise ConfigError(
            f"unknown package(s) {', '.join(unknown)}; choose from {', '.join(PACKAGE_DIRS)}"
        )
    root = find_repo(repo) if packages else None
    if packages and root is None:
        raise ConfigError("cannot find the mlruntime repository's packages/; pass --repo")
    entries = read_lock(lock)
    venv = Path(path)
    uv = _uv()
    run = runner or run_command
    commands: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="mlruntime-env-") as tmp:
        lock_file = Path(lock)
        chosen = list(entries)
        if only_needed:
            assert root is not None
            roots = [r for p in packages for r in _requirements_of(root / "packages" / p)]
            chosen = closure(entries, [r for r in roots if normalize(r) in entries])
            lock_file = Path(tmp) / "requirements.lock"
            lock_file.write_text(
                "\n".join(line for name in chosen for line in entries[name].lines) + "\n"
            )
        sources = list(index_args)
        if not sources and any("+cpu" in entries[name].version for name in chosen):
            sources = [
                "--extra-index-url",
                TORCH_CPU_INDEX,
                "--index-strategy",
                "unsafe-best-match",
            ]
        target = str(venv / "bin" / "python")
        steps = [
            [*uv, "venv", "--python", python, str(venv)],
            [*uv, "pip", "sync", "--python", target, "--require-hashes", *sources, str(lock_file)],
        ]
        if packages:
            assert root is not None
            folders = [str(root / "packages" / p) for p in packages]
            steps.append([*uv, "pip", "install", "--python", target, "--no-deps", *folders])
        for cmd in steps:
            run(cmd)
            commands.append(cmd)
    return commands


def _requirements_of(package_dir: Path) -> list[str]:
    """The distribution names a package's pyproject.toml depends on (mlruntime's own left out)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    project = tomllib.loads((package_dir / "pyproject.toml").read_text())["project"]
    names = []
    for requirement in project.get("dependencies", []):
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        if name and normalize(name.group(0)) not in OWN_DISTRIBUTIONS:
            names.append(normalize(name.group(0)))
    return names


def run_command(cmd: list[str]) -> None:
    """Run one command, raising :class:`ConfigError` with its output when it fails."""
    logger.info("+ %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(
            f"{' '.join(cmd[:4])} ... failed:\n{(proc.stderr or proc.stdout).strip()}"
        )
