"""Helpers every estimator plugin shares: input checks before workers start, feature batches,
and distributed scoring into a Sink (all or nothing)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from mlruntime.connector import DataConnector
from mlruntime.context import get_context
from mlruntime.errors import ColumnError, ConfigError, DataError

__all__ = [
    "BatchPredictor",
    "PeakMemory",
    "as_connector",
    "check_training_columns",
    "feature_batches",
    "is_categorical",
    "load_training_data",
    "parse_param",
    "predict_on_workers",
    "score_to_sink",
    "table_to_matrix",
    "train_command_parser",
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
    check_null_labels: bool = True,
    allow_categorical: bool = False,
) -> list[str]:
    """Check the columns of a training input and return the feature columns.

    ``input_cols=None`` means every column except the label and weight. With
    ``allow_categorical``, string and dictionary features are accepted as categorical.

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
        nulls = sum(
            t.column(0).null_count
            for t in connector.select([label_col])._tables(connector.pieces())
        )
        if nulls:
            raise DataError(
                f"{what}: label column {label_col!r} has {nulls} null value(s); drop or fill "
                "those rows first"
            )
    return features


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


def table_to_matrix(
    table: pa.Table | pa.RecordBatch,
    columns: Sequence[str],
    dtype: Any = np.float32,
    categories: dict[str, pa.Array] | None = None,
) -> np.ndarray:
    """A 2-D ``dtype`` matrix of ``columns``; categorical columns become the index of their
    value in ``categories[col]`` (NaN when unknown or null)."""
    import pyarrow.compute as pc

    from mlruntime.convert import column_to_numpy

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


class BatchPredictor:
    """Base of the picklable ``Arrow table -> numpy`` functions framework plugins score with.

    The model is loaded once per process (:meth:`load`) and run on ``batch_size`` rows at a time
    (:meth:`forward`) of a float32 matrix of ``input_cols``; a single output column comes back
    as a 1-D array. The loaded model is never pickled.

    Args:
        input_cols: Feature columns, in the order the model expects.
        batch_size: Rows per forward pass.
        categories: Categorical columns' values (see :func:`table_to_matrix`).

    Raises:
        ConfigError: If ``batch_size`` is not a positive integer.
    """

    def __init__(
        self,
        input_cols: Sequence[str],
        batch_size: int = 4096,
        categories: dict[str, pa.Array] | None = None,
    ) -> None:
        from mlruntime.batching import check_batch_size

        self.input_cols = list(input_cols)
        self.batch_size = check_batch_size(batch_size)
        self.categories = categories
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    def load(self) -> Any:
        """Build or deserialize the model (called once per process)."""
        raise NotImplementedError

    def forward(self, model: Any, x: np.ndarray) -> Any:
        """The model's outputs for a ``(rows, features)`` float32 matrix."""
        raise NotImplementedError

    def model(self) -> Any:
        """The model, loaded on first use."""
        if self._model is None:
            self._model = self.load()
        return self._model

    def __call__(self, table: pa.Table) -> np.ndarray:
        model = self.model()
        x = table_to_matrix(table, self.input_cols, categories=self.categories)
        step = self.batch_size
        outputs = [np.asarray(self.forward(model, x[i : i + step])) for i in range(0, len(x), step)]
        if not outputs:
            return np.empty(0, dtype=np.float32)
        result = np.concatenate(outputs)
        return result[:, 0] if result.ndim == 2 and result.shape[1] == 1 else result


def _score_shard(
    predict: Callable[[pa.Table], np.ndarray],
    input_cols: list[str],
    key_cols: list[str],
    output_col: str,
    transaction: Any,
) -> int:
    """Runs on a worker: score this rank's shard and stage it as one part."""
    ctx = get_context()
    shard = ctx.get_dataset_map()["data"]
    parts = []
    rows = 0
    cols = list(dict.fromkeys([*input_cols, *key_cols]))
    for table in shard.iter_tables(columns=cols):
        pred = np.asarray(predict(table))
        out: dict[str, Any] = {k: table.column(k) for k in key_cols}
        if pred.ndim == 2:
            out[output_col] = pa.FixedSizeListArray.from_arrays(
                pa.array(pred.reshape(-1)), pred.shape[1]
            )
        else:
            out[output_col] = pa.array(pred)
        parts.append(pa.table(out))
        rows += len(pred)
    if parts:
        transaction.write_part(pa.concat_tables(parts), ctx.get_rank())
    return rows


def score_to_sink(
    launch: Callable[..., Any],
    connector: DataConnector,
    predict: Callable[[pa.Table], np.ndarray],
    input_cols: list[str],
    sink: Any,
    key_cols: Sequence[str] = (),
    output_col: str = "prediction",
) -> Any:
    """Score ``connector`` on every worker and write ``key_cols`` + predictions to ``sink``.

    Each worker reads its shard straight from storage and stages one part; the driver commits
    once, so the sink holds all the predictions or none.

    Args:
        launch: A distributor's ``launch``.
        predict: A picklable function from an Arrow table (input and key columns of some rows)
            to one prediction per row.

    Returns:
        What the sink's commit returns (the folder, table relation or dataset version).

    Raises:
        ColumnError: For unknown key columns.
        WorkerError: If scoring fails on any worker (nothing is written).
    """
    key_cols = list(key_cols)
    missing = [c for c in key_cols if c not in connector.columns]
    if missing:
        raise ColumnError(
            f"key columns {missing} are not in the data; columns are {', '.join(connector.columns)}"
        )
    if output_col in key_cols:
        raise ConfigError(f"output column {output_col!r} clashes with a key column")
    transaction = sink.begin()
    try:
        from functools import partial

        launch(
            partial(_score_shard, predict, input_cols, key_cols, output_col, transaction),
            dataset_map={"data": connector},
        )
        return transaction.commit()
    except BaseException:
        transaction.abort()
        raise


def predict_on_workers(
    predict: Callable[[pa.Table], np.ndarray],
    dataset: Any,
    sink: Any,
    input_cols: Sequence[str],
    *,
    key_cols: Sequence[str] = (),
    output_col: str = "prediction",
    scaling_config: Any = None,
    verbose: bool = True,
    name: str = "inference",
) -> Any:
    """Batch inference for framework plugins: check the inputs, then score ``dataset`` with
    ``predict`` on plain workers (no framework rendezvous) into ``sink``, all or nothing.

    Args:
        predict: A picklable function from an Arrow table to one prediction per row.
        dataset: A DataConnector, frame, DuckDB relation or source.
        sink: A core Sink.
        input_cols: Feature columns (numeric).
        key_cols: Columns written next to the predictions.
        output_col: Name of the prediction column.
        scaling_config: A ScalingConfig or NodeScalingConfig (default: auto).
        verbose: Print phases and a timing summary.
        name: The job's label in progress output.

    Returns:
        What the sink's commit returns.

    Raises:
        ColumnError: Unknown or non-numeric input columns, unknown key columns.
        WorkerError: Scoring failed on a worker (nothing is written).
    """
    from mlruntime.distributor import Distributor

    data = as_connector(dataset, "dataset")
    features = check_training_columns(data, list(input_cols), None, what="dataset")
    distributor = Distributor(scaling_config, verbose=verbose)
    distributor.name = name
    return score_to_sink(
        distributor.launch, data, predict, features, sink, key_cols=key_cols, output_col=output_col
    )


def parse_param(text: str) -> tuple[str, Any]:
    """Parse a ``KEY=VALUE`` CLI parameter; the value is read as JSON when it parses
    (numbers, booleans, lists), else kept as a string.

    Raises:
        argparse.ArgumentTypeError: Without ``=``.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param needs KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def train_command_parser(framework: str, default_objective: str) -> argparse.ArgumentParser:
    """The arguments every ``mlruntime train <framework>`` command shares."""
    parser = argparse.ArgumentParser(
        prog=f"mlruntime train {framework}",
        description=f"Train {framework} on Parquet/CSV files or a warehouse table.",
    )
    parser.add_argument("--data", required=True, help="path, glob, URI, or a table name")
    parser.add_argument("--label", required=True, help="label column")
    parser.add_argument("--features", nargs="+", default=None, help="feature columns")
    parser.add_argument("--workers", type=int, default=-1, help="workers (-1: auto)")
    parser.add_argument("--cpus-per-worker", type=float, default=-1)
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds")
    parser.add_argument("--objective", default=default_objective)
    parser.add_argument(
        "--param",
        action="append",
        type=parse_param,
        default=[],
        metavar="KEY=VALUE",
        help=f"a {framework} parameter (repeatable)",
    )
    parser.add_argument("--database", default=None, help="warehouse file for --data TABLE")
    parser.add_argument("--output", required=True, help="model file to write")
    return parser


def load_training_data(data: str, database: str | None = None) -> DataConnector:
    """A connector over a warehouse table named ``data`` if there is one, else over the
    files/URI ``data``."""
    from mlruntime.session import Session, get_active_session

    session = Session(database) if database else get_active_session()
    if session.has_table(data):
        return DataConnector.from_dataframe(session.table(data))
    return DataConnector.from_sources(data)
