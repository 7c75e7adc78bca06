"""Plugin discovery and lookup: loads the ``mlruntime.plugins`` entry points once, lazily.

A plugin that fails to import, declares an incompatible plugin API or raises in a hook is skipped
with a :class:`~mlruntime.errors.PluginWarning` and reported by :func:`list_plugins`; it never
breaks ``import mlruntime`` or the other plugins.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from mlruntime._env import env_flag
from mlruntime.errors import PluginError, PluginNotFoundError, PluginWarning
from mlruntime.plugins.hookspecs import (
    HOOK_SPEC_TYPES,
    PLUGIN_API_VERSION,
    PROJECT_NAME,
    AdapterSpec,
    CommandSpec,
    DistributorSpec,
    MLRuntimeHookSpecs,
    SinkSpec,
    SourceSpec,
    Spec,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "FIRST_PARTY_EXTRAS",
    "PluginInfo",
    "PluginRegistry",
    "get_registry",
    "list_plugins",
    "load_adapter",
    "reset_registry",
]

ENTRY_POINT_GROUP = "mlruntime.plugins"
"""The entry-point group plugins register their hook module under."""

DISABLE_ENV = "MLRUNTIME_DISABLE_PLUGINS"
"""Comma-separated plugin names to skip, e.g. ``MLRUNTIME_DISABLE_PLUGINS=tensorflow``."""

FIRST_PARTY_EXTRAS: dict[str, str] = {
    "to_xgboost_dmatrix": "xgboost",
    "to_xgboost_quantile_dmatrix": "xgboost",
    "XGBEstimator": "xgboost",
    "XGBScalingConfig": "xgboost",
    "to_lightgbm_dataset": "lightgbm",
    "LightGBMEstimator": "lightgbm",
    "LightGBMScalingConfig": "lightgbm",
    "to_torch_dataset": "pytorch",
    "PyTorchDistributor": "pytorch",
    "PyTorchScalingConfig": "pytorch",
    "to_tf_dataset": "tensorflow",
    "TensorFlowDistributor": "tensorflow",
    "TFScalingConfig": "tensorflow",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "pytorch": "pytorch",
    "tensorflow": "tensorflow",
}
"""First-party names and the ``mlruntime[...]`` extra that provides them (for install hints)."""

_KIND_BY_HOOK = {hook: spec_type.kind for hook, spec_type in HOOK_SPEC_TYPES.items()}


@dataclass
class PluginInfo:
    """What is known about one plugin, whether it loaded or not.

    Attributes:
        name: The entry-point name (or the name given to :meth:`PluginRegistry.register`).
        module: The hook module, as the entry point names it.
        distribution: The installed distribution that declared it, if any.
        version: That distribution's version.
        status: ``"ok"``, ``"broken"`` (import or hook failed), ``"incompatible"`` (plugin API
            mismatch) or ``"disabled"`` (listed in ``MLRUNTIME_DISABLE_PLUGINS``).
        reason: Why it is not ok (empty when ok).
        provides: Names provided, by kind (``"adapter"``, ``"distributor"``, ...).
        warnings: Non-fatal problems: missing framework, name conflicts, unknown hooks.
        api_version: The plugin API version it declared.
    """

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    status: str = "ok"
    reason: str = ""
    provides: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    api_version: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the plugin loaded and its hooks ran."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of this record."""
        return asdict(self)


class PluginRegistry:
    """Loads plugins and answers which adapters, distributors, sources, sinks and commands exist.

    Args:
        group: Entry-point group to discover (default ``mlruntime.plugins``).
        discover: Whether to load entry points on first use; ``False`` gives an empty registry
            that only holds what is passed to :meth:`register` (useful in tests).
    """

    def __init__(self, group: str = ENTRY_POINT_GROUP, *, discover: bool = True) -> None:
        import pluggy

        self.group = group
        self._discover = discover
        self._loaded = False
        self._lock = threading.RLock()
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(MLRuntimeHookSpecs)
        self._infos: dict[str, PluginInfo] = {}
        self._specs: dict[str, dict[str, tuple[Spec, str]]] = {
            spec_type.kind: {} for spec_type in HOOK_SPEC_TYPES.values()
        }

    # -- loading ------------------------------------------------------------------------------

    def ensure_loaded(self) -> None:
        """Discover entry-point plugins if that has not happened yet (thread-safe, once)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            if self._discover:
                self._load_entry_points()
            self._loaded = True

    def _load_entry_points(self) -> None:
        disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        seen: set[tuple[str, str]] = set()
        eps = sorted(importlib.metadata.entry_points(group=self.group), key=lambda e: e.name)
        for ep in eps:
            if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
            if ep.name in self._infos:
                first = self._infos[ep.name]
                warnings.warn(
                    f"mlruntime plugin {ep.name!r} of {info.distribution} skipped: another plugin "
                    f"(of {first.distribution}) is already named {ep.name!r}",
                    PluginWarning,
                    stacklevel=3,
                )
                first.warnings.append(f"{info.distribution} also declares a plugin {ep.name!r}")
                continue
            if ep.name in disabled:
                info.status, info.reason = "disabled", f"listed in {DISABLE_ENV}"
                self._infos[ep.name] = info
                continue
            try:
                module = ep.load()
            except BaseException as exc:  # a plugin must never take the host down
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._skip(info, "broken", f"failed to import: {_describe(exc)}", exc)
                continue
            self._add(module, info)

    def register(
        self,
        plugin: object,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
    ) -> PluginInfo:
        """Register a plugin object (usually a hook module) by hand, as an entry point would.

        Args:
            plugin: A module or object with ``MLRUNTIME_PLUGIN_API`` and ``@hookimpl`` functions.
            name: Its name; defaults to the module's name.
            distribution: Distribution to report it under, if any.
            version: Version to report.

        Returns:
            The plugin's :class:`PluginInfo` (check ``status``: a bad plugin is reported, not
            raised).
        """
        self.ensure_loaded()
        module_name = getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(
            name=name or module_name,
            module=module_name,
            distribution=distribution,
            version=version,
        )
        with self._lock:
            if info.name in self._infos:
                raise PluginError(f"a plugin named {info.name!r} is already registered")
            self._add(plugin, info)
        return info

    def unregister(self, name: str) -> None:
        """Remove a plugin and everything it provided.

        Raises:
            PluginNotFoundError: If no plugin has that name.
        """
        self.ensure_loaded()
        with self._lock:
            if name not in self._infos:
                raise PluginNotFoundError(f"no plugin named {name!r}; plugins: {self.names()}")
            del self._infos[name]
            if self._pm.has_plugin(name):
                self._pm.unregister(name=name)
            for by_name in self._specs.values():
                for spec_name in [k for k, (_, owner) in by_name.items() if owner == name]:
                    del by_name[spec_name]

    def _add(self, plugin: object, info: PluginInfo) -> None:
        api = getattr(plugin, "MLRUNTIME_PLUGIN_API", None)
        info.api_version = api if isinstance(api, int) else None
        if api is None:
            return self._skip(
                info,
                "incompatible",
                f"declares no MLRUNTIME_PLUGIN_API (this core implements plugin API "
                f"{PLUGIN_API_VERSION})",
            )
        if api != PLUGIN_API_VERSION:
            return self._skip(
                info,
                "incompatible",
                f"written for plugin API {api!r}, this core implements {PLUGIN_API_VERSION}; "
                "upgrade the plugin or mlruntime so they match",
            )
        try:
            self._pm.register(plugin, name=info.name)
        except Exception as exc:
            return self._skip(info, "broken", f"invalid hooks: {_describe(exc)}", exc)
        info.warnings.extend(_unknown_hooks(plugin))
        collected: list[Spec] = []
        for hook_name, spec_type in HOOK_SPEC_TYPES.items():
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name != info.name:
                    continue
                try:
                    result = impl.function()
                    collected.extend(_validate_result(hook_name, spec_type, result))
                except Exception as exc:
                    self._pm.unregister(name=info.name)
                    return self._skip(info, "broken", f"{hook_name}() raised {_describe(exc)}", exc)
        for spec in collected:
            by_name = self._specs[spec.kind]
            if spec.key in by_name:
                owner = by_name[spec.key][1]
                info.warnings.append(
                    f"{spec.kind} {spec.key!r} is also provided by plugin {owner!r}; {owner!r} wins"
                )
                continue
            by_name[spec.key] = (spec, info.name)
            info.provides.setdefault(spec.kind, []).append(spec.key)
            missing = spec.missing_requirements()
            if missing:
                info.warnings.append(f"{spec.kind} {spec.key!r} needs {', '.join(missing)}")
        self._infos[info.name] = info
        return None

    def _skip(
        self, info: PluginInfo, status: str, reason: str, exc: BaseException | None = None
    ) -> None:
        info.status, info.reason = status, reason
        self._infos[info.name] = info
        where = f" (distribution {info.distribution} {info.version})" if info.distribution else ""
        detail = ""
        if exc is not None and env_flag("MLRUNTIME_DEBUG"):
            detail = "\n" + "".join(traceback.format_exception(exc))
        warnings.warn(
            f"mlruntime plugin {info.name!r}{where} skipped: {reason}{detail}",
            PluginWarning,
            stacklevel=4,
        )

    # -- queries ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of all known plugins, whatever their status."""
        self.ensure_loaded()
        return sorted(self._infos)

    def plugins(self) -> list[PluginInfo]:
        """Every known plugin (ok, broken, incompatible or disabled), sorted by name."""
        self.ensure_loaded()
        return [self._infos[n] for n in sorted(self._infos)]

    def specs(self, kind: str) -> dict[str, Spec]:
        """All specs of one kind (``"adapter"``, ``"distributor"``, ``"source"``, ``"sink"``,
        ``"command"``) by name.

        Raises:
            ValueError: If ``kind`` is not one of those.
        """
        self.ensure_loaded()
        if kind not in self._specs:
            raise ValueError(f"unknown spec kind {kind!r}; kinds are {sorted(self._specs)}")
        return {name: spec for name, (spec, _) in self._specs[kind].items()}

    def provider(self, kind: str, name: str) -> str:
        """The name of the plugin providing ``kind`` ``name``.

        Raises:
            PluginNotFoundError: If nothing provides it.
        """
        self.get(kind, name)
        return self._specs[kind][name][1]

    def get(self, kind: str, name: str) -> Spec:
        """Return the spec of ``kind`` named ``name``.

        Raises:
            PluginNotFoundError: If no loaded plugin provides it; the message says which extra to
                install, or which broken plugin would have provided it and why it is broken.
        """
        found = self.specs(kind).get(name)
        if found is not None:
            return found
        raise PluginNotFoundError(self._not_found_message(kind, name))

    def _not_found_message(self, kind: str, name: str) -> str:
        msg = f"no installed mlruntime plugin provides the {kind} {name!r}"
        extra = FIRST_PARTY_EXTRAS.get(name)
        if extra is not None:
            plugin = self._infos.get(extra)
            if plugin is not None and not plugin.ok:
                return f"{msg}: plugin {extra!r} is {plugin.status} ({plugin.reason})"
            return f"{msg}; install it with: pip install 'mlruntime[{extra}]'"
        available = sorted(self._specs.get(kind, {}))
        return f"{msg}; available: {', '.join(available) if available else 'none'}"

    def load(self, kind: str, name: str) -> Any:
        """Return the implementation of ``kind`` ``name``, importing its module.

        Raises:
            PluginNotFoundError: If nothing provides it.
            PluginError: If its framework is missing or its target cannot be imported.
        """
        spec = self.get(kind, name)
        missing = spec.missing_requirements()
        if missing:
            provider = self._specs[kind][name][1]
            raise PluginError(
                f"{kind} {name!r} (plugin {provider!r}) needs {', '.join(missing)}, which is not "
                f"installed; pip install {' '.join(missing)}"
            )
        return spec.load()

    def adapters(self) -> dict[str, AdapterSpec]:
        """DataConnector outputs by method name."""
        return self.specs("adapter")  # type: ignore[return-value]

    def distributors(self) -> dict[str, DistributorSpec]:
        """Estimators, distributors and configs by class name."""
        return self.specs("distributor")  # type: ignore[return-value]

    def sources(self) -> dict[str, SourceSpec]:
        """Plugin data sources by name."""
        return self.specs("source")  # type: ignore[return-value]

    def sinks(self) -> dict[str, SinkSpec]:
        """Plugin sinks by name."""
        return self.specs("sink")  # type: ignore[return-value]

    def commands(self, group: str | None = None) -> dict[str, CommandSpec]:
        """CLI commands by ``"<group> <name>"``, optionally only those under ``group``."""
        found: dict[str, CommandSpec] = self.specs("command")  # type: ignore[assignment]
        return {n: s for n, s in found.items() if group is None or s.group == group}


def _validate_result(hook_name: str, spec_type: type[Spec], result: object) -> list[Spec]:
    if result is None:
        return []
    if isinstance(result, Spec) or not isinstance(result, (list, tuple)):
        raise PluginError(
            f"returned {type(result).__name__}, expected a list of {spec_type.__name__}"
        )
    for item in result:
        if not isinstance(item, spec_type):
            raise PluginError(
                f"returned a {type(item).__name__} in its list, expected {spec_type.__name__}"
            )
    return list(result)


def _unknown_hooks(plugin: object) -> list[str]:
    found = []
    for attr in dir(plugin):
        if attr.startswith("mlruntime_") and attr not in HOOK_SPEC_TYPES:
            fn = getattr(plugin, attr, None)
            if callable(fn) and hasattr(fn, PROJECT_NAME + "_impl"):
                found.append(f"unknown hook {attr!r} is ignored (hooks: {sorted(HOOK_SPEC_TYPES)})")
    return found


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_registry: PluginRegistry | None = None
_registry_lock = threading.Lock()


def get_registry() -> PluginRegistry:
    """Return the process-wide plugin registry, creating it (not yet loading it) on first call."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                _registry = PluginRegistry()
    return _registry


def reset_registry() -> None:
    """Forget the process-wide registry so the next use discovers plugins again."""
    global _registry
    with _registry_lock:
        _registry = None


def list_plugins() -> list[PluginInfo]:
    """Every discovered plugin with its status, version and what it provides."""
    return get_registry().plugins()


def load_adapter(name: str) -> Any:
    """Return the callable implementing the DataConnector output ``name`` (``to_torch_dataset``).

    Raises:
        PluginNotFoundError: If no plugin provides it (the message names the extra to install).
        PluginError: If the plugin's framework is missing.
    """
    return get_registry().load("adapter", name)
