"""Warm worker processes: modules preloaded into Ray's workers, and the idle pool topped up.

A job's actors start at once on a worker process Ray keeps idle; otherwise each waits for a
new process (Python and Ray: 0.5-0.9 s here) and then for its own imports (xgboost 1.5 s, Ray
Tune 1.3 s). Two things keep that start warm:

- **preload**: modules every worker process of the embedded Ray imports before it takes work
  (Ray's ``preload_python_modules``), chosen with ``mlruntime.init(preload=[...])`` or
  ``MLRUNTIME_PRELOAD``: the framework of many short jobs or trials is then imported while the
  workers wait, not while the user does.
- **top-up**: Ray keeps one idle worker per CPU but never replaces one an actor used: the
  process exits with the actor. Placement-group actors (a multi-worker job's, a Ray Tune
  trial's) did not take the idle workers Ray starts with the cluster either, only idle workers
  started for their own job (measured). So the embedded Ray starts without Ray's, ``init``
  asks for this job's, and after mlruntime's own actors end (a worker group released, a tuning
  run finished) :func:`top_up_idle_workers` asks each node's raylet for idle workers for this
  job again, up to the node's CPU count (what Ray itself keeps) plus one spare
  (:data:`SPARE_WORKERS`), counting those it has and its live actors.

The top-up talks to the raylet's ``PrestartWorkers`` and ``GetNodeStats`` calls (Ray's gRPC
API, which has no Python wrapper): it is best effort, runs in the background, and a Ray that
lacks them only loses the speed.
"""

from __future__ import annotations

import atexit
import functools
import importlib.machinery
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from mlruntime._env import env_flag
from mlruntime.errors import ConfigError

__all__ = [
    "PRELOAD_ENV",
    "SPARE_WORKERS",
    "TOP_UP_ENV",
    "idle_workers",
    "is_driver",
    "preload_modules",
    "resume_top_ups",
    "stop_top_ups",
    "top_up_enabled",
    "top_up_idle_workers",
    "wait_for_warm_serialization",
    "warm_serialization",
]

logger = logging.getLogger(__name__)

PRELOAD_ENV = "MLRUNTIME_PRELOAD"
"""Comma-separated modules the embedded Ray's worker processes import before taking work."""

TOP_UP_ENV = "MLRUNTIME_TOP_UP"
"""Set to ``0`` to leave Ray's idle worker pool alone after mlruntime's actors end."""

_RPC_TIMEOUT_S = 5.0

REGISTER_TIMEOUT_S = 30.0
"""How long a top-up waits for the workers it started to register with their raylet."""

REGISTER_STALL_S = 2.0
"""No new registration for this long after some did: the raylet dropped the rest of a request
(it starts at most its startup concurrency at once), so the top-up asks again."""

MAX_ASKS = 8
"""Requests per node and pass at most (a node with more logical CPUs than its raylet starts at
once needs several)."""

SPARE_WORKERS = 1
"""Idle workers kept per node beyond one per CPU (a node without CPUs, such as a head started
with ``--num-cpus=0``, keeps just the spare). A worker group's job-state actor (on the driver's
node) and a Ray Tune trial that drives an estimator hold no CPU but take a process: without a
spare, a group using every CPU of the node got a new process for its state, and its first
job's end waited for it (measured, 2 workers on 2 CPUs: 0.44 s; 1.9 s with Ray Tune and
xgboost preloaded)."""

KEEP_ALIVE_S = 3600
"""How long a topped-up idle worker is spared when Ray trims idle workers above its pool size.
Without it (measured) the idle workers were stopped as a multi-worker job reserved its CPUs in
a placement group, just before its actors could take them."""


def preload_modules(preload: Sequence[str] | str | None) -> list[str]:
    """The modules to preload into every worker process, checked before Ray starts.

    Args:
        preload: Module names (``["xgboost", "ray.tune"]``), one comma-separated string, or
            ``None`` for ``MLRUNTIME_PRELOAD`` (unset: none).

    Returns:
        The module names, in order, without repeats.

    Raises:
        ConfigError: If a name is not a module importable in this environment (the workers
            run the same one), so a typo never reaches every worker's log.
    """
    if preload is None:
        preload = os.environ.get(PRELOAD_ENV, "")
    if isinstance(preload, str):
        names = [part.strip() for part in preload.split(",")]
    elif isinstance(preload, Sequence) and all(isinstance(n, str) for n in preload):
        names = [n.strip() for n in preload]
    else:
        raise ConfigError(
            f"preload must be module names, e.g. ['xgboost'], got {type(preload).__name__}"
        )
    modules: list[str] = []
    for name in names:
        if not name or name in modules:
            continue
        if not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"preload: {name!r} is not a module name")
        if not _module_exists(name):
            raise ConfigError(
                f"preload: no module named {name!r} in this environment; install it or drop it "
                f"from preload / {PRELOAD_ENV}"
            )
        modules.append(name)
    return modules


def _module_exists(name: str) -> bool:
    """Whether ``name`` can be imported, found without importing it or its parents (checking
    ``xgboost.sklearn`` must not import xgboost into the driver)."""
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for depth in range(1, len(parts)):
            if spec is None or spec.submodule_search_locations is None:
                return False
            spec = importlib.machinery.PathFinder.find_spec(
                ".".join(parts[: depth + 1]), list(spec.submodule_search_locations)
            )
    except Exception:  # a broken package is as good as a missing one for preloading
        return False
    return spec is not None


def ray_system_config(
    modules: Sequence[str], system_config: dict[str, Any] | None, top_up: bool = True
) -> dict:
    """``_system_config`` for the embedded Ray: preload ``modules``, and, when ``init`` tops
    the pool up (``top_up`` and ``MLRUNTIME_TOP_UP``), no idle workers of Ray's own at start:
    ``init`` asks for this job's, which every kind of actor takes (placement-group actors did
    not take Ray's). Keys given in ``system_config`` win.

    Raises:
        ConfigError: If ``system_config`` already names other modules to preload.
    """
    merged = dict(system_config or {})
    existing = merged.get("preload_python_modules")
    if modules and existing is not None and list(existing) != list(modules):
        raise ConfigError(
            "preload and _system_config['preload_python_modules'] disagree; give one of them"
        )
    if modules:
        merged["preload_python_modules"] = with_trial_imports(modules)
    if top_up and top_up_enabled():
        merged.setdefault("prestart_worker_first_driver", False)
    return merged


TRIAL_IMPORTS = "mlruntime.tune._warm"
"""Preloaded after Ray Tune: what a tuning trial imports besides it (its first trials started
on processes that still imported them)."""


def with_trial_imports(modules: Sequence[str]) -> list[str]:
    """``modules``, and :data:`TRIAL_IMPORTS` after them when they hold Ray Tune."""
    names = list(modules)
    tune = any(name == "ray.tune" or name.startswith("ray.tune.") for name in names)
    if tune and TRIAL_IMPORTS not in names:
        names.append(TRIAL_IMPORTS)
    return names


_ALL = frozenset({"*"})
"""A pending top-up of every node."""

_top_up_lock = threading.Lock()
_top_up_thread: threading.Thread | None = None
_stopped = threading.Event()  # set by stop_top_ups: no pass starts, asks or waits
_stopped.set()  # until resume_top_ups (init, once connected)
_serialization_thread: threading.Thread | None = None
_pending_nodes: set[str] = set()  # asked for while a pass runs ("*": every node)
_pending_ended: set[bytes] = set()
_atexit_registered = False


def is_driver() -> bool:
    """Whether this process is a Ray driver (not a worker, a task, or a Ray Client)."""
    try:
        from ray._private import worker

        return bool(worker.global_worker.mode == worker.SCRIPT_MODE)
    except Exception:
        return False


def warm_serialization() -> threading.Thread:
    """Build this driver's Ray serialization context in the background (``init`` calls it
    once connected, from a driver; :func:`wait_for_warm_serialization` before Ray shuts down).

    Ray builds it at a session's first ``ray.put`` or task argument, importing pydantic and
    registering serializers for it: the first ``ray.put`` after ``init`` took 40-110 ms here,
    later ones 1 ms (measured), and the first job of a session (its datasets staged, its
    actors' arguments) waited for it. Best effort: a failure only leaves the work to the
    first job.

    Returns:
        The thread doing it (daemon); the running one if a build is under way.
    """
    global _serialization_thread

    def build() -> None:
        try:
            from ray._private import worker

            worker.global_worker.get_serialization_context()
        except Exception as exc:  # best effort: the first job builds it instead
            logger.debug("warming the serialization context skipped: %s", exc)

    with _top_up_lock:
        thread = _serialization_thread
        if thread is None or not thread.is_alive():
            thread = threading.Thread(
                target=build, name="mlruntime-warm-serialization", daemon=True
            )
            thread.start()
            _serialization_thread = thread
    return thread


def wait_for_warm_serialization(timeout: float = 5.0) -> None:
    """Wait (up to ``timeout`` s) for a build started by :func:`warm_serialization` to end:
    ``shutdown`` calls it first, so the build does not run on, or leave a context behind, in
    a session that is ending."""
    with _top_up_lock:
        thread = _serialization_thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


def top_up_enabled() -> bool:
    """Whether ``MLRUNTIME_TOP_UP`` allows top-ups (default: yes)."""
    return env_flag(TOP_UP_ENV, default=True)


def resume_top_ups() -> None:
    """Allow top-ups (``mlruntime.init`` calls this once connected from a driver): only a
    driver tops up, so trial and task processes running nested jobs never do."""
    global _atexit_registered
    _stopped.clear()
    if not _atexit_registered:
        # runs before Ray's own exit hook (registered earlier, run later): no pass is left
        # calling a raylet while the interpreter and gRPC shut down
        atexit.register(stop_top_ups)
        _atexit_registered = True


def top_up_idle_workers(
    node_ids: Iterable[str] | None = None,
    ended_actor_ids: Iterable[bytes] = (),
    wait: bool = False,
) -> dict[str, int]:
    """Ask the nodes' raylets to start idle worker processes for this job, up to each node's
    CPU count plus :data:`SPARE_WORKERS`, counting the idle workers and the actors it has.

    Call it after this job's actors ended; it returns at once and works in the background
    (calls made while a pass runs are served together by one more pass). Nothing happens
    outside a driver that ``mlruntime.init`` connected, after ``mlruntime.shutdown()``, with
    ``MLRUNTIME_TOP_UP=0``, for a job with a runtime env of its own (plain idle workers would
    not fit its actors), or when the raylet lacks the calls.

    Args:
        node_ids: The nodes to top up (default: every alive node).
        ended_actor_ids: Actors just killed (``ActorID.binary()``), not counted even if their
            processes are still exiting.
        wait: Do it in this thread, until the workers it started registered (tests,
            benchmarks).

    Returns:
        With ``wait``: node id -> how many more idle workers and actors it holds after the
        pass (the workers started and registered); otherwise ``{}``.
    """
    global _top_up_thread
    if _stopped.is_set() or not top_up_enabled():
        return {}
    nodes = _ALL if node_ids is None else set(node_ids)
    if wait:
        return _top_up_safely(nodes, set(ended_actor_ids))
    with _top_up_lock:
        _pending_nodes.update(nodes)
        _pending_ended.update(ended_actor_ids)
        if _top_up_thread is None or not _top_up_thread.is_alive():
            _top_up_thread = threading.Thread(
                target=_top_up_loop, name="mlruntime-top-up", daemon=True
            )
            _top_up_thread.start()
    return {}


def stop_top_ups(timeout: float = 10.0) -> None:
    """Drop pending top-ups and wait (up to ``timeout`` s) for a running one to end; none
    starts until :func:`resume_top_ups`. Called before Ray shuts down and at exit, so no
    worker is started or waited for on a stopping cluster."""
    _stopped.set()
    with _top_up_lock:
        _pending_nodes.clear()
        _pending_ended.clear()
        thread = _top_up_thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


def _top_up_loop() -> None:
    global _top_up_thread
    while True:
        with _top_up_lock:
            if not _pending_nodes:
                _top_up_thread = None
                return
            nodes, ended = set(_pending_nodes), set(_pending_ended)
            _pending_nodes.clear()
            _pending_ended.clear()
        _top_up_safely(nodes, ended)


def _top_up_safely(nodes: set[str] | frozenset[str], ended: set[bytes]) -> dict[str, int]:
    try:
        return _top_up(None if "*" in nodes else nodes, frozenset(ended))
    except Exception as exc:  # best effort: only speed is lost
        logger.debug("idle worker top-up skipped: %s", exc)
        return {}


def _top_up(nodes: set[str] | frozenset[str] | None, ended: frozenset[bytes]) -> dict[str, int]:
    import ray

    if not ray.is_initialized():
        return {}
    context = ray.get_runtime_context()
    if context.runtime_env:
        return {}
    common_pb2, node_manager_pb2, _ = _protos()
    job = bytes.fromhex(context.get_job_id())
    started: dict[str, int] = {}
    for node_id, cpus, stub in _raylets(nodes):
        if _stopped.is_set():
            continue
        target = cpus + SPARE_WORKERS  # a CPU-less head gets the spare: job states go there
        first = held = _workers_held(_stats(stub), job, ended)
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        for _ in range(MAX_ASKS):
            if held >= target or _stopped.is_set() or time.monotonic() > deadline:
                break
            stub.PrestartWorkers(
                node_manager_pb2.PrestartWorkersRequest(
                    language=common_pb2.PYTHON,
                    job_id=job,
                    num_workers=target - held,
                    keep_alive_duration_secs=KEEP_ALIVE_S,
                ),
                timeout=_RPC_TIMEOUT_S,
            )
            # Until they register they are not in the node's stats (a pass now would start
            # them twice). The raylet starts at most its startup concurrency at once (no more
            # than its physical cores) and drops the rest of a request: once some of them
            # registered and no more come for REGISTER_STALL_S, ask again for what is still
            # missing. If none registers, they are slow, not dropped: wait, never ask again.
            registered, last = False, time.monotonic()
            while not _stopped.wait(0.1) and time.monotonic() < deadline:
                now = _workers_held(_stats(stub), job, ended)
                if now > held:
                    registered, last = True, time.monotonic()
                held = now
                if held >= target or (registered and time.monotonic() - last > REGISTER_STALL_S):
                    break
            if not registered:
                break
        if held > first:
            started[node_id] = held - first
    return started


def idle_workers(node_ids: Iterable[str] | None = None) -> dict[str, list[int]]:
    """The worker processes each node keeps idle for this job: never used, of this job or of
    none yet (what a new actor of this job can start on at once).

    Args:
        node_ids: The nodes to ask (default: every alive node).

    Returns:
        Node id -> process ids (empty when Ray is not connected).
    """
    import ray

    if not ray.is_initialized():
        return {}
    common_pb2 = _protos()[0]
    job = bytes.fromhex(ray.get_runtime_context().get_job_id())
    found: dict[str, list[int]] = {}
    for node_id, _, stub in _raylets(None if node_ids is None else set(node_ids)):
        found[node_id] = sorted(
            w.pid for w in _stats(stub) if w.worker_type == common_pb2.WORKER and _idle_for(w, job)
        )
    return found


def _raylets(nodes: set[str] | frozenset[str] | None) -> Iterator[tuple[str, int, Any]]:
    """(node id, CPUs, raylet stub) of each alive node asked for; channels closed after."""
    import ray
    from ray._private.grpc_utils import init_grpc_channel

    node_manager_pb2_grpc = _protos()[2]
    for node in ray.nodes():
        node_id = node.get("NodeID", "")
        if not node.get("Alive") or (nodes is not None and node_id not in nodes):
            continue
        channel = init_grpc_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}")
        try:
            cpus = int(node.get("Resources", {}).get("CPU", 0))
            yield node_id, cpus, node_manager_pb2_grpc.NodeManagerServiceStub(channel)
        finally:
            channel.close()


@functools.cache
def _protos() -> tuple[Any, Any, Any]:
    """Ray's generated ``common_pb2``, ``node_manager_pb2`` and ``node_manager_pb2_grpc``."""
    common = importlib.import_module("ray.core.generated.common_pb2")
    node_manager = importlib.import_module("ray.core.generated.node_manager_pb2")
    return common, node_manager, importlib.import_module("ray.core.generated.node_manager_pb2_grpc")


def _stats(stub: Any) -> Any:
    node_manager_pb2 = _protos()[1]
    request = node_manager_pb2.GetNodeStatsRequest(include_memory_info=False)
    return stub.GetNodeStats(request, timeout=_RPC_TIMEOUT_S).core_workers_stats


def _holds_actor(worker: Any) -> bool:
    actor = worker.actor_id
    return bool(actor) and actor != b"\xff" * len(actor)


def _idle_for(worker: Any, job: bytes) -> bool:
    """Whether ``worker`` is idle and ``job``'s to take: no actor, never ran anything, and
    bound to this job or to none yet. A worker that did not answer the raylet's stats call
    (one exiting, say) is listed with empty stats, pid 0 among them: never idle."""
    return (
        worker.pid > 0
        and not _holds_actor(worker)
        and worker.num_executed_tasks == 0
        and worker.job_id in (job, b"\xff" * len(job), b"")
    )


def _workers_held(workers: Any, job: bytes, ended: frozenset[bytes]) -> int:
    """Worker processes that count against a node's pool: actors alive (any job's, but not
    ``ended``) and idle workers this job can still take."""
    common_pb2 = _protos()[0]
    held = 0
    for worker in workers:
        if worker.worker_type != common_pb2.WORKER:
            continue
        if _holds_actor(worker):
            held += worker.actor_id not in ended
        else:
            held += _idle_for(worker, job)
    return held
