"""Hook module of the XGBoost plugin (entry point ``xgboost`` of ``mlruntime.plugins``).

It returns spec records naming lazy targets; the framework is imported by those, never here.
"""

from __future__ import annotations

from mlruntime.plugins.hookspecs import AdapterSpec, DistributorSpec, hookimpl

MLRUNTIME_PLUGIN_API = 1

_REQUIRES = ("xgboost",)


@hookimpl
def mlruntime_register_adapters() -> list[AdapterSpec]:
    """``DataConnector.to_xgboost_dmatrix(label_col=None, input_cols=None, ...)``."""
    return [
        AdapterSpec(
            "to_xgboost_dmatrix",
            "mlruntime_xgboost.adapter:to_xgboost_dmatrix",
            requires=_REQUIRES,
            description="streamed xgboost.QuantileDMatrix (or DMatrix) of the rows",
        )
    ]


@hookimpl
def mlruntime_register_distributors() -> list[DistributorSpec]:
    """``XGBEstimator`` and ``XGBScalingConfig``."""
    return [
        DistributorSpec(
            "XGBEstimator",
            "mlruntime_xgboost.estimator:XGBEstimator",
            requires=_REQUIRES,
            framework="xgboost",
            role="estimator",
            description="data-parallel XGBoost on Ray (xgboost.collective)",
        ),
        DistributorSpec(
            "XGBScalingConfig",
            "mlruntime_xgboost.estimator:XGBScalingConfig",
            requires=_REQUIRES,
            framework="xgboost",
            role="config",
        ),
    ]
