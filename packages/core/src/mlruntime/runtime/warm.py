"""Warm worker processes: modules preloaded into Ray's workers, and the idle pool topped up.

A job's actors start at once on a worker process Ray keeps idle; otherwise each waits for a
new process (Python and Ray: 0.5-0.9 s here) and then for its own imports (xgboost 1.5 s, Ray
Tune 1.3 s). Two things keep that start warm:

- **preload**: modules every worker process of the embedded Ray imports before it takes work
  (Ray's ``preload_python_modules``), chosen with ``mlruntime.init(preload=[...])`` or
  ``MLRUNTIME_PRELOAD``: the framework of many short jobs or trials is then imported while the
  workers wait, not while the user does.
- **top-up**: Ray starts one idle worker per CPU with the cluster and never replaces them: an
  actor's process exits with the actor. After mlruntime's own actors end (a worker group
  released, a tuning run finished), :func:`top_up_idle_workers` asks each node's raylet to
  start idle workers for this job again, up to the node's CPU count (the pool Ray itself keeps;
  Ray stops idle workers above that count by itself). Ray also hands a job's own idle workers to
  placement-group actors, which never took the ones it started with the cluster.

The top-up talks to the raylet's ``PrestartWorkers`` and ``GetNodeStats`` calls (Ray's gRPC
API, which has no Python wrapper): it is best effort, runs in the background, and a Ray that
lacks them only loses the speed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from mlruntime.errors import ConfigError

__all__ = [
    "PRELOAD_ENV",
    "TOP_UP_ENV",
    "idle_workers",
    "preload_modules",
    "stop_top_ups",
    "top_up_idle_workers",
]

logger = logging.getLogger(__name__)

PRELOAD_ENV = "MLRUNTIME_PRELOAD"
"""Comma-separated modules the embedded Ray's worker processes import before taking work."""

TOP_UP_ENV = "MLRUNTIME_TOP_UP"
"""Set to ``0`` to leave Ray's idle worker pool alone after mlruntime's actors end."""

_RPC_TIMEOUT_S = 5.0

REGISTER_TIMEOUT_S = 30.0
"""How long a top-up waits for the workers it started to register with their raylet."""

KEEP_ALIVE_S = 3600
"""How long a topped-up idle worker is spared when Ray trims idle workers above its pool size:
Ray counts the CPUs a placement group reserves as busy, so without it the idle workers go the
moment a multi-worker job reserves its CPUs, just before its actors could take them."""


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
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ConfigError(
                f"preload: no module named {name!r} in this environment; install it or drop it "
                f"from preload / {PRELOAD_ENV}"
            )
        modules.append(name)
    return modules


def ray_system_config(modules: Sequence[str], system_config: dict[str, Any] | None) -> dict:
    """``_system_config`` for the embedded Ray: preload ``modules``, and no idle workers of
    Ray's own at start (``init`` tops the pool up with this job's, which every kind of actor
    takes; placement-group actors did not take Ray's). Keys given in ``system_config`` win.

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
        merged["preload_python_modules"] = list(modules)
    merged.setdefault("prestart_worker_first_driver", False)
    return merged


_ALL = frozenset({"*"})
"""A pending top-up of every node."""

_top_up_lock = threading.Lock()
_top_up_thread: threading.Thread | None = None
_stopped = threading.Event()  # set while Ray is being shut down: no top-up starts or waits
_pending_nodes: set[str] = set()  # asked for while a pass runs ("*": every node)
_pending_ended: set[bytes] = set()


def top_up_idle_workers(
    node_ids: Iterable[str] | None = None,
    ended_actor_ids: Iterable[bytes] = (),
    wait: bool = False,
) -> dict[str, int]:
    """Ask the nodes' raylets to start idle worker processes for this job, up to each node's
    CPU count, counting the idle workers and the actors it has.

    Call it after this job's actors ended; it returns at once and works in the background
    (calls made while a pass runs are served together by one more pass). Nothing happens when
    Ray is not connected, ``MLRUNTIME_TOP_UP=0``, or the raylet lacks the calls.

    Args:
        node_ids: The nodes to top up (default: every alive node).
        ended_actor_ids: Actors just killed (``ActorID.binary()``), not counted even if their
            processes are still exiting.
        wait: Do it in this thread and return what was started (tests, benchmarks).

    Returns:
        With ``wait``: node id -> worker processes started; otherwise ``{}``.
    """
    global _top_up_thread
    if os.environ.get(TOP_UP_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return {}
    _stopped.clear()
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


def stop_top_ups(timeout: float = 5.0) -> None:
    """Drop pending top-ups and wait (up to ``timeout`` s) for a running one to end: called
    before Ray shuts down, so no worker is started or waited for on a stopping cluster."""
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
    common_pb2, node_manager_pb2, _ = _protos()
    job = bytes.fromhex(ray.get_runtime_context().get_job_id())
    started: dict[str, int] = {}
    for node_id, cpus, stub in _raylets(nodes):
        if cpus <= 0 or _stopped.is_set():
            continue
        missing = cpus - _workers_held(_stats(stub), job, ended)
        if missing <= 0:
            continue
        stub.PrestartWorkers(
            node_manager_pb2.PrestartWorkersRequest(
                language=common_pb2.PYTHON,
                job_id=job,
                num_workers=missing,
                keep_alive_duration_secs=KEEP_ALIVE_S,
            ),
            timeout=_RPC_TIMEOUT_S,
        )
        started[node_id] = missing
        # Until they register they are not in the node's stats: a pass right after this one
        # would start them twice.
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while time.monotonic() < deadline and not _stopped.wait(0.1):
            if _workers_held(_stats(stub), job, ended) >= cpus:
                break
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
    usable = (job, b"\xff" * len(job), b"")
    found: dict[str, list[int]] = {}
    for node_id, _, stub in _raylets(None if node_ids is None else set(node_ids)):
        found[node_id] = sorted(
            w.pid
            for w in _stats(stub)
            if w.worker_type == common_pb2.WORKER
            and not _holds_actor(w)
            and w.num_executed_tasks == 0
            and w.job_id in usable
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


def _workers_held(workers: Any, job: bytes, ended: frozenset[bytes]) -> int:
    """Worker processes that count against a node's pool: actors alive (any job's, but not
    ``ended``) and idle workers this job can still take (never used; this job's or none's)."""
    common_pb2 = _protos()[0]
    usable = (job, b"\xff" * len(job), b"")
    held = 0
    for worker in workers:
        if worker.worker_type != common_pb2.WORKER:
            continue
        if _holds_actor(worker):
            held += worker.actor_id not in ended
        elif worker.num_executed_tasks == 0 and worker.job_id in usable:
            held += 1
    return held
