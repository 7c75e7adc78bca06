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

from mlruntime.errors import ConfigError
from mlruntime.train.inference import BatchPredictor, predict_on_workers
from mlruntime_tensorflow.distributor import TFScalingConfig

__all__ = ["KerasPredictor", "batch_inference"]


class KerasPredictor(BatchPredictor):
    """A picklable ``Arrow table -> numpy`` function around a Keras model.

    The model travels in Keras' ``.keras`` format (custom layers must be registered
    serializables, importable on the workers) and is loaded once per worker.

    Args:
        model: A ``keras.Model``, or a zero-argument factory that builds it on the worker.
        input_cols: Feature columns, stacked into a ``(rows, features)`` float32 matrix.
        batch_size: Rows per forward pass.

    Raises:
        ConfigError: If ``batch_size`` is not a positive integer.
    """

    def __init__(self, model: Any, input_cols: list[str], batch_size: int = 4096) -> None:
        import keras

        super().__init__(input_cols, batch_size)
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

    def load(self) -> Any:
        """The deserialized model (or the factory's)."""
        if self._blob is None:
            assert self._factory is not None
            return self._factory()
        import keras

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.keras")
            with open(path, "wb") as handle:
                handle.write(self._blob)
            return keras.saving.load_model(path)

    def forward(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Outputs of ``model`` on ``x`` in inference mode."""
        return np.asarray(model(x, training=False))


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
