"""The tensorflow plugin honours mlruntime's plugin contracts (conformance kit)."""

from __future__ import annotations

from mlruntime.testing import PluginConformance


class TestTensorflowPluginConformance(PluginConformance):
    plugin_module = "mlruntime_tensorflow.hooks"
    entry_point_name = "tensorflow"
    expected = {
        "adapter": ["to_tf_dataset"],
        "distributor": ["TensorFlowDistributor", "TFScalingConfig"],
    }
