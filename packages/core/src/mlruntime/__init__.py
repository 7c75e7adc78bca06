"""mlruntime: tables to training data, and distributed XGBoost, LightGBM, PyTorch and TensorFlow.

``import mlruntime`` is cheap: it imports no framework and not Ray. Public names are resolved on
first access (PEP 562), so ``mlruntime.DataConnector`` imports only the data layer.

The layers, each importing only those before it: ``data`` (sources, DataConnector) ->
``store`` (warehouse, datasets, sinks) -> ``runtime`` (cluster, scaling, workers, distributor)
-> ``train`` (what trainers share); ``plugins`` (registry, conformance kit) and ``cli`` on the
side. See docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlruntime.__about__ import __version__
from mlruntime.store import catalog as _catalog  # noqa: F401  (installs the store for the data layer)

if TYPE_CHECKING:
    from mlruntime.data.connector import DataConnector as DataConnector
    from mlruntime.data.connector import ShardedDataConnector as ShardedDataConnector
    from mlruntime.data.ingest import DataIngestor as DataIngestor
    from mlruntime.data.sources import ArrowSource as ArrowSource
    from mlruntime.data.sources import CSVSource as CSVSource
    from mlruntime.data.sources import ParquetSource as ParquetSource
    from mlruntime.plugins.hookspecs import hookimpl as hookimpl
    from mlruntime.plugins.registry import list_plugins as list_plugins
    from mlruntime.runtime.cluster import cluster_resources as cluster_resources
    from mlruntime.runtime.cluster import get_nodes as get_nodes
    from mlruntime.runtime.cluster import init as init
    from mlruntime.runtime.cluster import is_initialized as is_initialized
    from mlruntime.runtime.cluster import scale_cluster as scale_cluster
    from mlruntime.runtime.cluster import shutdown as shutdown
    from mlruntime.runtime.context import Checkpoint as Checkpoint
    from mlruntime.runtime.context import Context as Context
    from mlruntime.runtime.context import get_context as get_context
    from mlruntime.runtime.distributor import Backend as Backend
    from mlruntime.runtime.distributor import Distributor as Distributor
    from mlruntime.runtime.distributor import Result as Result
    from mlruntime.runtime.packages import worker_packages as worker_packages
    from mlruntime.runtime.ray_data import RayDataIngester as RayDataIngester
    from mlruntime.runtime.scaling import FailureConfig as FailureConfig
    from mlruntime.runtime.scaling import NodeScalingConfig as NodeScalingConfig
    from mlruntime.runtime.scaling import ScalingConfig as ScalingConfig
    from mlruntime.runtime.scaling import WorkerResourceConfig as WorkerResourceConfig
    from mlruntime.runtime.workers import WorkerGroup as WorkerGroup
    from mlruntime.store.dataframe import DataFrame as DataFrame
    from mlruntime.store.dataframe import DataFrameWriter as DataFrameWriter
    from mlruntime.store.datasets import Dataset as Dataset
    from mlruntime.store.datasets import DatasetReader as DatasetReader
    from mlruntime.store.datasets import create_from_dataframe as create_from_dataframe
    from mlruntime.store.datasets import delete_version as delete_version
    from mlruntime.store.datasets import list_datasets as list_datasets
    from mlruntime.store.datasets import list_versions as list_versions
    from mlruntime.store.datasets import load_dataset as load_dataset
    from mlruntime.store.row import Row as Row
    from mlruntime.store.session import Session as Session
    from mlruntime.store.session import get_active_session as get_active_session
    from mlruntime.store.sinks import DatasetSink as DatasetSink
    from mlruntime.store.sinks import DuckDBTableSink as DuckDBTableSink
    from mlruntime.store.sinks import ParquetSink as ParquetSink
    from mlruntime.train.train_func import TrainFuncDistributor as TrainFuncDistributor

_LAZY: dict[str, str] = {
    "DataConnector": "mlruntime.data.connector",
    "ShardedDataConnector": "mlruntime.data.connector",
    "DataIngestor": "mlruntime.data.ingest",
    "RayDataIngester": "mlruntime.runtime.ray_data",
    "DatasetReader": "mlruntime.store.datasets",
    "Checkpoint": "mlruntime.runtime.context",
    "Context": "mlruntime.runtime.context",
    "get_context": "mlruntime.runtime.context",
    "Backend": "mlruntime.runtime.distributor",
    "Distributor": "mlruntime.runtime.distributor",
    "Result": "mlruntime.runtime.distributor",
    "FailureConfig": "mlruntime.runtime.scaling",
    "NodeScalingConfig": "mlruntime.runtime.scaling",
    "TrainFuncDistributor": "mlruntime.train.train_func",
    "ScalingConfig": "mlruntime.runtime.scaling",
    "WorkerResourceConfig": "mlruntime.runtime.scaling",
    "WorkerGroup": "mlruntime.runtime.workers",
    "Dataset": "mlruntime.store.datasets",
    "DataFrame": "mlruntime.store.dataframe",
    "DataFrameWriter": "mlruntime.store.dataframe",
    "Row": "mlruntime.store.row",
    "create_from_dataframe": "mlruntime.store.datasets",
    "delete_version": "mlruntime.store.datasets",
    "list_datasets": "mlruntime.store.datasets",
    "list_versions": "mlruntime.store.datasets",
    "load_dataset": "mlruntime.store.datasets",
    "Session": "mlruntime.store.session",
    "get_active_session": "mlruntime.store.session",
    "DatasetSink": "mlruntime.store.sinks",
    "DuckDBTableSink": "mlruntime.store.sinks",
    "ParquetSink": "mlruntime.store.sinks",
    "ArrowSource": "mlruntime.data.sources",
    "CSVSource": "mlruntime.data.sources",
    "ParquetSource": "mlruntime.data.sources",
    "hookimpl": "mlruntime.plugins.hookspecs",
    "list_plugins": "mlruntime.plugins.registry",
    "init": "mlruntime.runtime.cluster",
    "shutdown": "mlruntime.runtime.cluster",
    "is_initialized": "mlruntime.runtime.cluster",
    "get_nodes": "mlruntime.runtime.cluster",
    "scale_cluster": "mlruntime.runtime.cluster",
    "worker_packages": "mlruntime.runtime.packages",
    "cluster_resources": "mlruntime.runtime.cluster",
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
