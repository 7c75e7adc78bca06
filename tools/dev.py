#!/usr/bin/env python3
"""Monorepo tooling for mlruntime: set-up, tests, build, lint, type checks, plugin template.

Standard library only, so it runs on a fresh machine before anything is installed:

    python3 tools/dev.py setup                  # .venv with every package editable + test deps
    python3 tools/dev.py test                   # every test (sets up .venv first if needed)
    python3 tools/dev.py test --changed-since origin/main   # only packages touched since a ref
    python3 tools/dev.py test xgboost -- -k dmatrix         # one package, extra pytest args
    python3 tools/dev.py demo                   # the demo job (embedded Ray + DuckDB)
    python3 tools/dev.py build [--verify]       # wheel + sdist of every package into dist/
    python3 tools/dev.py lint [--fix]           # ruff check + ruff format
    python3 tools/dev.py typecheck              # mypy on every package's src/
    python3 tools/dev.py changed --since REF    # which packages a diff touches
    python3 tools/dev.py new-plugin NAME --dest DIR         # render the third-party template
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES_DIR = ROOT / "packages"
VENV = Path(os.environ.get("MLRUNTIME_VENV", ROOT / ".venv"))
REQUIREMENTS = ROOT / "tools" / "requirements-dev.txt"
TEMPLATE = ROOT / "tools" / "plugin_template"
STAMP = VENV / ".mlruntime-setup"
CORE = "core"
CROSS_TESTS = "tests"

# Paths whose change may affect every package's behaviour or tests.
GLOBAL_PATHS = ("pyproject.toml", "conftest.py", "tools/requirements-dev.txt", "tools/dev.py")


def packages() -> list[str]:
    """Package folder names, core first, then plugins alphabetically."""
    names = sorted(p.parent.name for p in PACKAGES_DIR.glob("*/pyproject.toml"))
    return [CORE] + [n for n in names if n != CORE] if CORE in names else names


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str], **kwargs: object) -> int:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], **kwargs)  # type: ignore[arg-type]


def check(cmd: list[str], **kwargs: object) -> None:
    code = run(cmd, **kwargs)
    if code != 0:
        raise SystemExit(code)


# -- setup ------------------------------------------------------------------------------------


def _setup_fingerprint() -> str:
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    versions = sorted(PACKAGES_DIR.glob("*/src/*/__about__.py"))  # versions live in metadata
    for path in [REQUIREMENTS, *sorted(PACKAGES_DIR.glob("*/pyproject.toml")), *versions]:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_venv(force: bool = False) -> Path:
    """Create/update .venv when requirements or package metadata changed since the last set-up."""
    if sys.version_info < (3, 10):  # noqa: UP036 - this script runs before any venv exists
        raise SystemExit(f"mlruntime needs Python >= 3.10, this is {sys.version.split()[0]}")
    fingerprint = _setup_fingerprint()
    python = venv_python()
    if not force and python.exists() and STAMP.exists() and STAMP.read_text() == fingerprint:
        return python
    if not python.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    check([*pip, "install", "-r", REQUIREMENTS])
    # Editable installs of every package; hatchling and editables come from the requirements,
    # so no isolated build environment (and no network) is needed for this step.
    editable: list[object] = []
    for name in packages():
        editable += ["-e", PACKAGES_DIR / name]
    check([*pip, "install", "--no-build-isolation", *editable])
    STAMP.write_text(fingerprint)
    return python


def cmd_setup(args: argparse.Namespace) -> int:
    python = ensure_venv(force=args.force)
    print(f"ready: {python}")
    return 0


# -- selection of packages from a diff ----------------------------------------------------------


def _git_lines(*git_args: str) -> list[str]:
    out = subprocess.run(["git", *git_args], cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"git {' '.join(git_args)} failed: {out.stderr.strip()}")
    return [line for line in out.stdout.splitlines() if line.strip()]


def changed_files(ref: str) -> list[str]:
    """Files changed since ``ref``: committed, staged, unstaged and untracked."""
    files = set(_git_lines("diff", "--name-only", f"{ref}...HEAD"))
    files |= set(_git_lines("diff", "--name-only", "HEAD"))
    files |= set(_git_lines("ls-files", "--others", "--exclude-standard"))
    return sorted(files)


def select_targets(files: list[str]) -> tuple[list[str], bool]:
    """Map changed files to (packages to test, whether to run the cross-package tests).

    A core change fans out to every plugin; a change to shared config fans out to everything.
    """
    all_packages = packages()
    chosen: set[str] = set()
    cross = False
    for path in files:
        parts = Path(path).parts
        if path in GLOBAL_PATHS or path.startswith("tools/plugin_template/"):
            return all_packages, True
        if len(parts) >= 2 and parts[0] == "packages" and parts[1] in all_packages:
            if parts[1] == CORE:
                return all_packages, True
            chosen.add(parts[1])
        elif parts and parts[0] == CROSS_TESTS:
            cross = True
    if chosen:
        cross = True  # cross-package flows exercise every plugin that changed
    return [p for p in all_packages if p in chosen], cross


def cmd_changed(args: argparse.Namespace) -> int:
    selected, cross = select_targets(changed_files(args.since))
    for name in selected:
        print(name)
    if cross:
        print(CROSS_TESTS)
    return 0


# -- test ---------------------------------------------------------------------------------------


def cmd_test(args: argparse.Namespace) -> int:
    if args.changed_since:
        selected, cross = select_targets(changed_files(args.changed_since))
    elif args.packages:
        unknown = sorted(set(args.packages) - set(packages()) - {CROSS_TESTS})
        if unknown:
            raise SystemExit(f"unknown package(s) {unknown}; packages are {packages()}")
        selected = [p for p in packages() if p in args.packages]
        cross = CROSS_TESTS in args.packages
    else:
        selected, cross = packages(), True
    paths = [f"packages/{p}/tests" for p in selected] + ([CROSS_TESTS] if cross else [])
    if not paths:
        print("nothing to test: no package changed")
        return 0
    python = ensure_venv()
    extra = [a for a in args.pytest_args if a != "--"]
    return run([python, "-m", "pytest", *paths, *extra], cwd=ROOT)


# -- build --------------------------------------------------------------------------------------


def cmd_build(args: argparse.Namespace) -> int:
    python = ensure_venv()
    outdir = Path(args.outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    names = args.packages or packages()
    for name in names:
        # No --sdist/--wheel flags: build makes the sdist, then the wheel *from the sdist*,
        # which proves the sdist is complete.
        cmd: list[object] = [python, "-m", "build", "--outdir", outdir]
        if args.no_isolation:
            cmd.append("--no-isolation")
        check([*cmd, PACKAGES_DIR / name])
    if args.verify:
        verify_wheels(outdir, names)
    return 0


def verify_wheels(outdir: Path, names: list[str]) -> None:
    """Install the built wheels into a clean venv (no site packages) and list the plugins."""
    with tempfile.TemporaryDirectory(prefix="mlruntime-verify-") as tmp:
        env_dir = Path(tmp) / "venv"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        wheels = []
        for name in names:
            dist = "mlruntime" if name == CORE else f"mlruntime_{name}"
            found = sorted(outdir.glob(f"{dist}-*.whl"))
            if not found:
                raise SystemExit(f"no wheel for {name} in {outdir}")
            wheels.append(found[-1])
        pip = [python, "-m", "pip", "--disable-pip-version-check", "install", "-q"]
        # Frameworks are large; the wheels themselves (files, metadata, entry points) are what
        # is checked here, with only the light dependency needed to list plugins.
        check([*pip, "--no-deps", *wheels])
        check([*pip, "pluggy"])
        check([python, "-m", "mlruntime.cli", "plugins", "--json"], cwd=tmp)
        print(f"verified {len(wheels)} wheel(s) in a clean venv")


# -- lint / typecheck ---------------------------------------------------------------------------


def cmd_lint(args: argparse.Namespace) -> int:
    python = ensure_venv()
    fix = ["--fix"] if args.fix else []
    code = run([python, "-m", "ruff", "check", *fix, "."], cwd=ROOT)
    fmt = [] if args.fix else ["--check"]
    return code or run([python, "-m", "ruff", "format", *fmt, "."], cwd=ROOT)


def cmd_typecheck(args: argparse.Namespace) -> int:
    python = ensure_venv()
    targets: list[object] = []
    for name in packages():
        targets += ["-p", "mlruntime" if name == CORE else f"mlruntime_{name}"]
    env = dict(os.environ)
    env["MYPYPATH"] = os.pathsep.join(str(PACKAGES_DIR / n / "src") for n in packages())
    return run([python, "-m", "mypy", *targets], cwd=ROOT, env=env)


# -- demo ---------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    python = ensure_venv()
    return run([python, ROOT / "examples" / "demo.py", *args.demo_args], cwd=ROOT)


# -- plugin template ----------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def render_template(name: str, dest: Path) -> Path:
    """Render tools/plugin_template into ``dest/mlruntime-<name>`` and return that folder.

    ``{{name}}`` in file contents and ``__name__`` in paths become the plugin's name.
    """
    if not _NAME_RE.match(name):
        raise SystemExit(f"plugin name {name!r} must be lowercase letters, digits and _")
    target = dest / f"mlruntime-{name.replace('_', '-')}"
    if target.exists():
        raise SystemExit(f"{target} already exists")
    for src in sorted(TEMPLATE.rglob("*")):
        if src.is_dir() or "__pycache__" in src.parts:
            continue
        rel = src.relative_to(TEMPLATE).as_posix().replace("__name__", name)
        rel = rel.removesuffix(".tmpl")
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        text = src.read_text().replace("{{name}}", name).replace("{{dist}}", name.replace("_", "-"))
        out.write_text(text)
    return target


def cmd_new_plugin(args: argparse.Namespace) -> int:
    target = render_template(args.name, Path(args.dest).resolve())
    print(f"created {target}")
    print(f"next: pip install -e {target} && mlruntime plugins")
    return 0


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/dev.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="create/update .venv with every package editable")
    p.add_argument("--force", action="store_true", help="reinstall even if nothing changed")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("test", help="run tests (all, some packages, or those changed)")
    p.add_argument("packages", nargs="*", help=f"packages to test: {packages()} or 'tests'")
    p.add_argument("--changed-since", metavar="REF", help="only packages changed since REF")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed to pytest")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("changed", help="list packages changed since a git ref")
    p.add_argument("--since", required=True, metavar="REF")
    p.set_defaults(func=cmd_changed)

    p = sub.add_parser("build", help="build wheel + sdist of packages into dist/")
    p.add_argument("packages", nargs="*")
    p.add_argument("--outdir", default=str(ROOT / "dist"))
    p.add_argument("--no-isolation", action="store_true", help="build with .venv's hatchling")
    p.add_argument("--verify", action="store_true", help="install the wheels in a clean venv")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("lint", help="ruff check and format check")
    p.add_argument("--fix", action="store_true")
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("typecheck", help="mypy on every package")
    p.set_defaults(func=cmd_typecheck)

    p = sub.add_parser("demo", help="run the demo job (embedded Ray + DuckDB)")
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("new-plugin", help="render the plugin template")
    p.add_argument("name")
    p.add_argument("--dest", default=".")
    p.set_defaults(func=cmd_new_plugin)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
