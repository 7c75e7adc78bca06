"""``DPF``: call a function on every partition of a table, or on every file of a folder.

Snowflake's Distributed Partition Function on Ray tasks. ``DPF(func).run(partition_by, data,
run_id)`` counts the partitions with one query, batches small ones, stages what only the
driver can read, and starts one Ray task per batch, largest first; ``run_from_files`` makes
each file a partition. Runs resume (``on_existing_artifacts="resume"`` re-runs only the
partitions that did not finish), and everything lives in the run's folder on the storage.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from mlruntime.errors import ConfigError, ResourceError, RunExistsError, SourceError
from mlruntime.partition.entities import ON_EXISTING, ExecutionOptions
from mlruntime.partition.layout import RunFolder, encode_id, register_run, runs_root
from mlruntime.partition.planning import make_batches, open_input
from mlruntime.partition.run import STALE_S, DPFRun, RunView, _Monitor
from mlruntime.partition.worker import BatchTask, run_batch
from mlruntime.store import storage

__all__ = ["DPF"]

logger = logging.getLogger(__name__)

_remote: Any = None


class DPF:
    """Run ``func(data_connector, context)`` on every partition of the data, in parallel.

    Args:
        func: Called once per partition with a :class:`~mlruntime.DataConnector` over the
            partition's rows and a :class:`~mlruntime.partition.PartitionContext`.
        storage_prefix: Where runs are kept: ``None`` (``<storage>/partition``), a name such
            as a Snowflake stage (``"MY_DB.MY_SCHEMA.RESULTS"``, under ``<storage>/stages/``),
            an absolute path or a URI (``s3://bucket/runs``).
        stage_name: Snowflake's name of ``storage_prefix``.

    Raises:
        ConfigError: If ``func`` is not callable or both prefixes are given.

    Example:
        >>> def summarize(data_connector, context):
        ...     df = data_connector.to_pandas()
        ...     context.upload({"rows": len(df)}, "summary.pkl")
        >>> sales = session.table("SALES")  # doctest: +SKIP
        >>> run = DPF(summarize).run("REGION", sales, run_id="sales")  # doctest: +SKIP
        >>> run.wait()  # doctest: +SKIP
        <RunStatus.SUCCESS: 'SUCCESS'>
    """

    kind = "dpf"
    """Recorded in ``run.json``; restored runs of a kind come back as its run class."""

    def __init__(
        self,
        func: Callable[..., Any],
        storage_prefix: str | os.PathLike[str] | None = None,
        *,
        stage_name: str | None = None,
    ) -> None:
        if not callable(func):
            raise ConfigError(f"DPF needs a function func(data_connector, context), got {func!r}")
        if storage_prefix is not None and stage_name is not None:
            raise ConfigError("give storage_prefix or stage_name, not both")
        self.func = func
        self.storage_prefix = storage_prefix if storage_prefix is not None else stage_name

    # -- entry points ---------------------------------------------------------------------------

    def run(
        self,
        partition_by: str,
        dataframe_or_connector: Any = None,
        run_id: str | None = None,
        on_existing_artifacts: str = "error",
        execution_options: ExecutionOptions | None = None,
        *,
        snowpark_dataframe: Any = None,
    ) -> DPFRun:
        """Start the function on every partition of ``partition_by``; return at once.

        Args:
            partition_by: The column whose values make the partitions.
            dataframe_or_connector: The data: a warehouse DataFrame (``session.table(...)``,
                ``session.sql(...)``), a DuckDB relation, a pandas/polars/Arrow frame, or a
                DataConnector (Parquet files in it are read by the workers themselves).
            run_id: The run's id (any text); its folder is ``<prefix>/<run_id>/``.
            on_existing_artifacts: When the run id has a folder already: ``"error"``,
                ``"overwrite"`` (delete it first) or ``"resume"`` (run only the partitions
                that did not finish: pending, running, failed or cancelled ones).
            execution_options: Resources per task, retries, ``fail_fast``.
            snowpark_dataframe: Snowflake's name of ``dataframe_or_connector``.

        Returns:
            The running :class:`DPFRun` (``wait()`` blocks until it ends).

        Raises:
            ConfigError: For a bad argument or an impossible resource request.
            ColumnError: If ``partition_by`` is not a column of the data.
            RunExistsError: If the run exists and ``on_existing_artifacts="error"``.
        """
        if dataframe_or_connector is not None and snowpark_dataframe is not None:
            raise ConfigError("give dataframe_or_connector or snowpark_dataframe, not both")
        data = dataframe_or_connector if dataframe_or_connector is not None else snowpark_dataframe
        options = self._options(execution_options)
        run_id = _check_run_id(run_id)
        source = open_input(data)
        source.check_column(partition_by)
        folder, meta, done = self._prepare(run_id, on_existing_artifacts)
        slots, strategies = _slots(options)
        parts = source.count(partition_by)
        todo = [i for i, pid in enumerate(parts.ids) if pid not in done]
        batches = [
            [todo[j] for j in b]
            for b in make_batches(
                [parts.rows[i] for i in todo], slots, options.max_partitions_per_task
            )
        ]
        batch_of: list[int | None] = [None] * len(parts.ids)
        for b, members in enumerate(batches):
            for i in members:
                batch_of[i] = b
        gen = int(meta["gen"])
        tasks: list[BatchTask] = []
        if source.parquet is None:
            started = time.perf_counter()
            with storage.private_files(folder.uri):
                uris = source.stage(partition_by, parts, batch_of, folder, gen) if batches else {}
            logger.info("staged %d partitions in %.2fs", len(todo), time.perf_counter() - started)
        for b, members in enumerate(batches):
            task = BatchTask(
                folder=folder,
                run_id=run_id,
                gen=gen,
                batch=b,
                pids=[parts.ids[i] for i in members],
                rows=[parts.rows[i] for i in members],
                kind="staged" if source.parquet is None else "filter",
                key=partition_by,
                columns=source.columns,
            )
            if source.parquet is None:
                task.file = uris[b]
            else:
                keys = [parts.keys[i] for i in members]
                present = [k for k in keys if k is not None]
                task.source = source.parquet
                task.bounds = (
                    present[0] if present else None,
                    present[-1] if present else None,
                    len(present) < len(keys),
                )
            tasks.append(task)
        meta.update(partition_by=partition_by, source=source.label)
        plan = [(parts.ids[i], parts.rows[i], batch_of[i]) for i in todo]
        return self._start(folder, meta, plan, tasks, options, strategies, len(done))

    def run_from_files(
        self,
        path_or_uri: str | os.PathLike[str],
        run_id: str | None = None,
        file_pattern: str = "*.parquet",
        on_existing_artifacts: str = "error",
        execution_options: ExecutionOptions | None = None,
    ) -> DPFRun:
        """Start the function on every file under a folder: each file is a partition whose id
        is its path relative to the folder; workers read their files themselves.

        Args:
            path_or_uri: A folder (local, or a URI such as ``s3://bucket/data/``) or a
                Snowflake-style stage location (``"@stage/data/"``, under the storage).
            run_id: The run's id.
            file_pattern: Glob the files' relative paths must match (``"*.parquet"``;
                ``*`` also matches ``/``).
            on_existing_artifacts: ``"error"``, ``"overwrite"`` or ``"resume"``.
            execution_options: Resources per task, retries, ``fail_fast``.

        Returns:
            The running :class:`DPFRun`.

        Raises:
            SourceError: If the folder is missing or no file matches.
            RunExistsError: If the run exists and ``on_existing_artifacts="error"``.
        """
        import fnmatch

        import pyarrow.fs as pafs

        options = self._options(execution_options)
        run_id = _check_run_id(run_id)
        text = os.fspath(path_or_uri)
        base = runs_root(text) if text.startswith("@") else text
        fs, root = storage.resolve(base)
        root = root.rstrip("/")
        info = fs.get_file_info(root)
        if info.type != pafs.FileType.Directory:
            raise SourceError(f"{text!r} is not a folder")
        found = sorted(
            (
                i
                for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                if i.type == pafs.FileType.File
            ),
            key=lambda i: i.path,
        )
        files = [(i.path[len(root) + 1 :], i.path, i.size or 0) for i in found]
        files = [f for f in files if fnmatch.fnmatch(f[0], file_pattern)]
        if not files:
            raise SourceError(f"no file under {text!r} matches {file_pattern!r}")
        folder, meta, done = self._prepare(run_id, on_existing_artifacts)
        slots, strategies = _slots(options)
        todo = [f for f in files if f[0] not in done]
        scheme = "" if storage.is_local(base) else base.split("://", 1)[0] + "://"
        batches = make_batches([f[2] for f in todo], slots, options.max_partitions_per_task)
        tasks = [
            BatchTask(
                folder=folder,
                run_id=run_id,
                gen=int(meta["gen"]),
                batch=b,
                pids=[todo[i][0] for i in members],
                rows=[todo[i][2] for i in members],
                kind="files",
                files=[scheme + todo[i][1] for i in members],
            )
            for b, members in enumerate(batches)
        ]
        plan = [(todo[i][0], None, b) for b, members in enumerate(batches) for i in members]
        meta.update(partition_by=None, source=f"files {text} ({file_pattern})")
        return self._start(folder, meta, plan, tasks, options, strategies, len(done))

    def run_from_stage(
        self,
        stage_location: str,
        run_id: str | None = None,
        file_pattern: str = "*.parquet",
        on_existing_artifacts: str = "error",
        execution_options: ExecutionOptions | None = None,
    ) -> DPFRun:
        """Snowflake's name of :meth:`run_from_files` (``"@stage/path/"`` is a folder under
        ``<storage>/stages/``; a URI or a path works too)."""
        return self.run_from_files(
            stage_location, run_id, file_pattern, on_existing_artifacts, execution_options
        )

    # -- what subclasses change ----------------------------------------------------------------

    def _task_func(self) -> Callable[[Any, Any], Any]:
        """The function tasks call (many-model classes wrap the user's)."""
        return self.func

    def _on_prepared(self, folder: RunFolder) -> None:
        """Called once the run's folder exists (many-model training saves its serde)."""

    def _make_run(self, folder: RunFolder, monitor: _Monitor | None) -> DPFRun:
        return DPFRun(folder, monitor)

    # -- the machinery ---------------------------------------------------------------------------

    @staticmethod
    def _options(options: ExecutionOptions | None) -> ExecutionOptions:
        if options is None:
            return ExecutionOptions()
        if not isinstance(options, ExecutionOptions):
            raise ConfigError(
                f"execution_options must be an ExecutionOptions, got {type(options).__name__}"
            )
        return options

    def _prepare(self, run_id: str, mode: str) -> tuple[RunFolder, dict[str, Any], set[str]]:
        """The run's folder, its new ``run.json`` content, and the partitions already done."""
        if mode not in ON_EXISTING:
            raise ConfigError(
                f"on_existing_artifacts must be one of {', '.join(ON_EXISTING)}, got {mode!r}"
            )

        folder = RunFolder(storage.join(runs_root(self.storage_prefix), encode_id(run_id)))
        old = folder.read_json("run.json")
        done: set[str] = set()
        gen = 1
        if old is not None:
            if mode == "error":
                raise RunExistsError(
                    f"run {run_id!r} already exists at {folder.uri}; pass "
                    "on_existing_artifacts='overwrite' to replace it or 'resume' to finish it"
                )
            view = RunView(folder).refresh()
            age = view.driver_age()
            if age is not None and age < STALE_S and _driver_alive(old.get("driver") or {}):
                raise ConfigError(
                    f"run {run_id!r} is still running (driver {old.get('driver')} beat "
                    f"{age:.0f}s ago); cancel it first"
                )
            if mode == "overwrite":
                folder.remove()
            else:
                if old.get("kind") != self.kind:
                    raise ConfigError(
                        f"run {run_id!r} is a {old.get('kind')} run; resume it with the same class"
                    )
                done = {pid for pid, r in view.records.items() if r["status"] == "DONE"}
                gen = int(old.get("gen", 1)) + 1
                for rel in ("input", "session", "cancel"):
                    folder.remove(rel)
        now = time.time()
        meta = {
            "run_id": run_id,
            "kind": self.kind,
            "gen": gen,
            "state": "IN_PROGRESS",
            "created_at": (old or {}).get("created_at", now) if mode == "resume" else now,
            "updated_at": now,
            "driver": {"host": socket.gethostname(), "pid": os.getpid()},
        }
        return folder, meta, done

    def _start(
        self,
        folder: RunFolder,
        meta: dict[str, Any],
        plan: Sequence[tuple[str, int | None, int | None]],
        tasks: list[BatchTask],
        options: ExecutionOptions,
        strategies: list[Any],
        done: int,
    ) -> DPFRun:
        import ray

        from mlruntime.runtime.cluster import check_storage_reachable
        from mlruntime.runtime.distributor import release_idle_groups

        check_storage_reachable(folder.uri)
        release_idle_groups()  # warm worker groups of earlier jobs would hold the CPUs
        meta.update(options=options.to_dict(), num_partitions=len(plan) + done, done_before=done)
        folder.write_json(
            f"plans/g{int(meta['gen']):03d}.json",
            {
                "gen": meta["gen"],
                "partitions": [[p, r, b] for p, r, b in plan],
            },
        )
        folder.write_json("run.json", meta)
        register_run(meta["run_id"], folder.uri, self.kind)
        self._on_prepared(folder)
        global _remote
        if _remote is None:
            _remote = ray.remote(run_batch)
        func_ref = ray.put(self._task_func())
        counter = iter(range(1 << 62))

        def submit(task: BatchTask) -> Any:
            extra = {}
            if strategies:
                extra["scheduling_strategy"] = strategies[next(counter) % len(strategies)]
            return _remote.options(
                num_cpus=options.cpus, num_gpus=options.gpus, max_retries=0, **extra
            ).remote(func_ref, task, options.max_retries, options.retry_delay_s, options.fail_fast)

        ordered = sorted(tasks, key=lambda t: -sum(r or 0 for r in t.rows))  # largest first
        refs = {submit(task): task for task in ordered}
        monitor = _Monitor(folder, refs, submit, options.fail_fast, meta)
        run = self._make_run(folder, monitor)
        monitor.start()
        logger.info(
            "run %s: %d partitions in %d tasks (%d done before)",
            meta["run_id"],
            len(plan),
            len(tasks),
            done,
        )
        return run


def _driver_alive(driver: dict[str, Any]) -> bool:
    """Whether a run's driver process may still live (surely not when it was on this host
    and its pid is gone)."""
    if driver.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(driver.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True
    return True


def _check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not run_id.strip():
        raise ConfigError(f"run_id must be a non-empty string, got {run_id!r}")
    return run_id


def _slots(options: ExecutionOptions) -> tuple[int, list[Any]]:
    """Tasks that run at once, and the scheduling strategies (``use_head_node=False``).

    Raises:
        ResourceError: If no node can hold one task.
        ConfigError: If ``use_head_node=False`` leaves no node.
    """
    from mlruntime.runtime.cluster import get_nodes

    nodes = get_nodes()
    if not options.use_head_node:
        nodes = [n for n in nodes if not n.is_head]
        if not nodes:
            raise ConfigError(
                "use_head_node=False needs a cluster with nodes other than the head; this one "
                "has only the head node"
            )
    cpus, gpus = options.cpus, options.gpus
    fits = [n for n in nodes if n.num_cpus >= cpus and n.num_gpus >= gpus]
    if not fits:
        have = ", ".join(f"{n.num_cpus:g} CPU/{n.num_gpus:g} GPU" for n in nodes)
        raise ResourceError(
            f"a partition task needs {cpus:g} CPU and {gpus:g} GPU, but no node has that "
            f"(nodes: {have}); lower num_cpus_per_worker / num_gpus_per_worker"
        )
    slots = 0
    for n in fits:
        per = [
            n.num_cpus / cpus if cpus else float("inf"),
            n.num_gpus / gpus if gpus else float("inf"),
        ]
        count = min(per)
        slots += int(count) if count != float("inf") else int(n.num_cpus or 1)
    strategies: list[Any] = []
    if not options.use_head_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategies = [NodeAffinitySchedulingStrategy(n.node_id, soft=False) for n in fits]
    return max(1, slots), strategies
