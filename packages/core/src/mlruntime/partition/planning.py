"""Plans a partition run: one count query, batches of partitions, data staged for workers.

The partitions and their sizes come from ONE ``GROUP BY`` query run by DuckDB over the input
(a warehouse table or query, a frame, or Parquet files read through pyarrow, whatever the
filesystem). Partitions are kept in the key order DuckDB gives, so every batch is a contiguous
key range: a partition at least a task's share of the rows is a batch of its own, smaller ones
are packed together, and batches are submitted largest first.

Workers read their batch themselves: from the user's Parquet files with a key-range filter,
or, for tables, queries and frames (which only the driver can read), from one Arrow IPC file
per batch that the driver streams out of DuckDB, sorted by the key, into the run's ``input/``
folder on the storage (one Arrow batch in memory at a time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mlruntime.data.connector import DataConnector
from mlruntime.data.inputs import DuckDBSource, quote_column, relation_of, source_from_object
from mlruntime.data.sources import ArrowSource, ParquetSource, Source
from mlruntime.errors import ColumnError, ConfigError, DataError, SourceError
from mlruntime.partition.layout import RunFolder

__all__ = ["BATCHES_PER_SLOT", "Input", "Partitioned", "make_batches", "open_input"]

BATCHES_PER_SLOT = 4
"""Batches aimed for per concurrent task, so that uneven ones still balance."""

MAX_PARTITIONS_PER_BATCH = 4096
"""Most partitions packed into one batch unless ``max_partitions_per_task`` says otherwise."""

STREAM_ROWS = 262_144
"""Rows DuckDB hands over at once while staging."""


def _ipc_options() -> Any:
    import pyarrow.ipc as ipc

    return ipc.IpcWriteOptions(compression="lz4")


IPC_OPTIONS = _ipc_options()
"""Staged batches are Arrow IPC files, LZ4-compressed: 6x faster to write than Parquet and
read back without decoding (the run reads each once, then deletes it)."""


@dataclass
class Partitioned:
    """The partitions of an input, in DuckDB's key order."""

    ids: list[str]
    keys: list[Any]
    rows: list[int]


class Input:
    """The user's data as a DuckDB relation (for the count query and staging), plus, for
    Parquet files, the source workers filter themselves.

    Args:
        relation: A DuckDB relation over the data.
        parquet: The Parquet source when the data is only Parquet files (read by workers).
        columns: The columns to hand to the function (``None``: all).
        label: What the data is, for messages.
        connection: The DuckDB connection to keep open while the relation is used.
    """

    def __init__(
        self,
        relation: Any,
        parquet: ParquetSource | None,
        columns: list[str] | None,
        label: str,
        connection: Any = None,
    ) -> None:
        self.relation = relation
        self.parquet = parquet
        self.columns = columns
        self.label = label
        self._connection = connection

    @property
    def column_names(self) -> list[str]:
        """The data's columns."""
        return list(self.relation.columns)

    def check_column(self, key: str) -> None:
        """Raise :class:`ColumnError` unless ``key`` is a column of the data."""
        if not isinstance(key, str) or key not in self.column_names:
            cols = ", ".join(self.column_names)
            raise ColumnError(
                f"partition_by column {key!r} is not in the data ({self.label}); columns are {cols}"
            )

    def count(self, key: str) -> Partitioned:
        """The partitions and their row counts: one ``GROUP BY`` query."""
        import duckdb

        q = quote_column(key)
        try:
            table = self.relation.query(
                "__mlruntime_src",
                f"SELECT {q} AS k, count(*) AS n FROM __mlruntime_src GROUP BY {q} "
                f"ORDER BY {q} ASC NULLS LAST",
            ).to_arrow_table()
        except duckdb.Error as exc:
            raise SourceError(f"counting the partitions of {self.label} failed: {exc}") from exc
        keys = table.column("k").to_pylist()
        rows = [int(n) for n in table.column("n").to_pylist()]
        ids = [str(k) for k in keys]
        if len(set(ids)) != len(ids):
            raise DataError(
                f"values of {key!r} that differ read the same as text (e.g. 1 and '1'); "
                "cast the column to one type first"
            )
        return Partitioned(ids, keys, rows)

    def stage(
        self,
        key: str,
        parts: Partitioned,
        batch_of: list[int | None],
        folder: RunFolder,
        gen: int,
    ) -> dict[int, str]:
        """Write each batch's rows (sorted by ``key``) to ``input/g<gen>-b<batch>.arrow``;
        rows of partitions whose batch is ``None`` are skipped. Returns batch -> URI."""
        import duckdb
        import pyarrow.ipc as ipc

        q = quote_column(key)
        wanted = None if self.columns is None else [*self.columns, key]
        select = (
            "*" if wanted is None else ", ".join(quote_column(c) for c in dict.fromkeys(wanted))
        )
        try:
            reader = self.relation.query(
                "__mlruntime_src",
                f"SELECT {select} FROM __mlruntime_src ORDER BY {q} ASC NULLS LAST",
            ).to_arrow_reader(STREAM_ROWS)
        except duckdb.Error as exc:
            raise SourceError(f"reading {self.label} failed: {exc}") from exc
        # (start row, end row, batch) of every partition, in stream order
        segments: list[tuple[int, int, int | None]] = []
        offset = 0
        for n, batch in zip(parts.rows, batch_of, strict=True):
            if segments and segments[-1][2] == batch:
                segments[-1] = (segments[-1][0], offset + n, batch)
            else:
                segments.append((offset, offset + n, batch))
            offset += n
        uris: dict[int, str] = {}
        writer: Any = None
        sink: Any = None
        current: int | None = None
        seg = 0
        position = 0
        try:
            for record_batch in reader:
                chunk = pa.Table.from_batches([record_batch])
                start = 0
                while start < chunk.num_rows:
                    while segments[seg][1] <= position:
                        seg += 1
                    _, hi, batch = segments[seg]
                    take = min(chunk.num_rows - start, hi - position)
                    if batch is not None:
                        if batch != current:
                            if writer is not None:
                                writer.close()
                                sink.close()
                            rel = f"input/g{gen:03d}-b{batch:06d}.arrow"
                            uris[batch] = folder.uri_of(rel)
                            folder.fs.create_dir(folder.file("input"), recursive=True)
                            sink = folder.fs.open_output_stream(folder.file(rel))
                            writer = ipc.new_file(sink, chunk.schema, options=IPC_OPTIONS)
                            current = batch
                        assert writer is not None
                        writer.write_table(chunk.slice(start, take))
                    start += take
                    position += take
        except duckdb.Error as exc:
            raise SourceError(f"reading {self.label} failed: {exc}") from exc
        finally:
            if writer is not None:
                writer.close()
                sink.close()
        if position != offset:
            raise DataError(
                f"{self.label} changed while the run was planned: counted {offset} rows, "
                f"read {position}"
            )
        return uris


def open_input(data: Any) -> Input:
    """Wrap what ``DPF.run`` was given (a warehouse DataFrame, a DuckDB relation, a frame, a
    DataConnector, a path) as an :class:`Input`.

    Raises:
        ConfigError: For data mlruntime cannot read.
    """
    import duckdb

    if data is None:
        raise ConfigError(
            "DPF.run needs data: a DataFrame (session.table(...)), a pandas/polars/Arrow frame, "
            "a DuckDB relation or a DataConnector"
        )
    columns: list[str] | None = None
    if isinstance(data, DataConnector):
        sources = list(data.sources)
        columns = data._columns
    else:
        relation = relation_of(data)
        sources = [DuckDBSource(relation)] if relation is not None else [source_from_object(data)]
    if len(sources) == 1 and isinstance(sources[0], DuckDBSource) and sources[0]._arrow is None:
        source = sources[0]
        return Input(source.relation, None, columns, source.describe())
    connection = duckdb.connect()
    if all(isinstance(s, ParquetSource) for s in sources):
        import pyarrow.dataset as pads

        fragments = [f for s in sources for f in s.fragments()]
        if not fragments:
            raise DataError(f"no rows: {sources[0].describe()} holds no Parquet data")
        files = sorted({f.path for f in fragments})  # type: ignore[attr-defined]
        fs = fragments[0].filesystem  # type: ignore[attr-defined]
        dataset = pads.dataset(files, filesystem=fs, format="parquet")
        first = sources[0]
        merged = first if len(sources) == 1 and isinstance(first, ParquetSource) else None
        merged = merged or ParquetSource(files, fs)
        relation = connection.from_arrow(dataset)
        return Input(relation, merged, columns, merged.describe(), connection)
    tables = [_arrow_of(s) for s in sources]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    label = " + ".join(s.describe() for s in sources)
    return Input(connection.from_arrow(table), None, columns, label, connection)


def _arrow_of(source: Source) -> pa.Table:
    if isinstance(source, ArrowSource):
        return source.table
    if isinstance(source, DuckDBSource):
        return source.materialize().table
    # other sources (CSV, Ray Datasets, plugins): read here once
    return DataConnector([source]).to_arrow()


def make_batches(rows: list[int], slots: int, max_per_batch: int | None = None) -> list[list[int]]:
    """Group partition indices (in key order) into contiguous batches.

    A partition with at least ``total / (slots * BATCHES_PER_SLOT)`` rows is a batch alone;
    smaller neighbours are packed up to that many rows (and ``max_per_batch`` partitions).
    """
    total = sum(rows)
    target = max(1, total // max(1, slots * BATCHES_PER_SLOT))
    cap = max_per_batch or MAX_PARTITIONS_PER_BATCH
    batches: list[list[int]] = []
    current: list[int] = []
    current_rows = 0
    for i, n in enumerate(rows):
        if cap == 1 or n >= target:
            if current:
                batches.append(current)
                current, current_rows = [], 0
            batches.append([i])
            continue
        if current and (current_rows + n > target or len(current) >= cap):
            batches.append(current)
            current, current_rows = [], 0
        current.append(i)
        current_rows += n
    if current:
        batches.append(current)
    return batches
