"""The house's import rules (root pyproject.toml, ``[tool.importlinter]``) hold: core's layers
import only downwards, core has no import cycle, the data and store layers never import Ray,
core imports no plugin or framework, and plugins never import each other."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    command = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    return subprocess.run(
        [*command, "--config", str(config), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_import_contracts_are_kept() -> None:
    proc = _lint_imports(ROOT / "pyproject.toml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 kept, 0 broken" in proc.stdout, proc.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path: Path) -> None:
    # The same contracts over a copy of the data layer that imports the store: must fail.
    pkg = tmp_path / "mlruntime"
    shutil.copytree(ROOT / "packages/core/src/mlruntime", pkg)
    with open(pkg / "data" / "batching.py", "a") as handle:
        handle.write("\nfrom mlruntime.store import session as _upward  # noqa: E402\n")
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "mlruntime"\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "layers"\ntype = "layers"\n'
        'layers = ["mlruntime.train", "mlruntime.runtime", "mlruntime.store", "mlruntime.data"]\n'
    )
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--config", str(config), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode != 0, proc.stdout
    assert "mlruntime.data.batching -> mlruntime.store.session" in proc.stdout, proc.stdout
