"""What the data layer needs from the layers above it, asked for without importing them.

``DataConnector.from_sql(query)`` needs the default warehouse session and
``DataConnector.from_dataset(name)`` needs versioned datasets; both belong to the store layer,
which installs itself here (``mlruntime.store.catalog``, wired by ``import mlruntime``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from mlruntime.errors import ConfigError

if TYPE_CHECKING:
    from mlruntime.data.sources import Source

__all__ = ["Catalog", "get_catalog", "set_catalog"]


class Catalog(Protocol):
    """Named things the data layer reads but does not own."""

    def default_session(self) -> Any:
        """The session ``from_sql`` runs a query on when none is given."""

    def dataset_source(self, name: str, version: str | None) -> Source:
        """A source over dataset ``name`` at ``version`` (``None``: the latest)."""


_catalog: Catalog | None = None


def set_catalog(catalog: Catalog | None) -> None:
    """Install the catalog (the store layer does this on import); ``None`` removes it."""
    global _catalog
    _catalog = catalog


def get_catalog() -> Catalog:
    """The installed catalog.

    Raises:
        ConfigError: If none is installed (only when the data layer is used without
            ``import mlruntime``); pass a session or a Dataset object instead.
    """
    if _catalog is None:
        raise ConfigError(
            "no warehouse catalog is installed; import mlruntime (or pass session=... / a "
            "Dataset object explicitly)"
        )
    return _catalog
