"""Plugins: hook specifications (:mod:`.hookspecs`), the registry that loads them
(:mod:`.registry`) and the conformance kit plugins test themselves with (:mod:`.conformance`).

The registry and the specs are the base every layer may consult (to find adapters and sources);
the conformance kit sits on top of everything.
"""

from __future__ import annotations

from mlruntime.plugins.hookspecs import (
    PLUGIN_API_VERSION,
    AdapterSpec,
    CommandSpec,
    DistributorSpec,
    SinkSpec,
    SourceSpec,
    hookimpl,
)
from mlruntime.plugins.registry import (
    ENTRY_POINT_GROUP,
    PluginInfo,
    PluginRegistry,
    get_registry,
    list_plugins,
    load_adapter,
    reset_registry,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGIN_API_VERSION",
    "AdapterSpec",
    "CommandSpec",
    "DistributorSpec",
    "PluginInfo",
    "PluginRegistry",
    "SinkSpec",
    "SourceSpec",
    "get_registry",
    "hookimpl",
    "list_plugins",
    "load_adapter",
    "reset_registry",
]
