"""Hook module of the PyTorch plugin, registered under the ``mlruntime.plugins`` entry point.

It returns spec records naming lazy targets; the framework is imported by those, never here.
"""

from __future__ import annotations

from mlruntime.plugins.hookspecs import AdapterSpec, DistributorSpec, hookimpl

MLRUNTIME_PLUGIN_API = 1

_REQUIRES = ("torch",)


@hookimpl
def mlruntime_register_adapters() -> list[AdapterSpec]:
    """``DataConnector.to_torch_dataset(batch_size=None, shuffle=False, ...)``."""
    return [
        AdapterSpec(
            "to_torch_dataset",
            "mlruntime_pytorch.dataset:to_torch_dataset",
            requires=_REQUIRES,
            description="torch IterableDataset of dicts of column -> tensor (rows or batches)",
        )
    ]


@hookimpl
def mlruntime_register_distributors() -> list[DistributorSpec]:
    """``PyTorchDistributor`` and ``PyTorchScalingConfig``."""
    return [
        DistributorSpec(
            "PyTorchDistributor",
            "mlruntime_pytorch.distributor:PyTorchDistributor",
            requires=_REQUIRES,
            framework="pytorch",
            role="distributor",
            description="DDP train_func on every Ray worker (gloo on CPU, nccl on GPU)",
        ),
        DistributorSpec(
            "PyTorchScalingConfig",
            "mlruntime_pytorch.distributor:PyTorchScalingConfig",
            requires=_REQUIRES,
            framework="pytorch",
            role="config",
        ),
    ]
