"""Ingestors: how a DataConnector reads its sources (Snowflake's ``ingestor_class=``).

mlruntime reads with its own Arrow pipeline by default (``DataConnector`` itself). Snowflake's
code passes ``ingestor_class=RayDataIngester`` to read through Ray Data instead; mlruntime
exports a ``RayDataIngester`` (from the runtime layer, which owns Ray) that does the same.
An ingestor here is a class with a classmethod ``ingest(connector) -> DataConnector``.
"""

from __future__ import annotations

from typing import Any

from mlruntime.errors import ConfigError

__all__ = ["DataIngestor", "apply_ingestor"]


class DataIngestor:
    """Base of ingestor classes accepted by ``DataConnector.from_*(..., ingestor_class=...)``.

    Subclasses override :meth:`ingest`. The base reads with mlruntime's own Arrow pipeline
    (the default, also what ``ingestor_class=None`` means).
    """

    @classmethod
    def ingest(cls, connector: Any) -> Any:
        """The connector reading ``connector``'s rows this ingestor's way (the base: as is)."""
        return connector


def apply_ingestor(connector: Any, ingestor_class: Any) -> Any:
    """``connector`` read through ``ingestor_class`` (``None``: mlruntime's own reader).

    Raises:
        ConfigError: For anything but ``None`` or a :class:`DataIngestor` subclass.
    """
    if ingestor_class is None:
        return connector
    if isinstance(ingestor_class, type) and issubclass(ingestor_class, DataIngestor):
        return ingestor_class.ingest(connector)
    raise ConfigError(
        f"ingestor_class={ingestor_class!r} is not supported: pass None (mlruntime's own Arrow "
        "reader, the fastest) or mlruntime.RayDataIngester (read through Ray Data); custom "
        "Snowflake DataIngestor classes do not port"
    )
