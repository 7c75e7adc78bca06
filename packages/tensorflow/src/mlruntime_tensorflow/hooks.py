"""Hook module of the TensorFlow plugin (entry point ``tensorflow`` of ``mlruntime.plugins``).

It returns spec records naming lazy targets; the framework is imported by those, never here.
"""

from __future__ import annotations

from mlruntime.plugins.hookspecs import AdapterSpec, DistributorSpec, hookimpl

MLRUNTIME_PLUGIN_API = 1

_REQUIRES = ("tensorflow",)


@hookimpl
def mlruntime_register_adapters() -> list[AdapterSpec]:
    """``DataConnector.to_tf_dataset(batch_size, shuffle=False, ..., label_cols=None)``."""
    return [
        AdapterSpec(
            "to_tf_dataset",
            "mlruntime_tensorflow.dataset:to_tf_dataset",
            requires=_REQUIRES,
            description="tf.data.Dataset of batches typed from the schema ((x, y) with labels)",
        )
    ]


@hookimpl
def mlruntime_register_distributors() -> list[DistributorSpec]:
    """``TensorFlowDistributor`` and ``TFScalingConfig``."""
    return [
        DistributorSpec(
            "TensorFlowDistributor",
            "mlruntime_tensorflow.distributor:TensorFlowDistributor",
            requires=_REQUIRES,
            framework="tensorflow",
            role="distributor",
            description="train_func on every Ray worker with TF_CONFIG (MultiWorkerMirrored)",
        ),
        DistributorSpec(
            "TFScalingConfig",
            "mlruntime_tensorflow.distributor:TFScalingConfig",
            requires=_REQUIRES,
            framework="tensorflow",
            role="config",
        ),
    ]
