"""Turns what users hand over (frames, relations, paths, plugin objects) into Sources."""

from __future__ import annotations

import os
import threading
from typing import Any

import pyarrow as pa

from mlruntime.data.sources import (
    ArrowSource,
    CSVSource,
    Fragment,
    ParquetSource,
    Source,
    resolve_filesystem,
)
from mlruntime.errors import ConfigError, SourceError

__all__ = ["DuckDBSource", "quote_column", "relation_of", "source_from_object", "source_from_path"]


def relation_of(obj: Any) -> Any:
    """The DuckDB relation behind ``obj`` if it is a relation or exposes one, else ``None``.

    Objects expose their relation with a ``__mlruntime_relation__()`` method (the warehouse's
    ``DataFrame`` does), so the data layer reads them without importing the store layer.
    """
    unwrap = getattr(type(obj), "__mlruntime_relation__", None)
    if callable(unwrap):
        return unwrap(obj)
    kind = type(obj)
    if kind.__module__.startswith("duckdb") and "Relation" in kind.__name__:
        return obj
    return None


class DuckDBSource(Source):
    """A DuckDB relation or SQL query, run once on first use and held as Arrow.

    DuckDB connections cannot travel to other processes, so the driver runs the query and its
    result travels to workers as Arrow fragments.

    Args:
        relation: A ``duckdb.DuckDBPyRelation``, or an object exposing one through
            ``__mlruntime_relation__()`` such as the DataFrame of ``session.table(...)`` and
            ``session.sql(...)`` (its relation is kept).
        label: What to call it in reprs (the query text, the table name).
    """

    def __init__(self, relation: Any, label: str | None = None) -> None:
        unwrapped = relation_of(relation)
        self.relation = relation if unwrapped is None else unwrapped
        self.label = label or _relation_label(self.relation)
        self._arrow: ArrowSource | None = None
        self._lock = threading.Lock()

    def materialize(self) -> ArrowSource:
        """Run the relation (once) and return its result as an :class:`ArrowSource`."""
        with self._lock:
            if self._arrow is None:
                import duckdb

                try:
                    table = self.relation.to_arrow_table()
                except duckdb.Error as exc:
                    raise SourceError(f"DuckDB query failed ({self.label}): {exc}") from exc
                self._arrow = ArrowSource(table, label=f"duckdb {self.label}")
            return self._arrow

    @property
    def schema(self) -> pa.Schema:
        if self._arrow is not None:
            return self._arrow.schema
        return self.relation.limit(0).to_arrow_table().schema

    @property
    def num_rows(self) -> int | None:
        return None if self._arrow is None else self._arrow.num_rows

    def fragments(self) -> list[Fragment]:
        return self.materialize().fragments()

    def describe(self) -> str:
        return f"duckdb {self.label}"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._arrow is not None:  # already run: its rows can travel
            return (ArrowSource, (self._arrow.table, self._arrow.label))
        raise ConfigError(
            f"a DuckDB relation ({self.label}) cannot be sent to another process: its "
            "connection stays in this one. Jobs stage it for their workers by themselves; to "
            "send it elsewhere, read it first (relation.to_arrow_table())"
        )


def quote_column(name: str) -> str:
    """A column name quoted for DuckDB SQL."""
    return '"' + name.replace('"', '""') + '"'


def _relation_label(relation: Any) -> str:
    try:
        text = " ".join(relation.sql_query().split())
    except Exception:
        text = getattr(relation, "alias", "relation")
    return text if len(text) <= 80 else text[:77] + "..."


PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")


def source_from_path(location: str | os.PathLike[str], filesystem: Any = None) -> Source:
    """A source for a file, folder, glob or URI, picked by suffix (or plugin scheme/suffix).

    Raises:
        SourceError: If the path does not exist or its format cannot be told.
    """
    text = os.fspath(location)
    plugin = _plugin_source(text)
    if plugin is not None:
        return plugin
    lowered = text.lower()
    if lowered.endswith(PARQUET_SUFFIXES):
        return ParquetSource(text, filesystem)
    if lowered.endswith(CSV_SUFFIXES):
        return CSVSource(text, filesystem)
    fs, path = resolve_filesystem(text, filesystem)
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        names = [
            f.path.lower()
            for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if f.type == pafs.FileType.File
        ]
        if any(n.endswith(PARQUET_SUFFIXES) for n in names):
            return ParquetSource(text, filesystem)
        if any(n.endswith(CSV_SUFFIXES) for n in names):
            return CSVSource(text, filesystem)
        raise SourceError(f"folder {text!r} holds no .parquet or .csv files")
    if info.type == pafs.FileType.NotFound and not any(c in path for c in "*?["):
        raise SourceError(f"path {text!r} does not exist")
    raise SourceError(
        f"cannot tell the format of {text!r}: name it *.parquet or *.csv, or pass "
        "ParquetSource(...) / CSVSource(...)"
    )


def _plugin_source(location: str) -> Source | None:
    from mlruntime.plugins.registry import get_registry

    sources = get_registry().sources()
    if not sources:
        return None
    scheme = location.split("://", 1)[0].lower() if "://" in location else None
    lowered = location.lower()
    for name, spec in sources.items():
        if (scheme and scheme in spec.schemes) or any(lowered.endswith(s) for s in spec.suffixes):
            factory = get_registry().load("source", name)
            source = factory(location)
            if not isinstance(source, Source):
                raise SourceError(f"plugin source {name!r} returned {type(source).__name__}")
            return source
    return None


def _plugin_source_for_object(obj: Any) -> Source | None:
    """A source from the plugin whose ``SourceSpec.types`` names ``obj``'s type (or a base)."""
    from mlruntime.plugins.registry import get_registry

    sources = get_registry().sources()
    if not sources:
        return None
    names = {f"{t.__module__}.{t.__qualname__}" for t in type(obj).__mro__}
    for name, spec in sources.items():
        if names.intersection(spec.types):
            source = get_registry().load("source", name)(obj)
            if not isinstance(source, Source):
                raise SourceError(f"plugin source {name!r} returned {type(source).__name__}")
            return source
    return None


def source_from_object(obj: Any, filesystem: Any = None) -> Source:
    """Wrap a user object as a Source.

    Accepts Sources, paths/URIs, Arrow tables/record batches/readers, pandas and polars frames,
    dicts of columns, DuckDB relations and objects exposing one (the warehouse's DataFrame, see
    :func:`relation_of`), Ray Datasets and dataset versions.

    Raises:
        ConfigError: For anything else (the message lists what is accepted).
    """
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return source_from_path(obj, filesystem)
    if isinstance(obj, pa.Table):
        return ArrowSource(obj)
    if isinstance(obj, pa.RecordBatch):
        return ArrowSource(pa.Table.from_batches([obj]))
    if isinstance(obj, pa.RecordBatchReader):
        return ArrowSource(obj.read_all())
    if isinstance(obj, dict):
        return ArrowSource(pa.table(obj), label="dict")
    relation = relation_of(obj)
    if relation is not None:
        return DuckDBSource(relation)
    module = type(obj).__module__
    name = type(obj).__name__
    if module.startswith("pandas") and name == "DataFrame":
        return ArrowSource(pa.Table.from_pandas(obj, preserve_index=False), "pandas.DataFrame")
    if module.startswith("polars"):
        if name == "LazyFrame":
            obj = obj.collect()
            name = "DataFrame"
        if name == "DataFrame":
            return ArrowSource(obj.to_arrow(), "polars.DataFrame")
    plugin = _plugin_source_for_object(obj)
    if plugin is not None:
        return plugin
    to_source = getattr(obj, "to_source", None)
    if callable(to_source):  # dataset versions and other source-like objects
        source = to_source()
        if isinstance(source, Source):
            return source
    raise ConfigError(
        f"cannot read a {module}.{name}; pass a DataConnector, a pandas/polars/Arrow frame, a "
        "DuckDB relation, a Ray Dataset, a dataset version, a Source, or a path/URI"
    )
