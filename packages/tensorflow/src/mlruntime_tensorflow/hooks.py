"""Hook module of the TensorFlow plugin (entry point ``tensorflow`` of ``mlruntime.plugins``).

It returns spec records naming lazy targets; the framework is imported by those, never here.
"""

from __future__ import annotations

from mlruntime.hookspecs import (
    AdapterSpec,
    CommandSpec,
    DistributorSpec,
    hookimpl,
)

MLRUNTIME_PLUGIN_API = 1

_REQUIRES = ("tensorflow",)


@hookimpl
def mlruntime_register_adapters() -> list[AdapterSpec]:
    """DataConnector outputs this plugin provides."""
    return []


@hookimpl
def mlruntime_register_distributors() -> list[DistributorSpec]:
    """Estimators, distributors and scaling configs this plugin provides."""
    return []


@hookimpl
def mlruntime_register_commands() -> list[CommandSpec]:
    """CLI commands this plugin adds."""
    return []
