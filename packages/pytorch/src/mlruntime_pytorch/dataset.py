"""``DataConnector.to_torch_dataset``: an IterableDataset of dicts of column -> tensor.

Batches are numpy views of Arrow memory turned into tensors without a copy where the type
allows. DataLoader workers split the rows (each row is read by one loader worker), a distributed
job reads only its rank's shard, and the iteration state can be saved mid-epoch and resumed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mlruntime.data.batching import check_batch_size
from mlruntime.data.connector import DataConnector, resolve_worker_shard
from mlruntime.errors import ConfigError

__all__ = ["TorchDataset", "to_tensor", "to_tensors", "to_torch_dataset"]

ROW_CHUNK = 1024
"""Rows converted at once when yielding single rows (``batch_size=None``)."""

_CAST = {
    np.dtype(np.uint16): np.int32,
    np.dtype(np.uint32): np.int64,
    np.dtype(np.uint64): np.int64,
}


def to_tensors(batch: dict[str, np.ndarray], expand_dims: bool = False) -> dict[str, Any]:
    """A batch of numpy columns as tensors, sharing memory where the type allows.

    With ``expand_dims``, scalar numeric columns become ``(B, 1)`` (a view), as Snowflake's
    ``to_torch_dataset`` gives them; list columns stay ``(B, k)``, strings stay lists.

    Arrow buffers arrive as read-only numpy views; torch shares them without a copy and would
    warn that the tensor is "not writable". That is intended, so the warning is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {
            name: to_tensor(
                values.reshape(-1, 1)
                if expand_dims and values.ndim == 1 and values.dtype.kind not in "OUS"
                else values
            )
            for name, values in batch.items()
        }


def to_tensor(values: np.ndarray) -> Any:
    """One column of a batch as a tensor (zero-copy for fixed-width numpy data).

    Unsigned types torch lacks become wider signed ints; datetimes and durations become int64
    ticks of their unit; strings and other Python objects stay a list.
    """
    kind = values.dtype.kind
    if kind in "mM":
        return torch.from_numpy(np.ascontiguousarray(values).view(np.int64))
    if kind in "OUS":
        return values.tolist()
    cast = _CAST.get(values.dtype)
    if cast is not None:
        values = values.astype(cast)
    return torch.from_numpy(values)


class TorchDataset(IterableDataset):
    """The rows of a DataConnector as a ``torch.utils.data.IterableDataset``.

    Make it with ``connector.to_torch_dataset(...)``; see :func:`to_torch_dataset`.

    Each iteration is one epoch. With a ``seed``, the shuffle order is a function of the seed
    and the epoch: the epoch counts up on every iteration in the iterating process; with
    DataLoader workers call :meth:`set_epoch` before each epoch (as with
    ``DistributedSampler``), since each epoch starts from a fresh copy of the dataset.
    """

    def __init__(
        self,
        connector: DataConnector,
        batch_size: int | None,
        shuffle: bool,
        drop_last_batch: bool,
        seed: int | None,
        columns: list[str] | None = None,
        expand_dims: bool = True,
    ) -> None:
        super().__init__()
        self.connector = connector
        self.expand_dims = expand_dims
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last_batch = drop_last_batch
        self.seed = seed if seed is not None or not shuffle else _fresh_seed()
        self.columns = columns
        self._next_epoch = 0
        self._epoch: int | None = None  # the epoch being (or last) read
        self._rows_done = 0
        self._skip_rows = 0

    # -- epochs and resumable state ---------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (and count up from it)."""
        self._next_epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where the current (or last) epoch stands, to store in a checkpoint.

        Returns:
            ``{"epoch", "seed", "rows_consumed"}``: the epoch being read, the shuffle seed and
            the rows handed out so far in it (counted in the iterating process).
        """
        epoch = self._next_epoch if self._epoch is None else self._epoch
        return {"epoch": epoch, "seed": self.seed, "rows_consumed": self._rows_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration continues that epoch after the
        rows already consumed, in the same order, so each row of the epoch is seen once.

        Raises:
            ConfigError: If ``state`` lacks a field.
        """
        try:
            epoch, seed, rows = int(state["epoch"]), state["seed"], int(state["rows_consumed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"not a TorchDataset state (needs epoch, seed, rows_consumed): {state!r}"
            ) from exc
        self._next_epoch, self._epoch = epoch, None
        self.seed = seed
        self._skip_rows = self._rows_done = rows

    # -- iteration --------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches (or rows with ``batch_size=None``) per epoch, when the row count is known.

        Raises:
            TypeError: If the row count is not known without reading (as ``len()`` expects).
        """
        rows = self._connector().num_rows
        if rows is None:
            raise TypeError("the row count of this dataset is not known without reading it")
        if self.batch_size is None:
            return rows
        full, rest = divmod(rows, self.batch_size)
        return full + (1 if rest and not self.drop_last_batch else 0)

    def _connector(self) -> DataConnector:
        return resolve_worker_shard(self.connector)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self._epoch = self._next_epoch
        self._next_epoch = epoch + 1
        skip, self._skip_rows = self._skip_rows, 0
        self._rows_done = skip
        connector = self._connector()
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            if skip:
                raise ConfigError(
                    "resuming mid-epoch is supported when the dataset is iterated in one process "
                    "(DataLoader num_workers=0)"
                )
            part = _loader_part(connector, info.id, info.num_workers)
            if part is None:
                return
            connector = part
        seed = None if self.seed is None else [int(self.seed), info.id if info else 0]
        batches = _batches(connector, self, epoch, seed, skip)
        if self.batch_size is None:
            yield from self._rows(batches)
            return
        for batch in batches:
            self._rows_done += len(next(iter(batch.values())))
            yield to_tensors(batch, self.expand_dims)

    def _rows(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            tensors = to_tensors(batch, self.expand_dims)  # rows of (B, 1) are (1,)
            rows = len(next(iter(batch.values())))
            names = list(tensors)
            for i in range(rows):
                self._rows_done += 1
                yield {name: tensors[name][i] for name in names}

    def __repr__(self) -> str:
        return (
            f"TorchDataset(batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, {self.connector!r})"
        )


def _fresh_seed() -> int:
    return int(np.random.default_rng().integers(0, 2**31 - 1))


def _loader_part(connector: DataConnector, index: int, count: int) -> DataConnector | None:
    """Loader worker ``index``'s contiguous, row-balanced part, or ``None`` if it gets no rows."""
    rows = connector.count_rows()
    if rows == 0:
        return None
    if rows < count:
        return connector.shard(rows)[index] if index < rows else None
    return connector.shard(count)[index]


def _batches(
    connector: DataConnector,
    ds: TorchDataset,
    epoch: int,
    seed: list[int] | None,
    skip: int,
) -> Iterator[dict[str, np.ndarray]]:
    """The epoch's numpy batches, after the first ``skip`` rows of the epoch's order."""
    size = ds.batch_size or ROW_CHUNK
    drop = ds.drop_last_batch if ds.batch_size else False
    if skip and not ds.shuffle:
        # Unshuffled order is reading order: start reading at the row, nothing is re-read.
        rest = connector.skip_rows(skip)
        return rest.to_batches(size, drop_last_batch=drop, columns=ds.columns)
    stream = connector.to_batches(
        size,
        shuffle=ds.shuffle,
        drop_last_batch=drop,
        seed=_mix(seed) if seed is not None else None,
        epoch=epoch,
        columns=ds.columns,
    )
    if not skip:
        return stream
    return _drop_rows(stream, skip)


def _mix(seed: list[int]) -> int:
    """One seed from (user seed, loader worker), stable across processes."""
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _drop_rows(
    stream: Iterator[dict[str, np.ndarray]], skip: int
) -> Iterator[dict[str, np.ndarray]]:
    """Replay a (shuffled) stream and drop its first ``skip`` rows: the order is a function of
    seed and epoch, so what follows is exactly what the interrupted run had not yet seen."""
    for batch in stream:
        rows = len(next(iter(batch.values())))
        if skip >= rows:
            skip -= rows
            continue
        if skip:
            batch = {name: values[skip:] for name, values in batch.items()}
            skip = 0
        yield batch


def to_torch_dataset(
    connector: DataConnector,
    *,
    batch_size: int | None = None,
    shuffle: bool = False,
    drop_last_batch: bool = True,
    seed: int | None = None,
    columns: list[str] | None = None,
    expand_dims: bool | None = None,
) -> TorchDataset:
    """The connector's rows as a ``torch.utils.data.IterableDataset`` of dicts of tensors.

    Args:
        connector: The data (a ShardedDataConnector reads the current worker's shard; a plain
            one is read whole, on every rank).
        batch_size: ``None`` yields single rows (a DataLoader with a ``batch_size`` collates
            them); an int yields whole batches of that many rows, for
            ``DataLoader(ds, batch_size=None)`` — the fast path.
        shuffle: Shuffle rows across fragments, differently each epoch.
        drop_last_batch: Drop the final short batch (only with ``batch_size``).
        seed: Seed of the shuffle (with the epoch); ``None``: a random one, fixed per dataset.
        columns: Columns to yield (default: all).
        expand_dims: Scalar numeric columns as ``(B, 1)`` per batch and ``(1,)`` per row, as
            Snowflake gives them; ``False``: ``(B,)`` and 0-d. ``None``: the connector's own
            setting (``DataConnector.from_*(..., expand_dims=...)``, default ``True``).

    Returns:
        A :class:`TorchDataset`; inside a distributed job it reads only this rank's shard, and
        DataLoader workers (``num_workers > 0``) each read a disjoint part of it.

    Raises:
        ConfigError: For a ``batch_size`` that is not a positive integer or ``None``.
        ColumnError: For an unknown column.

    Example:
        >>> ds = connector.to_torch_dataset(batch_size=1024, shuffle=True, seed=0)
        >>> for batch in torch.utils.data.DataLoader(ds, batch_size=None):
        ...     loss = model(batch["x"]) ...
    """
    size = check_batch_size(batch_size, allow_none=True)
    if not isinstance(connector, DataConnector):
        raise ConfigError(f"to_torch_dataset needs a DataConnector, got {type(connector).__name__}")
    if columns is not None:
        connector.select(columns)  # raises ColumnError for unknown names
    return TorchDataset(
        connector,
        size,
        bool(shuffle),
        bool(drop_last_batch),
        seed,
        list(columns) if columns is not None else None,
        getattr(connector, "expand_dims", True) if expand_dims is None else bool(expand_dims),
    )
