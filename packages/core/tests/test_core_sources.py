"""Sources: every kind of input reads the same rows, with clear errors for bad paths/files."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from mlruntime import DataConnector, ParquetSource
from mlruntime.data.sources import ArrowSource, CSVSource
from mlruntime.errors import ConfigError, DataError, SourceError
from mlruntime.testing import sample_table as make_table


def ids_of(connector: DataConnector) -> list[int]:
    return connector.to_arrow().column("id").to_pylist()


def test_parquet_folder_file_and_glob_read_every_row(parquet_dir: Path) -> None:
    assert ids_of(DataConnector.from_sources(parquet_dir)) == list(range(300))
    one = DataConnector.from_sources(parquet_dir / "part-1.parquet")
    assert ids_of(one) == list(range(100, 170))
    globbed = DataConnector.from_sources(str(parquet_dir / "part-[02].parquet"))
    assert ids_of(globbed) == list(range(100)) + list(range(170, 300))


def test_parquet_source_has_cheap_row_count_and_row_group_fragments(parquet_dir: Path) -> None:
    source = ParquetSource(parquet_dir)
    assert source.num_rows == 300
    assert len(source.fragments()) == 4 + 3 + 5  # ceil(100/32), ceil(70/32), ceil(130/32)
    assert source.schema.names == ["id", "x", "label"]


def test_folder_skips_hidden_and_underscore_files(parquet_dir: Path) -> None:
    (parquet_dir / "_SUCCESS").write_text("")
    pq.write_table(make_table(999, 5), parquet_dir / ".hidden.parquet")
    assert ids_of(DataConnector.from_sources(parquet_dir)) == list(range(300))


def test_csv_files_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    pcsv.write_csv(make_table(0, 50), folder / "a.csv")
    pcsv.write_csv(make_table(50, 25), folder / "b.csv")
    dc = DataConnector.from_sources(folder)
    assert isinstance(dc.sources[0], CSVSource)
    assert dc.num_rows is None  # unknown without parsing
    assert dc.count_rows() == 75
    assert ids_of(dc) == list(range(75))
    assert [len(s.to_arrow()) for s in dc.shard(2)] == [37, 38]


def test_in_memory_frames(tmp_path: Path) -> None:
    table = make_table(0, 300)
    for frame in (table, table.to_pandas(), pl.from_arrow(table), pl.from_arrow(table).lazy()):
        dc = DataConnector.from_dataframe(frame)
        assert dc.num_rows == 300
        assert ids_of(dc) == list(range(300))
    dc = DataConnector.from_dataframe({"id": [3, 1, 2]})
    assert ids_of(dc) == [3, 1, 2]


def test_arrow_fragment_pickles_only_its_rows() -> None:
    big = make_table(0, 200_000)
    source = ArrowSource(big, rows_per_fragment=1000)
    fragment = source.fragments()[5]
    payload = pickle.dumps(fragment)
    assert len(payload) < 40_000  # 1,000 rows x 16 bytes, not the 3.2 MB table
    back = pickle.loads(payload)
    assert back.read().column("id").to_pylist() == list(range(5000, 6000))


def test_duckdb_relation_and_sql(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE TABLE t AS SELECT range AS id, range * 2 AS y FROM range(500)")
    dc = DataConnector.from_dataframe(con.table("t"))
    assert dc.columns == ["id", "y"]
    assert ids_of(dc) == list(range(500))
    assert sum(s.count_rows() for s in dc.shard(3)) == 500
    rel = con.sql("SELECT id FROM t WHERE id % 2 = 0")
    assert ids_of(DataConnector.from_dataframe(rel)) == list(range(0, 500, 2))


def test_ray_dataset_source(ray_cluster: None) -> None:
    import ray.data

    ds = ray.data.from_arrow(make_table(0, 1000)).repartition(4)
    dc = DataConnector.from_ray_dataset(ds)
    assert dc.schema.names == ["id", "x", "label"]
    assert sorted(ids_of(dc)) == list(range(1000))
    shards = dc.shard(2)
    assert sorted(ids_of(shards[0]) + ids_of(shards[1])) == list(range(1000))


def test_fsspec_filesystem_memory() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.mkdir("/mem-data")
    for i in range(2):
        with fs.open(f"/mem-data/p{i}.parquet", "wb") as handle:
            pq.write_table(make_table(i * 10, 10), handle)
    dc = DataConnector.from_sources("memory://mem-data", filesystem=fs)
    assert ids_of(dc) == list(range(20))
    dc_uri = DataConnector.from_sources("memory://mem-data")  # inferred through fsspec
    assert ids_of(dc_uri) == list(range(20))


@pytest.fixture(scope="module")
def s3_endpoint() -> str:
    """A real S3 API (moto's server) on loopback."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


def test_s3_bucket_through_pyarrow_filesystem_and_uri(s3_endpoint: str) -> None:
    import io

    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=f"http://{s3_endpoint}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="mlruntime-test")
    for i in range(3):
        body = io.BytesIO()
        pq.write_table(make_table(i * 40, 40), body)
        client.put_object(Bucket="mlruntime-test", Key=f"train/p{i}.parquet", Body=body.getvalue())
    fs = pafs.S3FileSystem(
        access_key="test",
        secret_key="test",
        region="us-east-1",
        scheme="http",
        endpoint_override=s3_endpoint,
    )
    dc = DataConnector.from_sources("s3://mlruntime-test/train", filesystem=fs)
    assert ids_of(dc) == list(range(120))
    shard = pickle.loads(pickle.dumps(dc.shard(2)[1]))  # travels to a worker and reads there
    assert ids_of(shard) == list(range(60, 120))
    uri = (
        "s3://test:test@mlruntime-test/train?region=us-east-1"
        f"&scheme=http&endpoint_override={s3_endpoint}"
    )
    assert ids_of(DataConnector.from_sources(uri)) == list(range(120))


def test_missing_path_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        DataConnector.from_sources(tmp_path / "nope.parquet").schema  # noqa: B018
    with pytest.raises(SourceError, match="does not exist"):
        DataConnector.from_sources(tmp_path / "nope")
    with pytest.raises(SourceError, match="no files match"):
        DataConnector.from_sources(str(tmp_path / "*.parquet")).schema  # noqa: B018


def test_corrupt_parquet_names_the_file(parquet_dir: Path) -> None:
    (parquet_dir / "part-9.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(SourceError, match=r"part-9\.parquet.*not a readable Parquet file"):
        DataConnector.from_sources(parquet_dir).schema  # noqa: B018


def test_mixed_schemas_across_files_are_refused(parquet_dir: Path) -> None:
    other = make_table(1000, 10).set_column(1, "x", pa.array(np.zeros(10), pa.float64()))
    pq.write_table(other, parquet_dir / "part-3.parquet")
    with pytest.raises(DataError, match=r"mixed schemas.*x: float vs double"):
        DataConnector.from_sources(parquet_dir).schema  # noqa: B018


def test_mixed_schemas_across_sources_are_refused(parquet_dir: Path) -> None:
    dc = DataConnector.from_sources([parquet_dir, pd.DataFrame({"id": [1]})])
    with pytest.raises(DataError, match=r"columns .* are in only one of them"):
        dc.schema  # noqa: B018


def test_empty_folder_and_unknown_object(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"holds no \.parquet or \.csv files"):
        DataConnector.from_sources(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"cannot read a builtins\.int"):
        DataConnector.from_dataframe(42)


def test_empty_source_cannot_be_sharded() -> None:
    empty = DataConnector.from_dataframe(make_table(0, 0))
    assert empty.to_pandas().shape == (0, 3)
    assert list(empty.to_batches(4, drop_last_batch=False)) == []
    with pytest.raises(DataError, match="the data has no rows"):
        empty.shard(2)


def test_third_party_source_is_picked_by_scheme_and_suffix() -> None:
    import sys
    import types

    from mlruntime.plugins.hookspecs import SourceSpec, hookimpl
    from mlruntime.plugins.registry import get_registry

    module = types.ModuleType("fakeplug_source")
    module.MLRUNTIME_PLUGIN_API = 1  # type: ignore[attr-defined]

    def open_fake(location: str) -> ArrowSource:
        rows = int(location.rsplit("/", 1)[-1].split(".")[0])
        return ArrowSource(make_table(0, rows), label=f"fake {location}")

    module.open_fake = open_fake  # type: ignore[attr-defined]
    module.mlruntime_register_sources = hookimpl(  # type: ignore[attr-defined]
        lambda: [
            SourceSpec("fake", "fakeplug_source:open_fake", schemes=("fake",), suffixes=(".fake",))
        ]
    )
    sys.modules["fakeplug_source"] = module
    registry = get_registry()
    registry.register(module, name="fake-source")
    try:
        assert DataConnector.from_sources("fake://bucket/12").count_rows() == 12
        assert DataConnector.from_sources("/data/7.fake").count_rows() == 7
    finally:
        registry.unregister("fake-source")
        del sys.modules["fakeplug_source"]
