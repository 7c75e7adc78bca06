"""Batch inference: score a DataConnector with a Keras model on every worker into a core Sink.

Each worker reads its own shard straight from storage, runs the model on batches and stages
one part; the driver commits once (all or nothing).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from mlruntime.errors import ConfigError
from mlruntime.training import predict_on_workers, table_to_matrix
from mlruntime_tensorflow.distributor import TFScalingConfig

__all__ = ["KerasPredictor", "batch_inference"]


class KerasPredictor:
    """A picklable ``Arrow table -> numpy`` function around a Keras model.

    The model travels in Keras' ``.keras`` format (custom layers must be registered
    serializables, importable on the workers) and is loaded once per worker.

    Args:
        model: A ``keras.Model``, or a zero-argument factory that builds it on the worker.
        input_cols: Feature columns, stacked into a ``(rows, features)`` float32 matrix.
        batch_size: Rows per forward pass.
    """

    def __init__(self, model: Any, input_cols: list[str], batch_size: int = 4096) -> None:
        import keras

        self.input_cols = input_cols
        self.batch_size = batch_size
        self._model: Any = None
        self._factory: Callable[[], Any] | None = None
        self._blob: bytes | None = None
        if isinstance(model, keras.Model):
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "model.keras")
                model.save(path)
                with open(path, "rb") as handle:
                    self._blob = handle.read()
        else:
            self._factory = model

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    def model(self) -> Any:
        """The model, loaded (once)."""
        if self._model is None:
            if self._blob is not None:
                import keras

                with tempfile.TemporaryDirectory() as folder:
                    path = os.path.join(folder, "model.keras")
                    with open(path, "wb") as handle:
                        handle.write(self._blob)
                    self._model = keras.saving.load_model(path)
            else:
                assert self._factory is not None
                self._model = self._factory()
        return self._model

    def __call__(self, table: pa.Table) -> np.ndarray:
        model = self.model()
        x = table_to_matrix(table, self.input_cols)
        outputs = [
            np.asarray(model(x[start : start + self.batch_size], training=False))
            for start in range(0, len(x), self.batch_size)
        ]
        if not outputs:
            return np.empty(0, dtype=np.float32)
        result = np.concatenate(outputs)
        return result[:, 0] if result.ndim == 2 and result.shape[1] == 1 else result


def batch_inference(
    model: Any,
    dataset: Any,
    sink: Any,
    input_cols: Sequence[str],
    *,
    key_cols: Sequence[str] = (),
    output_col: str = "prediction",
    batch_size: int = 4096,
    scaling_config: TFScalingConfig | None = None,
    verbose: bool = True,
) -> Any:
    """Score ``dataset`` with a Keras ``model`` on every worker and write the outputs to ``sink``.

    Args:
        model: A ``keras.Model`` taking a ``(rows, len(input_cols))`` float32 matrix, or a
            zero-argument function building one on the worker.
        dataset: A DataConnector, frame, DuckDB relation or source.
        sink: A core Sink (``ParquetSink``, ``DuckDBTableSink``, ``DatasetSink``).
        input_cols: Feature columns, in the order the model expects.
        key_cols: Columns copied next to the outputs.
        output_col: Name of the output column (a fixed-size list when the model returns
            several values per row).
        batch_size: Rows per forward pass.
        scaling_config: Workers (default: auto).
        verbose: Print phases and a timing summary.

    Returns:
        What the sink's commit returns.

    Raises:
        ColumnError: Unknown or non-numeric input columns, unknown key columns.
        ConfigError: A model that is neither a Keras model nor callable, a bad ``batch_size``.
        WorkerError: The model failed on a worker (nothing is written).
    """
    if not callable(model):
        raise ConfigError(f"model must be a keras.Model or a factory, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return predict_on_workers(
        KerasPredictor(model, list(input_cols), batch_size),
        dataset,
        sink,
        input_cols,
        key_cols=key_cols,
        output_col=output_col,
        scaling_config=scaling_config or TFScalingConfig(),
        verbose=verbose,
        name="tensorflow-inference",
    )
