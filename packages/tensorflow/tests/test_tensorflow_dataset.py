"""DataConnector.to_tf_dataset: element spec from the schema, cardinality, labels for Keras,
type conversions, per-epoch shuffle and bad input (in process, no Ray)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from mlruntime import DataConnector
from mlruntime.errors import ColumnError, ConfigError
from mlruntime.testing import write_sample_parquet
from mlruntime_tensorflow import to_tf_dataset


@pytest.fixture
def parquet_dc(tmp_path: Path) -> DataConnector:
    """1,000 rows (ids 0..999) in 4 files of row groups of 50 rows."""
    return DataConnector.from_sources(write_sample_parquet(tmp_path))


def ids_of(dataset: tf.data.Dataset) -> list[int]:
    return [int(i) for batch in dataset for i in batch["id"].numpy()]


def test_spec_comes_from_the_schema_and_every_row_arrives(parquet_dc: DataConnector) -> None:
    ds = parquet_dc.to_tf_dataset(batch_size=128)
    spec = ds.element_spec
    assert set(spec) == {"id", "x0", "x1", "x2", "label"}
    assert (spec["x0"].shape.as_list(), spec["x0"].dtype) == ([128], tf.float32)
    assert spec["label"].dtype == tf.int32 and spec["id"].dtype == tf.int64
    assert int(ds.cardinality()) == 1000 // 128  # known from metadata, before any read
    assert ids_of(ds) == list(range(1000 // 128 * 128))
    tail = to_tf_dataset(parquet_dc, batch_size=128, drop_last_batch=False)
    assert tail.element_spec["x0"].shape.as_list() == [None]
    assert int(tail.cardinality()) == 8 and ids_of(tail) == list(range(1000))


def test_label_cols_give_keras_ready_pairs(parquet_dc: DataConnector) -> None:
    ds = parquet_dc.to_tf_dataset(batch_size=100, label_cols="label", columns=["x0", "x1", "x2"])
    features, label = ds.element_spec
    assert list(features) == ["x0", "x1", "x2"] and label.shape.as_list() == [100]
    two = parquet_dc.to_tf_dataset(batch_size=100, label_cols=["label", "x2"])
    x, y = next(iter(two))
    assert set(y) == {"label", "x2"} and "x2" not in x and "label" not in x
    inputs = {n: keras.Input((), name=n) for n in ["x0", "x1", "x2"]}
    stacked = keras.layers.Concatenate()([keras.layers.Reshape((1,))(v) for v in inputs.values()])
    model = keras.Model(inputs, keras.layers.Dense(1)(stacked))
    model.compile("sgd", "mse")
    history = model.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


def test_arrow_types_become_tensors() -> None:
    table = pa.table(
        {
            "flag": pa.array([True, False, True, True]),
            "u32": pa.array([1, 2, 3, 2**32 - 1], type=pa.uint32()),
            "when": pa.array([0, 1, 2, 3], type=pa.timestamp("ms")),
            "name": pa.array(["a", "b", None, "d"]),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype=np.float32)), 2),
            "money": pa.array([1, 2, 3, 4], type=pa.decimal128(10, 2)),
        }
    )
    ds = DataConnector.from_dataframe(table).to_tf_dataset(batch_size=4)
    vec = ds.element_spec["vec"]
    assert (vec.shape.as_list(), vec.dtype) == ([4, 2], tf.float32)
    batch = next(iter(ds))
    assert batch["flag"].dtype == tf.bool and batch["flag"].numpy().tolist() == [1, 0, 1, 1]
    assert batch["u32"].dtype == tf.int64 and int(batch["u32"][3]) == 2**32 - 1
    assert batch["when"].dtype == tf.int64 and batch["when"].numpy().tolist() == [0, 1, 2, 3]
    assert batch["name"].numpy().tolist() == [b"a", b"b", b"", b"d"]
    assert batch["vec"].numpy()[3].tolist() == [6.0, 7.0]
    assert batch["money"].dtype == tf.float64


def test_shuffle_is_seeded_and_differs_every_epoch(parquet_dc: DataConnector) -> None:
    ds = parquet_dc.to_tf_dataset(batch_size=100, shuffle=True, seed=3)
    epoch0, epoch1 = ids_of(ds), ids_of(ds)
    assert sorted(epoch0) == sorted(epoch1) == list(range(1000))
    assert epoch0 != epoch1 and epoch0 != list(range(1000))
    again = parquet_dc.to_tf_dataset(batch_size=100, shuffle=True, seed=3)
    assert ids_of(again) == epoch0


def test_bad_input_is_refused_with_a_clear_error(parquet_dc: DataConnector) -> None:
    with pytest.raises(ConfigError, match="to_tf_dataset needs batch_size"):
        parquet_dc.to_tf_dataset()
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        parquet_dc.to_tf_dataset(batch_size=-1)
    with pytest.raises(ColumnError, match="'target' is not in the data"):
        parquet_dc.to_tf_dataset(batch_size=8, label_cols="target")
    words = DataConnector.from_dataframe(pa.table({"x": [1.0, 2.0], "y": ["a", "b"]}))
    with pytest.raises(ColumnError, match="label column 'y' has type string"):
        words.to_tf_dataset(batch_size=1, label_cols="y")
    nested = DataConnector.from_dataframe(pa.table({"x": [1.0], "s": [{"a": 1}]}))
    with pytest.raises(ColumnError, match="column 's' has type struct"):
        nested.to_tf_dataset(batch_size=1)
    holes = DataConnector.from_dataframe(pa.table({"n": pa.array([1, None], type=pa.int64())}))
    # Found while reading; tf.data hands the generator's DataError on as its own error type.
    with pytest.raises(tf.errors.InvalidArgumentError, match="column 'n' has null values"):
        list(holes.to_tf_dataset(batch_size=2))
