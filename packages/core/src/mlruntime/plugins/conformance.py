"""Conformance kit: base test classes every plugin, first-party or third-party, subclasses.

Example, in a plugin's ``tests/test_my_plugin.py``::

    from mlruntime.testing import PluginConformance

    class TestMyPluginConformance(PluginConformance):
        plugin_module = "mlruntime_my.hooks"
        entry_point_name = "my"

pytest collects the inherited ``test_*`` methods and checks the contracts of DESIGN.md: the plugin
declares the plugin API, its hooks return valid spec records, its hook module imports no heavy
framework, every target it names can be loaded, and its entry point is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
import textwrap
from typing import ClassVar

from mlruntime.plugins.hookspecs import PLUGIN_API_VERSION
from mlruntime.plugins.registry import ENTRY_POINT_GROUP, PluginRegistry

__all__ = ["HEAVY_MODULES", "PluginConformance", "imported_modules_after"]

HEAVY_MODULES = ("torch", "tensorflow", "xgboost", "lightgbm", "ray", "keras", "jax")
"""Modules that must not be imported by ``import mlruntime`` or by any plugin's hook module."""


def imported_modules_after(code: str, candidates: tuple[str, ...] = HEAVY_MODULES) -> list[str]:
    """Run ``code`` in a fresh interpreter and return which of ``candidates`` it imported.

    Args:
        code: Python source to execute.
        candidates: Top-level module names to look for in ``sys.modules`` afterwards.

    Raises:
        AssertionError: If the code fails to run.
    """
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json as _json, sys as _sys
        print("MLRUNTIME-PROBE" + _json.dumps(sorted(m for m in {list(candidates)!r}
                                                     if m in _sys.modules)))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"probe failed:\n{proc.stdout}\n{proc.stderr}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MLRUNTIME-PROBE")][-1]
    return list(json.loads(line.removeprefix("MLRUNTIME-PROBE")))


class PluginConformance:
    """Base class of plugin conformance tests; set the class attributes in a subclass.

    Attributes:
        plugin_module: Import name of the plugin's hook module.
        entry_point_name: Its name in the ``mlruntime.plugins`` group (``None`` skips that check).
        expected: Names the plugin must provide, by kind, e.g. ``{"adapter": ["to_x"]}``.
    """

    plugin_module: ClassVar[str] = ""
    entry_point_name: ClassVar[str | None] = None
    expected: ClassVar[dict[str, list[str]]] = {}

    def _registry(self) -> tuple[PluginRegistry, str]:
        registry = PluginRegistry(discover=False)
        module = importlib.import_module(self.plugin_module)
        info = registry.register(module, name=self.entry_point_name or self.plugin_module)
        assert info.ok, f"plugin {self.plugin_module} is {info.status}: {info.reason}"
        return registry, info.name

    def test_declares_current_plugin_api(self) -> None:
        module = importlib.import_module(self.plugin_module)
        assert getattr(module, "MLRUNTIME_PLUGIN_API", None) == PLUGIN_API_VERSION

    def test_hooks_return_valid_specs(self) -> None:
        registry, name = self._registry()
        info = next(p for p in registry.plugins() if p.name == name)
        unknown = [w for w in info.warnings if "unknown hook" in w]
        assert not unknown, unknown
        for kind, names in self.expected.items():
            provided = set(info.provides.get(kind, []))
            assert set(names) <= provided, f"{kind}: expected {names}, provides {sorted(provided)}"

    def test_hook_module_imports_no_heavy_framework(self) -> None:
        imported = imported_modules_after(
            f"""
            from mlruntime.plugins.registry import PluginRegistry
            import {self.plugin_module} as hooks
            registry = PluginRegistry(discover=False)
            info = registry.register(hooks)
            assert info.ok, info.reason
            """
        )
        assert imported == [], f"{self.plugin_module} imports {imported} at registration"

    def test_every_target_loads(self) -> None:
        registry, _ = self._registry()
        for kind in ("adapter", "distributor", "source", "sink", "command"):
            for key, spec in registry.specs(kind).items():
                if spec.missing_requirements():
                    continue  # the framework is not installed here; nothing to load
                obj = registry.load(kind, key)
                assert callable(obj), f"{kind} {key!r} -> {obj!r} is not callable"

    def test_entry_point_is_installed(self) -> None:
        if self.entry_point_name is None:
            return
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        values = {ep.name: ep.value for ep in eps}
        assert values.get(self.entry_point_name) == self.plugin_module, (
            f"entry point {self.entry_point_name!r} not installed; found {values}"
        )
