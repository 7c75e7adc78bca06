"""Versioned datasets: create, load, list, delete; atomic under kill -9; one winner per version."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import mlruntime
from mlruntime import DataConnector
from mlruntime.errors import ConfigError, DataError, DatasetExistsError, DatasetNotFoundError
from mlruntime.testing import sample_table


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLRUNTIME_HOME", str(tmp_path))
    return tmp_path


def test_create_load_list_delete(home: Path) -> None:
    ds = mlruntime.create_from_dataframe("trips", "v1", sample_table(0, 1000))
    assert (ds.name, ds.version, ds.num_rows) == ("trips", "v1", 1000)
    assert ds.schema.names == ["id", "x", "label"]
    manifest = ds.manifest
    assert manifest["num_rows"] == 1000 and manifest["origin"].startswith("arrow")
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    assert "created_at" in manifest
    mlruntime.create_from_dataframe(
        "trips", "v2", pd.DataFrame({"id": [1], "x": [0.5], "label": [1]})
    )
    assert mlruntime.list_datasets() == ["trips"]
    assert mlruntime.list_versions("trips") == ["v1", "v2"]
    assert mlruntime.load_dataset("trips").version == "v2"  # latest by default
    dc = DataConnector.from_dataset("trips", "v1")
    assert dc.num_rows == 1000
    assert dc.to_arrow().column("id").to_pylist() == list(range(1000))
    assert DataConnector.from_dataset(ds).num_rows == 1000
    ds.verify()
    mlruntime.delete_version("trips", "v1")
    assert mlruntime.list_versions("trips") == ["v2"]
    with pytest.raises(DatasetNotFoundError, match="has no version 'v1'; versions: \\['v2'\\]"):
        mlruntime.load_dataset("trips", "v1")


def test_versions_are_immutable(home: Path) -> None:
    mlruntime.create_from_dataframe("d", "1", sample_table(0, 5))
    with pytest.raises(DatasetExistsError, match="already exists; versions are immutable"):
        mlruntime.create_from_dataframe("d", "1", sample_table(0, 5))


def test_tampered_file_fails_verification(home: Path) -> None:
    ds = mlruntime.create_from_dataframe("d", "1", sample_table(0, 50))
    first = Path(ds.files[0])
    first.write_bytes(first.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataError, match="does not match its checksum"):
        ds.verify()


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", ".hidden", "", "x" * 200, "sp ace"])
def test_names_are_validated(home: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid dataset"):
        mlruntime.create_from_dataframe(bad, "v1", sample_table(0, 1))
    with pytest.raises(ConfigError, match="invalid dataset version"):
        mlruntime.create_from_dataframe("ok", bad, sample_table(0, 1))
    assert not (home.parent / "escape").exists()


def test_unknown_dataset(home: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="dataset 'nope' does not exist"):
        mlruntime.load_dataset("nope")
    with pytest.raises(DatasetNotFoundError):
        DataConnector.from_dataset("nope", "v1")


def _writer_process(home: Path, block_at: str, version: str = "v1") -> subprocess.Popen[str]:
    """A process creating dataset d/<version> that stops at ``block_at`` until told to go on."""
    code = textwrap.dedent(
        f"""
        import os, sys
        import mlruntime.store.datasets as d
        import mlruntime.store.publish as publish
        from mlruntime.testing import sample_table

        def pause():
            print("PAUSED", flush=True)
            sys.stdin.readline()

        if {block_at!r} == "part":
            original = d.VersionWriter.write_part
            def write_part(self, table, part):
                original(self, table, part)
                pause()
            d.VersionWriter.write_part = write_part
        else:
            real_rename = os.rename
            class PausingOs:
                def __getattr__(self, name):
                    return getattr(os, name)
                def rename(self, a, b):
                    pause()
                    real_rename(a, b)
            publish.os = PausingOs()  # the one atomic-publish helper datasets use
        try:
            d.create_from_dataframe("d", {version!r}, sample_table(0, 5000))
            print("CREATED", flush=True)
        except d.DatasetExistsError as exc:
            print("LOST", exc, flush=True)
        """
    )
    env = {**os.environ, "MLRUNTIME_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("kill_at", ["part", "rename"])
def test_kill_9_mid_write_leaves_no_visible_version(home: Path, kill_at: str) -> None:
    proc = _writer_process(home, kill_at)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "PAUSED"
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait(timeout=30)
    assert mlruntime.list_versions("d") == []
    with pytest.raises(DatasetNotFoundError):
        mlruntime.load_dataset("d", "v1")
    assert mlruntime.create_from_dataframe("d", "v1", sample_table(0, 3)).num_rows == 3


def test_two_creators_of_one_version_cannot_both_win(home: Path) -> None:
    procs = [_writer_process(home, "rename") for _ in range(2)]
    for proc in procs:  # both have staged everything and wait just before publishing
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "PAUSED"
    outcomes = []
    for proc in procs:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        outcomes.append(proc.stdout.readline().split()[0])
        proc.wait(timeout=60)
    assert sorted(outcomes) == ["CREATED", "LOST"]
    assert mlruntime.load_dataset("d", "v1").num_rows == 5000
    assert mlruntime.list_versions("d") == ["v1"]
    leftovers = [p.name for p in (home / "datasets" / "d").iterdir() if p.name != "v1"]
    assert leftovers == []
