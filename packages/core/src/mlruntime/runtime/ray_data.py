"""Ray Data interop: a Ray Dataset as a source, and a DataConnector as a Ray Dataset.

The data layer never imports Ray; these reach it as the plugin registry's built-in ``ray``
plugin (``mlruntime.runtime.hooks``): ``DataConnector.from_ray_dataset`` /
``from_dataframe(ray_ds)`` and ``DataConnector.to_ray_dataset()``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from mlruntime.data.connector import DataConnector
from mlruntime.data.ingest import DataIngestor
from mlruntime.data.inputs import DuckDBSource, quote_column
from mlruntime.data.sources import Fragment, ParquetSource, Source
from mlruntime.errors import SourceError

__all__ = [
    "RayBlockFragment",
    "RayDataIngester",
    "RayDatasetSource",
    "release_warm_workers",
    "to_ray_dataset",
]


def release_warm_workers() -> None:
    """Stop worker groups kept warm between jobs: Ray Data's read tasks need their CPUs."""
    distributor = sys.modules.get("mlruntime.runtime.distributor")
    if distributor is not None:
        distributor.release_idle_groups()


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
            import ray

            release_warm_workers()  # Ray Data's tasks need the CPUs warm workers hold
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


def to_ray_dataset(connector: DataConnector) -> Any:
    """A ``ray.data.Dataset`` over the connector's rows (Parquet sources are read by Ray
    itself; others go through Arrow). Connects to Ray if needed."""
    from mlruntime.runtime.cluster import init

    init()
    release_warm_workers()
    import ray.data

    sources = connector.sources
    pieces = connector.pieces()
    if (
        not connector.is_shard
        and all(isinstance(s, ParquetSource) for s in sources)
        and all(p.whole for p in pieces)
    ):
        files = [f for s in sources for f in s.files]  # type: ignore[attr-defined]
        fs = pieces[0].fragment.filesystem  # type: ignore[attr-defined]
        dataset = ray.data.read_parquet(files, filesystem=fs)
        if connector._columns is None:
            return dataset
        return dataset.select_columns(connector.columns)  # pushed down to the scan by Ray
    if not connector.is_shard and len(sources) == 1 and isinstance(sources[0], DuckDBSource):
        # Stream the query into the object store batch by batch (the driver never holds it).
        relation = sources[0].relation
        if connector._columns is not None:
            relation = relation.select(*[quote_column(c) for c in connector.columns])
        refs = [ray.put(pa.Table.from_batches([b])) for b in relation.to_arrow_reader(65_536)]
        if refs:
            return ray.data.from_arrow_refs(refs)  # type: ignore[arg-type]
    return ray.data.from_arrow(connector.to_arrow())


class RayDataIngester(DataIngestor):
    """Reads a DataConnector's data through Ray Data (Snowflake's
    ``ingestor_class=RayDataIngester``): Parquet files with ``ray.data.read_parquet``, DuckDB
    results streamed into the object store, frames with ``ray.data.from_arrow``; the
    connector then reads the resulting dataset's blocks. mlruntime's own reader (the
    default, ``ingestor_class=None``) is faster; this is for code that asks for Ray Data."""

    @classmethod
    def ingest(cls, connector: Any) -> Any:
        """A connector over ``ray.data`` blocks holding ``connector``'s rows."""
        out = DataConnector.from_ray_dataset(to_ray_dataset(connector))
        out.expand_dims = getattr(connector, "expand_dims", True)
        return out
