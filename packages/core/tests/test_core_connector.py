"""DataConnector outputs: pandas, Arrow, exact-size numpy batches, repr, plugin adapters."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from mlruntime import DataConnector
from mlruntime.errors import ColumnError, ConfigError, PluginNotFoundError
from mlruntime.plugins.hookspecs import AdapterSpec, hookimpl
from mlruntime.plugins.registry import get_registry
from mlruntime.testing import sample_table


def test_to_pandas_all_and_limit(parquet_dir: Path) -> None:
    dc = DataConnector.from_sources(parquet_dir)
    df = dc.to_pandas()
    assert list(df.columns) == ["id", "x", "label"]
    assert df["id"].tolist() == list(range(300))
    assert dc.to_pandas(limit=45)["id"].tolist() == list(range(45))
    assert dc.to_pandas(limit=0).shape == (0, 3)
    with pytest.raises(ConfigError, match="limit must be >= 0"):
        dc.to_pandas(limit=-1)


def test_in_memory_tables_convert_without_a_reader_thread(
    monkeypatch: pytest.MonkeyPatch, parquet_dir: Path, tmp_path: Path
) -> None:
    """Slices of a table in memory are converted in the caller's thread (a many-model task
    converts thousands of small partitions; a reader thread each cost more than the copy), and
    so is a connector of one piece (nothing to read ahead of: a tuning trial's staged frame)."""
    import threading

    import pyarrow as pa
    import pyarrow.parquet as pq

    started: list[str] = []
    real_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    table = pa.table({"k": [1, None, 3], "x": [0.5, 1.5, 2.5], "s": ["a", "b", None]})
    df = DataConnector.from_sources(table).to_pandas()
    assert started == []
    assert df["x"].tolist() == [0.5, 1.5, 2.5]
    assert df["s"].tolist()[:2] == ["a", "b"]
    assert np.isnan(df["k"][1]) and df["k"][2] == 3
    DataConnector.from_sources(parquet_dir).to_pandas()  # files are still read ahead
    assert started
    started.clear()
    pq.write_table(sample_table(0, 100), tmp_path / "one.parquet")
    one = DataConnector.from_sources(tmp_path / "one.parquet")
    assert len(one.pieces()) == 1
    assert one.to_pandas()["id"].tolist() == list(range(100))
    assert "mlruntime-prefetch" not in started  # (the file's reader may use a pool of its own)


def test_batches_have_exact_size_and_span_file_boundaries(parquet_dir: Path) -> None:
    dc = DataConnector.from_sources(parquet_dir)
    batches = list(dc.to_batches(batch_size=64))
    assert [len(b["id"]) for b in batches] == [64] * 4  # 300 // 64, last 44 rows dropped
    assert np.concatenate([b["id"] for b in batches]).tolist() == list(range(256))
    assert batches[1]["x"].dtype == np.float32
    kept = list(dc.to_batches(batch_size=64, drop_last_batch=False))
    assert [len(b["id"]) for b in kept] == [64] * 4 + [44]
    assert np.concatenate([b["id"] for b in kept]).tolist() == list(range(300))


def test_batches_inside_one_record_batch_are_zero_copy_views() -> None:
    table = sample_table(0, 10_000)
    dc = DataConnector.from_dataframe(table)
    first = next(dc.to_batches(batch_size=1000))
    assert not first["x"].flags.writeable  # a view of Arrow memory, not a copy
    buffer = table.column("x").chunk(0).buffers()[1]
    assert np.shares_memory(first["x"], np.frombuffer(buffer, dtype=np.float32))


def test_batch_columns_and_select(parquet_dir: Path) -> None:
    dc = DataConnector.from_sources(parquet_dir)
    batch = next(dc.to_batches(10, columns=["label", "x"]))
    assert list(batch) == ["label", "x"]
    selected = dc.select(["x"])
    assert selected.columns == ["x"]
    assert selected.to_arrow().num_columns == 1
    with pytest.raises(ColumnError, match="column 'GHOST' is not in the data; columns are id, x"):
        dc.select(["GHOST"])
    with pytest.raises(ColumnError, match="'GHOST'"):
        next(dc.to_batches(10, columns=["GHOST"]))


@pytest.mark.parametrize("bad", [0, -5, 2.5, None, True])
def test_bad_batch_size_is_refused_before_reading(parquet_dir: Path, bad: object) -> None:
    dc = DataConnector.from_sources(parquet_dir)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        dc.to_batches(batch_size=bad)  # type: ignore[arg-type]


def test_repr_names_sources_columns_types_and_rows(parquet_dir: Path) -> None:
    text = repr(DataConnector.from_sources(parquet_dir))
    assert "parquet" in text and str(parquet_dir) in text
    assert "id: int64" in text and "x: float" in text and "label: int32" in text
    assert "rows=300" in text


def test_to_ray_dataset_has_every_row(parquet_dir: Path, ray_cluster: None) -> None:
    ds = DataConnector.from_sources(parquet_dir).to_ray_dataset()
    assert ds.count() == 300
    assert sorted(ds.to_pandas()["id"].tolist()) == list(range(300))
    from_mem = DataConnector.from_dataframe(sample_table(0, 50)).to_ray_dataset()
    assert from_mem.count() == 50
    picked = DataConnector.from_sources(parquet_dir).select(["x", "id"]).to_ray_dataset()
    assert picked.columns() == ["x", "id"] and picked.count() == 300


def test_missing_adapter_names_the_extra_to_install() -> None:
    from mlruntime.plugins.registry import reset_registry

    reset_registry()
    get_registry().unregister("tensorflow")  # as if mlruntime-tensorflow were not installed
    try:
        dc = DataConnector.from_dataframe(sample_table(0, 5))
        with pytest.raises(PluginNotFoundError, match=r"to_tf_dataset.*mlruntime\[tensorflow\]"):
            dc.to_tf_dataset(batch_size=2)
    finally:
        reset_registry()
    with pytest.raises(AttributeError):
        dc.not_an_output  # noqa: B018


def test_plugin_adapter_is_dispatched_with_the_connector() -> None:
    module = types.ModuleType("fakeplug_adapter")
    module.MLRUNTIME_PLUGIN_API = 1  # type: ignore[attr-defined]

    def to_row_count(connector: DataConnector, plus: int = 0) -> int:
        return connector.count_rows() + plus

    module.to_row_count = to_row_count  # type: ignore[attr-defined]
    module.mlruntime_register_adapters = hookimpl(  # type: ignore[attr-defined]
        lambda: [AdapterSpec("to_row_count", "fakeplug_adapter:to_row_count")]
    )
    import sys

    sys.modules["fakeplug_adapter"] = module
    registry = get_registry()
    registry.register(module, name="fake-adapter")
    try:
        dc = DataConnector.from_dataframe(sample_table(0, 7))
        assert dc.to_row_count(plus=3) == 10
    finally:
        registry.unregister("fake-adapter")
        del sys.modules["fakeplug_adapter"]


def test_outputs_can_be_read_repeatedly_without_harming_shared_tables(tmp_path: Path) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT range AS id, range * 0.5 AS x FROM range(1000)")
    dc = DataConnector.from_dataframe(con.table("t"))
    assert dc.to_pandas()["id"].sum() == 499500
    assert sum(int(b["id"].sum()) for b in dc.to_batches(100, shuffle=True, seed=1)) == 499500
    assert dc.to_pandas(limit=3)["id"].tolist() == [0, 1, 2]
    user_table = sample_table(0, 500)
    mem = DataConnector.from_dataframe(user_table)
    assert len(mem.to_pandas()) == 500
    assert user_table.column("id").to_pylist() == list(range(500))  # the caller's table is intact
    assert mem.to_arrow().column("id").to_pylist() == list(range(500))
