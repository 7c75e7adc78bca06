"""What each Arrow type becomes in numpy batches (the table in mlruntime.convert)."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pyarrow as pa
import pytest

from mlruntime import DataConnector
from mlruntime.data.convert import column_to_numpy
from mlruntime.errors import DataError


def one_batch(table: pa.Table) -> dict[str, np.ndarray]:
    return next(DataConnector.from_dataframe(table).to_batches(len(table)))


def test_fixed_width_without_nulls_is_zero_copy() -> None:
    for typ, dtype in [
        (pa.int8(), np.int8),
        (pa.int64(), np.int64),
        (pa.uint16(), np.uint16),
        (pa.float32(), np.float32),
        (pa.float64(), np.float64),
    ]:
        arr = pa.array([1, 2, 3], type=typ)
        out = column_to_numpy(arr)
        assert out.dtype == dtype
        assert np.shares_memory(out, np.frombuffer(arr.buffers()[1], dtype=dtype))


def test_ints_with_nulls_become_float64_nan() -> None:
    out = one_batch(pa.table({"a": pa.array([1, None, 3], pa.int32())}))["a"]
    assert out.dtype == np.float64
    assert out[0] == 1 and np.isnan(out[1]) and out[2] == 3


def test_floats_with_nulls_keep_dtype_with_nan() -> None:
    out = column_to_numpy(pa.array([1.5, None], pa.float32()))
    assert out.dtype == np.float32 and np.isnan(out[1])


def test_booleans() -> None:
    assert column_to_numpy(pa.array([True, False])).dtype == np.bool_
    with_null = column_to_numpy(pa.array([True, None, False]))
    assert with_null.dtype == np.float64
    assert with_null[0] == 1.0 and np.isnan(with_null[1]) and with_null[2] == 0.0


def test_strings_and_dictionaries_become_object_arrays() -> None:
    out = column_to_numpy(pa.array(["a", None, "c"]))
    assert out.dtype == object and out.tolist() == ["a", None, "c"]
    dict_arr = pa.array(["x", "y", "x"]).dictionary_encode()
    assert column_to_numpy(dict_arr).tolist() == ["x", "y", "x"]


def test_decimals_become_float64() -> None:
    arr = pa.array([decimal.Decimal("1.25"), None], pa.decimal128(10, 2))
    out = column_to_numpy(arr)
    assert out.dtype == np.float64 and out[0] == 1.25 and np.isnan(out[1])


def test_timestamps_dates_durations() -> None:
    ts = pa.array([dt.datetime(2024, 1, 2, 3, 4, 5), None], pa.timestamp("us", tz="UTC"))
    out = column_to_numpy(ts)
    assert out.dtype == np.dtype("datetime64[us]")
    assert out[0] == np.datetime64("2024-01-02T03:04:05") and np.isnat(out[1])
    assert column_to_numpy(pa.array([dt.date(2024, 5, 6)])).dtype == np.dtype("datetime64[D]")
    dur = column_to_numpy(pa.array([dt.timedelta(seconds=3)], pa.duration("s")))
    assert dur.dtype == np.dtype("timedelta64[s]")


def test_fixed_size_lists_become_2d_zero_copy() -> None:
    values = pa.array(np.arange(12, dtype=np.float32))
    arr = pa.FixedSizeListArray.from_arrays(values, 3)
    out = column_to_numpy(arr)
    assert out.shape == (4, 3) and out.dtype == np.float32
    assert out[2].tolist() == [6, 7, 8]
    assert np.shares_memory(out, np.frombuffer(values.buffers()[1], dtype=np.float32))
    sliced = column_to_numpy(arr.slice(1, 2))
    assert sliced.tolist() == [[3, 4, 5], [6, 7, 8]]
    batch = one_batch(pa.table({"emb": arr}))
    assert batch["emb"].shape == (4, 3)


def test_fixed_size_lists_with_null_rows() -> None:
    arr = pa.array([[1.0, 2.0], None], pa.list_(pa.float64(), 2))
    out = column_to_numpy(arr)
    assert out[0].tolist() == [1.0, 2.0] and np.isnan(out[1]).all()
    with pytest.raises(DataError, match="null list"):
        column_to_numpy(pa.array([[1, 2], None], pa.list_(pa.int64(), 2)))


def test_null_type_is_all_nan() -> None:
    assert np.isnan(column_to_numpy(pa.nulls(3))).all()
