"""``DataConnector.to_tf_dataset``: a ``tf.data.Dataset`` of batches, typed from the schema.

The element spec comes from the Arrow schema (no read needed), batches stream from the
connector's read pipeline (background prefetch, per-epoch seeded shuffle), and the cardinality
is known when the row count is. Inside a distributed job only this rank's shard is read.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import tensorflow as tf

from mlruntime.data.batching import check_batch_size
from mlruntime.data.connector import DataConnector, resolve_worker_shard
from mlruntime.errors import ColumnError, ConfigError, DataError

__all__ = ["tensor_spec", "to_tf_dataset"]

BLOCK_BATCHES = 16
"""Batches handed from the reader to TensorFlow in one step (amortizes the per-element cost
of ``from_generator``)."""

_WIDEN = {pa.uint32(): tf.int64, pa.uint64(): tf.int64}


def _dtype_of(typ: pa.DataType) -> Any:
    """The tf dtype a column of Arrow type ``typ`` becomes, or ``None`` if none fits."""
    if pa.types.is_dictionary(typ):
        return _dtype_of(typ.value_type)
    if typ in _WIDEN:
        return _WIDEN[typ]
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ):
        return tf.as_dtype(typ.to_pandas_dtype())
    if pa.types.is_decimal(typ) or pa.types.is_null(typ):
        return tf.float64
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ) or pa.types.is_duration(typ):
        return tf.int64
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ):
        return tf.string
    return None


def tensor_spec(field: pa.Field, batch: int | None) -> tf.TensorSpec:
    """The ``tf.TensorSpec`` of one column batched ``batch`` rows at a time (``None``: varies).

    Raises:
        ColumnError: For a type no tensor holds (structs, variable-length lists, maps ...).
    """
    typ = field.type
    if pa.types.is_fixed_size_list(typ):
        inner = _dtype_of(typ.value_type)
        if inner is not None and inner != tf.string:
            return tf.TensorSpec((batch, typ.list_size), inner, name=field.name)
    else:
        dtype = _dtype_of(typ)
        if dtype is not None:
            return tf.TensorSpec((batch,), dtype, name=field.name)
    raise ColumnError(
        f"column {field.name!r} has type {typ}, which no tensor holds; to_tf_dataset takes "
        "numeric, boolean, string, temporal and fixed-size list columns — select other "
        "columns or convert it first"
    )


def _as_tensor_values(values: np.ndarray, spec: tf.TensorSpec, name: str) -> np.ndarray:
    """Numpy values in the spec's dtype (only cheap casts; a view where nothing changes)."""
    if spec.dtype == tf.string:
        if values.dtype == object:
            values = np.where(values == None, "", values)  # noqa: E711 - elementwise
        return values
    kind = values.dtype.kind
    if kind in "mM":
        return values.view(np.int64)
    want = spec.dtype.as_numpy_dtype
    if values.dtype != want:
        if np.issubdtype(want, np.integer) and kind == "f":
            raise DataError(
                f"column {name!r} has null values, which integer tensors cannot hold; fill them "
                "(e.g. with 0) or cast the column to float in the source"
            )
        values = values.astype(want)
    return values


def _block(values: np.ndarray, rows: int, spec: tf.TensorSpec, name: str) -> np.ndarray:
    """``values`` (a multiple of ``rows`` long) as a block of shape ``(batches, rows, ...)``."""
    values = _as_tensor_values(values, spec, name)
    return values.reshape((len(values) // rows, rows, *values.shape[1:]))


def _block_spec(spec: tf.TensorSpec) -> tf.TensorSpec:
    return tf.TensorSpec((None, *spec.shape), spec.dtype, name=spec.name)


def to_tf_dataset(
    connector: DataConnector,
    *,
    batch_size: int | None = None,
    shuffle: bool = False,
    drop_last_batch: bool = True,
    seed: int | None = None,
    label_cols: str | Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    prefetch: int | None = None,
) -> Any:
    """The connector's rows as a ``tf.data.Dataset`` of batches.

    Args:
        connector: The data (a ShardedDataConnector reads the current worker's shard; a plain
            one is read whole, on every rank).
        batch_size: Rows per batch (required).
        shuffle: Shuffle rows across fragments, differently each epoch (each iteration).
        drop_last_batch: Drop the final short batch, so every batch has a static size.
        seed: Seed of the shuffle (with the epoch); ``None``: random.
        label_cols: Column(s) to yield as labels: elements become ``(features, labels)`` for
            ``keras.Model.fit`` — labels a tensor for one column, a dict for several.
        columns: Feature columns (default: every column that is not a label).
        prefetch: Batches tf.data prefetches (default: autotuned).

    Returns:
        A ``tf.data.Dataset`` with a known element spec (fixed-size lists become 2-D) and,
        when the row count is known, a known cardinality. Inside a distributed job it reads
        only this rank's shard and turns off tf.distribute's own auto-sharding.

    Raises:
        ConfigError: If ``batch_size`` is missing or not a positive integer.
        ColumnError: For an unknown column or label, a label that is not numeric, or a column
            type no tensor holds.

    Example:
        >>> ds = dc.to_tf_dataset(batch_size=256, label_cols="y", shuffle=True, seed=0)
        >>> model.fit(ds, epochs=3)
    """
    if batch_size is None:
        raise ConfigError("to_tf_dataset needs batch_size (rows per batch), e.g. batch_size=256")
    size = check_batch_size(batch_size)
    if not isinstance(connector, DataConnector):
        raise ConfigError(f"to_tf_dataset needs a DataConnector, got {type(connector).__name__}")
    base = connector
    schema = base.schema
    labels = [label_cols] if isinstance(label_cols, str) else list(label_cols or [])
    features = [n for n in schema.names if n not in labels] if columns is None else list(columns)
    base.select([*features, *labels])  # ColumnError names any unknown column
    for name in labels:
        typ = schema.field(name).type
        dtype = _dtype_of(typ)
        if dtype is None or dtype == tf.string or pa.types.is_fixed_size_list(typ):
            raise ColumnError(
                f"label column {name!r} has type {typ}; labels must be numeric or boolean"
            )
    static = size if drop_last_batch else None
    feature_spec = {n: tensor_spec(schema.field(n), static) for n in features}
    label_spec = {n: tensor_spec(schema.field(n), static) for n in labels}
    specs = {**feature_spec, **label_spec}
    read = list(dict.fromkeys([*features, *labels]))
    epochs = itertools.count()  # this dataset's own: each iteration (epoch) shuffles anew

    def arrange(values: dict[str, np.ndarray]) -> Any:
        x = {n: values[n] for n in features}
        if not labels:
            return x
        if len(labels) == 1:
            return x, values[labels[0]]
        return x, {n: values[n] for n in labels}

    def blocks() -> Iterator[Any]:
        # Blocks of BLOCK_BATCHES batches cross from Python to TensorFlow at once (a zero-copy
        # reshape of one larger batch, same row order); unbatch() splits them in C++.
        part = resolve_worker_shard(connector)
        for chunk in part.to_batches(
            size * BLOCK_BATCHES,
            shuffle=shuffle,
            drop_last_batch=False,
            seed=seed,
            epoch=next(epochs),
            columns=read,
        ):
            rows = len(chunk[read[0]])
            full = rows // size * size
            if full:
                yield arrange({n: _block(chunk[n][:full], size, specs[n], n) for n in read})
            if full < rows and not drop_last_batch:
                yield arrange({n: _block(chunk[n][full:], rows - full, specs[n], n) for n in read})

    signature = arrange({n: _block_spec(specs[n]) for n in read})
    dataset = tf.data.Dataset.from_generator(blocks, output_signature=signature).unbatch()
    rows = _rows_per_epoch(connector)
    if rows is not None:
        full, rest = divmod(rows, size)
        count = full + (1 if rest and not drop_last_batch else 0)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    if _in_distributed_job():
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        dataset = dataset.with_options(options)
    return dataset.prefetch(tf.data.AUTOTUNE if prefetch is None else prefetch)


def _in_distributed_job() -> bool:
    from mlruntime.runtime.context import _current_context

    return _current_context() is not None


def _rows_per_epoch(connector: DataConnector) -> int | None:
    """Rows this process will read per epoch, when known without reading data."""
    try:
        return resolve_worker_shard(connector).num_rows
    except Exception:  # e.g. a ShardedDataConnector built outside a job: count at read time
        return None
