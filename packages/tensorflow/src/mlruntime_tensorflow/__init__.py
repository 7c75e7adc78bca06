"""mlruntime's TensorFlow plugin: ``TensorFlowDistributor`` (MultiWorkerMirroredStrategy on
Ray), ``to_tf_dataset`` and batch inference of Keras models into a Sink.

Importing this package does not import tensorflow; its names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlruntime_tensorflow.__about__ import __version__

if TYPE_CHECKING:
    from mlruntime.runtime.context import get_context as get_context
    from mlruntime.runtime.scaling import FailureConfig as FailureConfig
    from mlruntime.runtime.scaling import WorkerResourceConfig as WorkerResourceConfig
    from mlruntime_tensorflow.dataset import to_tf_dataset as to_tf_dataset
    from mlruntime_tensorflow.distributor import TensorFlowDistributor as TensorFlowDistributor
    from mlruntime_tensorflow.distributor import TFScalingConfig as TFScalingConfig
    from mlruntime_tensorflow.inference import batch_inference as batch_inference

_LAZY = {
    "TensorFlowDistributor": "mlruntime_tensorflow.distributor",
    "TFScalingConfig": "mlruntime_tensorflow.distributor",
    "to_tf_dataset": "mlruntime_tensorflow.dataset",
    "batch_inference": "mlruntime_tensorflow.inference",
    "WorkerResourceConfig": "mlruntime.runtime.scaling",
    "FailureConfig": "mlruntime.runtime.scaling",
    "get_context": "mlruntime.runtime.context",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlruntime_tensorflow' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
