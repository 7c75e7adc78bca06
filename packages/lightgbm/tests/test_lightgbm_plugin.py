"""The lightgbm plugin honours mlruntime's plugin contracts (conformance kit)."""

from __future__ import annotations

from mlruntime.testing import PluginConformance


class TestLightgbmPluginConformance(PluginConformance):
    plugin_module = "mlruntime_lightgbm.hooks"
    entry_point_name = "lightgbm"
    expected = {
        "adapter": ["to_lightgbm_dataset"],
        "distributor": ["LightGBMEstimator", "LightGBMScalingConfig"],
    }
