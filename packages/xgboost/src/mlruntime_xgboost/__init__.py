"""mlruntime's XGBoost plugin: distributed ``XGBEstimator`` on Ray and DMatrix adapters.

Importing this package does not import xgboost; ``XGBEstimator`` and friends load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlruntime_xgboost.__about__ import __version__

if TYPE_CHECKING:
    from mlruntime_xgboost.adapter import to_xgboost_dmatrix as to_xgboost_dmatrix
    from mlruntime_xgboost.estimator import XGBEstimator as XGBEstimator
    from mlruntime_xgboost.estimator import XGBScalingConfig as XGBScalingConfig

_LAZY = {
    "XGBEstimator": "mlruntime_xgboost.estimator",
    "XGBScalingConfig": "mlruntime_xgboost.estimator",
    "to_xgboost_dmatrix": "mlruntime_xgboost.adapter",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlruntime_xgboost' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
