"""A partition run as users hold it: status, per-partition details, progress, wait, cancel.

Everything is read from the run's folder on the storage, so a run restored in another process
(``DPFRun.restore(run_id)``, ``mlruntime runs show RUN_ID``) answers like the original. In the
driver, a thread follows the Ray tasks: it hands crashed batches' partitions out again one by
one (so one partition that kills its process costs only itself), cancels on ``fail_fast``,
runs ``PartitionContext.with_session`` requests, and beats a heartbeat into ``run.json``.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mlruntime.errors import ConfigError, RunNotFoundError
from mlruntime.partition.context import ArtifactManager
from mlruntime.partition.entities import FINAL, PartitionStatus, RunStatus
from mlruntime.partition.layout import RunFolder, _serving, find_run, merge_records
from mlruntime.partition.worker import BatchTask

__all__ = ["RUN_CLASSES", "DPFRun", "PartitionDetails", "RunView"]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
"""How often the driver rewrites ``run.json`` (and looks for a cancel request)."""

STALE_S = 30.0
"""A run whose driver has not beaten for this long is taken as interrupted."""

RUN_CLASSES = {"many_model_training": "mlruntime.partition.many_model:ManyModelRun"}
"""The run class restored runs of a kind come back as (``DPFRun`` for the others)."""


@dataclass
class PartitionDetails:
    """What is known of one partition.

    Attributes:
        partition_id: The partition.
        status: Its :class:`PartitionStatus`.
        logs: What the function printed (stdout and stderr), with the traceback of each
            failed attempt.
        error: ``"Type: message"`` of the last failure, if it failed.
        traceback: The last failure's traceback.
        attempts: Times the function was called (in the generation that decided it).
        rows: Its rows (``None`` for file partitions).
        started_at: When its last attempt started (epoch seconds).
        finished_at: When it finished.
        artifacts: Its artifacts (``list()``, ``get(name)``, ``download(name, dir)``).
    """

    partition_id: str
    status: PartitionStatus
    logs: str
    error: str | None
    traceback: str | None
    attempts: int
    rows: int | None
    started_at: float | None
    finished_at: float | None
    artifacts: ArtifactManager

    @property
    def stage_artifacts_manager(self) -> ArtifactManager:
        """Snowflake's name of :attr:`artifacts`."""
        return self.artifacts


class RunView:
    """The state of a run read from its folder; :meth:`refresh` reads only new files."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder
        self.meta: dict[str, Any] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.rows: dict[str, int | None] = {}
        self.where: dict[str, tuple[int, int]] = {}  # pid -> (gen, batch) of its latest plan
        self.started: set[str] = set()
        self._plans: set[str] = set()
        self._results: set[str] = set()

    def refresh(self) -> RunView:
        """Read what changed; return ``self``."""
        meta = self.folder.read_json("run.json")
        if meta is not None:
            self.meta = meta
        for name in self.folder.list("plans"):
            if name in self._plans or not name.endswith(".json"):
                continue
            plan = self.folder.read_json(f"plans/{name}")
            if plan is None:
                continue
            self._plans.add(name)
            gen = int(plan["gen"])
            for pid, rows, batch in plan["partitions"]:
                if pid not in self.rows:
                    self.order.append(pid)
                self.rows[pid] = rows
                self.where[pid] = (gen, int(batch))
        fresh = [n for n in self.folder.list("results") if n not in self._results]
        for name in fresh:
            records = self.folder.read_json(f"results/{name}")
            if records is None:
                continue
            self._results.add(name)
            merge_records(self.records, records)
        self.started = set(self.folder.list("started"))
        return self

    def status_of(self, pid: str) -> PartitionStatus:
        """The partition's status."""
        record = self.records.get(pid)
        gen = int(self.meta.get("gen", 1))
        if record is not None and (record["status"] == "DONE" or int(record["gen"]) == gen):
            return PartitionStatus(record["status"])
        if record is not None and self.meta.get("state") != "IN_PROGRESS":
            return PartitionStatus(record["status"])
        if self.meta.get("state") == "CANCELLED":
            return PartitionStatus.CANCELLED
        where = self.where.get(pid)
        if where is not None and f"g{where[0]:03d}-b{where[1]:06d}" in self.started:
            return PartitionStatus.RUNNING
        return PartitionStatus.PENDING

    def counts(self) -> dict[str, int]:
        """Partitions per status."""
        out: dict[str, int] = {}
        for pid in self.order:
            status = self.status_of(pid).value
            out[status] = out.get(status, 0) + 1
        return out

    def run_status(self) -> RunStatus:
        """The run's overall status."""
        if self.meta.get("state") == "CANCELLED":
            return RunStatus.CANCELLED
        counts = self.counts()
        if counts.get("PENDING") or counts.get("RUNNING"):
            return RunStatus.IN_PROGRESS
        done = counts.get("DONE", 0)
        if done == len(self.order):
            return RunStatus.SUCCESS
        return RunStatus.PARTIAL_FAILURE if done else RunStatus.FAILURE

    def details(self, pid: str) -> PartitionDetails:
        """One partition's details."""
        record = self.records.get(pid) or {}
        status = self.status_of(pid)
        decided = status in FINAL and bool(record)
        return PartitionDetails(
            partition_id=pid,
            status=status,
            logs=record.get("logs", "") if decided else "",
            error=record.get("error") if decided else None,
            traceback=record.get("traceback") if decided else None,
            attempts=int(record.get("attempts", 0)) if decided else 0,
            rows=self.rows.get(pid),
            started_at=record.get("started") if decided else None,
            finished_at=record.get("t") if decided else None,
            artifacts=ArtifactManager(self.folder, pid),
        )

    def driver_age(self) -> float | None:
        """Seconds since the driver's last heartbeat (``None`` when the run is not running)."""
        if self.meta.get("state") != "IN_PROGRESS":
            return None
        return max(0.0, time.time() - float(self.meta.get("updated_at", 0)))


class DPFRun:
    """One run of a :class:`~mlruntime.partition.DPF` (Snowflake's ``DPFRun``).

    Args:
        folder: The run's folder.
        monitor: The driver's thread following the tasks (``None`` for a restored run).
    """

    def __init__(self, folder: RunFolder, monitor: _Monitor | None = None) -> None:
        self._folder = folder
        self._view = RunView(folder).refresh()
        self._monitor = monitor
        self.run_id: str = self._view.meta.get("run_id", "")

    @property
    def path(self) -> str:
        """The run's folder on the storage."""
        return self._folder.uri

    @property
    def status(self) -> RunStatus:
        """The run's :class:`RunStatus` now."""
        return self._view.refresh().run_status()

    @property
    def partition_details(self) -> dict[str, PartitionDetails]:
        """Every partition's :class:`PartitionDetails`, by partition id."""
        view = self._view.refresh()
        return {pid: view.details(pid) for pid in view.order}

    def get_progress(self) -> dict[str, list[PartitionDetails]]:
        """Partitions grouped by status name (``"DONE"``, ``"FAILED"``, ``"RUNNING"`` ...);
        statuses no partition has are left out."""
        out: dict[str, list[PartitionDetails]] = {}
        for details in self.partition_details.values():
            out.setdefault(details.status.value, []).append(details)
        return out

    def wait(self, timeout: float | None = None, show_progress: bool = True) -> RunStatus:
        """Block until the run ends (or ``timeout`` seconds pass); return its status.

        A restored run is followed from the storage until no partition is pending or running.
        """
        from mlruntime.runtime.progress import quiet

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if show_progress and not quiet():
            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(self._view.order),
                desc=f"partitions {self.run_id}",
                unit="partition",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
                mininterval=0.25,
            )
        try:
            while True:
                if self._monitor is not None:
                    self._monitor.join(0.25)
                    running = self._monitor.is_alive()
                else:
                    running = self._view.refresh().run_status() == RunStatus.IN_PROGRESS
                    if running:
                        time.sleep(0.5)
                if bar is not None:
                    counts = self._view.refresh().counts()
                    finished = sum(v for k, v in counts.items() if k in FINAL)
                    bar.update(finished - bar.n)
                if not running or (deadline is not None and time.monotonic() > deadline):
                    break
        finally:
            if bar is not None:
                bar.close()
        status = self.status
        counts = self._view.counts()
        logger.info("run %s: %s (%s)", self.run_id, status.value, counts)
        return status

    def cancel(self) -> None:
        """Stop the run: pending partitions are not started, running ones are interrupted;
        finished partitions keep their results. Works on a restored run too (the driver sees
        the request within seconds)."""
        if self._monitor is not None and self._monitor.is_alive():
            self._monitor.cancel()
            self._monitor.join()
            return
        self._folder.write_bytes("cancel", b"")

    def __repr__(self) -> str:
        return f"DPFRun(run_id={self.run_id!r}, status={self.status.value}, path={self.path!r})"

    @classmethod
    def restore(cls, run_id: str, storage_prefix: str | os.PathLike[str] | None = None) -> DPFRun:
        """The run ``run_id`` read back from the storage (in any process).

        Args:
            run_id: The run's id.
            storage_prefix: Where it was run (default: found through the run index).

        Raises:
            RunNotFoundError: If no such run is on the storage.
        """
        uri = find_run(run_id, storage_prefix)
        if uri is None:
            where = f" under {storage_prefix!r}" if storage_prefix is not None else ""
            raise RunNotFoundError(
                f"no partition run {run_id!r} on the storage{where}; list the runs with "
                "`mlruntime runs list`"
            )
        folder = RunFolder(uri)
        meta = folder.read_json("run.json") or {}
        target = RUN_CLASSES.get(str(meta.get("kind")))
        if target is not None and cls is DPFRun:
            import importlib

            module, name = target.split(":")
            run_class: type[DPFRun] = getattr(importlib.import_module(module), name)
            return run_class(folder)
        return cls(folder)

    @classmethod
    def restore_from(cls, run_id: str, stage_name: str | None = None) -> DPFRun:
        """Snowflake's name of :meth:`restore` (``stage_name``: the DPF's storage prefix)."""
        return cls.restore(run_id, stage_name)


class _Monitor(threading.Thread):
    """Follows one run's Ray tasks in the driver (see the module docstring)."""

    def __init__(
        self,
        folder: RunFolder,
        tasks: dict[Any, BatchTask],
        submit: Callable[[BatchTask], Any],
        fail_fast: bool,
        meta: dict[str, Any],
    ) -> None:
        super().__init__(name=f"mlruntime-partition-{meta.get('run_id')}", daemon=True)
        self.folder = folder
        self.tasks = tasks
        self.submit = submit
        self.fail_fast = fail_fast
        self.meta = meta
        self.gen = int(meta["gen"])
        self.next_batch = 1 + max((t.batch for t in tasks.values()), default=-1)
        self._cancel = threading.Event()
        self.cancelled = False
        _serving[folder.uri] = self

    def cancel(self) -> None:
        """Ask the thread to cancel the run."""
        self._cancel.set()

    def run(self) -> None:
        try:
            self._follow()
        except Exception:  # pragma: no cover - a bug here must not hang wait()
            logger.exception("following partition run %s failed", self.meta.get("run_id"))
            self.cancelled = True
            self._stop_tasks()
        finally:
            self._finish()
            _serving.pop(self.folder.uri, None)

    def _follow(self) -> None:
        import ray

        pending = list(self.tasks)
        beat = time.monotonic()
        while pending:
            if self._cancel.is_set():
                self.cancelled = True
                self._stop_tasks()
                return
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.1)
            for ref in ready:
                pending.extend(self._collect(ref))
            self._serve_session()
            if time.monotonic() - beat >= HEARTBEAT_S:
                beat = time.monotonic()
                self._beat()

    def _collect(self, ref: Any) -> list[Any]:
        import ray

        task = self.tasks.pop(ref)
        try:
            counts = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return []
        except Exception as exc:  # the process died (OOM, crash) or mlruntime failed
            return self._crashed(task, exc)
        if counts.get("failed") and self.fail_fast:
            self._cancel.set()
        return []

    def _crashed(self, task: BatchTask, exc: BaseException) -> list[Any]:
        view = RunView(self.folder).refresh()
        left = [
            i for i, pid in enumerate(task.pids) if not _decided(view.records.get(pid), self.gen)
        ]
        if len(left) > 1:  # run each alone: only the partition that kills its process fails
            refs = []
            for i in left:
                single = replace(
                    task,
                    batch=self.next_batch,
                    pids=[task.pids[i]],
                    rows=[task.rows[i]],
                    files=[task.files[i]] if task.files else [],
                )
                self.next_batch += 1
                ref = self.submit(single)
                self.tasks[ref] = single
                refs.append(ref)
            return refs
        message = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {message[-1] if message else ''}".strip()
        now = time.time()
        records = [
            {
                "id": task.pids[i],
                "status": "INTERNAL_ERROR",
                "gen": self.gen,
                "t": now,
                "batch": task.batch,
                "attempts": 1,
                "logs": str(exc)[-100_000:],
                "error": error,
                "started": None,
            }
            for i in left
        ]
        if records:
            self.folder.write_json(f"results/g{self.gen:03d}-b{task.batch:06d}-crash.json", records)
            if self.fail_fast:
                self._cancel.set()
        return []

    def _stop_tasks(self) -> None:
        import ray

        refs = list(self.tasks)
        for ref in refs:
            ray.cancel(ref)
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=30)
        view = RunView(self.folder).refresh()
        now = time.time()
        records = [
            {
                "id": pid,
                "status": "CANCELLED",
                "gen": self.gen,
                "t": now,
                "attempts": 0,
                "logs": "",
                "started": None,
            }
            for pid, (gen, _) in view.where.items()
            if gen == self.gen and not _decided(view.records.get(pid), self.gen)
        ]
        if records:
            self.folder.write_json(f"results/g{self.gen:03d}-cancel-{int(now)}.json", records)

    def _beat(self) -> None:
        self.meta["updated_at"] = time.time()
        self.folder.write_json("run.json", self.meta)
        if self.folder.read_bytes("cancel") is not None:
            self.folder.remove("cancel")
            self._cancel.set()

    def _serve_session(self) -> None:
        requests = [n for n in self.folder.list("session") if n.startswith("req-")]
        if not requests:
            return
        import cloudpickle

        from mlruntime.store.session import get_active_session

        for name in requests:
            data = self.folder.read_bytes(f"session/{name}")
            if data is None:
                continue
            self.folder.remove(f"session/{name}")
            try:
                answer: tuple[bool, Any] = (True, cloudpickle.loads(data)(get_active_session()))
            except Exception as exc:
                answer = (False, exc)
            try:
                payload = pickle.dumps(answer)
            except Exception as exc:  # an unpicklable result or error
                payload = pickle.dumps((False, ConfigError(f"with_session: {answer[1]!r} ({exc})")))
            self.folder.write_bytes(f"session/res-{name.removeprefix('req-')}", payload)

    def _finish(self) -> None:
        self.meta["state"] = "CANCELLED" if self.cancelled else "FINISHED"
        self.meta["updated_at"] = self.meta["finished_at"] = time.time()
        self.folder.write_json("run.json", self.meta)
        self.folder.remove("input")
        self.folder.remove("session")


def _decided(record: dict[str, Any] | None, gen: int) -> bool:
    return record is not None and (
        record["status"] == "DONE" or (int(record["gen"]) == gen and record["status"] in FINAL)
    )
