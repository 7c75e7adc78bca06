"""DataConnector: what users hold — tabular data from anywhere, turned into what frameworks eat.

Construct with ``from_dataframe`` / ``from_sql`` / ``from_dataset`` / ``from_sources`` /
``from_ray_dataset``; read with ``to_pandas`` / ``to_arrow`` / ``to_batches`` /
``to_ray_dataset``, or a framework output (``to_torch_dataset`` ...) provided by a plugin.
``shard(n)`` splits the rows into n disjoint, balanced, deterministic parts.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from mlruntime.data.batching import (
    DEFAULT_SHUFFLE_BUFFER_ROWS,
    MAX_GROUP_ROWS,
    Batch,
    Piece,
    check_batch_size,
    iter_numpy_batches,
    prefetch,
    read_pieces,
)
from mlruntime.data.convert import column_to_numpy
from mlruntime.data.inputs import DuckDBSource, source_from_object
from mlruntime.data.sources import ArrowFragment, Fragment, Source, check_same_schema
from mlruntime.data.worker import allgather as worker_allgather
from mlruntime.data.worker import current_rank
from mlruntime.errors import ColumnError, ConfigError, DataError, NotInWorkerError

__all__ = ["DataConnector", "ShardedDataConnector", "resolve_worker_shard"]

logger = logging.getLogger(__name__)


class DataConnector:
    """Tabular data from one or more sources, read lazily as Arrow.

    Args:
        sources: The sources (all must share one schema).
        columns: Keep only these columns (default: all).
        pieces: Internal: the row ranges of a shard.

    Raises:
        DataError: If the sources have different schemas.
        ColumnError: If ``columns`` names a column that does not exist.

    Example:
        >>> import pandas as pd
        >>> dc = DataConnector.from_dataframe(pd.DataFrame({"x": [1, 2, 3], "y": [0, 1, 0]}))
        >>> next(dc.to_batches(batch_size=2))["x"].tolist()
        [1, 2]
    """

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        columns: Sequence[str] | None = None,
        pieces: Sequence[Piece] | None = None,
    ) -> None:
        if not sources:
            raise ConfigError("a DataConnector needs at least one source")
        self._sources = list(sources)
        self._pieces = list(pieces) if pieces is not None else None
        self._columns = list(columns) if columns is not None else None
        self._schema: pa.Schema | None = None
        self._epoch = itertools.count()
        self._lock = threading.Lock()
        self.expand_dims = True
        """Scalar columns as ``(B, 1)`` in torch batches (``False``: ``(B,)``)."""
        if self._columns is not None:
            self._check_columns(self._columns, self._full_schema())

    # -- constructors -----------------------------------------------------------------------
    # Each takes Snowflake's ``ingestor_class=`` (None: mlruntime's reader; RayDataIngester:
    # through Ray Data) and ``expand_dims=`` (scalar columns as (B, 1) in torch batches);
    # other Snowflake-only options (``file_cache_config`` ...) are accepted and ignored.

    @classmethod
    def from_dataframe(
        cls,
        df: Any,
        ingestor_class: Any = None,
        *,
        expand_dims: bool = True,
        **kwargs: Any,
    ) -> DataConnector:
        """From a DuckDB relation or DataFrame (``session.table("t")``), a pandas/polars frame
        or an Arrow table.

        Raises:
            ConfigError: For an object that is not a frame, or an unsupported ingestor.
        """
        if isinstance(df, DataConnector):
            base = df._derive()
        else:
            base = DataConnector([source_from_object(df)])
        return cls._finish(base, ingestor_class, expand_dims, kwargs)

    @classmethod
    def from_sql(
        cls,
        query: str,
        session: Any = None,
        ingestor_class: Any = None,
        *,
        expand_dims: bool = True,
        **kwargs: Any,
    ) -> DataConnector:
        """From a SQL query on a warehouse session (default: ``get_active_session()``).

        Raises:
            QueryError: If the query is invalid.
        """
        from mlruntime.data.catalog import get_catalog

        relation = (session or get_catalog().default_session()).sql(query)
        base = DataConnector([DuckDBSource(relation, label=" ".join(query.split()))])
        return cls._finish(base, ingestor_class, expand_dims, kwargs)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        version: str | None = None,
        ingestor_class: Any = None,
        *,
        expand_dims: bool = True,
        **kwargs: Any,
    ) -> DataConnector:
        """From a dataset version object, or a dataset name and version (default: latest).

        Raises:
            DatasetNotFoundError: If the dataset or version does not exist.
        """
        from mlruntime.data.catalog import get_catalog

        if isinstance(version, type):  # Snowflake's from_dataset(ds, ingestor_class)
            version, ingestor_class = None, version
        if isinstance(dataset, (str, bytes)):
            base = DataConnector([get_catalog().dataset_source(str(dataset), version)])
        else:
            base = DataConnector([source_from_object(dataset)])
        return cls._finish(base, ingestor_class, expand_dims, kwargs)

    @classmethod
    def from_sources(
        cls,
        *args: Any,
        filesystem: Any = None,
        ingestor_class: Any = None,
        expand_dims: bool = True,
        **kwargs: Any,
    ) -> DataConnector:
        """From paths, globs, folders, URIs, Source objects, frames or relations (one or a
        list): ``from_sources(sources)`` or Snowflake's ``from_sources(session, sources)``.

        Args:
            args: ``sources``, or ``session, sources`` (the session is not needed here).
            filesystem: A pyarrow or fsspec filesystem for the paths.
            ingestor_class: ``None`` or ``RayDataIngester``.
            expand_dims: Scalar columns as ``(B, 1)`` in torch batches.

        Raises:
            SourceError: For a missing path or unknown format.
            ConfigError: For no sources.
        """
        if "sources" in kwargs:
            args = (*args, kwargs.pop("sources"))
        if len(args) == 2 and hasattr(args[0], "sql") and not isinstance(args[0], str):
            args = args[1:]  # Snowflake's leading session
        if len(args) != 1:
            raise ConfigError("from_sources takes the sources (optionally after a session)")
        sources = args[0]
        items = sources if isinstance(sources, (list, tuple)) else [sources]
        if not items:
            raise ConfigError("from_sources needs at least one path or source")
        base = DataConnector([source_from_object(s, filesystem) for s in items])
        return cls._finish(base, ingestor_class, expand_dims, kwargs)

    @classmethod
    def from_ray_dataset(
        cls,
        ray_ds: Any,
        ingestor_class: Any = None,
        *,
        expand_dims: bool = True,
        **kwargs: Any,
    ) -> DataConnector:
        """From a ``ray.data.Dataset`` (its blocks stay in Ray's object store; the runtime
        layer provides the source, as the plugin registry's built-in ``ray`` plugin)."""
        base = DataConnector([source_from_object(ray_ds)])
        return cls._finish(base, ingestor_class, expand_dims, kwargs)

    @classmethod
    def _finish(
        cls, base: DataConnector, ingestor_class: Any, expand_dims: bool, options: dict[str, Any]
    ) -> DataConnector:
        from mlruntime.data.ingest import apply_ingestor

        equal = options.pop("equal", None)
        if equal is not None and not issubclass(cls, ShardedDataConnector):
            raise ConfigError(
                "equal= splits data among ranks: use ShardedDataConnector.from_...(..., equal=...)"
            )
        if options:
            logger.info(
                "ignoring Snowflake-only DataConnector options %s (no effect in mlruntime)",
                ", ".join(sorted(options)),
            )
        out = apply_ingestor(base, ingestor_class)
        if issubclass(cls, ShardedDataConnector):
            if isinstance(out, ShardedDataConnector) and equal is None:
                equal = out.equal
            out = cls(out, equal=equal)
        out.expand_dims = bool(expand_dims)
        return out

    @property
    def data_sources(self) -> list[Source]:
        """The sources read (Snowflake's ``data_sources``)."""
        return list(self._sources)

    # -- description ------------------------------------------------------------------------

    def _full_schema(self) -> pa.Schema:
        if self._schema is None:
            self._schema = check_same_schema([(s.describe(), s.schema) for s in self._sources])
        return self._schema

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the selected columns."""
        schema = self._full_schema()
        if self._columns is None:
            return schema
        return pa.schema([schema.field(c) for c in self._columns])

    @property
    def columns(self) -> list[str]:
        """Column names."""
        return list(self.schema.names)

    @property
    def sources(self) -> list[Source]:
        """The underlying sources."""
        return list(self._sources)

    @property
    def num_rows(self) -> int | None:
        """Row count when known without reading data, else ``None``."""
        if self._pieces is not None:
            counts = [p.num_rows for p in self._pieces]
            return None if any(c is None for c in counts) else sum(c or 0 for c in counts)
        counts = [s.num_rows for s in self._sources]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)

    def count_rows(self) -> int:
        """The exact row count, reading fragments whose count is not in metadata."""
        return sum(_piece_rows(p) for p in self.pieces())

    def __repr__(self) -> str:
        sources = ", ".join(s.describe() for s in self._sources[:3])
        if len(self._sources) > 3:
            sources += f", +{len(self._sources) - 3} more"
        try:
            cols = ", ".join(f"{f.name}: {f.type}" for f in self.schema)
        except Exception as exc:  # a repr must not raise
            cols = f"<schema unavailable: {exc}>"
        rows = self.num_rows
        shard = f", {len(self._pieces)} pieces" if self._pieces is not None else ""
        return (
            f"DataConnector(sources=[{sources}], columns=[{cols}], "
            f"rows={rows if rows is not None else 'unknown'}{shard})"
        )

    @staticmethod
    def _check_columns(columns: Sequence[str], schema: pa.Schema) -> None:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ColumnError(
                f"column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                f"{'are' if len(missing) > 1 else 'is'} not in the data; columns are "
                f"{', '.join(schema.names)}"
            )

    def select(self, columns: Sequence[str]) -> DataConnector:
        """A connector over only ``columns``, in that order.

        Raises:
            ColumnError: If a column does not exist.
        """
        if isinstance(columns, str):
            columns = [columns]
        self._check_columns(columns, self.schema)
        return self._derive(columns=list(columns))

    def _derive(
        self, *, columns: Sequence[str] | None = None, pieces: Sequence[Piece] | None = None
    ) -> DataConnector:
        out = DataConnector.__new__(DataConnector)
        out._sources = self._sources
        out._pieces = list(pieces) if pieces is not None else self._pieces
        out._columns = list(columns) if columns is not None else self._columns
        out._schema = self._schema
        out._epoch = itertools.count()
        out._lock = threading.Lock()
        out.expand_dims = getattr(self, "expand_dims", True)
        return out

    # -- pieces and shards ------------------------------------------------------------------

    def pieces(self) -> list[Piece]:
        """The row ranges this connector reads, in order."""
        if self._pieces is not None:
            return list(self._pieces)
        return [Piece(f) for s in self._sources for f in s.fragments()]

    def shard(self, n: int, equal: bool = False) -> list[DataConnector]:
        """Split the rows into ``n`` disjoint, deterministic, row-balanced shards.

        Shard ``i`` gets rows ``[i*T//n, (i+1)*T//n)`` of the ``T`` rows in reading order, so
        every row is in exactly one shard and sizes differ by at most one. With ``equal=True``
        each shard gets ``T//n`` rows and the last ``T % n`` rows are dropped (and logged), as
        DDP needs ranks to take the same number of steps.

        Args:
            n: Number of shards.
            equal: Give every shard the same number of rows.

        Raises:
            ConfigError: If ``n <= 0`` or ``n`` is larger than the number of rows.
            DataError: If the data has no rows.
        """
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
            raise ConfigError(f"shard count must be a positive integer, got {n!r}")
        pieces = self.pieces()
        if not equal and len(pieces) >= n and any(p.num_rows is None for p in pieces):
            # Row counts unknown without parsing (CSV ranges): whole pieces, balanced by bytes.
            return [self._derive(pieces=[pieces[i] for i in g]) for g in byte_groups(pieces, n)]
        counts = [_piece_rows(p) for p in pieces]
        total = sum(counts)
        if total == 0:
            raise DataError(f"cannot shard {self!r}: the data has no rows")
        if n > total:
            raise ConfigError(
                f"cannot make {n} shards of {total} rows: every shard would need at least one "
                "row; use fewer workers or more data"
            )
        per = total // n
        if equal:
            bounds = [i * per for i in range(n + 1)]
            if total - n * per:
                logger.warning(
                    "shard(%d, equal=True) drops the last %d of %d rows so every shard has %d",
                    n,
                    total - n * per,
                    total,
                    per,
                )
        else:
            bounds = [i * total // n for i in range(n + 1)]
        offsets = list(itertools.accumulate(counts, initial=0))
        return [
            self._derive(pieces=_pieces_in_range(pieces, offsets, lo, hi))
            for lo, hi in itertools.pairwise(bounds)
        ]

    @property
    def is_shard(self) -> bool:
        """Whether this connector is a planned part of its sources (made by ``shard``,
        ``skip_rows`` or ``split_pieces``) rather than all of their rows."""
        return self._pieces is not None

    def skip_rows(self, n: int) -> DataConnector:
        """A connector over the rows after the first ``n`` (in reading order), without
        reading the skipped ones beyond the fragment the cut falls in.

        Raises:
            ConfigError: If ``n`` is negative.
        """
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"rows to skip must be a non-negative integer, got {n!r}")
        pieces = self.pieces()
        offsets = list(itertools.accumulate((_piece_rows(p) for p in pieces), initial=0))
        return self._derive(pieces=_pieces_in_range(pieces, offsets, int(n), offsets[-1]))

    def split_pieces(self, index: int, count: int) -> DataConnector:
        """A connector over every ``count``-th piece starting at ``index`` (whole pieces, for
        DataLoader workers: each piece is read by one worker only)."""
        if not 0 <= index < count:
            raise ConfigError(f"index must be in [0, {count}), got {index}")
        return self._derive(pieces=self.pieces()[index::count])

    # -- outputs ----------------------------------------------------------------------------

    def _tables(self, pieces: Sequence[Piece], depth: int = 2) -> Iterator[pa.Table]:
        if len(pieces) <= 1 or all(isinstance(p.fragment, ArrowFragment) for p in pieces):
            # one piece (the consumer waits for it anyway), or slices of a table in memory: a
            # reader thread would only add its start and a hand-over (~1 ms of a small read)
            depth = 0
        return prefetch(read_pieces(pieces, self._columns), depth=depth)

    def iter_tables(
        self, columns: Sequence[str] | None = None, prefetch_tables: int = 2
    ) -> Iterator[pa.Table]:
        """Stream the rows as Arrow tables (a fragment or a few at a time), read ahead in the
        background; for consumers that convert columns themselves.

        Raises:
            ColumnError: If ``columns`` names an unknown column.
        """
        if columns is not None:
            self._check_columns(columns, self.schema)
        read = list(columns) if columns is not None else self._columns
        return prefetch(read_pieces(self.pieces(), read), depth=prefetch_tables)

    def to_arrow(self) -> pa.Table:
        """Read every row into one Arrow table (chunked; no copy of the data read)."""
        source = self._single_duckdb()
        if source is not None:
            table = source.materialize().table
            return table if self._columns is None else table.select(self._columns)
        tables = list(self._tables(self.pieces()))
        if not tables:
            return self.schema.empty_table()
        return pa.concat_tables(tables)

    def _single_duckdb(self) -> DuckDBSource | None:
        if self._pieces is None and len(self._sources) == 1:
            source = self._sources[0]
            if isinstance(source, DuckDBSource):
                return source
        return None

    def to_pandas(self, limit: int | None = None) -> Any:
        """Read rows into a pandas DataFrame (at most ``limit`` rows).

        Numeric and boolean columns are streamed into preallocated arrays, one piece at a time,
        so peak memory stays near the size of the frame (integers with nulls become float64
        with NaN, as pandas does). Other columns convert through Arrow.

        Raises:
            ConfigError: If ``limit`` is negative.
        """
        import pandas as pd

        if limit is not None and limit < 0:
            raise ConfigError(f"limit must be >= 0, got {limit}")
        total = self.num_rows
        if self._single_duckdb() is not None or total is None:
            table = self.to_arrow() if limit is None else self._head(limit)
            return table.to_pandas(split_blocks=True)  # never self_destruct: tables may be shared
        total = total if limit is None else min(limit, total)
        schema = self.schema
        numeric = [f.name for f in schema if _streams_to_numpy(f.type)]
        filled: dict[str, np.ndarray] = {}
        rest: dict[str, list[pa.Array]] = {f.name: [] for f in schema if f.name not in numeric}
        pos = 0
        stream = self._tables(self.pieces(), depth=1)
        for table in stream:
            table = table.slice(0, total - pos)
            n = table.num_rows
            for name in numeric:
                values = column_to_numpy(table.column(name))
                target = filled.get(name)
                if target is None:
                    target = filled[name] = np.empty(total, dtype=values.dtype)
                elif values.dtype != target.dtype:  # e.g. ints that turned out to hold nulls
                    target = filled[name] = target.astype(np.result_type(target, values))
                target[pos : pos + n] = values
            for name, chunks in rest.items():
                chunks.extend(table.column(name).chunks)
            pos += n
            if pos >= total:
                stream.close()  # type: ignore[attr-defined]
                break
        columns: dict[str, Any] = {}
        for field in schema:
            if field.name in filled:
                columns[field.name] = filled[field.name][:pos]
            elif field.name in rest:
                chunked = pa.chunked_array(rest.pop(field.name), type=field.type)
                columns[field.name] = chunked.to_pandas(split_blocks=True)
            else:  # no rows at all
                columns[field.name] = np.empty(0, dtype=field.type.to_pandas_dtype())
        return pd.DataFrame(columns, copy=False)

    def _head(self, limit: int) -> pa.Table:
        taken, rows = [], 0
        stream = self._tables(self.pieces(), depth=1)
        for table in stream:
            if rows >= limit:
                break
            taken.append(table.slice(0, limit - rows))
            rows += taken[-1].num_rows
        stream.close()  # type: ignore[attr-defined]
        return pa.concat_tables(taken) if taken else self.schema.empty_table()

    def to_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        drop_last_batch: bool = True,
        seed: int | None = None,
        *,
        epoch: int | None = None,
        columns: Sequence[str] | None = None,
        shuffle_buffer_size: int | None = None,
        prefetch_tables: int = 2,
        read_rows: int = MAX_GROUP_ROWS,
    ) -> Iterator[Batch]:
        """Yield dicts of column -> numpy array, each of exactly ``batch_size`` rows.

        Batches span fragment and file boundaries. Without shuffle, batches are zero-copy
        (read-only) views of Arrow memory where the column type allows.

        Args:
            batch_size: Rows per batch.
            shuffle: Shuffle rows: fragment order is permuted and windows of
                ``shuffle_buffer_size`` rows mixing several fragments are permuted.
            drop_last_batch: Drop the final short batch (else it is yielded).
            seed: Seed for a reproducible shuffle; combined with the epoch so each epoch
                differs. ``None``: a fresh random order every time.
            epoch: The epoch to shuffle for (default: a counter incremented by every call).
            columns: Columns to return (default: all selected columns).
            shuffle_buffer_size: Rows mixed at once (default 262,144).
            prefetch_tables: Tables read ahead in the background.
            read_rows: Rows read at once at most (Parquet row groups of one file are merged
                up to this; default 262,144). Smaller reads lower peak memory.

        Raises:
            ConfigError: If ``batch_size`` is not a positive integer.
            ColumnError: If ``columns`` names an unknown column.
        """
        size = check_batch_size(batch_size)
        if columns is not None:
            self._check_columns(columns, self.schema)
        rng = self._rng(seed, epoch) if shuffle else None
        pieces = self.pieces()
        if rng is not None:
            pieces = [pieces[i] for i in rng.permutation(len(pieces))]
        read_columns = list(columns) if columns is not None else self._columns
        reads = read_pieces(pieces, read_columns, max_rows=read_rows)
        tables = prefetch(reads, depth=prefetch_tables)
        return iter_numpy_batches(
            tables,
            size,
            drop_last_batch=drop_last_batch,
            rng=rng,
            shuffle_buffer_rows=shuffle_buffer_size or DEFAULT_SHUFFLE_BUFFER_ROWS,
        )

    def _rng(self, seed: int | None, epoch: int | None) -> np.random.Generator:
        if epoch is None:
            with self._lock:
                epoch = next(self._epoch)
        if seed is None:
            return np.random.default_rng()
        return np.random.default_rng([int(seed), int(epoch)])

    # -- plugin adapters --------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("to_") and not name.startswith("__"):
            from mlruntime.plugins.registry import load_adapter

            adapter = load_adapter(name)

            def bound(*args: Any, **kwargs: Any) -> Any:
                return adapter(self, *args, **kwargs)

            bound.__name__ = name
            bound.__doc__ = getattr(adapter, "__doc__", None)
            return bound
        raise AttributeError(f"'DataConnector' object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        state.pop("_epoch", None)
        if self._pieces is not None:
            # A shard travels with its pieces only; the full sources (whole in-memory tables,
            # DuckDB relations) stay on the driver.
            state["_schema"] = self._full_schema()
            state["_sources"] = [
                _PlannedSource(state["_schema"], s.describe()) for s in self._sources
            ]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._epoch = itertools.count()


class _PlannedSource(Source):
    """Stands in for a source inside a shard sent to a worker (the shard's pieces carry the
    rows)."""

    def __init__(self, schema: pa.Schema, description: str) -> None:
        self._schema = schema
        self._description = description

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    @property
    def num_rows(self) -> int | None:
        return None

    def fragments(self) -> list[Fragment]:
        raise ConfigError(f"{self._description} stays on the driver; this process holds a shard")

    def describe(self) -> str:
        return self._description


def _streams_to_numpy(typ: pa.DataType) -> bool:
    return bool(pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ))


def byte_groups(pieces: Sequence[Piece], n: int) -> list[list[int]]:
    """Indices of ``pieces`` in ``n`` contiguous groups of about equal bytes (a piece whose
    size is unknown counts as the average of the others)."""
    sizes = [getattr(p.fragment, "nbytes", None) for p in pieces]
    known = [s for s in sizes if s]
    default = (sum(known) / len(known)) if known else 1.0
    weights = [float(s) if s else default for s in sizes]
    total = sum(weights)
    groups: list[list[int]] = [[] for _ in range(n)]
    acc = 0.0
    for i, weight in enumerate(weights):
        middle = acc + weight / 2  # a piece goes to the group its middle falls in
        groups[min(n - 1, int(middle * n / total))].append(i)
        acc += weight
    return groups


def _piece_rows(piece: Piece) -> int:
    rows = piece.num_rows
    if rows is None:
        full = piece.fragment.count_rows()
        stop = full if piece.stop is None else min(piece.stop, full)
        rows = stop - piece.start
    return rows


def _pieces_in_range(pieces: list[Piece], offsets: list[int], lo: int, hi: int) -> list[Piece]:
    """Pieces covering global rows ``[lo, hi)``, cut at the range ends."""
    out = []
    first = max(0, bisect.bisect_right(offsets, lo) - 1)
    for i in range(first, len(pieces)):
        start, stop = offsets[i], offsets[i + 1]
        if start >= hi:
            break
        if stop <= lo or stop == start:
            continue
        a, b = max(lo, start) - start, min(hi, stop) - start
        piece = pieces[i]
        out.append(Piece(piece.fragment, piece.start + a, piece.start + b))
    return out


class ShardedDataConnector(DataConnector):
    """A DataConnector to be split among the workers of a distributed job.

    In a job's ``dataset_map``, a ShardedDataConnector is split into one part per rank (a plain
    :class:`DataConnector` gives every rank all its rows). On a worker, :meth:`get_shard`
    returns this rank's part, and reading the connector itself (``to_pandas``,
    ``to_torch_dataset`` ...) reads only that part, straight from storage; on the driver it
    reads all rows. The plan the job makes travels to the workers, never the data: frames and
    warehouse results are staged first (see ``docs/cluster.md``).

    Args:
        sources: The sources (or a DataConnector to shard).
        columns: Keep only these columns (default: all).
        equal: Give every shard the same number of rows, dropping the tail (DDP needs ranks to
            take the same number of steps). ``None``: the job decides (PyTorch and TensorFlow
            jobs use equal shards, others do not).

    Raises:
        ConfigError: For ``equal`` that is not a bool or ``None``.

    Example:
        >>> import pandas as pd
        >>> sharded = ShardedDataConnector.from_dataframe(pd.DataFrame({"x": range(10)}))
        >>> sharded.get_shard(rank=1, world_size=2).to_pandas()["x"].tolist()
        [5, 6, 7, 8, 9]
    """

    def __init__(
        self,
        sources: Sequence[Source] | DataConnector,
        *,
        columns: Sequence[str] | None = None,
        pieces: Sequence[Piece] | None = None,
        equal: bool | None = None,
    ) -> None:
        expand = True
        if isinstance(sources, DataConnector):
            base = sources
            sources = base._sources
            columns = base._columns if columns is None else columns
            pieces = base._pieces if pieces is None else pieces
            expand = getattr(base, "expand_dims", True)
        super().__init__(sources, columns=columns, pieces=pieces)
        self.expand_dims = expand
        self.equal = _check_equal(equal)
        self._assigned: tuple[int, int, DataConnector] | None = None

    # Constructors: DataConnector's (``from_dataframe``, ``from_sql``, ``from_dataset``,
    # ``from_sources``, ``from_ray_dataset``), each also taking ``equal=``.

    # -- shards -------------------------------------------------------------------------------

    def get_shard(self, rank: int | None = None, world_size: int | None = None) -> DataConnector:
        """This worker's shard: by ``rank``/``world_size`` or, inside a job, the worker's own.

        Raises:
            NotInWorkerError: If called outside a worker without ``rank`` and ``world_size``.
            ConfigError: If ``rank`` is not in ``[0, world_size)``.
        """
        if rank is None or world_size is None:
            rank, world_size = _current_rank()
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, {world_size}), got {rank}")
        if self._assigned is not None and self._assigned[:2] == (rank, world_size):
            shard = self._assigned[2]
        else:
            shard = self.plan(world_size)[rank]
        if isinstance(shard, _Deferred):
            shard = self._count_on_workers(rank, world_size)
            self._assigned = (rank, world_size, shard)  # once: every rank gathers once
        return shard._derive(columns=self._columns) if self._columns is not None else shard

    def plan(self, world_size: int, equal: bool | None = None) -> list[DataConnector]:
        """Every rank's shard for a job of ``world_size`` workers (``equal`` defaults to the
        connector's own, else unequal).

        Raises:
            ConfigError: If there are more shards than rows.
        """
        if equal is None:
            equal = bool(self.equal)
        plain = self._as_plain()
        if equal and any(p.num_rows is None for p in plain.pieces()):
            # Equal parts need row counts, which these pieces (CSV ranges) learn only when
            # read: the workers count them (see _count_on_workers), not the driver.
            return [_Deferred(world_size, equal) for _ in range(world_size)]  # type: ignore[misc]
        return DataConnector.shard(plain, world_size, equal=equal)

    def assign(self, rank: int, world_size: int, shard: DataConnector) -> ShardedDataConnector:
        """A copy that knows its shard for ``rank`` of ``world_size`` (a job sends each rank
        one, so no worker plans again)."""
        out = self._derive()
        assert isinstance(out, ShardedDataConnector)
        out._assigned = (rank, world_size, shard)
        return out

    def pieces(self) -> list[Piece]:
        """Inside a job: this rank's row ranges; elsewhere: all of them."""
        if current_rank(use_env=False) is not None:
            return self.get_shard().pieces()
        return super().pieces()

    @property
    def num_rows(self) -> int | None:
        """Row count when known without reading data (inside a job: this rank's)."""
        if current_rank(use_env=False) is not None:
            return self.get_shard().num_rows
        return super().num_rows

    def _single_duckdb(self) -> DuckDBSource | None:
        return None if current_rank(use_env=False) is not None else super()._single_duckdb()

    def _count_on_workers(self, rank: int, world_size: int) -> DataConnector:
        """Equal shards of pieces whose row counts are unknown: every rank counts the rows of
        about 1/world of the bytes, the counts are all-gathered, and every rank then plans
        the same exact, equal shards."""
        plain = self._as_plain()
        pieces = plain.pieces()
        mine = byte_groups(pieces, world_size)[rank] if len(pieces) >= world_size else []
        if len(pieces) < world_size and rank == 0:
            mine = list(range(len(pieces)))
        counted = {i: _piece_rows(pieces[i]) for i in mine}
        for counts in worker_allgather(counted):
            for i, rows in counts.items():
                pieces[i].fragment.num_rows = rows
        return DataConnector.shard(plain, world_size, equal=True)[rank]

    def _as_plain(self) -> DataConnector:
        return DataConnector._derive(self)

    def _derive(
        self, *, columns: Sequence[str] | None = None, pieces: Sequence[Piece] | None = None
    ) -> DataConnector:
        if pieces is not None:  # a part of the rows: a plain connector
            return DataConnector._derive(self, columns=columns, pieces=pieces)
        out = DataConnector._derive(self, columns=columns)
        out.__class__ = ShardedDataConnector
        out.equal = self.equal  # type: ignore[attr-defined]
        out._assigned = self._assigned  # type: ignore[attr-defined]
        return out

    def select(self, columns: Sequence[str]) -> ShardedDataConnector:
        """A sharded connector over only ``columns``, in that order.

        Raises:
            ColumnError: If a column does not exist.
        """
        return super().select(columns)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"Sharded{super().__repr__()[:-1]}, equal={self.equal})"


class _Deferred:
    """A shard planned on the workers (see ``ShardedDataConnector._count_on_workers``)."""

    def __init__(self, world_size: int, equal: bool) -> None:
        self.world_size = world_size
        self.equal = equal


def _check_equal(value: Any) -> bool | None:
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"equal must be True, False or None, got {value!r}")
    return None if value is None else bool(value)


def resolve_worker_shard(connector: DataConnector) -> DataConnector:
    """The rows this process should read, for framework adapters (``to_torch_dataset`` ...).

    A ShardedDataConnector gives this rank's shard inside a job; a plain DataConnector is read
    whole (on every rank), as Snowflake's connectors are.

    Raises:
        NotInWorkerError: For a ShardedDataConnector outside a distributed worker.
    """
    if isinstance(connector, ShardedDataConnector):
        return connector.get_shard()
    return connector


def _current_rank() -> tuple[int, int]:
    rank = current_rank()
    if rank is not None:
        return rank
    raise NotInWorkerError(
        "get_shard() without rank/world_size must run inside a distributed worker; pass "
        "get_shard(rank=..., world_size=...) to pick a shard by hand"
    )
