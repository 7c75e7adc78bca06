"""Batch inference: score a DataConnector with a torch model on every worker into a core Sink.

Each worker reads its own shard straight from storage, runs the model on batches in
``torch.inference_mode``, and stages one part; the driver commits once (all or nothing).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mlruntime.errors import ConfigError
from mlruntime.train.inference import BatchPredictor, predict_on_workers
from mlruntime_pytorch.distributor import PyTorchScalingConfig

__all__ = ["batch_inference"]


class TorchPredictor(BatchPredictor):
    """A picklable ``Arrow table -> numpy`` function around a torch model.

    The model travels as ``torch.save`` bytes of the whole module (its class must be importable
    on the workers, or defined in ``__main__``/a notebook) and is loaded once per worker.

    Args:
        model: An ``nn.Module`` (or any callable on a float tensor), or a zero-argument factory
            that builds it on the worker.
        input_cols: Feature columns, stacked into a ``(rows, features)`` float32 tensor.
        batch_size: Rows per forward pass.

    Raises:
        ConfigError: If ``batch_size`` is not a positive integer.
    """

    def __init__(self, model: Any, input_cols: list[str], batch_size: int = 4096) -> None:
        super().__init__(input_cols, batch_size)
        self._blob: bytes | None = None
        self._factory: Callable[[], Any] | None = None
        if isinstance(model, torch.nn.Module):
            buffer = io.BytesIO()
            torch.save(model, buffer)
            self._blob = buffer.getvalue()
        else:
            self._factory = model

    def load(self) -> Any:
        """The model in eval mode."""
        if self._blob is not None:
            model = torch.load(io.BytesIO(self._blob), weights_only=False)
        else:
            assert self._factory is not None
            model = self._factory()
        if isinstance(model, torch.nn.Module):
            model.eval()
        return model

    def forward(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Outputs of ``model`` on ``x`` under ``torch.inference_mode``."""
        with torch.inference_mode():
            out = model(torch.from_numpy(x))
        return np.asarray(out.detach().float().cpu().numpy())


def batch_inference(
    model: Any,
    dataset: Any,
    sink: Any,
    input_cols: Sequence[str],
    *,
    key_cols: Sequence[str] = (),
    output_col: str = "prediction",
    batch_size: int = 4096,
    scaling_config: PyTorchScalingConfig | None = None,
    verbose: bool = True,
) -> Any:
    """Score ``dataset`` with ``model`` on every worker and write the outputs to ``sink``.

    Args:
        model: A ``torch.nn.Module`` taking a ``(rows, len(input_cols))`` float32 tensor, or a
            zero-argument function building one on the worker (e.g. loading weights).
        dataset: A DataConnector, frame, DuckDB relation or source.
        sink: A core Sink (``ParquetSink``, ``DuckDBTableSink``, ``DatasetSink``).
        input_cols: Feature columns, in the order the model expects.
        key_cols: Columns copied next to the outputs (ids, for joining back).
        output_col: Name of the output column (one value per row, or a fixed-size list when
            the model returns several).
        batch_size: Rows per forward pass.
        scaling_config: Workers (default: auto).
        verbose: Print phases and a timing summary.

    Returns:
        What the sink's commit returns (folder, table relation or dataset version).

    Raises:
        ColumnError: Unknown or non-numeric input columns, unknown key columns.
        ConfigError: A model that is neither a module nor callable, a bad ``batch_size``.
        WorkerError: The model failed on a worker (nothing is written).
    """
    if not callable(model):
        raise ConfigError(
            f"model must be a torch.nn.Module or a factory, got {type(model).__name__}"
        )
    return predict_on_workers(
        TorchPredictor(model, list(input_cols), batch_size),
        dataset,
        sink,
        input_cols,
        key_cols=key_cols,
        output_col=output_col,
        scaling_config=scaling_config or PyTorchScalingConfig(),
        verbose=verbose,
        name="pytorch-inference",
    )
