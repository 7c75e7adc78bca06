"""Each framework's import cost stays inside its own plugin: importing the plugin packages
imports no framework, and using one framework's adapter imports no other framework."""

from __future__ import annotations

from mlruntime.testing import imported_modules_after

PLUGINS = "import mlruntime_xgboost, mlruntime_lightgbm, mlruntime_pytorch, mlruntime_tensorflow"


def test_plugin_packages_import_no_framework() -> None:
    assert imported_modules_after(PLUGINS) == []


def test_the_torch_path_never_imports_tensorflow() -> None:
    code = f"""
    {PLUGINS}
    import pyarrow as pa
    from mlruntime import DataConnector
    dc = DataConnector.from_dataframe(pa.table({{"x": [1.0, 2.0, 3.0, 4.0]}}))
    assert len(list(dc.to_torch_dataset(batch_size=2))) == 2
    """
    assert imported_modules_after(code, ("tensorflow", "keras", "xgboost", "lightgbm")) == []


def test_the_tf_path_never_imports_torch() -> None:
    code = f"""
    {PLUGINS}
    import pyarrow as pa
    from mlruntime import DataConnector
    dc = DataConnector.from_dataframe(pa.table({{"x": [1.0, 2.0, 3.0, 4.0]}}))
    assert len(list(dc.to_tf_dataset(batch_size=2))) == 2
    """
    assert imported_modules_after(code, ("torch", "xgboost", "lightgbm")) == []
