"""Core's own plugin (entry point ``ray`` of ``mlruntime.plugins``): Ray Data interop, which
the data layer reaches through the registry because it never imports Ray itself."""

from __future__ import annotations

from mlruntime.plugins.hookspecs import AdapterSpec, SourceSpec, hookimpl

MLRUNTIME_PLUGIN_API = 1

_REQUIRES = ("ray",)


@hookimpl
def mlruntime_register_adapters() -> list[AdapterSpec]:
    """``DataConnector.to_ray_dataset()``."""
    return [
        AdapterSpec(
            "to_ray_dataset",
            "mlruntime.runtime.ray_data:to_ray_dataset",
            requires=_REQUIRES,
            description="a ray.data.Dataset over the rows (Parquet read by Ray itself)",
        )
    ]


@hookimpl
def mlruntime_register_sources() -> list[SourceSpec]:
    """Ray Datasets given to ``from_dataframe`` / ``from_ray_dataset``."""
    return [
        SourceSpec(
            "ray_dataset",
            "mlruntime.runtime.ray_data:RayDatasetSource",
            requires=_REQUIRES,
            types=("ray.data.dataset.Dataset",),
            description="a ray.data.Dataset (blocks stay in the object store)",
        )
    ]
