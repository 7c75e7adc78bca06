"""mlruntime's PyTorch plugin: ``PyTorchDistributor`` (DDP on Ray), ``to_torch_dataset`` and
batch inference into a Sink.

Importing this package does not import torch; its names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlruntime_pytorch.__about__ import __version__

if TYPE_CHECKING:
    from mlruntime.runtime.context import get_context as get_context
    from mlruntime.runtime.scaling import FailureConfig as FailureConfig
    from mlruntime.runtime.scaling import WorkerResourceConfig as WorkerResourceConfig
    from mlruntime_pytorch.dataset import TorchDataset as TorchDataset
    from mlruntime_pytorch.dataset import to_torch_dataset as to_torch_dataset
    from mlruntime_pytorch.distributor import PyTorchDistributor as PyTorchDistributor
    from mlruntime_pytorch.distributor import PyTorchScalingConfig as PyTorchScalingConfig
    from mlruntime_pytorch.inference import batch_inference as batch_inference

_LAZY = {
    "PyTorchDistributor": "mlruntime_pytorch.distributor",
    "PyTorchScalingConfig": "mlruntime_pytorch.distributor",
    "TorchDataset": "mlruntime_pytorch.dataset",
    "to_torch_dataset": "mlruntime_pytorch.dataset",
    "batch_inference": "mlruntime_pytorch.inference",
    "WorkerResourceConfig": "mlruntime.runtime.scaling",
    "FailureConfig": "mlruntime.runtime.scaling",
    "get_context": "mlruntime.runtime.context",
}

# Snowflake's legacy ``snowflake.ml.modeling.pytorch`` names, for notebooks written against it.
_ALIASES = {
    "PyTorchTrainer": ("mlruntime_pytorch.distributor", "PyTorchDistributor"),
    "ScalingConfig": ("mlruntime_pytorch.distributor", "PyTorchScalingConfig"),
    "getContext": ("mlruntime.runtime.context", "get_context"),
}

__all__ = ["__version__", *_LAZY, *_ALIASES]


def __getattr__(name: str) -> Any:
    if name in _ALIASES:
        module_name, target = _ALIASES[name]
        return getattr(importlib.import_module(module_name), target)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlruntime_pytorch' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
