"""The launch path every trainer shares: connect, resolve scaling, shard, place, run, restart.

A framework plugin subclasses :class:`Distributor` and supplies a :class:`Backend` (how its
processes join: environment, process-group set-up and tear-down); core owns the rest. A worker
group is kept warm between jobs of one session (several, of different shapes, while they fit
side by side), so a job of a shape seen before starts in well under a second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlruntime.data.connector import DataConnector, ShardedDataConnector
from mlruntime.errors import ConfigError, WorkerError
from mlruntime.runtime.cluster import (
    NodeInfo,
    check_storage_reachable,
    get_nodes,
    init,
    started_locally,
)
from mlruntime.runtime.context import (
    Checkpoint,
    Context,
    RankInfo,
    get_context,
    prune_checkpoints,
)
from mlruntime.runtime.loopback import with_loopback_binds
from mlruntime.runtime.packages import current_packages, prepare_runtime_env, worker_packages
from mlruntime.runtime.progress import Progress
from mlruntime.runtime.scaling import (
    FailureConfig,
    NodeScalingConfig,
    ResolvedScaling,
    ScalingConfig,
    check_fits_beside_held,
    resolve_scaling,
)
from mlruntime.runtime.staging import StagedInputs
from mlruntime.runtime.workers import (
    RankFailure,
    WorkerGroup,
    release_orphaned_placement_groups,
)
from mlruntime.store import storage

__all__ = ["AttemptRecord", "Backend", "Distributor", "Result"]


logger = logging.getLogger(__name__)


class Backend:
    """How one framework's processes join a job; runs inside the workers.

    Subclass and override what the framework needs. Instances must be picklable.
    """

    name = "generic"
    reuse_workers = True
    """Whether a finished job's workers may serve the next job of the same shape. ``False`` for
    frameworks whose process-wide state cannot be set up twice (TensorFlow's collectives)."""

    binds_all_interfaces = False
    """Whether the framework's own sockets bind every interface whatever address it is given
    (XGBoost's collective, TensorFlow's gRPC server): then, in a local job with several
    workers, the workers start with binds narrowed to loopback (:mod:`~.loopback`)."""

    worker_family: str | None = None
    """Backends naming the same family run their jobs on each other's warm worker groups of the
    same shape (XGBoost and LightGBM: ``"gbdt"``): their jobs set up and tear down everything
    they use, leaving the process nothing another's could trip on. ``None``: a warm group
    serves only this backend's jobs. Never shared: groups with GPUs (a framework's cached
    device memory stays in its process) and backends that do not ``reuse_workers``."""

    def driver_setup(self, group: WorkerGroup) -> dict[str, Any]:
        """Runs on the driver before each attempt, with the placed group (its ``scaling``,
        ``ranks``, ``actors``, ``master_addr``): e.g. start a rendezvous tracker or collect a
        port per rank. What it returns reaches every rank as ``context.backend_info``."""
        return {}

    def driver_teardown(self) -> None:
        """Runs on the driver after each attempt, whether it succeeded or not."""

    def driver_warm_up(self) -> None:
        """Runs on the driver once per attempt, as soon as the job reached its workers, while
        they load and train: import what the driver needs for the result (the framework, to
        load the model), so that import overlaps the job instead of following it. Errors are
        logged at debug level and otherwise ignored (the later use raises them)."""

    def worker_env(self, rank: RankInfo, master_addr: str, master_port: int) -> dict[str, str]:
        """Environment variables for one rank (e.g. torchrun's RANK, WORLD_SIZE ...)."""
        return {}

    def setup(self, context: Context) -> None:
        """Called on every rank before the user function (e.g. init the process group)."""

    def teardown(self, context: Context) -> None:
        """Called on every rank after the user function, even when it failed."""


@dataclass
class AttemptRecord:
    """What happened in one attempt of a job."""

    attempt: int
    seconds: float
    failures: list[str]
    resumed_from_checkpoint: bool

    def __str__(self) -> str:
        resumed = " (resumed from checkpoint)" if self.resumed_from_checkpoint else ""
        return f"attempt {self.attempt}{resumed}, {self.seconds:.1f}s: " + "; ".join(self.failures)


@dataclass
class Result:
    """What a distributed job returns."""

    metrics: dict[str, Any]
    metrics_history: list[dict[str, Any]]
    checkpoint: Checkpoint | None
    return_values: list[Any]
    model_dir: str
    checkpoint_location: str | None
    attempts: list[AttemptRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def get_metrics(self) -> dict[str, Any]:
        """Rank 0's last reported metrics."""
        return self.metrics

    def get_metrics_history(self) -> list[dict[str, Any]]:
        """Every metrics dict rank 0 reported, in order."""
        return self.metrics_history

    def get_model_dir(self) -> str:
        """The job's model folder."""
        return self.model_dir

    def get_checkpoint_location(self) -> str | None:
        """Folder of the last stored checkpoint, or ``None``."""
        return self.checkpoint_location

    def get_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint rank 0 reported."""
        return self.checkpoint


def _entry(backend: Backend, fn: Callable[..., Any], env: list[dict[str, str]]) -> Any:
    """Runs on every rank: environment, backend set-up, the user function, tear-down."""
    context = get_context()
    os.environ.update(env[context.get_rank()])
    storage.makedirs(context.get_model_dir())
    backend.setup(context)
    try:
        return fn()
    finally:
        backend.teardown(context)


KEEP_WARM_S = float(os.environ.get("MLRUNTIME_KEEP_WARM_S", "30"))
"""How long a finished job's workers stay up for the next job of the same shape (0: never).
Warm workers hold their CPUs/GPUs, so they are released after this idle time, before any other
placement, and before mlruntime itself runs Ray tasks (``to_ray_dataset``)."""

MAX_WARM_GROUPS = int(os.environ.get("MLRUNTIME_MAX_WARM_GROUPS", "4"))
"""Worker groups of different shapes kept warm at once (each only while the next job fits
beside it: a job that cannot be placed at once releases them all)."""

_idle: dict[tuple[Any, ...], WorkerGroup] = {}
_idle_since: dict[tuple[Any, ...], float] = {}
_idle_lock = threading.Lock()


def release_idle_groups(
    older_than: float = 0.0, top_up: bool = True, placement_groups_only: bool = False
) -> None:
    """Stop the worker groups kept warm between jobs (idle for more than ``older_than`` s).

    ``mlruntime.shutdown`` calls this (``top_up=False``: no idle workers started in their
    place); so does a timer ``KEEP_WARM_S`` after each job.

    Args:
        older_than: Only groups idle for longer than this (seconds).
        top_up: Have their nodes start idle worker processes in their place.
        placement_groups_only: Only groups of several workers. A placement group outlives
            the actor process that created it (Ray frees it with the driver), while a
            one-worker group is a plain actor that ends with the process owning it.
    """
    now = time.monotonic()
    with _idle_lock:
        stale = [
            k
            for k in _idle
            if now - _idle_since.get(k, now) >= older_than
            and (not placement_groups_only or _idle[k].holds_placement_group)
        ]
        groups = [_idle.pop(k) for k in stale]
        for k in stale:
            _idle_since.pop(k, None)
    for group in groups:
        try:
            group.shutdown(top_up=top_up)
        except Exception:
            pass


def _acquire(
    scaling: ResolvedScaling,
    key: tuple[Any, ...],
    progress: Progress,
    runtime_env: dict[str, Any] | None = None,
) -> WorkerGroup:
    with _idle_lock:
        group = _idle.pop(key, None)
        _idle_since.pop(key, None)
    if group is not None and group.revive():
        progress.say(f"reusing {scaling.describe()} kept warm")
        return group
    if group is not None:
        group.shutdown()
    progress.say(f"placing {scaling.describe()}")
    # Groups of other shapes stay warm while this one fits beside them (a CPU job and a GPU
    # job alternating both reuse theirs); if it does not fit at once, they make room.
    group = WorkerGroup(
        scaling,
        name=progress.name,
        runtime_env=runtime_env,
        make_room=_make_room,
    )
    group.start()
    return group


def _make_room() -> None:
    """What a new group that does not fit at once frees: placement groups an actor that died
    mid-job left reserved, then the idle warm groups (no top-up while the new group is being
    placed: its actors would race the new workers)."""
    release_orphaned_placement_groups()
    release_idle_groups(top_up=False)


def _release(group: WorkerGroup, key: tuple[Any, ...], reusable: bool = True) -> None:
    if KEEP_WARM_S <= 0 or not reusable:
        group.shutdown()
        return
    with _idle_lock:
        previous = _idle.pop(key, None)
        _idle[key] = group
        _idle_since[key] = time.monotonic()
        surplus = []
        while len(_idle) > MAX_WARM_GROUPS:  # the longest idle go first
            oldest = min(_idle_since, key=_idle_since.__getitem__)
            surplus.append(_idle.pop(oldest))
            _idle_since.pop(oldest)
    if previous is not None and previous is not group:
        previous.shutdown()
    for other in surplus:
        other.shutdown()
    timer = threading.Timer(
        KEEP_WARM_S + 0.1, release_idle_groups, kwargs={"older_than": KEEP_WARM_S}
    )
    timer.daemon = True
    timer.start()


class Distributor:
    """Base of the framework distributors and estimators: one launch/shard/restart path.

    Args:
        scaling_config: Job shape (default: auto), in all or per node.
        failure_config: Restarts allowed when a worker process dies (default: none).
        verbose: Show a progress bar of rank 0's reports and a summary line.
        checkpoints_to_keep: Stored checkpoints kept per run, newest first (0: all).
    """

    backend: Backend = Backend()
    name = "job"

    def __init__(
        self,
        scaling_config: ScalingConfig | NodeScalingConfig | None = None,
        failure_config: FailureConfig | None = None,
        *,
        verbose: bool = True,
        checkpoints_to_keep: int = 2,
    ) -> None:
        if isinstance(checkpoints_to_keep, bool) or int(checkpoints_to_keep) < 0:
            raise ConfigError(
                f"checkpoints_to_keep must be >= 0 (0: all), got {checkpoints_to_keep!r}"
            )
        self.checkpoints_to_keep = int(checkpoints_to_keep)
        if scaling_config is not None and not isinstance(
            scaling_config, (ScalingConfig, NodeScalingConfig)
        ):
            raise ConfigError(
                f"scaling_config must be a ScalingConfig, got {type(scaling_config).__name__}"
            )
        if failure_config is not None and not isinstance(failure_config, FailureConfig):
            raise ConfigError(
                f"failure_config must be a FailureConfig, got {type(failure_config).__name__}"
            )
        self.scaling_config: ScalingConfig | NodeScalingConfig = scaling_config or ScalingConfig()
        self.failure_config = failure_config or FailureConfig()
        self.verbose = verbose

    def resolve(self, nodes: list[NodeInfo] | None = None) -> ResolvedScaling:
        """Connect to Ray and resolve the scaling config against the live cluster.

        Args:
            nodes: The cluster's nodes, if the caller has just listed them (else listed here).
        """
        init()
        if nodes is None:
            nodes = get_nodes()
        if isinstance(self.scaling_config, NodeScalingConfig):
            return self.scaling_config.resolve(nodes)
        return resolve_scaling(self.scaling_config, nodes)

    def run(
        self,
        train_func: Callable[[], Any] | None = None,
        *,
        dataset_map: dict[str, Any] | None = None,
        hyper_params: dict[str, Any] | None = None,
        artifact_location: str | os.PathLike[str] | None = None,
        artifact_stage_location: str | os.PathLike[str] | None = None,
        equal_shards: bool = False,
        on_metrics: Callable[[dict[str, Any]], None] | None = None,
        progress_total: int | None = None,
        pip: Sequence[str] | None = None,
    ) -> Result:
        """Run ``train_func`` (no arguments; it calls ``get_context()``) on every worker.

        Args:
            train_func: A picklable function of no arguments.
            dataset_map: Name -> DataConnector. A ShardedDataConnector is split: each rank
                reads only its part (``get_shard()``), straight from storage; a plain
                DataConnector gives every rank all its rows. Frames and DuckDB results are
                staged once first (object store or Parquet under the run folder).
            hyper_params: What ``get_context().get_hyper_params()`` returns, types kept.
            artifact_location: Folder for the run's model dir and checkpoints, a path or any
                storage URI such as ``s3://bucket/runs/x`` (default: a new folder under the
                storage's ``runs/``).
            artifact_stage_location: Snowflake's name for ``artifact_location``; give one
                or the other.
            equal_shards: For ShardedDataConnectors made without ``equal``: give every rank
                the same number of rows (the remainder is dropped).
            on_metrics: Also called with every metrics dict rank 0 reports.
            progress_total: Reports expected (rounds, epochs), for the progress bar.
            pip: Extra requirements for this job's workers, on top of ``mlruntime.init(pip=)``
                (same index); ``mlruntime.worker_packages(...)`` does it for any entry point.

        Returns:
            A Result with rank 0's reports, checkpoints and every rank's return value.

        Raises:
            ConfigError: For a missing, non-callable or non-picklable ``train_func``,
                ``dataset_map`` values that are not DataConnectors, both
                ``artifact_location`` and ``artifact_stage_location``, or ``pip`` packages
                that cannot be resolved — before any worker starts.
            ResourceError: If the scaling request cannot be met.
            WorkerError: If ranks fail (after the allowed restarts), with every rank's error
                and the history of attempts.
        """
        if train_func is None:
            raise ConfigError(f"{type(self).__name__}.run() needs the function to run")
        artifact_location = _artifact_location(artifact_location, artifact_stage_location)
        if pip:
            with worker_packages(pip):
                return self.run(
                    train_func,
                    dataset_map=dataset_map,
                    hyper_params=hyper_params,
                    artifact_location=artifact_location,
                    equal_shards=equal_shards,
                    on_metrics=on_metrics,
                    progress_total=progress_total,
                )
        progress = Progress(self.name, self.verbose, total=progress_total)
        try:
            return self._run(
                train_func,
                progress,
                dataset_map=dataset_map,
                hyper_params=hyper_params,
                artifact_location=artifact_location,
                equal_shards=equal_shards,
                on_metrics=on_metrics,
            )
        finally:
            progress.close()

    def _run(
        self,
        fn: Callable[[], Any],
        progress: Progress,
        *,
        dataset_map: dict[str, Any] | None,
        hyper_params: dict[str, Any] | None,
        artifact_location: str | os.PathLike[str] | None,
        equal_shards: bool,
        on_metrics: Callable[[dict[str, Any]], None] | None,
    ) -> Result:
        _check_callable(fn)
        datasets = _check_dataset_map(dataset_map)
        params = dict(hyper_params or {})
        _check_sendable("hyper_params", params)
        progress.phase("connect", "connecting to Ray")
        nodes = get_nodes()  # connects; listed once for the job (a call to Ray's GCS each time)
        scaling = self.resolve(nodes)
        check_fits_beside_held(scaling, nodes)
        packages = current_packages()
        runtime_env = None
        if packages:
            progress.phase("packages", "installing worker packages")
            runtime_env = prepare_runtime_env(packages, nodes)
        if self.backend.binds_all_interfaces and scaling.num_workers > 1 and started_locally():
            runtime_env = with_loopback_binds(runtime_env)
        run_dir = os.fspath(artifact_location) if artifact_location else _default_run_dir(self.name)
        check_storage_reachable(run_dir, nodes)
        storage.makedirs(run_dir)
        with StagedInputs(storage.join(run_dir, "inputs")) as staged:
            if datasets:
                progress.phase("stage", "staging inputs")
                datasets = staged.stage_map(datasets)
                for name, value in datasets.items():
                    _check_sendable(f"dataset_map[{name!r}]", value)
            per_rank = _plan_datasets(datasets, scaling.num_workers, equal_shards)
            return self._attempts(
                fn, progress, scaling, run_dir, per_rank, params, on_metrics, runtime_env
            )

    def _warm_up_driver(self) -> None:
        """The backend's :meth:`Backend.driver_warm_up`, its errors logged, not raised."""
        try:
            self.backend.driver_warm_up()
        except Exception:
            logger.debug("driver warm-up of %s failed", self.backend.name, exc_info=True)

    def _attempts(
        self,
        fn: Callable[[], Any],
        progress: Progress,
        scaling: ResolvedScaling,
        run_dir: str,
        per_rank: list[dict[str, Any]],
        params: dict[str, Any],
        on_metrics: Callable[[dict[str, Any]], None] | None,
        runtime_env: dict[str, Any] | None = None,
    ) -> Result:
        """Place, run and restart until the job succeeds or runs out of restarts."""
        model_dir = storage.join(run_dir, "model")
        checkpoint_dir = storage.join(run_dir, "checkpoints")
        # the warm group this job may take: same shape, same family of backends, same env
        family = type(self.backend).__qualname__
        if self.backend.worker_family and self.backend.reuse_workers and not scaling.num_gpus:
            family = self.backend.worker_family
        key = (scaling, family, str(runtime_env))
        attempts: list[AttemptRecord] = []
        checkpoint: str | None = None
        attempt = stored = 0
        while True:
            progress.phase("place")
            group = _acquire(scaling, key, progress, runtime_env)
            import ray

            try:
                if group.jobs_run or checkpoint is not None:
                    # A new group's job state is empty already: its actor may still be
                    # starting, and the job need not wait for it (reports queue meanwhile).
                    ray.get(group.state.reset.remote(checkpoint))
                backend_info = self.backend.driver_setup(group)
                contexts = group.contexts(
                    backend_info=backend_info,
                    hyper_params=params,
                    model_dir=model_dir,
                    checkpoint=None if checkpoint is None else Checkpoint.from_uri(checkpoint),
                    attempt=attempt,
                    checkpoint_dir=checkpoint_dir,
                    checkpoint_index=stored,
                    checkpoints_to_keep=self.checkpoints_to_keep,
                    dataset_maps=per_rank,
                )
                envs = [
                    self.backend.worker_env(info, group.master_addr, group.master_port)
                    for info in group.ranks
                ]
            except BaseException:
                _abandon(group, self.backend)
                raise
            progress.phase(
                "train",
                f"training on {scaling.describe()}"
                + (f" (attempt {attempt + 1})" if attempt else ""),
            )
            seen = [0]

            def poll(group: WorkerGroup = group, seen: list[int] = seen) -> None:
                events = ray.get(group.state.poll.remote(seen[0]))
                seen[0] += len(events)
                for kind, payload in events:
                    if kind == "phase":
                        name, at = payload
                        progress.phase(name, name, at=at)
                    else:
                        progress.metrics(payload)
                        if on_metrics is not None:
                            on_metrics(payload)

            started = time.perf_counter()
            try:
                values = group.run(
                    _entry,
                    self.backend,
                    fn,
                    envs,
                    contexts=contexts,
                    on_poll=poll,
                    on_sent=self._warm_up_driver,
                )
            except WorkerError as err:
                self.backend.driver_teardown()
                history, last, count = ray.get(group.state.snapshot.remote())
                stored += count
                group.shutdown()
                if last is not None:
                    checkpoint = last
                record = AttemptRecord(
                    attempt,
                    time.perf_counter() - started,
                    [str(f) for f in err.failures],
                    contexts[0].checkpoint is not None,
                )
                attempts.append(record)
                died = any(isinstance(f, RankFailure) and f.died for f in err.failures)
                limit = self.failure_config.max_failures
                if not died or (limit != -1 and attempt >= limit):
                    if attempt:
                        message = f"{err}\nattempts:\n" + "\n".join(f"  {a}" for a in attempts)
                    else:
                        message = str(err)
                    raise WorkerError(message, failures=err.failures, attempts=attempts) from None
                progress.say(
                    f"a worker died ({record}); restarting the group"
                    + (" from the last checkpoint" if checkpoint else "")
                )
                attempt += 1
                continue
            except BaseException:  # Ctrl-C, or the driver failed: nothing may stay behind
                _abandon(group, self.backend)
                raise
            try:
                self.backend.driver_teardown()
                poll()
                history, last, _ = ray.get(group.state.snapshot.remote())
            except BaseException:
                _abandon(group, self.backend)
                raise
            _release(group, key, self.backend.reuse_workers)
            # the checkpoint a restart resumed from was protected until now
            prune_checkpoints(checkpoint_dir, self.checkpoints_to_keep)
            break
        location = last
        timings = progress.finish()
        return Result(
            metrics=history[-1] if history else {},
            metrics_history=history,
            checkpoint=None if last is None else Checkpoint.from_uri(last),
            return_values=values,
            model_dir=model_dir,
            checkpoint_location=location,
            attempts=attempts,
            timings=timings,
        )


def _abandon(group: WorkerGroup, backend: Backend) -> None:
    """Stop a job whose driver is leaving (KeyboardInterrupt, an exception): the backend's
    driver-side services (trackers, ports), the workers, the job state and the placement
    group, so the next job can use their resources at once."""
    for step in (backend.driver_teardown, group.shutdown):
        try:
            step()
        except Exception:  # keep tearing down; the original exception is what matters
            pass


def _artifact_location(
    location: str | os.PathLike[str] | None, stage_location: str | os.PathLike[str] | None
) -> str | os.PathLike[str] | None:
    """The run folder asked for, by our name or Snowflake's (``artifact_stage_location``)."""
    if location is not None and stage_location is not None:
        raise ConfigError(
            f"run() got artifact_location={os.fspath(location)!r} and "
            f"artifact_stage_location={os.fspath(stage_location)!r}; they name the same "
            "folder (artifact_stage_location is Snowflake's name for it): pass one"
        )
    return location if location is not None else stage_location


def _default_run_dir(name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return storage.join(storage.storage_uri(), "runs", f"{name}-{stamp}-{uuid.uuid4().hex[:6]}")


def _check_callable(fn: Any) -> bytes:
    """``fn`` pickled as Ray sends it to workers.

    Raises:
        ConfigError: If ``fn`` is not callable or cannot be pickled.
    """
    if not callable(fn):
        raise ConfigError(f"train_func must be callable, got {type(fn).__name__}")
    try:
        import ray.cloudpickle as cloudpickle

        return cloudpickle.dumps(fn)
    except Exception as exc:
        raise ConfigError(
            f"train_func {getattr(fn, '__name__', fn)!r} cannot be sent to workers: it is not "
            f"picklable ({type(exc).__name__}: {exc}); define it at module level and avoid "
            "capturing locks, open files or connections"
        ) from exc


def _check_sendable(what: str, value: Any) -> None:
    """Fail before placement when ``value`` cannot travel to the workers."""
    import ray.cloudpickle as cloudpickle

    try:
        cloudpickle.dumps(value)
    except Exception as exc:
        raise ConfigError(
            f"{what} cannot be sent to workers: it is not picklable ({type(exc).__name__}: "
            f"{exc}); pass plain values, or data as a DataConnector over files, frames or a "
            "dataset"
        ) from exc


def _check_dataset_map(dataset_map: Any) -> dict[str, Any]:
    if dataset_map is None:
        return {}
    if not isinstance(dataset_map, dict):
        raise ConfigError(
            f"dataset_map must be a dict of name -> DataConnector, got {type(dataset_map).__name__}"
        )
    for name, value in dataset_map.items():
        if not isinstance(value, (DataConnector, ShardedDataConnector)):
            raise ConfigError(
                f"dataset_map[{name!r}] is a {type(value).__name__}; wrap it with "
                "DataConnector.from_dataframe(...) or DataConnector.from_sources(...)"
            )
    return dict(dataset_map)


def _plan_datasets(datasets: dict[str, Any], world: int, equal: bool) -> list[dict[str, Any]]:
    """Each rank's dataset_map, planned on the driver (the workers read the rows): a
    ShardedDataConnector becomes one copy per rank that knows its shard; a plain DataConnector
    goes whole to every rank."""
    per_rank: list[dict[str, Any]] = [{} for _ in range(world)]
    for name, value in datasets.items():
        if isinstance(value, ShardedDataConnector):
            shards = value.plan(world, equal=value.equal if value.equal is not None else equal)
            for rank, shard in enumerate(shards):
                per_rank[rank][name] = value.assign(rank, world, shard)
            continue
        for rank_map in per_rank:
            rank_map[name] = value
    return per_rank
