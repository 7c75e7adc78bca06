"""Plugin hook specifications: the contract between mlruntime and its plugins.

A plugin is a module registered under the ``mlruntime.plugins`` entry-point group. It declares
``MLRUNTIME_PLUGIN_API`` and implements some of the ``mlruntime_register_*`` hooks below, each
returning small spec records whose targets are lazy ``"module:attr"`` strings, so plugins can be
listed and checked without importing any framework.

Example of a plugin's hook module::

    from mlruntime.plugins.hookspecs import AdapterSpec, hookimpl

    MLRUNTIME_PLUGIN_API = 1

    @hookimpl
    def mlruntime_register_adapters():
        return [AdapterSpec("to_my_format", "my_plugin.adapters:to_my_format")]
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pluggy

from mlruntime.errors import PluginError

__all__ = [
    "PLUGIN_API_VERSION",
    "PROJECT_NAME",
    "AdapterSpec",
    "CommandSpec",
    "DistributorSpec",
    "SinkSpec",
    "SourceSpec",
    "Spec",
    "hookimpl",
    "hookspec",
]

PROJECT_NAME = "mlruntime"
"""The pluggy project name; hook functions must be marked with this project's ``hookimpl``."""

PLUGIN_API_VERSION = 1
"""The plugin API this core implements; plugins declaring another are skipped."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class Spec:
    """A named thing a plugin provides, loaded lazily from ``target``.

    Args:
        name: The public name (adapter method name, class name, source kind, command name).
        target: Where the implementation lives, as ``"package.module:attribute"``.
        requires: Import names that must be importable for the target to work (e.g. ``"torch"``).
            They are checked with ``importlib.util.find_spec``, which imports nothing.
        description: One line for ``mlruntime plugins``.

    Raises:
        PluginError: If ``name`` is empty or ``target`` is not of the form ``"module:attr"``.
    """

    name: str
    target: str
    requires: tuple[str, ...] = ()
    description: str = ""

    kind: ClassVar[str] = "thing"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise PluginError(f"{type(self).__name__} needs a non-empty name, got {self.name!r}")
        module, sep, attr = str(self.target).partition(":")
        if not sep or not module or not attr:
            raise PluginError(
                f"{type(self).__name__} {self.name!r}: target {self.target!r} must look like "
                "'package.module:attribute'"
            )
        if isinstance(self.requires, str):  # a single name is a common slip; accept it.
            object.__setattr__(self, "requires", (self.requires,))

    @property
    def key(self) -> str:
        """The name this spec is registered and looked up under (unique per kind)."""
        return self.name

    def missing_requirements(self) -> list[str]:
        """Return the names in ``requires`` that cannot be imported (without importing them)."""
        missing = []
        for name in self.requires:
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(name)
        return missing

    def load(self) -> Any:
        """Import the target and return the attribute it names.

        Raises:
            PluginError: If the module cannot be imported or lacks the attribute.
        """
        module_name, _, attr_path = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginError(
                f"{self.kind} {self.name!r}: cannot import {module_name!r} ({type(exc).__name__}: "
                f"{exc})"
            ) from exc
        for part in attr_path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as exc:
                raise PluginError(
                    f"{self.kind} {self.name!r}: {module_name!r} has no attribute {attr_path!r}"
                ) from exc
        return obj


@dataclass(frozen=True)
class AdapterSpec(Spec):
    """A framework output of a ``DataConnector``, reachable as ``connector.<name>(...)``.

    The target is called as ``target(connector, *args, **kwargs)``. Names start with ``to_``.
    """

    kind: ClassVar[str] = "adapter"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name.startswith("to_") or not self.name.isidentifier():
            raise PluginError(
                f"adapter name {self.name!r} must be an identifier starting with 'to_' "
                "(it becomes a DataConnector method)"
            )


@dataclass(frozen=True)
class DistributorSpec(Spec):
    """A distributed trainer class (estimator or distributor) and the framework it trains.

    Args:
        framework: The framework's name, e.g. ``"xgboost"``.
        role: ``"estimator"`` (``fit``/``predict``) or ``"distributor"`` (``run(train_func)``).
    """

    framework: str = ""
    role: str = "estimator"

    kind: ClassVar[str] = "distributor"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.role not in ("estimator", "distributor", "config"):
            raise PluginError(
                f"distributor {self.name!r}: role must be 'estimator', 'distributor' or "
                f"'config', got {self.role!r}"
            )


@dataclass(frozen=True)
class SourceSpec(Spec):
    """A kind of data source a plugin can read.

    The target is a callable ``target(location_or_object, **options) -> Source``. ``schemes`` are
    URL schemes (``"delta"`` for ``delta://...``) and ``suffixes`` are file endings (``".avro"``)
    for which ``DataConnector.from_sources`` picks this source automatically; ``types`` are
    qualified class names (``"ray.data.dataset.Dataset"``) whose objects (or subclasses')
    ``DataConnector.from_dataframe`` hands to it.
    """

    schemes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    kind: ClassVar[str] = "source"


@dataclass(frozen=True)
class SinkSpec(Spec):
    """A kind of output a plugin can write; the target is a callable returning a ``Sink``."""

    schemes: tuple[str, ...] = ()

    kind: ClassVar[str] = "sink"


@dataclass(frozen=True)
class CommandSpec(Spec):
    """A CLI sub-command, run as ``mlruntime <group> <name> ARGS...``.

    The target is ``main(argv: list[str]) -> int``; it parses its own arguments.

    Args:
        group: The top-level command it hangs under, e.g. ``"train"`` or ``"predict"``.
    """

    group: str = "train"

    kind: ClassVar[str] = "command"

    @property
    def key(self) -> str:
        """``"<group> <name>"``, e.g. ``"train xgboost"``."""
        return f"{self.group} {self.name}"


class MLRuntimeHookSpecs:
    """The hooks a plugin may implement. Each is called once per process, lazily."""

    @hookspec
    def mlruntime_register_adapters(self) -> Sequence[AdapterSpec]:  # type: ignore[empty-body]
        """Return the DataConnector outputs this plugin provides (``to_torch_dataset`` ...).

        Called the first time an adapter is looked up or plugins are listed.
        """

    @hookspec
    def mlruntime_register_distributors(self) -> Sequence[DistributorSpec]:  # type: ignore[empty-body]
        """Return the estimators, distributors and scaling configs this plugin provides."""

    @hookspec
    def mlruntime_register_sources(self) -> Sequence[SourceSpec]:  # type: ignore[empty-body]
        """Return the data sources this plugin can read, with the schemes/suffixes they claim."""

    @hookspec
    def mlruntime_register_sinks(self) -> Sequence[SinkSpec]:  # type: ignore[empty-body]
        """Return the sinks this plugin can write to."""

    @hookspec
    def mlruntime_register_commands(self) -> Sequence[CommandSpec]:  # type: ignore[empty-body]
        """Return CLI sub-commands (``mlruntime train xgboost ...``) this plugin adds."""


HOOK_SPEC_TYPES: dict[str, type[Spec]] = {
    "mlruntime_register_adapters": AdapterSpec,
    "mlruntime_register_distributors": DistributorSpec,
    "mlruntime_register_sources": SourceSpec,
    "mlruntime_register_sinks": SinkSpec,
    "mlruntime_register_commands": CommandSpec,
}
"""Each hook and the record type its results must be."""
