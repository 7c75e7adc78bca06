"""The store layer's answers to the data layer's :class:`~mlruntime.data.catalog.Catalog`:
the default warehouse session and versioned datasets. Importing this module installs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlruntime.data.catalog import set_catalog

if TYPE_CHECKING:
    from mlruntime.data.sources import Source

__all__ = ["StoreCatalog"]


class StoreCatalog:
    """Finds the default session and datasets under ``MLRUNTIME_HOME`` (imported on use)."""

    def default_session(self) -> Any:
        """``get_active_session()``."""
        from mlruntime.store.session import get_active_session

        return get_active_session()

    def dataset_source(self, name: str, version: str | None) -> Source:
        """The source of ``load_dataset(name, version)``.

        Raises:
            DatasetNotFoundError: If the dataset or version does not exist.
        """
        from mlruntime.store.datasets import load_dataset

        return load_dataset(name, version).to_source()


set_catalog(StoreCatalog())
