"""mlruntime: tables to training data, and distributed XGBoost, LightGBM, PyTorch and TensorFlow.

``import mlruntime`` is cheap: it imports no framework and not Ray. Public names are resolved on
first access (PEP 562), so ``mlruntime.DataConnector`` imports only the data layer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlruntime.__about__ import __version__

if TYPE_CHECKING:
    from mlruntime.hookspecs import hookimpl as hookimpl
    from mlruntime.plugins import list_plugins as list_plugins
    from mlruntime.runtime import cluster_resources as cluster_resources
    from mlruntime.runtime import get_nodes as get_nodes
    from mlruntime.runtime import init as init
    from mlruntime.runtime import is_initialized as is_initialized
    from mlruntime.runtime import shutdown as shutdown

_LAZY: dict[str, str] = {
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
