"""Sinks write all or nothing: Parquet folders, DuckDB tables and dataset versions."""

from __future__ import annotations

import os
import pickle
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import mlruntime
from mlruntime import DatasetSink, DuckDBTableSink, ParquetSink, Session
from mlruntime.errors import ConfigError, DatasetExistsError, QueryError
from mlruntime.store import sinks, storage
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
    assert not Path(tx.staging).exists()
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


# --- on S3 (a moto server on loopback): workers on other machines stage parts there ---------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A real S3 API (moto's server) on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """A fresh bucket; pyarrow reaches the server through ``AWS_ENDPOINT_URL``. Yields the
    bucket's name and a boto3 client."""
    import boto3

    for key, value in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    name = f"sinks-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield name, client
    storage.set_storage(None)


def keys(bucket: tuple[str, Any]) -> list[str]:
    name, client = bucket
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=name)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def files(bucket: tuple[str, Any]) -> list[str]:
    """The bucket's objects less empty-folder markers (pyarrow adds some when it deletes)."""
    return [k for k in keys(bucket) if not k.endswith("/")]


def staged_keys(bucket: tuple[str, Any]) -> list[str]:
    """Objects a sink's staging left: its hidden folders' objects, or parts under staging/."""
    return [
        k
        for k in keys(bucket)
        if sinks.STAGING_PREFIX in k or ("staging/" in k and not k.endswith("/"))
    ]


def s3_ids(uri: str) -> list[int]:
    return sorted(pq.read_table(uri).column("id").to_pylist())


def on_a_worker(tx: sinks.SinkTransaction, data: Any, part: int) -> str:
    """Write a part as a worker does: through a pickled copy of the transaction."""
    copy = pickle.loads(pickle.dumps(tx))
    assert copy._state is None  # driver-only state never travels
    return copy.write_part(data, part)


def test_parquet_sink_on_s3_modes(bucket: tuple[str, Any]) -> None:
    name, _ = bucket
    target = f"s3://{name}/scores/out"
    tx = ParquetSink(target).begin()
    assert tx.staging == f"s3://{name}/scores/{sinks.STAGING_PREFIX}{tx.txid}"
    written = [on_a_worker(tx, sample_table(i * 5, 5), i) for i in range(2)]
    assert all(w.startswith(tx.staging + "/") for w in written)
    assert [k for k in keys(bucket) if k.startswith("scores/out/")] == []  # nothing visible yet
    assert tx.commit() == target
    assert s3_ids(target) == list(range(10))
    first = [k for k in keys(bucket) if k.startswith("scores/out/")]
    assert len(first) == 2 and all(tx.txid[:8] in k for k in first)

    with pytest.raises(DatasetExistsError, match="already holds files"):
        ParquetSink(target).write(sample_table(0, 1))
    ParquetSink(target, mode="append").write(sample_table(10, 5))
    assert s3_ids(target) == list(range(15))
    ParquetSink(target + "/", mode="overwrite").write(sample_table(100, 3))
    assert s3_ids(target) == [100, 101, 102]
    assert len([k for k in keys(bucket) if k.startswith("scores/out/part-")]) == 1
    assert staged_keys(bucket) == []


def test_parquet_sink_on_s3_abort_and_failed_commit_keep_the_target(
    bucket: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, _ = bucket
    target = f"s3://{name}/out"
    ParquetSink(target).write(sample_table(0, 4))
    before = files(bucket)

    tx = ParquetSink(target, mode="overwrite").begin()
    on_a_worker(tx, sample_table(9, 1), 0)
    assert staged_keys(bucket)  # the part is on S3, where every node could have written it
    tx.abort()
    assert s3_ids(target) == [0, 1, 2, 3]
    assert files(bucket) == before and staged_keys(bucket) == []

    tx = ParquetSink(target, mode="overwrite").begin()
    on_a_worker(tx, sample_table(50, 2), 0)
    on_a_worker(tx, sample_table(60, 2), 1)
    real_resolve = storage.resolve

    class SecondMoveFails:
        def __init__(self, fs: Any) -> None:
            self.fs, self.moves = fs, 0

        def __getattr__(self, attr: str) -> Any:
            return getattr(self.fs, attr)

        def move(self, src: str, dst: str) -> None:
            self.moves += 1
            if self.moves == 2:
                raise OSError("network gone")
            self.fs.move(src, dst)

    def resolve(uri: str) -> tuple[Any, str]:
        fs, path = real_resolve(uri)
        return (SecondMoveFails(fs) if sinks.STAGING_PREFIX in uri else fs), path

    with monkeypatch.context() as patch:
        patch.setattr(storage, "resolve", resolve)
        with pytest.raises(OSError, match="network gone"):
            tx.commit()
    assert s3_ids(target) == [0, 1, 2, 3]  # the moved part was taken out again, old files kept
    assert files(bucket) == before and staged_keys(bucket) == []


def test_parquet_sink_refuses_uris_it_cannot_stage_next_to() -> None:
    with pytest.raises(ConfigError, match="not to its root"):
        ParquetSink("s3://bucket")
    with pytest.raises(ConfigError, match="without '\\?' options"):
        ParquetSink("s3://bucket/out?region=us-east-1")


def test_dataset_sink_with_storage_on_s3(bucket: tuple[str, Any]) -> None:
    name, _ = bucket
    storage.set_storage(f"s3://{name}/store")
    tx = DatasetSink("scores", "v1").begin()
    assert tx.staging == f"s3://{name}/store/datasets/scores/v1"  # where the version is staged
    written = [on_a_worker(tx, sample_table(i * 3, 3), i) for i in range(2)]
    assert mlruntime.list_versions("scores") == []  # invisible until the manifest is written
    ds = tx.commit()
    assert ds.num_rows == 6
    assert ds.files == written  # the workers' files themselves: the driver copied no data
    ds.verify()
    table = mlruntime.DataConnector.from_dataset("scores", "v1").to_arrow()
    assert sorted(table.column("id").to_pylist()) == list(range(6))
    assert files(bucket) == [
        "store/datasets/scores/v1/manifest.json",
        *(w.removeprefix(f"s3://{name}/") for w in written),
    ]
    with pytest.raises(DatasetExistsError):
        DatasetSink("scores", "v1").write(sample_table(0, 1))

    tx = DatasetSink("scores", "v2").begin()
    on_a_worker(tx, sample_table(0, 2), 0)
    tx.abort()
    assert [k for k in keys(bucket) if k.endswith(".parquet") and "/v2/" in k] == []
    assert mlruntime.list_versions("scores") == ["v1"]


def test_duckdb_table_sink_with_storage_on_s3(bucket: tuple[str, Any], tmp_path: Path) -> None:
    name, _ = bucket
    storage.set_storage(f"s3://{name}/store")
    session = Session(tmp_path / "w.duckdb")
    tx = DuckDBTableSink("preds", session).begin()
    assert tx.staging == f"s3://{name}/store/staging/sinks/{tx.txid}"
    for i in range(3):
        on_a_worker(tx, sample_table(i * 4, 4), i)
    assert len(staged_keys(bucket)) == 3
    tx.commit()
    assert session.sql("SELECT count(*), sum(id) FROM preds").fetchall() == [(12, sum(range(12)))]
    assert staged_keys(bucket) == []

    tx = DuckDBTableSink("preds", session, mode="overwrite").begin()
    on_a_worker(tx, sample_table(100, 1), 0)
    tx.abort()
    assert session.sql("SELECT count(*) FROM preds").fetchall() == [(12,)]
    assert staged_keys(bucket) == []
    DuckDBTableSink("preds", session, mode="append").write(sample_table(12, 3))
    assert session.sql("SELECT count(*) FROM preds").fetchall() == [(15,)]
    assert staged_keys(bucket) == []
