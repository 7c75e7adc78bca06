"""mlruntime's LightGBM plugin: distributed ``LightGBMEstimator`` on Ray and Dataset adapters.

Importing this package does not import lightgbm; its names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlruntime_lightgbm.__about__ import __version__

if TYPE_CHECKING:
    from mlruntime_lightgbm.adapter import to_lightgbm_dataset as to_lightgbm_dataset
    from mlruntime_lightgbm.estimator import LightGBMEstimator as LightGBMEstimator
    from mlruntime_lightgbm.estimator import LightGBMScalingConfig as LightGBMScalingConfig

_LAZY = {
    "LightGBMEstimator": "mlruntime_lightgbm.estimator",
    "LightGBMScalingConfig": "mlruntime_lightgbm.estimator",
    "to_lightgbm_dataset": "mlruntime_lightgbm.adapter",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlruntime_lightgbm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
