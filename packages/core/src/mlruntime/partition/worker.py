"""The body of one Ray task: read a batch of partitions once, call the function on each.

A batch is either rows staged as one Arrow IPC file (sorted by the partition column), rows of
the user's Parquet files in one key range (read with a filter), or whole files (one partition
each, read lazily by the function). The task writes its results to the run's folder itself,
every second and at the end, so another process sees progress and a killed driver loses at
most a second of it. A function that raises is retried ``max_retries`` times, then recorded
as FAILED with its traceback; the other partitions of the batch go on.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mlruntime.partition.layout import RunFolder

__all__ = ["FLUSH_EVERY_S", "BatchTask", "run_batch", "split_runs"]

FLUSH_EVERY_S = 1.0
"""A task writes the results it holds at least this often."""

MAX_LOG_CHARS = 1_000_000
"""A partition's captured output is cut to its last million characters."""


@dataclass
class BatchTask:
    """One Ray task's share of a run.

    Attributes:
        folder: The run's folder.
        run_id: The run's id.
        gen: The run's generation (1, then +1 per resume).
        batch: The batch's number in this generation.
        pids: Its partitions, in the order of the data.
        rows: Their row counts (expected).
        kind: ``"staged"``, ``"filter"`` or ``"files"``.
        key: The ``partition_by`` column (``staged`` and ``filter``).
        file: The staged Arrow IPC file's URI (``staged``).
        source: The user's Parquet source (``filter``).
        bounds: ``(lowest key, highest key, includes null)`` (``filter``).
        files: Each partition's file URI (``files``).
        columns: Columns to hand over (``None``: all).
    """

    folder: RunFolder
    run_id: str
    gen: int
    batch: int
    pids: list[str]
    rows: list[int]
    kind: str
    key: str | None = None
    file: str | None = None
    source: Any = None
    bounds: tuple[Any, Any, bool] | None = None
    files: list[str] = field(default_factory=list)
    columns: list[str] | None = None


def split_runs(column: pa.ChunkedArray | pa.Array) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the runs of equal values in a sorted column (nulls equal)."""
    import numpy as np
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if n == 0:
        return []
    later, earlier = column.slice(1), column.slice(0, n - 1)
    changed = pc.fill_null(pc.not_equal(later, earlier), False)
    changed = pc.or_(changed, pc.not_equal(pc.is_null(later), pc.is_null(earlier)))
    cuts = (np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1).tolist()
    return list(zip([0, *cuts], [*cuts, n], strict=True))


def _partition_tables(task: BatchTask) -> dict[str, pa.Table]:
    """The batch's rows, one table per partition id."""
    import pyarrow.compute as pc

    from mlruntime.store import storage

    assert task.key is not None
    if task.kind == "staged":
        assert task.file is not None
        import pyarrow.ipc as ipc

        fs, path = storage.resolve(task.file)
        with fs.open_input_file(path) as handle:
            table = ipc.open_file(handle).read_all()
    else:
        import pyarrow.dataset as pads

        assert task.bounds is not None
        lo, hi, with_null = task.bounds
        fragments = task.source.fragments()
        fs = fragments[0].filesystem
        dataset = pads.dataset(sorted({f.path for f in fragments}), filesystem=fs, format="parquet")
        key = pads.field(task.key)
        expr = None
        if lo is not None:
            expr = (key >= lo) & (key <= hi)
        if with_null:
            expr = key.is_null() if expr is None else (expr | key.is_null())
        table = dataset.to_table(filter=expr)
        table = table.take(pc.sort_indices(table, [(task.key, "ascending")]))
    column = table.column(task.key)
    if task.columns is not None:  # the key column was read for splitting only
        table = table.select([c for c in task.columns if c in table.column_names])
    out: dict[str, pa.Table] = {}
    for start, end in split_runs(column):
        out[str(column[start].as_py())] = table.slice(start, end - start)
    return out


def _record(
    task: BatchTask, pid: str, status: str, started: float, attempts: int, logs: str, **extra: Any
) -> dict[str, Any]:
    return {
        "id": pid,
        "status": status,
        "gen": task.gen,
        "batch": task.batch,
        "t": time.time(),
        "started": started,
        "attempts": attempts,
        "logs": logs[-MAX_LOG_CHARS:],
        "host": os.uname().nodename,
        "pid": os.getpid(),
        **extra,
    }


class _Results:
    """The results a task holds until it writes them."""

    def __init__(self, task: BatchTask) -> None:
        self.task = task
        self.pending: list[dict[str, Any]] = []
        self.seq = 0
        self.last = time.monotonic()

    def add(self, record: dict[str, Any], force: bool = False) -> None:
        self.pending.append(record)
        if force or time.monotonic() - self.last >= FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            name = f"results/g{self.task.gen:03d}-b{self.task.batch:06d}-{self.seq:05d}.json"
            self.task.folder.write_json(name, self.pending)
            self.seq += 1
            self.pending = []
        self.last = time.monotonic()


def run_batch(
    func: Callable[[Any, Any], Any],
    task: BatchTask,
    max_retries: int = 1,
    retry_delay_s: float = 0.0,
    fail_fast: bool = False,
) -> dict[str, int]:
    """Process every partition of ``task``; return counts ``{"done", "failed", "cancelled"}``."""
    from mlruntime.data.connector import DataConnector
    from mlruntime.data.inputs import source_from_path
    from mlruntime.data.sources import ArrowSource

    task.folder.write_bytes(f"started/g{task.gen:03d}-b{task.batch:06d}", b"")
    results = _Results(task)
    counts = {"done": 0, "failed": 0, "cancelled": 0}
    index = 0
    try:
        tables: dict[str, pa.Table] = {}
        if task.kind != "files":
            tables = _partition_tables(task)
        for index, pid in enumerate(task.pids):
            started = time.time()
            if task.kind == "files":
                connector = DataConnector([source_from_path(task.files[index])])
            else:
                table = tables.get(pid)
                if table is None or table.num_rows != task.rows[index]:
                    got = 0 if table is None else table.num_rows
                    results.add(
                        _record(
                            task,
                            pid,
                            "INTERNAL_ERROR",
                            started,
                            0,
                            "",
                            error=f"expected {task.rows[index]} rows of partition {pid!r}, "
                            f"read {got} (did the input change during the run?)",
                        )
                    )
                    counts["failed"] += 1
                    continue
                connector = DataConnector([ArrowSource(table, label=f"partition {pid}")])
            record = _call(func, connector, task, pid, started, max_retries, retry_delay_s)
            failed = record["status"] != "DONE"
            counts["failed" if failed else "done"] += 1
            results.add(record, force=failed and fail_fast)
            if failed and fail_fast:
                for rest in task.pids[index + 1 :]:
                    results.add(_record(task, rest, "CANCELLED", time.time(), 0, ""))
                    counts["cancelled"] += 1
                break
    except KeyboardInterrupt:  # ray.cancel: record what did not run, then stop
        done = {r["id"] for r in results.pending}
        for rest in task.pids[index:]:
            if rest not in done:
                results.add(_record(task, rest, "CANCELLED", time.time(), 0, ""))
                counts["cancelled"] += 1
    finally:
        results.flush()
    return counts


def _call(
    func: Callable[[Any, Any], Any],
    connector: Any,
    task: BatchTask,
    pid: str,
    started: float,
    max_retries: int,
    retry_delay_s: float,
) -> dict[str, Any]:
    from mlruntime.partition.context import PartitionContext

    logs = io.StringIO()
    for attempt in range(max_retries + 1):
        context = PartitionContext(pid, task.run_id, task.folder, attempt)
        try:
            with contextlib.redirect_stdout(logs), contextlib.redirect_stderr(logs):
                func(connector, context)
        except Exception as exc:
            text = traceback.format_exc()
            logs.write(text)
            if attempt < max_retries:
                if retry_delay_s:
                    time.sleep(retry_delay_s * 2**attempt)
                continue
            return _record(
                task,
                pid,
                "FAILED",
                started,
                attempt + 1,
                logs.getvalue(),
                error=f"{type(exc).__name__}: {exc}",
                traceback=text,
            )
        return _record(task, pid, "DONE", started, attempt + 1, logs.getvalue())
    raise AssertionError("unreachable")
