"""Sinks write all or nothing: Parquet folders, DuckDB tables and dataset versions."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import mlruntime
from mlruntime import DatasetSink, DuckDBTableSink, ParquetSink, Session
from mlruntime.errors import ConfigError, DatasetExistsError, QueryError
from mlruntime.testing import sample_table


def folder_ids(path: Path) -> list[int]:
    return sorted(pq.read_table(path).column("id").to_pylist())


def test_parquet_sink_modes(tmp_path: Path) -> None:
    target = tmp_path / "out"
    ParquetSink(target).write(sample_table(0, 10))
    assert folder_ids(target) == list(range(10))
    with pytest.raises(DatasetExistsError, match="already holds files"):
        ParquetSink(target).write(sample_table(0, 10))
    ParquetSink(target, mode="append").write(sample_table(10, 5))
    assert folder_ids(target) == list(range(15))
    ParquetSink(target, mode="overwrite").write(sample_table(100, 3))
    assert folder_ids(target) == [100, 101, 102]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left behind
    with pytest.raises(ConfigError, match="mode must be one of"):
        ParquetSink(target, mode="upsert")


def test_failed_overwrite_keeps_the_previous_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out"
    ParquetSink(target).write(sample_table(0, 10))
    tx = ParquetSink(target, mode="overwrite").begin()
    tx.write_part(sample_table(50, 5), 0)
    real_rename = os.rename

    def failing_rename(src: object, dst: object) -> None:
        if str(dst) == str(target) and ".staging-publish-" in str(src):
            raise OSError("disk gone")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk gone"):
        tx.commit()
    monkeypatch.undo()
    assert folder_ids(target) == list(range(10))
    assert not tx.staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old copy left


def test_aborted_transaction_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out"
    ParquetSink(target).write(sample_table(0, 4))
    tx = ParquetSink(target, mode="overwrite").begin()
    tx.write_part(sample_table(9, 1), 0)
    tx.abort()
    assert folder_ids(target) == [0, 1, 2, 3]


def test_parts_written_by_ray_workers_are_committed_once(tmp_path: Path, ray_cluster: None) -> None:
    import ray

    tx = ParquetSink(tmp_path / "scores").begin()

    @ray.remote
    def score(part: int) -> str:
        return str(tx.write_part(sample_table(part * 100, 100), part))

    ray.get([score.remote(i) for i in range(4)])
    assert not (tmp_path / "scores").exists()  # nothing visible before the commit
    tx.commit()
    assert folder_ids(tmp_path / "scores") == list(range(400))


def test_duckdb_table_sink_modes_and_atomic_failure(tmp_path: Path) -> None:
    session = Session(tmp_path / "w.duckdb")
    DuckDBTableSink("preds", session).write(sample_table(0, 5))
    assert session.sql("SELECT count(*) FROM preds").fetchall() == [(5,)]
    with pytest.raises(DatasetExistsError):
        DuckDBTableSink("preds", session).write(sample_table(0, 5))
    DuckDBTableSink("preds", session, mode="append").write(sample_table(5, 5))
    assert session.sql("SELECT count(*) FROM preds").fetchall() == [(10,)]
    with pytest.raises(QueryError):
        DuckDBTableSink("preds", session, mode="append").write({"other": [1]})
    assert session.sql("SELECT count(*) FROM preds").fetchall() == [(10,)]
    tx = DuckDBTableSink("preds", session, mode="overwrite").begin()
    tx.write_part(sample_table(0, 2), 0)
    tx.write_part(sample_table(2, 2), 1)
    tx.commit()
    assert session.sql("SELECT sum(id) FROM preds").fetchall() == [(6,)]


def test_dataset_sink_creates_an_immutable_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLRUNTIME_HOME", str(tmp_path))
    tx = DatasetSink("scores", "v1").begin()
    tx.write_part(sample_table(0, 3), 0)
    tx.write_part(sample_table(3, 3), 1)
    ds = tx.commit()
    assert ds.num_rows == 6
    assert mlruntime.load_dataset("scores", "v1").num_rows == 6
    with pytest.raises(DatasetExistsError):
        DatasetSink("scores", "v1").write(sample_table(0, 1))
    with pytest.raises(ConfigError, match="immutable"):
        DatasetSink("scores", "v2", mode="overwrite")
