"""Connection to the Ray cluster: reuse, connect, or start an embedded local Ray.

Ray is imported here, on first use, never by ``import mlruntime``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mlruntime.errors import ConfigError
from mlruntime.runtime.warm import (
    is_driver,
    preload_modules,
    ray_system_config,
    resume_top_ups,
    stop_top_ups,
    top_up_idle_workers,
    wait_for_warm_serialization,
    warm_serialization,
)

__all__ = [
    "ADDRESS_ENV",
    "NodeInfo",
    "cluster_resources",
    "get_nodes",
    "init",
    "is_initialized",
    "scale_cluster",
    "shutdown",
]

ADDRESS_ENV = "MLRUNTIME_ADDRESS"
"""Environment variable naming the Ray cluster to connect to (``ray://...`` or ``HOST:PORT``)."""

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_started_by_us = False
_preloaded: list[str] = []


@dataclass(frozen=True)
class NodeInfo(Mapping[str, Any]):
    """One alive node of the Ray cluster.

    It also reads as Snowflake's node mapping ``{"name", "cpus", "gpus"}``: ``node["cpus"]``,
    ``node.get("gpus")``, ``"name" in node``, ``node.items()`` and ``dict(node)`` (whole
    counts are ints there, as in Snowflake); every attribute below stays.

    Attributes:
        node_id: Ray's node id.
        name: The node's host name.
        address: The address the node is reachable at.
        num_cpus: Logical CPUs Ray schedules on it.
        num_gpus: GPUs Ray schedules on it (fake ones in tests count too).
        memory_bytes: Memory Ray schedules on it.
        is_head: Whether it is the head node.
        resources: Every resource the node offers.
    """

    node_id: str
    name: str
    address: str
    num_cpus: float
    num_gpus: float
    memory_bytes: int
    is_head: bool
    resources: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of this node (every attribute)."""
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        if key == "name":
            return self.name
        if key == "cpus":
            return _count(self.num_cpus)
        if key == "gpus":
            return _count(self.num_gpus)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(SNOWFLAKE_NODE_KEYS)

    def __len__(self) -> int:
        return len(SNOWFLAKE_NODE_KEYS)


SNOWFLAKE_NODE_KEYS = ("name", "cpus", "gpus")
"""The keys of a node read as a mapping (Snowflake's ``get_nodes()`` entries)."""


def _count(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def is_initialized() -> bool:
    """Whether this process is connected to a Ray cluster (without importing Ray if it is not)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def init(
    address: str | None = None,
    *,
    storage: str | os.PathLike[str] | None = None,
    pip: Sequence[str] | None = None,
    index_url: str | None = None,
    extra_index_urls: Sequence[str] = (),
    preload: Sequence[str] | str | None = None,
    **ray_options: Any,
) -> None:
    """Connect to Ray, starting an embedded local one when no cluster is named.

    In order: reuse the Ray this process is already connected to; connect to ``address``, or to
    ``MLRUNTIME_ADDRESS`` / ``RAY_ADDRESS`` when set (with the cluster's token, found where Ray
    looks for it); otherwise start a local Ray bound to loopback, behind a token kept in
    ``MLRUNTIME_HOME``, with the dashboard off and quiet logs. Every distributor calls this
    itself, so users only call it to choose a cluster or pass options.

    Args:
        address: A Ray address (``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``).
        storage: Where jobs keep what every node must reach (run folders, model dirs,
            checkpoints): a pyarrow filesystem URI (``s3://bucket/prefix``) or a shared path;
            default ``MLRUNTIME_STORAGE``, else ``MLRUNTIME_HOME`` (fine on one machine).
        pip: Requirements installed on every worker of the later jobs, on top of the node's
            environment (a uv overlay, cached on each node); see docs/environments.md.
        index_url: The package index for ``pip`` instead of PyPI (an internal repository).
        extra_index_urls: More indexes for ``pip``.
        preload: Modules every worker process of the embedded Ray imports before it takes
            work, e.g. ``["xgboost"]`` for many short XGBoost jobs or ``["ray.tune",
            "xgboost"]`` for tuning them: their first calls skip the imports (1-3 s), and each
            worker process holds the modules' memory. Default ``MLRUNTIME_PRELOAD``
            (comma-separated), else none. A cluster's nodes take it at ``ray start`` instead
            (``RAY_preload_python_modules``); see docs/runtime.md.
        **ray_options: Passed to ``ray.init`` (``num_cpus``, ``num_gpus``, ``runtime_env`` ...).

    Raises:
        ConfigError: If Ray is already connected to a different address than the one asked,
            or ``pip`` cannot be resolved (uv's message, before anything starts), or the
            cluster requires Ray's authentication token and none (or a wrong one) is found
            in ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token``; or
            ``preload`` names a module this environment lacks, is given for a cluster Ray
            did not start here, or differs from what the running embedded Ray preloads.
    """
    global _started_by_us, _preloaded
    if storage is not None:
        from mlruntime.store.storage import set_storage

        set_storage(storage)
    if pip is not None or index_url is not None or extra_index_urls:
        from mlruntime.runtime.packages import set_session_packages

        set_session_packages(pip, index_url, extra_index_urls)
    with _lock:
        address = address or os.environ.get(ADDRESS_ENV) or None
        if is_initialized():
            if address not in (None, "auto") and not _same_cluster(address):
                raise ConfigError(
                    f"Ray is already connected to another cluster; cannot connect to "
                    f"{address!r}. Call mlruntime.shutdown() first."
                )
            if preload is not None and preload_modules(preload) != _preloaded:
                raise ConfigError(
                    f"Ray is already running, preloading {_preloaded or 'nothing'}; preload "
                    "takes effect when Ray starts: call mlruntime.shutdown() first"
                )
            if is_driver():  # a Ray the user started: the top-ups work there too
                resume_top_ups()
            return
        local = _starts_embedded(address)
        if preload and not local:
            raise ConfigError(
                "preload applies to the Ray mlruntime starts; a cluster's nodes preload "
                "modules given at `ray start` (RAY_preload_python_modules=xgboost ray start ...)"
            )
        modules = preload_modules(preload) if local else []
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        from mlruntime.runtime import security

        options: dict[str, Any] = {
            "logging_level": logging.WARNING,  # Ray's own warnings (OOM kills) stay visible
            "log_to_driver": True,
            "ignore_reinit_error": True,
        }
        if local:  # loopback only, behind a token of MLRUNTIME_HOME (runtime/security.py)
            options["include_dashboard"] = False
            options.update(security.prepare_local(ray_options))
            ray_options["_system_config"] = ray_system_config(
                modules,
                ray_options.get("_system_config"),
                # a job-wide runtime env: plain idle workers would not fit its actors
                top_up=not ray_options.get("runtime_env"),
            )
        else:
            security.prepare_cluster(address or os.environ["RAY_ADDRESS"])
        options.update(ray_options)
        try:
            from mlruntime.store import storage as store

            # a local Ray's processes (raylet, workers) keep the umask they start with: what
            # jobs write inside mlruntime's home is the user's only (files 0600, folders 0700)
            with (
                store.private_files(store.storage_uri()) if local else contextlib.nullcontext(),
                security.loopback_only() if local else contextlib.nullcontext(),
            ):
                # "local": a new embedded Ray, never one a `ray start` left on this machine
                ray.init(address="local" if local else address, **options)
        except Exception as exc:
            if local or not security.is_auth_failure(exc):
                raise
            cluster = address or os.environ.get("RAY_ADDRESS")
            token, source = security.find_token()
            raise security.cluster_auth_error(cluster, source if token else None) from exc
        _started_by_us = local
        _preloaded = modules
        if is_driver():
            resume_top_ups()
            warm_serialization()
            if local:  # this job's own idle workers (ray_system_config: not Ray's first ones)
                top_up_idle_workers()


def _starts_embedded(address: str | None) -> bool:
    """Whether :func:`init` (not yet connected) starts the embedded Ray: no cluster is named
    by ``address``, ``MLRUNTIME_ADDRESS`` or ``RAY_ADDRESS``."""
    return not (address or os.environ.get(ADDRESS_ENV) or os.environ.get("RAY_ADDRESS"))


def started_locally() -> bool:
    """Whether this process started the Ray it uses (the embedded, loopback-only one)."""
    return _started_by_us and is_initialized()


def _same_cluster(address: str) -> bool:
    import ray

    try:
        current = ray.get_runtime_context().gcs_address
    except Exception:
        return False
    return address.removeprefix("ray://") in (current or "")


def shutdown() -> None:
    """Disconnect from Ray; an embedded Ray started by :func:`init` is stopped."""
    global _started_by_us, _preloaded
    with _lock:
        if "mlruntime.runtime.distributor" in sys.modules:
            sys.modules["mlruntime.runtime.distributor"].release_idle_groups(top_up=False)
        stop_top_ups()
        wait_for_warm_serialization()
        if is_initialized():
            import ray

            ray.shutdown()
        _started_by_us = False
        _preloaded = []


def _ensure_ray() -> Any:
    init()
    import ray

    return ray


def get_nodes() -> list[NodeInfo]:
    """List the alive nodes of the cluster with their CPUs, GPUs and memory (connects if needed).

    Returns:
        Nodes sorted head first, then by address.
    """
    ray = _ensure_ray()
    nodes = []
    for raw in ray.nodes():
        if not raw.get("Alive", raw.get("alive", False)):
            continue
        resources = {k: float(v) for k, v in raw.get("Resources", {}).items()}
        nodes.append(
            NodeInfo(
                node_id=raw["NodeID"],
                name=raw.get("NodeManagerHostname") or raw.get("NodeName", ""),
                address=raw.get("NodeManagerAddress", ""),
                num_cpus=resources.get("CPU", 0.0),
                num_gpus=resources.get("GPU", 0.0),
                memory_bytes=int(resources.get("memory", 0)),
                is_head="node:__internal_head__" in resources,
                resources=resources,
            )
        )
    return sorted(nodes, key=lambda n: (not n.is_head, n.address, n.node_id))


SCALE_WAIT_S = 120.0
"""How long ``scale_cluster`` waits for nodes to join by default."""

SCALE_OPTIONS = ("block_until_min_cluster_size", "rollback_after_seconds")
"""The ``options`` of ``scale_cluster`` (Snowflake's names)."""


def scale_cluster(
    expected_cluster_size: int,
    *,
    notebook_name: str | None = None,
    is_async: bool = False,
    options: dict[str, Any] | None = None,
) -> bool:
    """Wait until the Ray cluster has ``expected_cluster_size`` nodes, head included
    (Snowflake's ``snowflake.ml.runtime_cluster.scale_cluster``, same arguments).

    mlruntime provisions no machines: a node joins when ``ray start --address=<head>`` runs on
    it (see docs/cluster.md), and leaves with ``ray stop``. So this checks, and waits for
    nodes being started:

    - the cluster already has the size (or ``options["block_until_min_cluster_size"]``
      nodes): ``True``;
    - the embedded Ray that ``mlruntime.init`` starts is this machine alone and no node can
      join it: a warning, and ``False`` at once (jobs run on this machine). With no Ray
      running and no cluster named (``MLRUNTIME_ADDRESS`` / ``RAY_ADDRESS``), none is started
      here (a later ``mlruntime.init(...)`` keeps its options);
    - ``is_async``: whether the cluster has the size now, without waiting;
    - otherwise it waits up to ``options["rollback_after_seconds"]`` (default 120 s) for
      nodes to join, naming the head's address to start them with; ``False`` and a warning
      if they do not come (nothing is rolled back: no node was started by this call).

    Asking for fewer nodes than the cluster has gives a warning (mlruntime stops no node; jobs
    use every node unless their scaling config says otherwise) and ``True``: the nodes asked
    for are there.

    Args:
        expected_cluster_size: Nodes wanted, head included (``>= 1``).
        notebook_name: Snowflake's notebook to scale; accepted, unused.
        is_async: Return at once instead of waiting for nodes to join.
        options: ``block_until_min_cluster_size`` (nodes enough to return ``True``; default
            ``expected_cluster_size``), ``rollback_after_seconds`` (how long to wait).

    Returns:
        Whether the cluster has (at least the minimum of) the nodes asked for.

    Raises:
        ConfigError: For a size below 1, an unknown option, or an option that is not a
            number in range.
    """
    import math
    import time

    del notebook_name  # Snowflake's notebook service; nothing to name here
    if isinstance(expected_cluster_size, bool) or not isinstance(expected_cluster_size, int):
        raise ConfigError(
            f"expected_cluster_size must be a whole number of nodes, got {expected_cluster_size!r}"
        )
    if expected_cluster_size < 1:
        raise ConfigError(f"expected_cluster_size must be >= 1, got {expected_cluster_size}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(SCALE_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown scale_cluster option(s) {unknown}; known: {list(SCALE_OPTIONS)}"
        )
    enough = options.get("block_until_min_cluster_size", expected_cluster_size)
    if isinstance(enough, bool) or not isinstance(enough, int):
        raise ConfigError(f"block_until_min_cluster_size must be a whole number, got {enough!r}")
    if not 1 <= enough <= expected_cluster_size:
        raise ConfigError(
            f"block_until_min_cluster_size must be between 1 and {expected_cluster_size}, "
            f"got {enough}"
        )
    wait_s = options.get("rollback_after_seconds", SCALE_WAIT_S)
    if (
        isinstance(wait_s, bool)
        or not isinstance(wait_s, (int, float))
        or not math.isfinite(wait_s)
        or wait_s < 0
    ):
        raise ConfigError(f"rollback_after_seconds must be a number >= 0, got {wait_s!r}")
    # no Ray yet, and init would start the embedded one: this machine (none is started here)
    unstarted = not is_initialized() and _starts_embedded(None)
    have = 1 if unstarted else len(get_nodes())
    if have > expected_cluster_size:
        logger.warning(
            "scale_cluster(%d): the cluster has %d nodes and mlruntime stops none (run "
            "`ray stop` on the machines to remove); jobs use every node unless their scaling "
            "config asks for fewer",
            expected_cluster_size,
            have,
        )
        return True
    if have >= enough:
        return True
    if unstarted or started_locally():
        logger.warning(
            "scale_cluster(%d): mlruntime's embedded Ray is this machine alone, and no node "
            "can join it; jobs run on this one machine. For more nodes start a cluster with "
            "`ray start --head` and connect to it (docs/cluster.md)",
            expected_cluster_size,
        )
        return False
    if is_async:
        return False
    import ray

    head = ray.get_runtime_context().gcs_address
    logger.warning(
        "scale_cluster(%d): the cluster has %d node(s); waiting up to %gs for more to join "
        "(run `ray start --address=%s` on them)",
        expected_cluster_size,
        have,
        wait_s,
        head,
    )
    deadline = time.monotonic() + wait_s
    while True:
        have = len(get_nodes())
        if have >= enough:
            return True
        if time.monotonic() >= deadline:
            logger.warning(
                "scale_cluster(%d): %d node(s) after %gs; jobs run on those",
                expected_cluster_size,
                have,
                wait_s,
            )
            return False
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


_reachable: set[tuple[str, frozenset[str]]] = set()


def _can_read(path: str, token: str) -> bool:
    try:
        with open(path) as handle:
            return handle.read() == token
    except OSError:
        return False


_probe = None


def check_storage_reachable(uri: str, nodes: list[NodeInfo] | None = None) -> None:
    """Fail fast when workers may run on nodes that cannot see a local-path storage.

    For a path on the driver's machine (not an ``s3://``-like URI) and a cluster with other
    nodes, the driver writes a probe file there and a zero-CPU task on every other node
    checks it can read it (a shared NFS path passes); the answer is cached per storage and
    set of nodes.

    Args:
        uri: The storage path or URI.
        nodes: The cluster's nodes, if the caller has just listed them (else listed here).

    Raises:
        ConfigError: If some node cannot see the storage, naming ``storage=`` and
            ``MLRUNTIME_STORAGE`` — before any worker starts.
    """
    global _probe
    from mlruntime.store import storage

    if not storage.is_local(uri):
        return
    ray = _ensure_ray()
    here = ray.get_runtime_context().get_node_id()
    listed = get_nodes() if nodes is None else nodes
    others = [n for n in listed if n.node_id != here and (n.num_cpus or n.num_gpus)]
    if not others:
        return
    key = (uri, frozenset(n.node_id for n in others))
    if key in _reachable:
        return
    import uuid

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if _probe is None:
        _probe = ray.remote(num_cpus=0, max_retries=0)(_can_read)
    token = uuid.uuid4().hex
    path = storage.join(storage.resolve(uri)[1], f".mlruntime-probe-{token}")
    storage.write_bytes(path, token.encode())
    try:
        seen = ray.get(
            [
                _probe.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
                ).remote(path, token)
                for n in others
            ],
            timeout=120,
        )
    finally:
        storage.remove(path)
    blind = [n.address or n.node_id for n, ok in zip(others, seen, strict=True) if not ok]
    if blind:
        raise ConfigError(
            f"the job's storage {uri!r} is a folder on the driver's machine, and the cluster's "
            f"other node(s) {', '.join(blind)} cannot see it, so their workers could not read "
            "data, write checkpoints or the model there. Choose storage every node reaches: "
            "mlruntime.init(storage='s3://bucket/prefix') or MLRUNTIME_STORAGE=s3://... "
            "(gs://, or a path on a shared NFS mount, work too)"
        )
    _reachable.add(key)


def cluster_resources() -> dict[str, float]:
    """Total resources of the cluster (``CPU``, ``GPU``, ``memory`` ...), connecting if needed."""
    ray = _ensure_ray()
    return {k: float(v) for k, v in ray.cluster_resources().items()}
