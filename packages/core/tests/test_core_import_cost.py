"""``import mlruntime`` stays cheap: no framework and no Ray, checked in a fresh interpreter."""

from __future__ import annotations

from mlruntime.testing import HEAVY_MODULES, imported_modules_after


def test_import_mlruntime_imports_no_framework_and_no_ray() -> None:
    assert imported_modules_after("import mlruntime") == []
    assert {"torch", "tensorflow", "xgboost", "lightgbm", "ray"} <= set(HEAVY_MODULES)


def test_discovering_every_installed_plugin_imports_no_framework() -> None:
    code = """
    import mlruntime
    plugins = mlruntime.list_plugins()
    assert {p.name for p in plugins if p.ok} >= {"xgboost", "lightgbm", "pytorch", "tensorflow"}
    """
    assert imported_modules_after(code) == []


def test_lazy_public_names_resolve() -> None:
    code = """
    import mlruntime
    assert callable(mlruntime.init) and callable(mlruntime.list_plugins)
    assert "DataConnector" not in dir(mlruntime) or mlruntime.DataConnector
    """
    assert imported_modules_after(code) == []
