"""The ``mlruntime`` command line: plugins, info (with and without the cluster), plugin commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlruntime.cli import main

FIRST_PARTY = {"xgboost", "lightgbm", "pytorch", "tensorflow"}


def test_plugins_json_lists_first_party_plugins_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) >= FIRST_PARTY
    for name in FIRST_PARTY:
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["distribution"] == f"mlruntime-{name}"
        assert rows[name]["version"]


def test_plugins_table_has_a_row_per_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "STATUS", "PROVIDES"]
    names = {line.split()[0] for line in lines[1:] if not line.startswith(" ")}
    assert names >= FIRST_PARTY


def test_info_json_reports_versions_without_starting_ray(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.metadata

    ray_was_imported = "ray" in sys.modules
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mlruntime"] == importlib.metadata.version("mlruntime")
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["frameworks"]["pyarrow"] == importlib.metadata.version("pyarrow")
    assert set(info["plugins"]) >= FIRST_PARTY
    assert "cluster" not in info
    if not ray_was_imported:
        assert "ray" not in sys.modules


def test_info_cluster_lists_nodes_with_cpus(
    ray_cluster: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--json", "--cluster"]) == 0
    info = json.loads(capsys.readouterr().out)
    nodes = info["cluster"]["nodes"]
    assert len(nodes) == 1
    assert nodes[0]["is_head"] is True
    assert nodes[0]["num_cpus"] == info["cluster"]["resources"]["CPU"] > 0
    assert main(["info", "--cluster"]) == 0
    assert "(head)" in capsys.readouterr().out


def test_console_script_is_installed_and_reports_version() -> None:
    exe = Path(sys.executable).with_name("mlruntime")
    out = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip().startswith("mlruntime 0.")


def test_unknown_command_exits_with_usage() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_plugins_check_exits_nonzero_when_a_target_does_not_import(tmp_path: Path) -> None:
    (tmp_path / "fakeplug_cli.py").write_text(
        "from mlruntime.plugins.hookspecs import AdapterSpec, hookimpl\n"
        "MLRUNTIME_PLUGIN_API = 1\n"
        "@hookimpl\n"
        "def mlruntime_register_adapters():\n"
        "    return [AdapterSpec('to_gone', 'fakeplug_cli_missing:fn')]\n"
    )
    info = tmp_path / "fake_cli-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-cli\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mlruntime.plugins]\nfakecli = fakeplug_cli\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    cmd = [sys.executable, "-m", "mlruntime.cli", "plugins", "--check", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 1, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["fakecli"]["status"] == "broken"
    assert any("cannot import 'fakeplug_cli_missing'" in w for w in rows["fakecli"]["warnings"])


def test_datasets_list_show_and_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlruntime
    from mlruntime.testing import sample_table

    monkeypatch.setenv("MLRUNTIME_HOME", str(tmp_path))
    assert main(["datasets", "list"]) == 0
    assert "no datasets" in capsys.readouterr().out
    mlruntime.create_from_dataframe("trips", "v1", sample_table(0, 50))
    mlruntime.create_from_dataframe("trips", "v2", sample_table(0, 70))
    assert main(["datasets", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["version"], r["rows"]) for r in rows] == [
        ("trips", "v1", 50),
        ("trips", "v2", 70),
    ]
    assert main(["datasets", "show", "trips", "--verify"]) == 0  # latest version
    out = capsys.readouterr().out
    assert "version v2: 70 rows" in out and "checksums: ok" in out and "id: int64" in out
    assert main(["datasets", "delete", "trips", "v1"]) == 0
    assert mlruntime.list_versions("trips") == ["v2"]
    capsys.readouterr()
    assert main(["datasets", "show", "trips", "v1"]) == 2  # gone: a clear error, not a trace
    assert "has no version 'v1'" in capsys.readouterr().err
