"""Hook module of the LightGBM plugin (entry point ``lightgbm`` of ``mlruntime.plugins``).

It returns spec records naming lazy targets; the framework is imported by those, never here.
"""

from __future__ import annotations

from mlruntime.plugins.hookspecs import AdapterSpec, DistributorSpec, hookimpl

MLRUNTIME_PLUGIN_API = 1

_REQUIRES = ("lightgbm",)


@hookimpl
def mlruntime_register_adapters() -> list[AdapterSpec]:
    """``DataConnector.to_lightgbm_dataset(label_col=None, input_cols=None, ...)``."""
    return [
        AdapterSpec(
            "to_lightgbm_dataset",
            "mlruntime_lightgbm.adapter:to_lightgbm_dataset",
            requires=_REQUIRES,
            description="lightgbm.Dataset of the rows (strings as categorical features)",
        )
    ]


@hookimpl
def mlruntime_register_distributors() -> list[DistributorSpec]:
    """``LightGBMEstimator`` and ``LightGBMScalingConfig``."""
    return [
        DistributorSpec(
            "LightGBMEstimator",
            "mlruntime_lightgbm.estimator:LightGBMEstimator",
            requires=_REQUIRES,
            framework="lightgbm",
            role="estimator",
            description="data-parallel LightGBM on Ray (socket network, tree_learner=data|voting)",
        ),
        DistributorSpec(
            "LightGBMScalingConfig",
            "mlruntime_lightgbm.estimator:LightGBMScalingConfig",
            requires=_REQUIRES,
            framework="lightgbm",
            role="config",
        ),
    ]
