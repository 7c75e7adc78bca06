"""A plugin written outside the repo, from tools/plugin_template, is built, installed, discovered
and used: its adapter through the registry and its command through the ``mlruntime`` CLI."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from mlruntime.plugins.registry import PluginRegistry

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kwargs)  # type: ignore[call-overload]
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Render the template as plugin 'hello', build its wheel and install it into a folder."""
    work = tmp_path_factory.mktemp("third-party")
    _run(
        [sys.executable, str(ROOT / "tools" / "dev.py"), "new-plugin", "hello", "--dest", str(work)]
    )
    project = work / "mlruntime-hello"
    wheels = work / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(project)])
    site = work / "site"
    _run([*pip, "install", "--no-deps", "--target", str(site), *map(str, wheels.glob("*.whl"))])
    return project, site


def test_rendered_template_has_the_expected_layout(installed_plugin: tuple[Path, Path]) -> None:
    project, _ = installed_plugin
    for rel in (
        "pyproject.toml",
        "README.md",
        "src/mlruntime_hello/hooks.py",
        "src/mlruntime_hello/adapters.py",
        "src/mlruntime_hello/py.typed",
        "tests/test_hello_plugin.py",
    ):
        assert (project / rel).is_file(), rel
    assert "{{" not in (project / "src/mlruntime_hello/hooks.py").read_text()


def test_installed_plugin_is_discovered_and_its_adapter_used(
    installed_plugin: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, site = installed_plugin
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        registry = PluginRegistry()
        hello = next(p for p in registry.plugins() if p.name == "hello")
        assert hello.status == "ok", hello.reason
        assert (hello.distribution, hello.version) == ("mlruntime-hello", "0.1.0")
        assert hello.provides == {"adapter": ["to_hello_rows"], "command": ["demo hello"]}

        class Connector:
            def to_arrow(self) -> pa.Table:
                return pa.table({"x": [1, 2, 3]})

        to_rows = registry.load("adapter", "to_hello_rows")
        assert to_rows(Connector(), limit=2) == [{"x": 1}, {"x": 2}]
    finally:
        for name in [m for m in sys.modules if m.startswith("mlruntime_hello")]:
            del sys.modules[name]


def test_installed_plugin_shows_in_cli_and_its_command_runs(
    installed_plugin: tuple[Path, Path],
) -> None:
    _, site = installed_plugin
    env = {**os.environ, "PYTHONPATH": str(site)}
    cli = [sys.executable, "-m", "mlruntime.cli"]
    rows = json.loads(_run([*cli, "plugins", "--json", "--check"], env=env).stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["hello"]["status"] == "ok"
    assert {"xgboost", "lightgbm", "pytorch", "tensorflow"} <= {
        r["name"] for r in rows if r["status"] == "ok"
    }
    out = _run([*cli, "demo", "hello", "--who", "ci"], env=env)
    assert out.stdout.strip() == "hello ci from the hello plugin"


def test_rendered_template_tests_pass(installed_plugin: tuple[Path, Path]) -> None:
    project, site = installed_plugin
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(project),
            str(project / "tests"),
        ],
        env=env,
        cwd=project,
    )
    assert " passed" in out.stdout and "failed" not in out.stdout
