"""The pytorch plugin honours mlruntime's plugin contracts (conformance kit)."""

from __future__ import annotations

from mlruntime.testing import PluginConformance


class TestPytorchPluginConformance(PluginConformance):
    plugin_module = "mlruntime_pytorch.hooks"
    entry_point_name = "pytorch"
    expected = {
        "adapter": ["to_torch_dataset"],
        "distributor": ["PyTorchDistributor", "PyTorchScalingConfig"],
    }
