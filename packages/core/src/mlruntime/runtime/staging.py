"""Inputs that live only in the driver, staged once where every worker can read them.

A pandas/polars/Arrow frame sits in the driver's memory and a DuckDB relation can be run only
through the driver's connection. Before a job starts they are staged once, and each rank then
reads only its own part, from wherever it runs:

- **objects**: each fragment (131,072 rows of a frame, 65,536 rows of a DuckDB result) is put
  into Ray's object store once; a rank fetches only the fragments of its shard (zero-copy on
  the driver's machine). The fastest way, used while the job's staged objects stay within a
  quarter of the cluster's object store.
- **parquet**: the rows are written as Parquet files under the job's folder on the storage
  (``<run>/inputs/``); ranks read their row groups straight from there. Used for frames
  larger than that budget, and for the part of a DuckDB result past it.

DuckDB results are streamed batch by batch either way, so the driver never holds more than a
batch of a warehouse table (DuckDB itself caches the table blocks it scans, up to its
``memory_limit``).

``MLRUNTIME_STAGE=objects|parquet`` forces one way (``auto`` is the default). Staged Parquet
files are removed when the job ends, however it ends; objects are released with the job.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from mlruntime.data.connector import DataConnector, ShardedDataConnector
from mlruntime.data.inputs import DuckDBSource, quote_column
from mlruntime.data.sources import (
    DEFAULT_ROWS_PER_FRAGMENT,
    ArrowSource,
    Fragment,
    ParquetSource,
    Source,
    from_ipc,
    to_ipc,
)
from mlruntime.errors import ConfigError, SourceError
from mlruntime.store import storage

__all__ = [
    "STAGE_ENV",
    "ObjectFragment",
    "ObjectSource",
    "StagedInputs",
]

STAGE_ENV = "MLRUNTIME_STAGE"
"""How driver-held inputs are staged: ``auto`` (default), ``objects`` or ``parquet``."""

OBJECT_STORE_SHARE = 0.25
"""Frames up to this share of the cluster's object store memory are staged as objects."""

DUCKDB_BATCH_ROWS = 65_536
"""Rows fetched from DuckDB at once while staging (each becomes a row group)."""

ROWS_PER_FILE = 1_048_576
"""Rows per staged Parquet file (row groups of ``DEFAULT_ROWS_PER_FRAGMENT`` rows)."""


class ObjectFragment(Fragment):
    """Rows held in Ray's object store as Arrow IPC; pickles as its object reference only."""

    def __init__(self, ref: Any, num_rows: int, label: str) -> None:
        self.ref = ref
        self.num_rows = num_rows
        self.label = label

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        import ray

        value = ray.get(self.ref)
        if isinstance(value, pa.RecordBatch):
            table = pa.Table.from_batches([value])
        elif isinstance(value, pa.Table):
            table = value
        else:  # an IPC stream
            table = from_ipc(value)
        return table if columns is None else table.select(list(columns))

    def describe(self) -> str:
        return f"{self.label}[{self.num_rows} rows, object store]"


class ObjectSource(Source):
    """Fragments staged in Ray's object store (made by :class:`StagedInputs`)."""

    def __init__(self, schema: pa.Schema, fragments: list[Fragment], label: str) -> None:
        self._schema = schema
        self._fragments = fragments
        self._label = label

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def fragments(self) -> list[Fragment]:
        return list(self._fragments)

    def describe(self) -> str:
        rows = sum(f.num_rows or 0 for f in self._fragments)
        return f"{self._label} ({rows} rows, staged in the object store)"


class StagedInputs:
    """The staging of one job: replaces driver-held sources in its ``dataset_map`` and removes
    what it wrote when the job ends.

    Args:
        folder: Where staged Parquet files go (a storage URI or path; created when needed).
        mode: ``"auto"``, ``"objects"`` or ``"parquet"`` (default: ``MLRUNTIME_STAGE``).

    Raises:
        ConfigError: For an unknown mode.
    """

    def __init__(self, folder: str, mode: str | None = None) -> None:
        mode = (mode or os.environ.get(STAGE_ENV) or "auto").strip().lower()
        if mode not in ("auto", "objects", "parquet"):
            raise ConfigError(f"{STAGE_ENV} must be auto, objects or parquet, got {mode!r}")
        self.folder = folder
        self.mode = mode
        self.refs: list[Any] = []
        self.wrote = False
        self.object_bytes = 0
        self._budget: float | None = None

    def __enter__(self) -> StagedInputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the staged Parquet files and release the staged objects."""
        self.refs.clear()
        if self.wrote:
            try:
                storage.remove(self.folder)
            except OSError:
                pass
            self.wrote = False

    # -- what gets staged -----------------------------------------------------------------------

    def stage_map(self, datasets: dict[str, Any]) -> dict[str, Any]:
        """``datasets`` with every driver-held source staged (other values unchanged)."""
        return {name: self.stage(value, name) for name, value in datasets.items()}

    def stage(self, connector: Any, name: str = "input") -> Any:
        """``connector`` reading the same rows, none of them from the driver's memory or
        connections (the connector itself when nothing needs staging)."""
        if not isinstance(connector, DataConnector) or connector.is_shard:
            return connector  # a planned part carries its own rows (in-memory pieces)
        sources = connector.sources
        if not any(_driver_held(s) for s in sources):
            return connector
        columns = connector._columns
        staged: list[Source] = []
        for i, source in enumerate(sources):
            if _driver_held(source):
                staged.extend(self._stage_source(source, columns, f"{name}-{i}"))
            else:
                staged.append(source)
        if isinstance(connector, ShardedDataConnector):
            return ShardedDataConnector(staged, columns=columns, equal=connector.equal)
        return DataConnector(staged, columns=columns)

    def _stage_source(self, source: Source, columns: list[str] | None, name: str) -> list[Source]:
        if isinstance(source, DuckDBSource) and source._arrow is not None:
            source = source._arrow
        if isinstance(source, ArrowSource):
            table = source.table if columns is None else source.table.select(columns)
            mode = self.mode
            if mode == "auto":
                mode = "objects" if self._fits(table.nbytes) else "parquet"
            if mode == "objects":  # slices pickle their parents' buffers: copy as IPC
                return [self._to_objects(_slices(table), table.schema, source.label, ipc=True)]
            return [self._to_parquet(_slices(table), table.schema, name, source.describe())]
        assert isinstance(source, DuckDBSource)
        return self._stage_duckdb(source, columns, name)

    def _stage_duckdb(
        self, source: DuckDBSource, columns: list[str] | None, name: str
    ) -> list[Source]:
        import duckdb

        relation = source.relation
        if columns is not None:
            relation = relation.select(*[quote_column(c) for c in columns])
        try:
            reader = relation.to_arrow_reader(DUCKDB_BATCH_ROWS)
        except duckdb.Error as exc:
            raise SourceError(f"DuckDB query failed ({source.label}): {exc}") from exc
        label = f"duckdb {source.label}"
        batches = _batches(reader, source.label)
        if self.mode == "parquet":
            return [self._to_parquet(batches, reader.schema, name, label)]
        # Batch by batch into the object store while it has room, the rest into Parquet: the
        # driver holds one batch at a time either way.
        stream = _Stream(batches)
        objects = self._to_objects(stream, reader.schema, label, ipc=False, stop=True)
        if stream.exhausted():
            return [objects]
        overflow = self._to_parquet(stream, reader.schema, name, label)
        return [objects, overflow] if objects.fragments() else [overflow]

    # -- the two ways -------------------------------------------------------------------------

    def _to_objects(
        self,
        parts: Iterable[pa.Table | pa.RecordBatch],
        schema: pa.Schema,
        label: str,
        *,
        ipc: bool,
        stop: bool = False,
    ) -> Source:
        """Put each part into the object store (``ipc``: as a compact IPC copy). With
        ``stop`` (``parts`` is then a :class:`_Stream`), stop before the part that would pass
        the object-store budget, handing it back to the stream (unless the mode is
        ``objects``, which puts everything)."""
        import ray

        fragments: list[Fragment] = []
        for part in parts:
            if part.num_rows == 0:
                continue
            over = not self._fits(self.object_bytes + part.nbytes)
            if stop and over and self.mode != "objects" and isinstance(parts, _Stream):
                parts.push_back(part)
                break
            ref = ray.put(to_ipc(part) if ipc else part)
            self.refs.append(ref)
            self.object_bytes += part.nbytes
            fragments.append(ObjectFragment(ref, part.num_rows, label))
        return ObjectSource(schema, fragments, label)

    def _to_parquet(
        self,
        parts: Iterable[pa.Table | pa.RecordBatch],
        schema: pa.Schema,
        name: str,
        label: str,
    ) -> Source:
        with storage.private_files(self.folder):  # inside mlruntime's home: 0700 / 0600
            return self._write_parquet(parts, schema, name, label)

    def _write_parquet(
        self,
        parts: Iterable[pa.Table | pa.RecordBatch],
        schema: pa.Schema,
        name: str,
        label: str,
    ) -> Source:
        import pyarrow.parquet as pq

        folder = storage.join(self.folder, f"{name}-{uuid.uuid4().hex[:8]}")
        fs, path = storage.resolve(folder)
        self.wrote = True
        fs.create_dir(path, recursive=True)
        files: list[str] = []
        writer: pq.ParquetWriter | None = None
        rows_in_file = 0
        try:
            for part in parts:
                if writer is None or rows_in_file >= ROWS_PER_FILE:
                    if writer is not None:
                        writer.close()
                    files.append(f"{path}/part-{len(files):05d}.parquet")
                    # Dictionary-encode only text-like columns: trying it on numbers made
                    # writing 4x slower for nothing. LZ4 costs little and saves bytes.
                    writer = pq.ParquetWriter(
                        files[-1],
                        schema,
                        filesystem=fs,
                        compression="lz4",
                        use_dictionary=_dictionary_columns(schema),
                    )
                    rows_in_file = 0
                table = part if isinstance(part, pa.Table) else pa.Table.from_batches([part])
                writer.write_table(table, row_group_size=DEFAULT_ROWS_PER_FRAGMENT)
                rows_in_file += part.num_rows
        finally:
            if writer is not None:
                writer.close()
        if not files:  # no rows: an empty in-memory source keeps the schema
            return ArrowSource(schema.empty_table(), label=label)
        return ParquetSource([_uri(folder, f) for f in files])

    def _fits(self, nbytes: float) -> bool:
        """Whether ``nbytes`` staged in the object store stay within this job's budget."""
        if self._budget is None:
            import ray

            total = float(ray.cluster_resources().get("object_store_memory", 0.0))
            self._budget = OBJECT_STORE_SHARE * total
        return nbytes <= self._budget


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding in Parquet: strings, binaries and dictionaries."""
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary)
    return [
        f.name
        for f in schema
        if pa.types.is_dictionary(f.type) or any(check(f.type) for check in text)
    ]


def _driver_held(source: Source) -> bool:
    return isinstance(source, (ArrowSource, DuckDBSource))


def _slices(table: pa.Table) -> Iterator[pa.Table]:
    step = DEFAULT_ROWS_PER_FRAGMENT
    for start in range(0, table.num_rows, step):
        yield table.slice(start, step)


def _batches(reader: pa.RecordBatchReader, label: str) -> Iterator[pa.RecordBatch]:
    import duckdb

    try:
        yield from reader
    except duckdb.Error as exc:
        raise SourceError(f"DuckDB query failed ({label}): {exc}") from exc


class _Stream:
    """An iterator that can take back one item (the part the object store had no room for)."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = iter(items)
        self._back: list[Any] = []

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Any:
        if self._back:
            return self._back.pop()
        return next(self._items)

    def push_back(self, item: Any) -> None:
        self._back.append(item)

    def exhausted(self) -> bool:
        if self._back:
            return False
        try:
            self._back.append(next(self._items))
        except StopIteration:
            return True
        return False


def _uri(folder: str, path: str) -> str:
    """A staged file's location in the form ParquetSource reads on any node."""
    if storage.is_local(folder):
        return path
    return folder.split("://", 1)[0] + "://" + path
