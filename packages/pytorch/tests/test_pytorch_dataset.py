"""DataConnector.to_torch_dataset: rows and batches, zero-copy, DataLoader workers, shuffle,
mid-epoch resume, type conversions and bad input (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from mlruntime import DataConnector
from mlruntime.errors import ColumnError, ConfigError
from mlruntime.testing import write_sample_parquet
from mlruntime_pytorch import TorchDataset, to_torch_dataset


@pytest.fixture
def parquet_dc(tmp_path: Path) -> DataConnector:
    """1,000 rows (ids 0..999) in 4 files of row groups of 50 rows."""
    return DataConnector.from_sources(write_sample_parquet(tmp_path))


def ids_of(batches: object) -> list[int]:
    return [int(i) for b in batches for i in b["id"].reshape(-1).tolist()]  # type: ignore[attr-defined]


def test_adapter_is_reached_through_the_connector(parquet_dc: DataConnector) -> None:
    ds = parquet_dc.to_torch_dataset(batch_size=100)
    assert isinstance(ds, TorchDataset) and isinstance(ds, torch.utils.data.IterableDataset)
    batches = list(ds)
    assert len(batches) == len(ds) == 10
    assert set(batches[0]) == {"id", "x0", "x1", "x2", "label"}
    assert batches[0]["x0"].dtype == torch.float32 and batches[0]["x0"].shape == (100, 1)
    assert batches[0]["label"].dtype == torch.int32
    assert ids_of(batches) == list(range(1000))


def test_single_rows_are_collated_by_a_normal_dataloader(parquet_dc: DataConnector) -> None:
    ds = to_torch_dataset(parquet_dc)
    first = next(iter(ds))
    assert first["id"].shape == (1,) and int(first["id"]) == 0  # Snowflake: (1,) per row
    loader = DataLoader(ds, batch_size=64)
    batches = list(loader)
    assert batches[0]["x0"].shape == (64, 1) and batches[-1]["x0"].shape == (1000 - 15 * 64, 1)
    assert ids_of(batches) == list(range(1000))
    expected = np.sin(np.arange(1000) * 0.01).astype(np.float32)
    np.testing.assert_array_equal(torch.cat([b["x0"] for b in batches]).numpy()[:, 0], expected)


def test_batches_are_exact_and_the_short_tail_is_optional(parquet_dc: DataConnector) -> None:
    sizes = [len(b["id"]) for b in to_torch_dataset(parquet_dc, batch_size=300)]
    assert sizes == [300, 300, 300]
    kept = [
        len(b["id"]) for b in to_torch_dataset(parquet_dc, batch_size=300, drop_last_batch=False)
    ]
    assert kept == [300, 300, 300, 100]


def test_batches_share_arrow_memory_without_a_copy() -> None:
    table = pa.table({"x": np.arange(4096, dtype=np.float32), "y": np.arange(4096)})
    batch = next(iter(to_torch_dataset(DataConnector.from_dataframe(table), batch_size=1024)))
    buffer = table.column("x").chunk(0).buffers()[1]
    assert batch["x"].data_ptr() == buffer.address  # a view of the Arrow buffer
    assert batch["y"].dtype == torch.int64


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [None, 64])
def test_dataloader_workers_split_rows_so_each_is_read_once(
    parquet_dc: DataConnector, shuffle: bool, batch_size: int | None
) -> None:
    ds = to_torch_dataset(
        parquet_dc, batch_size=batch_size, shuffle=shuffle, seed=3, drop_last_batch=False
    )
    loader = DataLoader(ds, batch_size=None if batch_size else 50, num_workers=2)
    ids = ids_of(loader)
    assert sorted(ids) == list(range(1000))
    first = ids[:50]  # the first batch comes from loader worker 0, which reads rows 0..499
    assert (first == list(range(50))) != shuffle
    assert max(first) < 500 or shuffle


def test_shuffle_is_seeded_mixes_files_and_changes_every_epoch(parquet_dc: DataConnector) -> None:
    ds = to_torch_dataset(parquet_dc, batch_size=100, shuffle=True, seed=11)
    epoch0, epoch1 = ids_of(ds), ids_of(ds)
    assert sorted(epoch0) == sorted(epoch1) == list(range(1000))
    assert epoch0 != epoch1
    again = to_torch_dataset(parquet_dc, batch_size=100, shuffle=True, seed=11)
    assert ids_of(again) == epoch0 and ids_of(again) == epoch1
    again.set_epoch(1)
    assert ids_of(again) == epoch1
    first_batch_files = {i // 250 for i in epoch0[:100]}
    assert len(first_batch_files) > 1  # rows of several files mixed in one batch


@pytest.mark.parametrize("shuffle", [False, True])
def test_state_dict_resumes_mid_epoch_with_each_row_once(
    parquet_dc: DataConnector, shuffle: bool
) -> None:
    ds = to_torch_dataset(parquet_dc, batch_size=64, shuffle=shuffle, seed=5, drop_last_batch=False)
    ids_of(ds)  # epoch 0 done; the interrupted epoch is 1
    iterator = iter(ds)
    seen = ids_of(next(iterator) for _ in range(6))
    state = ds.state_dict()
    assert state["epoch"] == 1 and state["rows_consumed"] == 6 * 64
    resumed = to_torch_dataset(parquet_dc, batch_size=64, shuffle=shuffle, drop_last_batch=False)
    resumed.load_state_dict(state)
    rest = ids_of(resumed)
    assert sorted(seen + rest) == list(range(1000))
    reference = to_torch_dataset(
        parquet_dc, batch_size=64, shuffle=shuffle, seed=5, drop_last_batch=False
    )
    reference.set_epoch(1)
    assert seen + rest == ids_of(reference)  # the very order of the interrupted epoch


def test_state_dict_of_single_rows_resumes_inside_a_batch(parquet_dc: DataConnector) -> None:
    ds = to_torch_dataset(parquet_dc, shuffle=True, seed=2)
    iterator = iter(ds)
    seen = [int(next(iterator)["id"]) for _ in range(1500 // 2)]
    resumed = to_torch_dataset(parquet_dc, shuffle=True)
    resumed.load_state_dict(ds.state_dict())
    rest = [int(row["id"]) for row in resumed]
    assert sorted(seen + rest) == list(range(1000))


def test_arrow_types_become_tensors() -> None:
    table = pa.table(
        {
            "i_null": pa.array([1, None, 3, 4], type=pa.int32()),
            "flag": pa.array([True, False, True, True]),
            "u32": pa.array([1, 2, 3, 2**32 - 1], type=pa.uint32()),
            "when": pa.array([0, 1, 2, 3], type=pa.timestamp("ms")),
            "name": pa.array(["a", "b", None, "d"]),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype=np.float32)), 2),
        }
    )
    data = DataConnector.from_dataframe(table)
    batch = next(iter(to_torch_dataset(data, batch_size=4, expand_dims=False)))
    assert batch["i_null"].dtype == torch.float64 and torch.isnan(batch["i_null"][1])
    assert batch["flag"].dtype == torch.bool and batch["flag"].tolist() == [True, False, True, True]
    assert batch["u32"].dtype == torch.int64 and int(batch["u32"][3]) == 2**32 - 1
    assert batch["when"].dtype == torch.int64 and batch["when"].tolist() == [0, 1, 2, 3]
    assert batch["name"] == ["a", "b", None, "d"]
    assert batch["vec"].shape == (4, 2) and batch["vec"][3].tolist() == [6.0, 7.0]


def test_batch_shapes_are_snowflakes() -> None:
    # Snowflake's rule: scalar columns (B, 1) per batch and (1,) per row; lists (B, k);
    # strings stay lists; expand_dims=False (per call or per connector) gives (B,) and 0-d.
    table = pa.table(
        {
            "x": pa.array([1.0, 2.0, 3.0]),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6.0)), 2),
            "name": pa.array(["a", "b", "c"]),
        }
    )
    data = DataConnector.from_dataframe(table)
    batch = next(iter(data.to_torch_dataset(batch_size=3)))
    assert batch["x"].shape == (3, 1) and batch["x"][:, 0].tolist() == [1.0, 2.0, 3.0]
    assert batch["vec"].shape == (3, 2) and batch["name"] == ["a", "b", "c"]
    row = next(iter(data.to_torch_dataset()))
    assert row["x"].shape == (1,) and row["vec"].shape == (2,) and row["name"] == "a"
    flat = next(iter(data.to_torch_dataset(batch_size=3, expand_dims=False)))
    assert flat["x"].shape == (3,)
    assert next(iter(data.to_torch_dataset(expand_dims=False)))["x"].shape == ()
    connector_wide = DataConnector.from_dataframe(table, expand_dims=False)
    assert next(iter(connector_wide.to_torch_dataset(batch_size=3)))["x"].shape == (3,)
    collated = next(iter(DataLoader(data.to_torch_dataset(), batch_size=2)))
    assert collated["x"].shape == (2, 1)


def test_bad_input_is_refused_with_a_clear_error(parquet_dc: DataConnector) -> None:
    with pytest.raises(ConfigError, match="batch_size must be a positive integer or None"):
        parquet_dc.to_torch_dataset(batch_size=0)
    with pytest.raises(ColumnError, match="'ghost' is not in the data"):
        parquet_dc.to_torch_dataset(batch_size=8, columns=["ghost"])
    with pytest.raises(ConfigError, match="needs a DataConnector"):
        to_torch_dataset([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a TorchDataset state"):
        to_torch_dataset(parquet_dc).load_state_dict({"epoch": 1})


def test_columns_selects_what_is_yielded(parquet_dc: DataConnector) -> None:
    batch = next(iter(parquet_dc.to_torch_dataset(batch_size=10, columns=["x1", "label"])))
    assert list(batch) == ["x1", "label"]


def matrix_data() -> DataConnector:
    table = pa.table(
        {
            "a": np.arange(10, dtype=np.float64),
            "b": np.arange(10, dtype=np.int32) * 10,
            "name": [f"r{i}" for i in range(10)],
            "y": np.arange(10, dtype=np.int64) % 3,
        }
    )
    return DataConnector.from_dataframe(table)


def test_input_cols_give_one_feature_matrix_and_the_label_apart() -> None:
    ds = matrix_data().to_torch_dataset(batch_size=4, input_cols=["a", "b"], label_col="y")
    batches = list(ds)
    assert len(batches) == 2  # drop_last_batch
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (4, 2)
    assert x.tolist() == [[0.0, 0.0], [1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]
    assert y.dtype == torch.int64 and y.shape == (4, 1) and y[:, 0].tolist() == [0, 1, 2, 0]
    flat = matrix_data().to_torch_dataset(
        batch_size=4,
        input_cols=["a"],
        label_col="y",
        expand_dims=False,
        feature_dtype=torch.float64,
    )
    x, y = next(iter(flat))
    assert x.dtype == torch.float64 and x.shape == (4, 1) and y.shape == (4,)
    # features alone; rows are (F,) and a DataLoader collates them into (B, F)
    assert next(iter(matrix_data().to_torch_dataset(batch_size=3, input_cols=["b"]))).shape == (
        3,
        1,
    )
    rows = matrix_data().to_torch_dataset(input_cols=["a", "b"], label_col="y")
    x, y = next(iter(DataLoader(rows, batch_size=5)))
    assert x.shape == (5, 2) and y.shape == (5, 1) and x[4].tolist() == [4.0, 40.0]


def test_device_and_pin_memory_put_batches_where_asked() -> None:
    ds = matrix_data().to_torch_dataset(
        batch_size=5, input_cols=["a", "b"], label_col="y", device="cpu", pin_memory=True
    )
    x, y = next(iter(ds))  # no GPU here: pin_memory is ignored, tensors on the CPU
    assert x.device.type == "cpu" and y.device.type == "cpu"
    dicts = matrix_data().to_torch_dataset(batch_size=5, device="cpu", pin_memory=True)
    batch = next(iter(dicts))
    assert batch["a"].device.type == "cpu" and batch["name"] == ["r0", "r1", "r2", "r3", "r4"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_reach_the_gpu_pinned_and_in_order() -> None:
    ds = matrix_data().to_torch_dataset(
        batch_size=2, input_cols=["a", "b"], label_col="y", device="cuda", pin_memory=True
    )
    seen = [(x.device.type, x[:, 0].tolist()) for x, _ in ds]
    assert seen == [
        ("cuda", [0.0, 1.0]),
        ("cuda", [2.0, 3.0]),
        ("cuda", [4.0, 5.0]),
        ("cuda", [6.0, 7.0]),
        ("cuda", [8.0, 9.0]),
    ]


def test_matrix_options_refuse_bad_input() -> None:
    dc = matrix_data()
    with pytest.raises(ConfigError, match="label_col needs input_cols"):
        dc.to_torch_dataset(label_col="y")
    with pytest.raises(ConfigError, match="either columns"):
        dc.to_torch_dataset(columns=["a"], input_cols=["a"])
    with pytest.raises(ColumnError):
        dc.to_torch_dataset(input_cols=["a", "ghost"])
    with pytest.raises(ConfigError, match="device must be a torch device"):
        dc.to_torch_dataset(device="warp-drive")
    with pytest.raises(ConfigError, match="input column 'name' has dtype"):
        next(iter(dc.to_torch_dataset(batch_size=2, input_cols=["name"])))
