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
        device: Any = None,
        pin_memory: bool = False,
        input_cols: list[str] | None = None,
        label_col: str | None = None,
        feature_dtype: Any = None,
    ) -> None:
        super().__init__()
        self.connector = connector
        self.expand_dims = expand_dims
        self.device = None if device is None else torch.device(device)
        self.pin_memory = pin_memory
        self.input_cols = input_cols
        self.label_col = label_col
        self.feature_dtype = torch.float32 if feature_dtype is None else feature_dtype
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
        yield from _to_device(self._host_batches(batches), self.device)

    def _host_batches(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[Any]:
        """Each batch as tensors in host memory (pinned when asked and a GPU is there)."""
        pin = self.pin_memory and torch.cuda.is_available()
        for batch in batches:
            self._rows_done += len(next(iter(batch.values())))
            if self.input_cols is not None:
                yield self._matrix(batch, pin)
                continue
            tensors = to_tensors(batch, self.expand_dims)
            yield {
                k: v.pin_memory() if pin and torch.is_tensor(v) else v for k, v in tensors.items()
            }

    def _matrix(self, batch: dict[str, np.ndarray], pin: bool) -> Any:
        """``(features, label)``: the input columns as one ``(B, F)`` tensor (one copy, made
        straight into pinned memory when pinning) and the label column as :func:`to_tensors`
        gives it; the features alone without a ``label_col``."""
        assert self.input_cols is not None
        rows = len(next(iter(batch.values())))
        features = torch.empty(
            (rows, len(self.input_cols)), dtype=self.feature_dtype, pin_memory=pin
        )
        out = features.numpy()
        for j, name in enumerate(self.input_cols):
            values = batch[name]
            if values.dtype.kind not in "biuf":
                raise ConfigError(
                    f"input column {name!r} has dtype {values.dtype}; input_cols must be "
                    "numeric (pass others through columns= as a dict batch)"
                )
            out[:, j] = values
        if self.label_col is None:
            return features
        label = to_tensors({"y": batch[self.label_col]}, self.expand_dims)["y"]
        if pin and torch.is_tensor(label):
            label = label.pin_memory()
        return features, label

    def _rows(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[Any]:
        for batch in batches:
            rows = len(next(iter(batch.values())))
            if self.input_cols is not None:
                # rows of the matrix are (F,), labels (1,) (or 0-d without expand_dims)
                parts = self._matrix(batch, False)
                for i in range(rows):
                    self._rows_done += 1
                    if isinstance(parts, tuple):
                        yield _moved((parts[0][i], parts[1][i]), self.device)
                    else:
                        yield _moved(parts[i], self.device)
                continue
            tensors = to_tensors(batch, self.expand_dims)  # rows of (B, 1) are (1,)
            names = list(tensors)
            for i in range(rows):
                self._rows_done += 1
                yield _moved({name: tensors[name][i] for name in names}, self.device)

    def __repr__(self) -> str:
        return (
            f"TorchDataset(batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, {self.connector!r})"
        )


def _fresh_seed() -> int:
    return int(np.random.default_rng().integers(0, 2**31 - 1))


def _moved(value: Any, device: Any, non_blocking: bool = False) -> Any:
    """``value`` (a tensor, or a dict/tuple of them; lists of strings stay) on ``device``."""
    if device is None:
        return value
    if torch.is_tensor(value):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, dict):
        return {k: _moved(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_moved(v, device, non_blocking) for v in value)
    return value


def _record(value: Any, stream: Any) -> None:
    """Tell the caching allocator that ``stream`` uses ``value``'s device memory."""
    if torch.is_tensor(value):
        value.record_stream(stream)
    elif isinstance(value, dict):
        for v in value.values():
            _record(v, stream)
    elif isinstance(value, tuple):
        for v in value:
            _record(v, stream)


def _to_device(batches: Iterator[Any], device: Any) -> Iterator[Any]:
    """Batches on ``device``; on a CUDA device the next batch's copy runs on a side stream
    while the caller computes on the current one (one batch in flight, as NVIDIA's data
    prefetchers do), so with pinned batches the copy overlaps the training step."""
    if device is None or device.type != "cuda":
        for batch in batches:
            yield _moved(batch, device)
        return
    copies = torch.cuda.Stream(device=device)
    pending: Any = None
    for batch in batches:
        with torch.cuda.stream(copies):
            moved = _moved(batch, device, non_blocking=True)
        if pending is not None:
            yield pending
        torch.cuda.current_stream(device).wait_stream(copies)
        _record(moved, torch.cuda.current_stream(device))
        pending = moved
    if pending is not None:
        yield pending


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
    device: Any = None,
    pin_memory: bool = False,
    input_cols: list[str] | None = None,
    label_col: str | None = None,
    feature_dtype: Any = None,
) -> TorchDataset:
    """The connector's rows as a ``torch.utils.data.IterableDataset`` of dicts of tensors
    (or of ``(features, label)`` pairs with ``input_cols``).

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
        device: Where the tensors go (``"cuda"``, ``"cuda:1"``, ``"cpu"``); ``None`` leaves
            them in host memory. On a GPU the next batch is copied on a side stream while the
            current one is used, so the copy overlaps the training step; use it with
            ``DataLoader(ds, batch_size=None, num_workers=0)`` (loader workers cannot hand
            out GPU tensors) or iterate the dataset directly.
        pin_memory: Put batches in page-locked memory first (copies to the GPU then run
            asynchronously). Ignored without a CUDA GPU.
        input_cols: Numeric columns to yield as one ``(B, F)`` matrix (``(F,)`` per row),
            built in one copy (straight into pinned memory with ``pin_memory``), so a
            training loop needs no ``torch.stack``. Each item is then ``(features, label)``,
            or ``features`` alone without ``label_col``.
        label_col: With ``input_cols``: the label column, yielded apart, shaped as
            ``expand_dims`` says (``(B, 1)`` by default, ``(B,)`` with ``expand_dims=False``).
        feature_dtype: dtype of the feature matrix (default ``torch.float32``).

    Returns:
        A :class:`TorchDataset`; inside a distributed job it reads only this rank's shard, and
        DataLoader workers (``num_workers > 0``) each read a disjoint part of it.

    Raises:
        ConfigError: For a ``batch_size`` that is not a positive integer or ``None``, a
            ``label_col`` without ``input_cols``, ``columns`` together with ``input_cols``, a
            non-numeric input column or an unknown device.
        ColumnError: For an unknown column.

    Example:
        >>> ds = connector.to_torch_dataset(batch_size=1024, shuffle=True, seed=0)
        >>> for batch in torch.utils.data.DataLoader(ds, batch_size=None):
        ...     loss = model(batch["x"]) ...
        >>> ds = connector.to_torch_dataset(
        ...     batch_size=4096, input_cols=FEATURES, label_col="y", device="cuda", pin_memory=True
        ... )
        >>> for x, y in ds:  # x: (4096, len(FEATURES)) float32 on the GPU, y: (4096, 1)
        ...     loss = loss_fn(model(x), y) ...
    """
    size = check_batch_size(batch_size, allow_none=True)
    if not isinstance(connector, DataConnector):
        raise ConfigError(f"to_torch_dataset needs a DataConnector, got {type(connector).__name__}")
    if label_col is not None and input_cols is None:
        raise ConfigError("label_col needs input_cols (the feature columns of the matrix)")
    if input_cols is not None:
        if columns is not None:
            raise ConfigError("pass either columns (dict batches) or input_cols (a matrix)")
        input_cols = list(input_cols)
        if not input_cols:
            raise ConfigError("input_cols must name at least one column")
        columns = input_cols + ([label_col] if label_col is not None else [])
    try:
        device = None if device is None else torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device must be a torch device such as 'cuda:0', got {device!r}"
        ) from exc
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
        device=device,
        pin_memory=bool(pin_memory),
        input_cols=input_cols,
        label_col=label_col,
        feature_dtype=feature_dtype,
    )
