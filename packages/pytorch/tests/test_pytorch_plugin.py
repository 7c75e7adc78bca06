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


def test_snowflakes_legacy_pytorch_names_are_aliases() -> None:
    import mlruntime_pytorch as plugin
    from mlruntime.runtime.context import get_context

    assert plugin.PyTorchTrainer is plugin.PyTorchDistributor
    assert plugin.ScalingConfig is plugin.PyTorchScalingConfig
    assert plugin.getContext is get_context
