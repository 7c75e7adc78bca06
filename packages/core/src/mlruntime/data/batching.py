"""The read pipeline behind every DataConnector output: pieces -> Arrow tables -> numpy batches.

Reads run in a background thread (pyarrow releases the GIL) a few tables ahead of the consumer, so
I/O and compute overlap and memory stays bounded. Batches are numpy views of Arrow memory where
the type allows; only batches spanning two tables and shuffled windows are copied. Shuffling is
vectorized: piece order is permuted, then windows spanning several pieces are permuted as a whole.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

import numpy as np
import pyarrow as pa

from mlruntime.data.convert import table_to_numpy
from mlruntime.data.sources import Fragment, ParquetFragment, read_row_groups

T = TypeVar("T")

__all__ = [
    "DEFAULT_SHUFFLE_BUFFER_ROWS",
    "Piece",
    "ReadAhead",
    "check_batch_size",
    "iter_numpy_batches",
    "prefetch",
    "read_pieces",
]

DEFAULT_SHUFFLE_BUFFER_ROWS = 262_144
"""Rows mixed together at once when shuffling (at least two pieces' worth are always mixed)."""

MAX_GROUP_ROWS = 262_144
"""Consecutive row groups of one Parquet file are read in one call up to this many rows."""

Batch = dict[str, np.ndarray]


@overload
def check_batch_size(value: Any, *, allow_none: Literal[False] = False) -> int: ...


@overload
def check_batch_size(value: Any, *, allow_none: bool) -> int | None: ...


def check_batch_size(value: Any, *, allow_none: bool = False) -> int | None:
    """Return ``value`` as a batch size (rows per batch).

    Raises:
        ConfigError: Unless it is a positive integer (or ``None`` when ``allow_none``).
    """
    from mlruntime.errors import ConfigError

    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        expected = "a positive integer or None" if allow_none else "a positive integer"
        raise ConfigError(f"batch_size must be {expected}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of a fragment (``stop=None``: to its end)."""

    fragment: Fragment
    start: int = 0
    stop: int | None = None

    @property
    def whole(self) -> bool:
        """Whether the piece covers its whole fragment."""
        return self.start == 0 and (self.stop is None or self.stop == self.fragment.num_rows)

    @property
    def num_rows(self) -> int | None:
        """Rows in the piece, if known without reading."""
        total = self.fragment.num_rows if self.stop is None else self.stop
        return None if total is None else total - self.start

    def __reduce__(self) -> tuple[Any, ...]:
        if not self.whole and self.stop is not None:
            narrowed = self.fragment.narrow(self.start, self.stop)
            if narrowed is not None:  # ship only the piece's own rows
                return (Piece, (narrowed, 0, None))
        return (Piece, (self.fragment, self.start, self.stop))

    def read(self, columns: Sequence[str] | None) -> pa.Table:
        """Read the piece's rows as an Arrow table."""
        table = self.fragment.read(columns)
        if self.whole:
            return table
        stop = table.num_rows if self.stop is None else min(self.stop, table.num_rows)
        return table.slice(self.start, max(0, stop - self.start))


def read_pieces(
    pieces: Iterable[Piece], columns: Sequence[str] | None, max_rows: int = MAX_GROUP_ROWS
) -> Iterator[pa.Table]:
    """Read pieces in order, merging runs of whole row groups of one Parquet file into one read
    of at most ``max_rows`` rows (a single larger row group is still read whole)."""
    run: list[ParquetFragment] = []
    run_rows = 0

    def flush() -> Iterator[pa.Table]:
        nonlocal run, run_rows
        if run:
            first = run[0]
            groups = [f.row_group for f in run]
            yield read_row_groups(first.filesystem, first.path, groups, columns)
            run, run_rows = [], 0

    for piece in pieces:
        frag = piece.fragment
        if isinstance(frag, ParquetFragment) and piece.whole:
            same_file = run and run[0].path == frag.path and run[0].filesystem is frag.filesystem
            if run and (not same_file or run_rows + (frag.num_rows or 0) > max_rows):
                yield from flush()
            run.append(frag)
            run_rows += frag.num_rows or 0
            continue
        yield from flush()
        yield piece.read(columns)
    yield from flush()


_END = object()


class ReadAhead(Iterator[T]):
    """Pull ``items`` in a background thread from now on, at most ``depth`` items ahead of the
    consumer: work that overlaps whatever the caller does next (a worker importing its
    framework reads its shard meanwhile; pyarrow and numpy copies release the GIL).

    Iterate it to take the items in order; errors raised by the producer are re-raised there.
    :meth:`close` stops the thread and drops what it had read; call it when the items are not
    all taken (the thread holds the iterator until then).

    Args:
        items: The work, an iterator (a generator runs in the thread from its first step).
        depth: Items kept ready at most before the first is taken (>= 1).
        then: Items kept ready at most once the consumer has begun (default: ``depth``). A
            head start can be large while its consumer is not there yet, and small after: the
            consumer keeps (caches) what it took, and both together stay within one budget.
        name: The thread's name.
    """

    def __init__(
        self,
        items: Iterator[T],
        depth: int = 2,
        name: str = "mlruntime-prefetch",
        then: int | None = None,
    ) -> None:
        self._limit = max(1, depth)
        self._then = self._limit if then is None else max(1, then)
        self._buffer: deque[object] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._done = False
        self._thread = threading.Thread(target=self._produce, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                with self._cond:
                    while not self._stop and len(self._buffer) >= self._limit:
                        self._cond.wait()
                    if self._stop:
                        return
                    self._buffer.append(item)
                    self._cond.notify_all()
            self._finish(_END)
        except BaseException as exc:  # handed to the consumer
            self._finish(exc)
        finally:  # a generator stopped early runs its own clean-up (its readers) here
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _finish(self, marker: object) -> None:
        with self._cond:  # past the limit: a marker holds no data
            self._buffer.append(marker)
            self._cond.notify_all()

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        with self._cond:
            while not self._buffer and not self._stop:
                self._cond.wait()
            if not self._buffer:  # closed (from another thread) while waiting
                self._done = True
                raise StopIteration
            item = self._buffer.popleft()
            self._limit = self._then
            self._cond.notify_all()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item  # type: ignore[return-value]

    def close(self, wait: bool = True) -> None:
        """Stop the producer and drop what it read. It ends once its current item is made:
        ``wait`` for that (and for the source's clean-up), or not (on the way out of an error:
        the thread then finishes the item by itself, and the error is not held up by it)."""
        self._done = True
        with self._cond:
            self._stop = True
            self._buffer.clear()
            self._cond.notify_all()
        if wait:
            self._thread.join()
            self._buffer.clear()  # a marker it added while stopping


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run ``items`` in a background thread, staying at most ``depth`` items ahead.

    Nothing runs before the first item is asked for. Errors raised by the producer are
    re-raised in the consumer. Closing the returned generator (or breaking out of a loop over
    it) stops the thread.
    """
    if depth <= 0:
        yield from items
        return
    ahead = ReadAhead(items, depth)
    try:
        yield from ahead
    finally:
        ahead.close()


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return {k: v[start:stop] for k, v in batch.items()}


def iter_numpy_batches(
    tables: Iterable[pa.Table],
    batch_size: int,
    *,
    columns: Sequence[str] | None = None,
    drop_last_batch: bool = True,
    rng: np.random.Generator | None = None,
    shuffle_buffer_rows: int = DEFAULT_SHUFFLE_BUFFER_ROWS,
    min_pieces_per_window: int = 2,
    convert: Callable[[pa.Table, Sequence[str] | None], Batch] | None = None,
) -> Iterator[Batch]:
    """Turn a stream of Arrow tables into dicts of numpy arrays of exactly ``batch_size`` rows.

    Args:
        tables: Arrow tables, e.g. from :func:`read_pieces` (possibly through :func:`prefetch`).
        batch_size: Rows per batch.
        columns: Columns to convert (default: all).
        drop_last_batch: Drop a final batch shorter than ``batch_size`` (else yield it).
        rng: Shuffle rows with this generator; ``None`` keeps the order.
        shuffle_buffer_rows: Rows permuted together when shuffling.
        min_pieces_per_window: Tables mixed together at least, so rows of different fragments mix
            even when one fragment is larger than the buffer.
        convert: Table -> dict of arrays (default :func:`mlruntime.convert.table_to_numpy`).
    """
    to_numpy = convert or (lambda t, c: table_to_numpy(t, list(c) if c is not None else None))
    if rng is None:
        yield from _ordered_batches(tables, batch_size, columns, drop_last_batch, to_numpy)
        return
    window: list[Batch] = []
    window_rows = pieces = 0
    for table in tables:
        if table.num_rows == 0:
            continue
        window.append(to_numpy(table, columns))
        window_rows += table.num_rows
        pieces += 1
        if window_rows >= shuffle_buffer_rows and pieces >= min_pieces_per_window:
            batches, rest = _shuffle_window(window, window_rows, rng, batch_size)
            yield from batches
            window = [rest] if rest is not None else []
            window_rows, pieces = window_rows % batch_size, 0
    if window_rows:
        batches, rest = _shuffle_window(window, window_rows, rng, batch_size)
        yield from batches
        if rest is not None and not drop_last_batch:
            yield rest


def _shuffle_window(
    window: list[Batch], rows: int, rng: np.random.Generator, batch_size: int
) -> tuple[list[Batch], Batch | None]:
    """Permute a window's rows; return its full batches and the (shuffled) remainder."""
    merged = _concat(window)
    order = rng.permutation(rows)
    shuffled = {k: v[order] for k, v in merged.items()}
    end = rows // batch_size * batch_size
    batches = [_slice(shuffled, i, i + batch_size) for i in range(0, end, batch_size)]
    return batches, (_slice(shuffled, end, rows) if end < rows else None)


def _ordered_batches(
    tables: Iterable[pa.Table],
    batch_size: int,
    columns: Sequence[str] | None,
    drop_last_batch: bool,
    to_numpy: Callable[[pa.Table, Sequence[str] | None], Batch],
) -> Iterator[Batch]:
    """Batches in row order: numpy views of each record batch, copies only across boundaries."""
    carry: list[Batch] = []
    carry_rows = 0
    for table in tables:
        for record_batch in table.to_batches():
            n, pos = record_batch.num_rows, 0
            if n == 0:
                continue
            arrays = to_numpy(record_batch, columns)
            if carry:
                need = batch_size - carry_rows
                if n < need:
                    carry.append(arrays)
                    carry_rows += n
                    continue
                yield _concat([*carry, _slice(arrays, 0, need)])
                carry, carry_rows, pos = [], 0, need
            end = pos + (n - pos) // batch_size * batch_size
            for i in range(pos, end, batch_size):
                yield _slice(arrays, i, i + batch_size)
            if end < n:
                carry, carry_rows = [_slice(arrays, end, n)], n - end
    if carry and not drop_last_batch:
        yield _concat(carry)
