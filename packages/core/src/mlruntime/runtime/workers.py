"""WorkerGroup: N Ray actors in a placement group that run a function on every rank.

Each actor gets its resources, its ranks (world, local, node), thread limits matching its CPUs
and ``CUDA_VISIBLE_DEVICES`` from Ray's GPU assignment. ``run`` gathers the results, fails fast
when any rank fails (the others are stopped, nothing hangs) and raises one
:class:`~mlruntime.errors.WorkerError` carrying every failed rank's exception and traceback.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mlruntime.errors import ResourceError, WorkerError
from mlruntime.runtime.context import Context, RankInfo, _set_context
from mlruntime.runtime.scaling import ResolvedScaling

__all__ = ["RankFailure", "WorkerGroup", "release_orphaned_placement_groups"]

LOOPBACK = "127.0.0.1"
"""Where a job's ports listen when all of its processes run on one machine."""

PLACEMENT_TIMEOUT_S = float(os.environ.get("MLRUNTIME_PLACEMENT_TIMEOUT_S", "60"))
MAKE_ROOM_AFTER_S = 0.5
"""How long a group waits for free resources before asking others to make room."""
SWEEP_EVERY_S = 2.0
"""How often a group still waiting to be placed frees the placement groups of dead actors."""
JOB_THREAD = "job"
"""The worker actors' concurrency group that runs jobs (one thread, the same for every job)."""
PLACEMENT_GROUP_PREFIX = "mlruntime-job:"
"""Names of the groups' placement groups: the prefix, the id of the worker process that
created it (``driver`` for a driver) and a unique suffix
(:func:`release_orphaned_placement_groups`)."""
FAILURE_GRACE_S = 2.0
"""After one rank fails, how long the others get to report their own errors before the kill."""


@dataclass
class RankFailure:
    """One rank's failure: its exception, formatted traceback and whether its process died."""

    rank: int
    error_type: str
    message: str
    traceback: str
    exception: BaseException | None = None
    died: bool = False

    def __str__(self) -> str:
        lines = self.message.strip().splitlines()
        first = lines[0][:500] if lines else ""
        what = "process died" if self.died else f"{self.error_type}: {first}"
        return f"rank {self.rank}: {what}"


class _RankPrefixed:
    """A text stream that starts every line with ``[rank N] ``."""

    def __init__(self, stream: Any, rank: int) -> None:
        self._stream = stream
        self._prefix = f"[rank {rank}] "
        self._at_line_start = True

    def write(self, text: str) -> int:
        if not text:
            return 0
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                out.append(self._prefix)
            out.append(piece)
            self._at_line_start = piece.endswith("\n")
        self._stream.write("".join(out))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Worker:
    """The actor behind one rank (its repr prefixes the worker's forwarded output)."""

    def __init__(self, env: dict[str, str]) -> None:
        os.environ.update(env)
        self.rank: int | None = None

    def __repr__(self) -> str:
        return f"rank={self.rank}" if self.rank is not None else "mlruntime-worker"

    def describe(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
        }

    def set_rank(self, info: RankInfo, visible_gpus: Sequence[str]) -> None:
        self.rank = info.world_rank
        if visible_gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(visible_gpus)

    def free_port(self, host: str = "") -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            return int(sock.getsockname()[1])

    def execute(
        self,
        fn: Callable[..., Any],
        context: Context | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        import sys

        _set_context(context)
        streams = sys.stdout, sys.stderr
        if self.rank is not None:  # Ray forwards worker output to the driver; say whose it is
            sys.stdout = _RankPrefixed(sys.stdout, self.rank)
            sys.stderr = _RankPrefixed(sys.stderr, self.rank)
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:  # handed to the driver with its traceback
            try:
                import pickle

                pickle.dumps(exc)
                keep: BaseException | None = exc
            except Exception:
                keep = None
            return RankFailure(
                rank=self.rank if self.rank is not None else -1,
                error_type=type(exc).__name__,
                message=str(exc),
                traceback="".join(traceback.format_exception(exc)),
                exception=keep,
            )
        finally:
            if context is not None:  # the driver reads the last metrics once this returns
                try:
                    context.flush_reports()
                except Exception:  # the job state is gone: the driver finds out itself
                    pass
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = streams
            _set_context(None)

    def ping(self) -> int:
        return os.getpid()


class _JobState:
    """A zero-CPU actor holding a job's reports: rank 0's metrics and phases, and the location
    of its last stored checkpoint (rank 0 writes checkpoints into the job's storage itself).
    It outlives the workers' failures within an attempt, so a restart finds the checkpoint."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, checkpoint: str | None = None) -> None:
        """Start a job (or an attempt), resuming from the checkpoint at ``checkpoint``."""
        self.history: list[dict[str, Any]] = []
        self.events: list[tuple[str, Any]] = []
        self.checkpoint = checkpoint
        self.checkpoints_reported = 0
        self.gathers: dict[str, dict[int, Any]] = {}

    def gather(self, key: str, rank: int, value: Any) -> None:
        """Add ``rank``'s ``value`` to the all-gather ``key``."""
        self.gathers.setdefault(key, {})[rank] = value

    def gathered(self, key: str, world: int) -> list[Any] | None:
        """Every rank's value of ``key`` by rank, or ``None`` while some are missing."""
        values = self.gathers.get(key, {})
        if len(values) < world:
            return None
        return [values[r] for r in range(world)]

    def report(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        self.history.append(metrics)
        self.events.append(("metrics", metrics))
        if checkpoint is not None:
            self.checkpoint = checkpoint
            self.checkpoints_reported += 1

    def report_batch(self, batch: list[dict[str, Any]]) -> None:
        """Several reports without checkpoints, in order (``Context.report_batch``)."""
        for metrics in batch:
            self.report(metrics, None)

    def phase(self, event: tuple[str, float]) -> None:
        self.events.append(("phase", event))

    def poll(self, since: int) -> list[tuple[str, Any]]:
        return self.events[since:]

    def snapshot(self) -> tuple[list[dict[str, Any]], str | None, int]:
        return self.history, self.checkpoint, self.checkpoints_reported


class WorkerGroup:
    """N Ray actors placed by a placement group, with ranks.

    Args:
        scaling: The resolved job shape.
        env: Extra environment variables for every worker.
        name: A label for errors and logs.
        runtime_env: The workers' Ray runtime env (extra packages: ``runtime.packages``).
        make_room: Called once when the workers cannot be placed at once (within
            ``MAKE_ROOM_AFTER_S``): frees resources others hold (warm groups of earlier jobs,
            placement groups of dead actors), after which placement waits as usual, freeing
            placement groups of actors that die meanwhile every ``SWEEP_EVERY_S``.

    Example:
        >>> group = WorkerGroup(resolve_scaling(ScalingConfig(num_workers=2), get_nodes()))
        >>> group.start()
        >>> group.run(lambda: get_context().get_rank())
        [0, 1]
    """

    def __init__(
        self,
        scaling: ResolvedScaling,
        env: dict[str, str] | None = None,
        name: str = "job",
        runtime_env: dict[str, Any] | None = None,
        make_room: Callable[[], None] | None = None,
    ) -> None:
        self.scaling = scaling
        self.env = dict(env or {})
        self.name = name
        self.runtime_env = runtime_env
        self.make_room = make_room
        self.actors: list[Any] = []
        self.ranks: list[RankInfo] = []
        self.state: Any = None
        self._pg: Any = None
        self.master_addr = ""
        self.master_port = 0
        self.loopback = False
        """Whether every rank runs on the driver's node, so jobs talk over 127.0.0.1 only."""
        self.timings: dict[str, float] = {}
        self.jobs_run = 0
        """Jobs started on this group (0: its job state is as new, nothing to reset)."""
        self._killed: list[bytes] = []  # actors killed since the last shutdown (ids)

    @property
    def size(self) -> int:
        """Number of workers."""
        return self.scaling.num_workers

    def start(self) -> None:
        """Reserve the workers' resources, start the actors and assign ranks.

        Several workers are reserved together in a placement group (all placed or none). A
        single worker is a plain actor with the same resources (no group to create). Both
        start on the idle worker processes their nodes keep for this job when there are some
        (:mod:`mlruntime.runtime.warm`), unless they have a runtime env of their own.

        Raises:
            ResourceError: If the workers cannot be placed within the placement timeout.
        """
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        started = time.perf_counter()
        s = self.scaling
        bundle: dict[str, float] = {"CPU": s.num_cpus}
        if s.num_gpus:
            bundle["GPU"] = s.num_gpus
        if s.memory:
            bundle["memory"] = float(s.memory)
        if s.num_workers > 1:
            self._pg = placement_group(
                [dict(bundle)] * s.num_workers,
                strategy=s.placement_strategy,
                name=_placement_group_name(ray),
            )
        try:
            self._place(ray, bundle, remove_placement_group, PlacementGroupSchedulingStrategy)
        except BaseException:  # Ctrl-C or a failure while placing: release what was reserved
            self.shutdown()
            raise
        self.timings["place"] = time.perf_counter() - started

    def _place(
        self, ray: Any, bundle: dict[str, float], remove_placement_group: Any, strategy: Any
    ) -> None:
        s = self.scaling
        waited = 0.0
        if self._pg is None:
            # One worker: a plain actor with the bundle's resources is the same reservation,
            # and it takes any idle worker process (a placement group's actors only take the
            # job's own, runtime/warm.py). Its readiness includes starting the process, so
            # room is made by looking at the free resources first.
            if not _fits_within(ray, bundle, MAKE_ROOM_AFTER_S):
                if self.make_room is not None:
                    self.make_room()
                waited = MAKE_ROOM_AFTER_S
            self._start_actors(ray, None)
            described = [self.actors[0].describe.remote()]
            ready_ref = described[0]
        else:
            ready_ref = self._pg.ready()
            if self.make_room is not None:
                ready, _ = ray.wait([ready_ref], timeout=MAKE_ROOM_AFTER_S)
                if not ready:
                    self.make_room()
                waited = MAKE_ROOM_AFTER_S
        deadline = time.monotonic() + max(0.0, PLACEMENT_TIMEOUT_S - waited)
        while True:
            left = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait([ready_ref], timeout=min(left, SWEEP_EVERY_S))
            if ready or time.monotonic() >= deadline:
                break
            # an actor that held the resources may have died while this waited, leaving its
            # placement group reserved
            release_orphaned_placement_groups()
        if not ready:
            if self._pg is not None:
                remove_placement_group(self._pg)
                self._pg = None
            for actor in self.actors:
                ray.kill(actor, no_restart=True)
            self.actors = []
            if self.state is not None:
                ray.kill(self.state)
                self.state = None
            available = ray.available_resources()
            raise ResourceError(
                f"could not place {s.describe()} within {PLACEMENT_TIMEOUT_S:g}s; available "
                f"now: {available.get('CPU', 0):g} CPU, {available.get('GPU', 0):g} GPU (other "
                "jobs may hold them)"
            )
        if self._pg is not None:
            self._start_actors(ray, strategy)
            described = [a.describe.remote() for a in self.actors]
        infos = ray.get(described)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # The job state: on the driver's node if it can, so it outlives worker nodes that go
        # away (it holds no data). Asked for once the workers run, so they took the idle
        # worker processes (runtime/warm.py) and it cannot; its start overlaps the job's, and
        # the calls made to it meanwhile wait in its queue.
        driver_node = ray.get_runtime_context().get_node_id()
        here = NodeAffinitySchedulingStrategy(driver_node, soft=True)
        self.state = ray.remote(num_cpus=0)(_JobState).options(scheduling_strategy=here).remote()
        self.loopback = all(info["node_id"] == driver_node for info in infos)
        if self.loopback:  # one machine: peers and the driver meet on loopback only
            infos = [{**info, "node_ip": LOOPBACK} for info in infos]
        self._assign_ranks(infos)
        visible = self._visible_gpus(infos)
        ray.get(
            [
                a.set_rank.remote(r, visible[r.node_id])
                for a, r in zip(self.actors, self.ranks, strict=True)
            ]
        )
        self.master_addr = self.ranks[0].node_ip
        self.refresh_master_port()

    def _start_actors(self, ray: Any, strategy: Any) -> None:
        """Create the worker actors: in the placement group's bundles when there is one."""
        s = self.scaling
        threads = str(max(1, int(s.num_cpus)))
        env = {
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            **self.env,
        }
        # Jobs run in their own one-thread concurrency group, the control calls (ping, ports)
        # in the default one: every job of a warm worker then runs on the same thread. With a
        # pool of two threads, a job landing on the other thread made OpenMP start a second
        # team beside the first one's: the next XGBoost fit's rounds took 1.6-2x as long.
        worker_cls = ray.remote(concurrency_groups={JOB_THREAD: 1})(_Worker)
        self.actors = [
            worker_cls.options(
                num_cpus=s.num_cpus,
                num_gpus=s.num_gpus or None,
                memory=s.memory,
                # "DEFAULT", not None: a job started from inside a placement group that
                # captures its children (a Ray Tune trial's) is not put in that group
                scheduling_strategy="DEFAULT"
                if self._pg is None
                else strategy(placement_group=self._pg, placement_group_bundle_index=i),
                **({"runtime_env": self.runtime_env} if self.runtime_env else {}),
            ).remote(env)
            for i in range(s.num_workers)
        ]

    @property
    def holds_placement_group(self) -> bool:
        """Whether the group reserved its workers in a placement group (several workers)."""
        return self._pg is not None

    def refresh_master_port(self) -> int:
        """Pick a new free rendezvous port on rank 0's node (for the next job of a reused group)."""
        import ray

        self.master_port = ray.get(self.actors[0].free_port.remote(self.bind_host(0)))
        return self.master_port

    def bind_host(self, rank: int) -> str:
        """The address a job port of ``rank`` should listen on: loopback when every rank runs
        on the driver's node, else all of the node's interfaces (its cluster address is among
        them)."""
        return LOOPBACK if self.loopback else ""

    def driver_host(self) -> str:
        """The address workers reach a driver-side service (a rendezvous tracker) at."""
        import ray

        return LOOPBACK if self.loopback else ray.util.get_node_ip_address()

    def free_ports(self) -> list[int]:
        """One free port per rank, found on the rank's own node (on loopback when local)."""
        import ray

        return list(
            ray.get([a.free_port.remote(self.bind_host(i)) for i, a in enumerate(self.actors)])
        )

    def _assign_ranks(self, infos: list[dict[str, Any]]) -> None:
        node_order: list[str] = []
        for info in infos:
            if info["node_id"] not in node_order:
                node_order.append(info["node_id"])
        order = sorted(
            range(len(infos)),
            key=lambda i: (node_order.index(infos[i]["node_id"]), infos[i]["gpu_ids"], i),
        )
        self.actors = [self.actors[i] for i in order]
        infos = [infos[i] for i in order]
        per_node = {n: [i for i in infos if i["node_id"] == n] for n in node_order}
        self.ranks = []
        for world_rank, info in enumerate(infos):
            local = per_node[info["node_id"]]
            local_rank = local.index(info)
            node_gpus = sorted({g for i in local for g in i["gpu_ids"]}, key=_gpu_key)
            device = node_gpus.index(info["gpu_ids"][0]) if info["gpu_ids"] else None
            self.ranks.append(
                RankInfo(
                    world_rank=world_rank,
                    world_size=len(infos),
                    local_rank=local_rank,
                    local_world_size=len(local),
                    node_rank=node_order.index(info["node_id"]),
                    node_ip=info["node_ip"],
                    node_id=info["node_id"],
                    gpu_ids=tuple(info["gpu_ids"]),
                    local_device=device,
                )
            )

    def _visible_gpus(self, infos: list[dict[str, Any]]) -> dict[str, list[str]]:
        visible: dict[str, set[str]] = {}
        for info in infos:
            visible.setdefault(info["node_id"], set()).update(info["gpu_ids"])
        return {node: sorted(ids, key=_gpu_key) for node, ids in visible.items()}

    def contexts(self, **fields: Any) -> list[Context]:
        """One :class:`Context` per rank sharing ``fields`` (dataset_map may be per rank)."""
        per_rank_data = fields.pop("dataset_maps", None)
        return [
            Context(
                rank_info=info,
                master_addr=self.master_addr,
                master_port=self.master_port,
                reporter=self.state,
                dataset_map=per_rank_data[info.world_rank] if per_rank_data else {},
                **fields,
            )
            for info in self.ranks
        ]

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        contexts: Sequence[Context] | None = None,
        rank_args: Sequence[tuple[Any, ...]] | None = None,
        on_poll: Callable[[], None] | None = None,
        poll_interval: float = 0.5,
        on_sent: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` on every rank and return the results by rank.

        Args:
            fn: A picklable function.
            contexts: Per-rank contexts made available through ``get_context()``.
            rank_args: Per-rank positional arguments, used instead of ``args``.
            on_poll: Called every ``poll_interval`` seconds while waiting (progress output).
            on_sent: Called once, as soon as the job was sent to every rank (while they run
                it: the driver's own preparations for the result).

        Raises:
            WorkerError: If any rank raised or died; carries every failure (``.failures``).
                The group is shut down first.
        """
        import ray

        if not self.actors:
            raise WorkerError(f"{self.name}: the worker group is not started (or was stopped)")
        self.jobs_run += 1
        refs = [
            actor.execute.options(concurrency_group=JOB_THREAD).remote(
                fn,
                contexts[i] if contexts else None,
                tuple(rank_args[i]) if rank_args else args,
                kwargs,
            )
            for i, actor in enumerate(self.actors)
        ]
        if on_sent is not None:
            on_sent()
        index = {ref: i for i, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        failures: dict[int, RankFailure] = {}
        pending = list(refs)
        deadline: float | None = None
        while pending:
            timeout = poll_interval
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            done, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            for ref in done:
                rank = index[ref]
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    failures[rank] = RankFailure(rank, type(exc).__name__, str(exc), "", None, True)
                    continue
                except ray.exceptions.RayError as exc:
                    failures[rank] = RankFailure(rank, type(exc).__name__, str(exc), str(exc))
                    continue
                if isinstance(value, RankFailure):
                    value.rank = rank
                    failures[rank] = value
                else:
                    results[rank] = value
            if failures and deadline is None:
                deadline = time.monotonic() + FAILURE_GRACE_S
            if deadline is not None and time.monotonic() >= deadline:
                break
            if on_poll is not None:
                on_poll()
        if failures:
            self.kill_workers()  # stop the others now: nothing waits on a dead peer
            raise WorkerError(
                _failure_message(self.name, failures, len(refs)),
                failures=[failures[r] for r in sorted(failures)],
            )
        return [results[i] for i in range(len(refs))]

    def kill_workers(self) -> None:
        """Kill the worker actors (the job state actor stays, so reports can still be read)."""
        import ray

        self._killed.extend(_actor_ids(self.actors))
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors = []

    def shutdown(self, top_up: bool = True) -> None:
        """Kill the actors and the job state, and release the placement group.

        Args:
            top_up: Then have the nodes start idle worker processes in their place (in the
                background; :func:`~mlruntime.runtime.warm.top_up_idle_workers`), so the next
                job starts on warm ones. Not for a group with its own runtime env (its
                processes are not the plain ones a top-up starts).
        """
        import ray
        from ray.util.placement_group import remove_placement_group

        nodes = {r.node_id for r in self.ranks}
        self.kill_workers()
        ended = self._killed + _actor_ids([self.state])
        if self.state is not None:
            try:
                ray.kill(self.state, no_restart=True)
            except Exception:
                pass
        self.state = None
        if self._pg is not None:
            try:
                remove_placement_group(self._pg)
            except Exception:
                pass
            self._pg = None
        self._killed = []
        if top_up and ended and not self.runtime_env:
            from mlruntime.runtime.warm import top_up_idle_workers

            try:
                nodes.add(ray.get_runtime_context().get_node_id())  # the job state's node
            except Exception:  # Ray is gone: nothing to top up
                return
            top_up_idle_workers(nodes, ended)

    def revive(self) -> bool:
        """Ready a kept group for its next job: whether every actor still answers (rank 0 by
        picking a new free rendezvous port on its node, as the last job's may linger in
        TIME_WAIT; the others by a ping), in one round trip."""
        import ray

        if not self.actors:
            return False
        try:
            port, *_ = ray.get(
                [
                    self.actors[0].free_port.remote(self.bind_host(0)),
                    *(a.ping.remote() for a in self.actors[1:]),
                ],
                timeout=10,
            )
        except Exception:
            return False
        self.master_port = port
        return True


def _actor_ids(actors: Sequence[Any]) -> list[bytes]:
    """Ray's ids of ``actors`` (``None`` and handles without one skipped)."""
    ids = []
    for actor in actors:
        actor_id = getattr(actor, "_actor_id", None)
        if actor_id is not None:
            ids.append(actor_id.binary())
    return ids


def _placement_group_name(ray: Any) -> str:
    """A new placement group's name: it says which worker process created it (``driver`` for
    a driver, whose groups Ray frees with it)."""
    import uuid

    from ray._private.worker import WORKER_MODE, global_worker

    creator = "driver"
    if global_worker.mode == WORKER_MODE:
        creator = ray.get_runtime_context().get_worker_id()
    return f"{PLACEMENT_GROUP_PREFIX}{creator}:{uuid.uuid4().hex[:12]}"


def release_orphaned_placement_groups() -> int:
    """Remove the placement groups of worker groups whose creating worker process has died.

    Ray frees a placement group with the job's driver, not with the actor or task that
    created it: a process (a Ray Tune trial's, say) that dies in the middle of a
    several-worker job leaves the job's placement group holding its CPUs and GPUs until the
    driver exits, and every later job waits for them. The worker groups name their placement
    groups after the worker process that created them (:data:`PLACEMENT_GROUP_PREFIX`); this
    removes those whose process is no longer alive, asking Ray's worker table. An actor that
    Ray restarted runs in a new process, so its old group is removed too. Groups made by a
    driver, or by a process still alive, are left alone, as are placement groups not made
    here.

    Returns:
        How many placement groups were removed (0 also when Ray cannot be asked).
    """
    import ray
    from ray._private.state import state
    from ray.util import placement_group_table
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        table = placement_group_table()
    except Exception:
        return 0
    alive: set[str] | None = None
    removed = 0
    for pg_id, info in table.items():
        name = str(info.get("name") or "")
        if not name.startswith(PLACEMENT_GROUP_PREFIX) or info.get("state") == "REMOVED":
            continue
        creator = name[len(PLACEMENT_GROUP_PREFIX) :].split(":", 1)[0]
        if not _is_worker_id(creator):  # "driver", or a name this module did not give
            continue
        if alive is None:  # one look at the worker table per sweep, if there is a group
            try:
                alive = set(state.workers())
            except Exception:  # Ray could not be asked: nothing is known dead
                return removed
        if creator in alive:
            continue
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
            removed += 1
        except Exception:  # removed meanwhile (another process swept it)
            continue
    return removed


def _is_worker_id(text: str) -> bool:
    """Whether ``text`` is a Ray worker id in hex (28 bytes)."""
    return len(text) == 56 and all(c in "0123456789abcdef" for c in text)


def _fits_within(ray: Any, bundle: dict[str, float], seconds: float) -> bool:
    """Whether the cluster has ``bundle``'s resources free, or does within ``seconds`` (Ray's
    view of free resources lags the actors that just released them by a fraction of a
    second)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            available = ray.available_resources()
        except Exception:
            return False
        if all(available.get(key, 0.0) >= amount for key, amount in bundle.items()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _gpu_key(gpu: str) -> tuple[int, str]:
    return (int(gpu), gpu) if gpu.isdigit() else (1 << 30, gpu)


def _failure_message(name: str, failures: dict[int, RankFailure], world: int) -> str:
    lines = [f"{name}: {len(failures)} of {world} rank(s) failed"]
    for rank in sorted(failures):
        failure = failures[rank]
        lines.append(f"--- {failure}")
        if failure.traceback:
            lines.append(failure.traceback.rstrip())
    return "\n".join(lines)
