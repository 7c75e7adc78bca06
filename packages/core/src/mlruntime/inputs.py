"""Turns what users hand over (frames, relations, paths, Ray Datasets) into Sources."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from mlruntime.errors import ConfigError, SourceError
from mlruntime.sources import (
    ArrowSource,
    CSVSource,
    Fragment,
    ParquetSource,
    Source,
    resolve_filesystem,
)

__all__ = ["DuckDBSource", "RayDatasetSource", "source_from_object", "source_from_path"]


class DuckDBSource(Source):
    """A DuckDB relation or SQL query, run once on first use and held as Arrow.

    DuckDB connections cannot travel to other processes, so the driver runs the query and its
    result travels to workers as Arrow fragments.

    Args:
        relation: A ``duckdb.DuckDBPyRelation`` (``session.table(...)``, ``session.sql(...)``).
        label: What to call it in reprs (the query text, the table name).
    """

    def __init__(self, relation: Any, label: str | None = None) -> None:
        self.relation = relation
        self.label = label or _relation_label(relation)
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


def _relation_label(relation: Any) -> str:
    try:
        text = " ".join(relation.sql_query().split())
    except Exception:
        text = getattr(relation, "alias", "relation")
    return text if len(text) <= 80 else text[:77] + "..."


class RayBlockFragment(Fragment):
    """One block of a Ray Dataset, read with ``ray.get`` wherever the fragment runs."""

    def __init__(self, ref: Any, num_rows: int | None) -> None:
        self.ref = ref
        self.num_rows = num_rows

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        import ray

        table = ray.get(self.ref)
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        return table if columns is None else table.select(list(columns))

    def describe(self) -> str:
        return f"ray block[{self.num_rows} rows]"


class RayDatasetSource(Source):
    """A Ray Dataset; its blocks stay in the object store and become fragments."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._fragments: list[Fragment] | None = None
        self._schema: pa.Schema | None = None

    def fragments(self) -> list[Fragment]:
        if self._fragments is None:
            import sys

            import ray

            if "mlruntime.distributor" in sys.modules:  # Ray Data needs the CPUs they hold
                sys.modules["mlruntime.distributor"].release_idle_groups()
            refs = self.dataset.to_arrow_refs()
            counts = ray.get([_count_rows.remote(ref) for ref in refs]) if refs else []
            self._fragments = [
                RayBlockFragment(ref, n) for ref, n in zip(refs, counts, strict=True) if n
            ]
        return self._fragments

    @property
    def schema(self) -> pa.Schema:
        if self._schema is None:
            schema = self.dataset.schema()
            base = getattr(schema, "base_schema", None)
            if isinstance(base, pa.Schema):
                self._schema = base
            else:
                frags = self.fragments()
                if not frags:
                    raise SourceError("the Ray Dataset is empty and has no schema")
                self._schema = frags[0].read().schema
        return self._schema

    def describe(self) -> str:
        return "ray.data.Dataset"


def _count_rows_impl(table: Any) -> int:
    return int(table.num_rows if isinstance(table, pa.Table) else len(table))


class _LazyRemote:
    """``ray.remote`` applied on first use, so this module does not import Ray."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn
        self._remote: Any = None

    def remote(self, *args: Any) -> Any:
        if self._remote is None:
            import ray

            self._remote = ray.remote(num_cpus=0)(self._fn)
        return self._remote.remote(*args)


_count_rows = _LazyRemote(_count_rows_impl)


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
    from mlruntime.plugins import get_registry

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


def source_from_object(obj: Any, filesystem: Any = None) -> Source:
    """Wrap a user object as a Source.

    Accepts Sources, paths/URIs, Arrow tables/record batches/readers, pandas and polars frames,
    dicts of columns, DuckDB relations, Ray Datasets and dataset versions.

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
    if module.startswith("duckdb") and "Relation" in name:
        return DuckDBSource(obj)
    if module.startswith("ray.data") and name in ("Dataset", "MaterializedDataset"):
        return RayDatasetSource(obj)
    to_source = getattr(obj, "to_source", None)
    if callable(to_source):  # dataset versions and other source-like objects
        source = to_source()
        if isinstance(source, Source):
            return source
    raise ConfigError(
        f"cannot read a {module}.{name}; pass a DataConnector, a pandas/polars/Arrow frame, a "
        "DuckDB relation, a Ray Dataset, a dataset version, a Source, or a path/URI"
    )
