"""The xgboost plugin honours mlruntime's plugin contracts (conformance kit)."""

from __future__ import annotations

from mlruntime.testing import PluginConformance


class TestXgboostPluginConformance(PluginConformance):
    plugin_module = "mlruntime_xgboost.hooks"
    entry_point_name = "xgboost"
    expected = {
        "adapter": ["to_xgboost_dmatrix"],
        "distributor": ["XGBEstimator", "XGBScalingConfig"],
    }
