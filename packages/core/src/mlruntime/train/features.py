"""Training inputs every trainer shares: checks of the columns before any worker starts,
feature matrices streamed in batches (or read ahead while a worker imports its framework), and
the memory probes the readers and benchmarks use."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from mlruntime.data.batching import ReadAhead
from mlruntime.data.connector import DataConnector
from mlruntime.data.convert import column_to_numpy
from mlruntime.errors import ColumnError, ConfigError, DataError

__all__ = [
    "READ_AHEAD_FRACTION",
    "PeakMemory",
    "as_connector",
    "available_memory",
    "check_training_columns",
    "count_nulls",
    "feature_batches",
    "is_categorical",
    "known_null_count",
    "null_label_error",
    "read_ahead_features",
    "table_to_matrix",
]


class PeakMemory:
    """Peak RSS growth of this process from now on (Linux: resets and reads VmHWM).

    ``growth()`` returns bytes, or ``None`` where the platform cannot tell.
    """

    def __init__(self) -> None:
        self.base: int | None = None
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # reset the peak-RSS counter
            self.base = self._read("VmRSS:")
        except OSError:
            self.base = None

    @staticmethod
    def _read(field: str) -> int:
        with open("/proc/self/status") as handle:
            line = next(ln for ln in handle if ln.startswith(field))
        return int(line.split()[1]) * 1024

    def growth(self) -> int | None:
        """Peak RSS since construction minus RSS at construction."""
        if self.base is None:
            return None
        try:
            return self._read("VmHWM:") - self.base
        except OSError:
            return None


def as_connector(data: Any, what: str = "dataset") -> DataConnector:
    """A DataConnector over ``data`` (a connector, frame, relation, source or path).

    Raises:
        ConfigError: If ``data`` is none of those.
    """
    if data is None:
        raise ConfigError(f"{what} is None; pass a DataConnector, a frame or a path")
    try:
        return DataConnector.from_dataframe(data)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from exc


def _is_numeric(typ: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(typ)
        or pa.types.is_floating(typ)
        or pa.types.is_boolean(typ)
        or pa.types.is_decimal(typ)
        or (pa.types.is_dictionary(typ) and _is_numeric(typ.value_type))
    )


def is_categorical(typ: pa.DataType) -> bool:
    """Whether a column of this type is a categorical feature (strings, dictionaries)."""
    return bool(
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or (pa.types.is_dictionary(typ) and not _is_numeric(typ.value_type))
    )


def check_training_columns(
    connector: DataConnector,
    input_cols: Sequence[str] | None,
    label_col: str | None,
    weight_col: str | None = None,
    *,
    what: str = "dataset",
    check_null_labels: bool | str = True,
    allow_categorical: bool = False,
) -> list[str]:
    """Check the columns of a training input and return the feature columns.

    ``input_cols=None`` means every column except the label and weight. With
    ``allow_categorical``, string and dictionary features are accepted as categorical.
    ``check_null_labels``: ``True`` reads the label column to count nulls; ``"known"`` counts
    them only where that needs no reading (in-memory Arrow data; the distributed estimators
    count the rest on their workers); ``False`` skips the check.

    Raises:
        ColumnError: For a column not in the data, or a feature/label/weight that is not
            numeric.
        DataError: If the label has nulls.
    """
    schema = connector.schema
    names = schema.names
    wanted = [c for c in [label_col, weight_col] if c is not None]
    if isinstance(input_cols, str):
        input_cols = [input_cols]
    features = list(input_cols) if input_cols is not None else [c for c in names if c not in wanted]
    if not features:
        raise ColumnError(f"{what} has no feature columns besides {wanted}")
    missing = [c for c in [*features, *wanted] if c not in names]
    if missing:
        raise ColumnError(
            f"{what}: column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"{'are' if len(missing) > 1 else 'is'} not in the data; columns are {', '.join(names)}"
        )
    for role, cols in (("feature", features), ("label", [label_col]), ("weight", [weight_col])):
        for col in cols:
            if col is None:
                continue
            typ = schema.field(col).type
            if role == "feature" and allow_categorical and is_categorical(typ):
                continue
            if not _is_numeric(typ):
                raise ColumnError(
                    f"{what}: {role} column {col!r} has type {typ}; {role}s must be numeric "
                    "(int, float, bool, decimal) — encode or cast it first"
                )
    if label_col is not None and check_null_labels:
        if check_null_labels == "known":
            nulls = known_null_count(connector, label_col) or 0
        else:
            nulls = count_nulls(connector, label_col)
        if nulls:
            raise null_label_error(what, label_col, nulls)
    return features


def null_label_error(what: str, label_col: str, nulls: int) -> DataError:
    """The error for ``nulls`` null labels in ``what`` (``"dataset"``, ``"eval_set"``)."""
    return DataError(
        f"{what}: label column {label_col!r} has {nulls} null value(s); drop or fill those "
        "rows first"
    )


def count_nulls(connector: DataConnector, column: str) -> int:
    """Nulls in ``column``, reading only that column of the connector's rows."""
    return sum(t.column(0).null_count for t in connector.iter_tables(columns=[column]))


def known_null_count(connector: DataConnector, column: str) -> int | None:
    """Nulls in ``column`` when known without reading data (every piece in memory), else
    ``None``."""
    from mlruntime.data.sources import ArrowFragment, ArrowSource

    if not connector.is_shard and not all(isinstance(s, ArrowSource) for s in connector.sources):
        return None  # listing pieces would run a query or read file footers
    total = 0
    for piece in connector.pieces():
        fragment = piece.fragment
        if not isinstance(fragment, ArrowFragment):
            return None
        stop = piece.stop if piece.stop is not None else fragment.table.num_rows
        total += fragment.table.column(column).slice(piece.start, stop - piece.start).null_count
    return total


def feature_batches(
    connector: DataConnector,
    input_cols: Sequence[str],
    label_col: str | None = None,
    weight_col: str | None = None,
    *,
    batch_size: int = 65_536,
    dtype: Any = np.float32,
    prefetch_tables: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Stream ``(X, y, w)``: a 2-D ``dtype`` feature matrix per batch, labels and weights.

    Only one batch is materialized at a time (the last batch may be shorter); reads are about
    a batch long and one is read ahead: the consumers (matrix builders) are CPU-bound, so
    larger or further reads would only raise peak memory.
    """
    columns = list(dict.fromkeys([*input_cols, *(c for c in (label_col, weight_col) if c)]))
    for batch in connector.to_batches(
        batch_size,
        drop_last_batch=False,
        columns=columns,
        prefetch_tables=prefetch_tables,
        read_rows=batch_size,
    ):
        n = len(batch[columns[0]])
        x = np.empty((n, len(input_cols)), dtype=dtype)
        for j, name in enumerate(input_cols):
            x[:, j] = batch[name]
        y = np.asarray(batch[label_col], dtype=np.float32) if label_col else None
        w = np.asarray(batch[weight_col], dtype=np.float32) if weight_col else None
        yield x, y, w


READ_AHEAD_FRACTION = 0.25
"""Share of the memory available when a worker starts reading that batches read ahead may hold."""


def available_memory() -> int | None:
    """Bytes this process can still allocate: the machine's available memory, or less under a
    cgroup (v2) limit; ``None`` where the platform cannot tell."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            limit = handle.read().strip()
        with open("/sys/fs/cgroup/memory.current") as handle:
            current = int(handle.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - current))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def read_ahead_features(
    connector: DataConnector,
    input_cols: Sequence[str],
    label_col: str | None = None,
    weight_col: str | None = None,
    *,
    batch_size: int = 65_536,
    dtype: Any = np.float32,
    max_bytes: int | None = None,
) -> ReadAhead[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Start :func:`feature_batches` in a background thread now; iterate the result later for
    the same batches. A GBDT worker starts it before importing its framework (1-2 s in a new
    process, holding the GIL mostly while Parquet decoding and numpy copies do not).

    Args:
        connector, input_cols, label_col, weight_col, batch_size, dtype: As for
            :func:`feature_batches`.
        max_bytes: Decoded batches held ahead at most before the consumer begins (default:
            ``READ_AHEAD_FRACTION`` of :func:`available_memory`; at least one batch); past it
            the reader waits. Once the consumer has begun, two batches at most (what it takes,
            it keeps or drops within its own budget: the two never add up).

    Returns:
        The batches, in :func:`feature_batches`' order; ``close()`` it if not read to the end.
    """
    if max_bytes is None:
        max_bytes = int((available_memory() or 0) * READ_AHEAD_FRACTION)
    width = len(input_cols) * np.dtype(dtype).itemsize + 4 * sum(
        1 for c in (label_col, weight_col) if c
    )
    depth = max(1, max_bytes // max(1, width * batch_size))
    batches = feature_batches(
        connector, input_cols, label_col, weight_col, batch_size=batch_size, dtype=dtype
    )
    return ReadAhead(batches, depth=depth, name="mlruntime-read-ahead", then=2)


def table_to_matrix(
    table: pa.Table | pa.RecordBatch,
    columns: Sequence[str],
    dtype: Any = np.float32,
    categories: dict[str, pa.Array] | None = None,
) -> np.ndarray:
    """A 2-D ``dtype`` matrix of ``columns``; categorical columns become the index of their
    value in ``categories[col]`` (NaN when unknown or null)."""
    import pyarrow.compute as pc

    out = np.empty((table.num_rows, len(columns)), dtype=dtype)
    for j, name in enumerate(columns):
        column = table.column(name)
        if categories and name in categories:
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            out[:, j] = column_to_numpy(pc.index_in(column, value_set=categories[name]))
        else:
            out[:, j] = column_to_numpy(column)
    return out
