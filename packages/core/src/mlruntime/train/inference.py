"""Batch inference every trainer shares: a picklable batch predictor, and scoring on every
worker into a Sink, all or nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from mlruntime.data.batching import check_batch_size
from mlruntime.data.connector import DataConnector, ShardedDataConnector
from mlruntime.errors import ColumnError, ConfigError
from mlruntime.runtime.cluster import check_storage_reachable
from mlruntime.runtime.context import get_context
from mlruntime.runtime.distributor import Distributor
from mlruntime.train.features import as_connector, check_training_columns, table_to_matrix

__all__ = ["BatchPredictor", "predict_on_workers", "score_to_sink"]


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


def _check_sink_reachable(sink: Any, staging: Any) -> None:
    """Fail before any worker starts if other nodes cannot write where ``sink`` stages."""
    if not isinstance(staging, str):
        return
    try:
        check_storage_reachable(staging)  # connects to Ray if needed
    except ConfigError as exc:
        from mlruntime.store.sinks import ParquetSink

        hint = ""
        if isinstance(sink, ParquetSink):
            hint = (
                ". A ParquetSink stages next to its folder: write to a folder every node "
                "reaches (s3://bucket/folder, a shared mount)"
            )
        raise ConfigError(
            f"{sink!r} stages the workers' parts in {staging!r}, which not every node can "
            f"reach: {exc}{hint}"
        ) from exc


def score_to_sink(
    run: Callable[..., Any],
    connector: DataConnector,
    predict: Callable[[pa.Table], np.ndarray],
    input_cols: list[str],
    sink: Any,
    key_cols: Sequence[str] = (),
    output_col: str = "prediction",
) -> Any:
    """Score ``connector`` on every worker and write ``key_cols`` + predictions to ``sink``.

    Each worker reads its shard straight from storage and stages one part where the sink
    stages (on storage every node must reach); the driver commits once, so the sink holds all
    the predictions or none.

    Args:
        run: A distributor's ``run``.
        predict: A picklable function from an Arrow table (input and key columns of some rows)
            to one prediction per row.

    Returns:
        What the sink's commit returns (the folder, table relation or dataset version).

    Raises:
        ColumnError: For unknown key columns.
        ConfigError: If the sink stages in a folder of the driver's machine that other nodes
            of the cluster cannot see (before any worker starts; nothing is written).
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
        _check_sink_reachable(sink, getattr(transaction, "staging", None))
        run(
            partial(_score_shard, predict, input_cols, key_cols, output_col, transaction),
            dataset_map={"data": ShardedDataConnector(connector, equal=False)},
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
    data = as_connector(dataset, "dataset")
    features = check_training_columns(data, list(input_cols), None, what="dataset")
    distributor = Distributor(scaling_config, verbose=verbose)
    distributor.name = name
    return score_to_sink(
        distributor.run, data, predict, features, sink, key_cols=key_cols, output_col=output_col
    )
