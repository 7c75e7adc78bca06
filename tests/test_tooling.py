"""Monorepo tooling: which packages a diff selects, that every package builds and installs, and
that the tree is lint- and type-clean."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALL = ["core", "lightgbm", "pytorch", "tensorflow", "xgboost"]


@pytest.fixture(scope="module")
def dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlruntime_dev_tool", ROOT / "tools" / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packages_lists_core_first(dev: ModuleType) -> None:
    assert dev.packages() == ALL


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["packages/core/src/mlruntime/plugins.py"], (ALL, True)),
        (["packages/xgboost/src/mlruntime_xgboost/hooks.py"], (["xgboost"], True)),
        (
            ["packages/pytorch/README.md", "packages/lightgbm/tests/test_x.py"],
            (["lightgbm", "pytorch"], True),
        ),
        (["tests/test_plugin_discovery.py"], ([], True)),
        (["tools/requirements-dev.txt"], (ALL, True)),
        (["pyproject.toml"], (ALL, True)),
        (["docs/plugins.md", "README.md", "tools/bench/bench_data.py"], ([], False)),
        ([], ([], False)),
    ],
)
def test_changed_files_select_packages_with_core_fanning_out(
    dev: ModuleType, files: list[str], expected: tuple[list[str], bool]
) -> None:
    assert dev.select_targets(files) == expected


def test_changed_since_reads_git(dev: ModuleType) -> None:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        pytest.skip("not a git checkout with commits")
    files = dev.changed_files("HEAD")
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert bool(files) == bool(status.strip())


@pytest.mark.slow
def test_every_package_builds_wheel_and_sdist_that_install_in_a_clean_venv(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "dev.py"),
            "build",
            "--no-isolation",
            "--verify",
            "--outdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "MLRUNTIME_VENV": str(Path(sys.prefix))},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    built = sorted(p.name for p in tmp_path.iterdir())
    for dist in (
        "mlruntime",
        "mlruntime_xgboost",
        "mlruntime_lightgbm",
        "mlruntime_pytorch",
        "mlruntime_tensorflow",
    ):
        assert any(n.startswith(f"{dist}-") and n.endswith(".whl") for n in built), built
        assert any(n.startswith(f"{dist}-") and n.endswith(".tar.gz") for n in built), built
    assert "verified 5 wheel(s) in a clean venv" in out.stdout


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_ruff_lint_and_format_are_clean() -> None:
    check = _tool("ruff", "check", ".")
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = _tool("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.slow
def test_mypy_is_clean_on_every_package() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "dev.py"), "typecheck"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "MLRUNTIME_VENV": str(Path(sys.prefix))},
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
