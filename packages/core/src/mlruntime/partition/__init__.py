"""Per-partition processing and many-model training (Snowflake's DPF and many-model API).

``DPF(func).run(partition_by, data, run_id)`` calls ``func(data_connector, context)`` on every
partition, in Ray tasks; ``ManyModelTraining`` / ``ManyModelInference`` train and use one model
per partition. Runs live on mlruntime's storage: they resume, and any process reads their
status (``DPFRun.restore(run_id)``, ``mlruntime runs show RUN_ID``). Importing this package
imports neither Ray nor a framework: names are resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlruntime.partition.context import ArtifactManager as ArtifactManager
    from mlruntime.partition.context import PartitionContext as PartitionContext
    from mlruntime.partition.dpf import DPF as DPF
    from mlruntime.partition.entities import ExecutionOptions as ExecutionOptions
    from mlruntime.partition.entities import PartitionStatus as PartitionStatus
    from mlruntime.partition.entities import RunStatus as RunStatus
    from mlruntime.partition.many_model import ManyModelInference as ManyModelInference
    from mlruntime.partition.many_model import ManyModelRun as ManyModelRun
    from mlruntime.partition.many_model import ManyModelTraining as ManyModelTraining
    from mlruntime.partition.run import DPFRun as DPFRun
    from mlruntime.partition.run import PartitionDetails as PartitionDetails
    from mlruntime.partition.serde import KerasSerde as KerasSerde
    from mlruntime.partition.serde import LightGBMSerde as LightGBMSerde
    from mlruntime.partition.serde import ModelSerde as ModelSerde
    from mlruntime.partition.serde import PickleSerde as PickleSerde
    from mlruntime.partition.serde import TensorFlowSerde as TensorFlowSerde
    from mlruntime.partition.serde import TorchSerde as TorchSerde
    from mlruntime.partition.serde import XGBoostSerde as XGBoostSerde

_LAZY: dict[str, str] = {
    "ArtifactManager": "mlruntime.partition.context",
    "PartitionContext": "mlruntime.partition.context",
    "DPF": "mlruntime.partition.dpf",
    "ExecutionOptions": "mlruntime.partition.entities",
    "PartitionStatus": "mlruntime.partition.entities",
    "RunStatus": "mlruntime.partition.entities",
    "ManyModelInference": "mlruntime.partition.many_model",
    "ManyModelRun": "mlruntime.partition.many_model",
    "ManyModelTraining": "mlruntime.partition.many_model",
    "DPFRun": "mlruntime.partition.run",
    "PartitionDetails": "mlruntime.partition.run",
    "KerasSerde": "mlruntime.partition.serde",
    "LightGBMSerde": "mlruntime.partition.serde",
    "ModelSerde": "mlruntime.partition.serde",
    "PickleSerde": "mlruntime.partition.serde",
    "TensorFlowSerde": "mlruntime.partition.serde",
    "TorchSerde": "mlruntime.partition.serde",
    "XGBoostSerde": "mlruntime.partition.serde",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlruntime.partition' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
