"""mlruntime: tables to training data, and distributed XGBoost, LightGBM, PyTorch and TensorFlow.

``import mlruntime`` is cheap: it imports no framework and not Ray. Public names are resolved on
first access (PEP 562), so ``mlruntime.DataConnector`` imports only the data layer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlruntime.__about__ import __version__

if TYPE_CHECKING:
    from mlruntime.connector import DataConnector as DataConnector
    from mlruntime.connector import ShardedDataConnector as ShardedDataConnector
    from mlruntime.context import Checkpoint as Checkpoint
    from mlruntime.context import Context as Context
    from mlruntime.context import get_context as get_context
    from mlruntime.dataset import Dataset as Dataset
    from mlruntime.dataset import create_from_dataframe as create_from_dataframe
    from mlruntime.dataset import delete_version as delete_version
    from mlruntime.dataset import list_datasets as list_datasets
    from mlruntime.dataset import list_versions as list_versions
    from mlruntime.dataset import load_dataset as load_dataset
    from mlruntime.distributor import Backend as Backend
    from mlruntime.distributor import Distributor as Distributor
    from mlruntime.distributor import Result as Result
    from mlruntime.hookspecs import hookimpl as hookimpl
    from mlruntime.plugins import list_plugins as list_plugins
    from mlruntime.runtime import cluster_resources as cluster_resources
    from mlruntime.runtime import get_nodes as get_nodes
    from mlruntime.runtime import init as init
    from mlruntime.runtime import is_initialized as is_initialized
    from mlruntime.runtime import shutdown as shutdown
    from mlruntime.scaling import FailureConfig as FailureConfig
    from mlruntime.scaling import NodeScalingConfig as NodeScalingConfig
    from mlruntime.scaling import ScalingConfig as ScalingConfig
    from mlruntime.scaling import WorkerResourceConfig as WorkerResourceConfig
    from mlruntime.session import Session as Session
    from mlruntime.session import get_active_session as get_active_session
    from mlruntime.sinks import DatasetSink as DatasetSink
    from mlruntime.sinks import DuckDBTableSink as DuckDBTableSink
    from mlruntime.sinks import ParquetSink as ParquetSink
    from mlruntime.sources import ArrowSource as ArrowSource
    from mlruntime.sources import CSVSource as CSVSource
    from mlruntime.sources import ParquetSource as ParquetSource
    from mlruntime.train_func import TrainFuncDistributor as TrainFuncDistributor
    from mlruntime.workers import WorkerGroup as WorkerGroup

_LAZY: dict[str, str] = {
    "DataConnector": "mlruntime.connector",
    "ShardedDataConnector": "mlruntime.connector",
    "Checkpoint": "mlruntime.context",
    "Context": "mlruntime.context",
    "get_context": "mlruntime.context",
    "Backend": "mlruntime.distributor",
    "Distributor": "mlruntime.distributor",
    "Result": "mlruntime.distributor",
    "FailureConfig": "mlruntime.scaling",
    "NodeScalingConfig": "mlruntime.scaling",
    "TrainFuncDistributor": "mlruntime.train_func",
    "ScalingConfig": "mlruntime.scaling",
    "WorkerResourceConfig": "mlruntime.scaling",
    "WorkerGroup": "mlruntime.workers",
    "Dataset": "mlruntime.dataset",
    "create_from_dataframe": "mlruntime.dataset",
    "delete_version": "mlruntime.dataset",
    "list_datasets": "mlruntime.dataset",
    "list_versions": "mlruntime.dataset",
    "load_dataset": "mlruntime.dataset",
    "Session": "mlruntime.session",
    "get_active_session": "mlruntime.session",
    "DatasetSink": "mlruntime.sinks",
    "DuckDBTableSink": "mlruntime.sinks",
    "ParquetSink": "mlruntime.sinks",
    "ArrowSource": "mlruntime.sources",
    "CSVSource": "mlruntime.sources",
    "ParquetSource": "mlruntime.sources",
    "hookimpl": "mlruntime.hookspecs",
    "list_plugins": "mlruntime.plugins",
    "init": "mlruntime.runtime",
    "shutdown": "mlruntime.runtime",
    "is_initialized": "mlruntime.runtime",
    "get_nodes": "mlruntime.runtime",
    "cluster_resources": "mlruntime.runtime",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlruntime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
