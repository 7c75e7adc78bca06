"""How many workers a job gets and what each holds, resolved against the live cluster.

``-1`` / ``None`` mean auto: with GPUs, one worker per GPU on every node; without, one worker per
node using that node's CPUs. Impossible requests fail before any actor starts, saying what was
asked and what exists.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mlruntime.errors import ConfigError, ResourceError
from mlruntime.runtime.cluster import NodeInfo

__all__ = [
    "FailureConfig",
    "NodeScalingConfig",
    "ResolvedScaling",
    "ScalingConfig",
    "WorkerResourceConfig",
    "check_fits_beside_held",
    "resolve_scaling",
    "resources_held_elsewhere",
]

PLACEMENT_STRATEGIES = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")

_NOTHING_TO_RUN_ON = (
    "a worker with num_cpus=0 and num_gpus=0 has nothing to run on: num_cpus=0 is for GPU "
    "workers (WorkerResourceConfig(num_cpus=0, num_gpus=1)); give CPU workers num_cpus >= 1 "
    "or -1 (auto)"
)


@dataclass(frozen=True)
class WorkerResourceConfig:
    """Resources of one worker (Snowflake's ``WorkerResourceConfig(num_cpus, num_gpus=0)``).

    Args:
        num_cpus: Logical CPUs to reserve for each worker (``-1``: auto). ``0`` reserves none,
            for GPU workers that only drive their GPU; the worker still runs one thread.
        num_gpus: GPUs to reserve for each worker; ``0`` (the default, as in Snowflake) means
            none. ``None`` means auto: one if the job uses GPUs, else none. A fraction below
            one shares a GPU; above one it must be a whole number.
        memory: Bytes of memory to reserve, or ``None``.

    Raises:
        ConfigError: For a negative CPU count (other than -1), a negative or
            fractional-above-one GPU count, a worker with no CPUs and no GPUs, or a
            non-positive memory.

    Example:
        >>> WorkerResourceConfig(num_cpus=0, num_gpus=1)  # a GPU worker reserving no CPU
        WorkerResourceConfig(num_cpus=0, num_gpus=1, memory=None)
    """

    num_cpus: float = -1
    num_gpus: float | None = 0
    memory: int | None = None

    def __post_init__(self) -> None:
        if self.num_cpus != -1 and (not _is_number(self.num_cpus) or self.num_cpus < 0):
            raise ConfigError(f"num_cpus must be >= 0 or -1 (auto), got {self.num_cpus!r}")
        if self.num_gpus is not None:
            if not _is_number(self.num_gpus) or self.num_gpus < 0:
                raise ConfigError(f"num_gpus must be >= 0 or None (auto), got {self.num_gpus!r}")
            if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
                raise ConfigError(
                    f"num_gpus={self.num_gpus} is not possible: use a whole number of GPUs, or a "
                    "fraction below 1 to share one GPU"
                )
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise ConfigError(_NOTHING_TO_RUN_ON)
        if self.memory is not None and (not _is_number(self.memory) or self.memory <= 0):
            raise ConfigError(f"memory must be a positive number of bytes, got {self.memory!r}")


AUTO_RESOURCES = WorkerResourceConfig(num_cpus=-1, num_gpus=None)
"""What a worker gets when no resource config is given: CPUs and GPUs both auto."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ScalingConfig:
    """The shape of a distributed job; each framework's config maps onto this one.

    Args:
        num_workers: Workers in all (``-1``: auto).
        resources_per_worker: CPUs/GPUs/memory of each worker. ``None`` (the default) is auto
            for both CPUs and GPUs; a ``WorkerResourceConfig`` without ``num_gpus`` asks for
            no GPU, as in Snowflake.
        use_gpu: ``None``: use GPUs if the worker resources ask for them (or, with no
            resources given, if the cluster has any); ``True``: require them (one per worker
            unless ``num_gpus`` says otherwise); ``False``: CPUs only.
        placement_strategy: Ray placement strategy (``"SPREAD"`` by default: across nodes).

    Raises:
        ConfigError: For ``num_workers`` of 0 or below -1, resources that are not a
            WorkerResourceConfig, or an unknown strategy.
    """

    num_workers: int = -1
    resources_per_worker: WorkerResourceConfig | None = None
    use_gpu: bool | None = None
    placement_strategy: str = "SPREAD"

    def __post_init__(self) -> None:
        if (
            isinstance(self.num_workers, bool)
            or not isinstance(self.num_workers, int)
            or (self.num_workers == 0 or self.num_workers < -1)
        ):
            raise ConfigError(
                f"num_workers must be a positive integer or -1 (auto), got {self.num_workers!r}"
            )
        res = self.resources_per_worker
        if res is not None and not isinstance(res, WorkerResourceConfig):
            raise ConfigError(
                "resources_per_worker must be a WorkerResourceConfig (e.g. "
                f"WorkerResourceConfig(num_cpus=2)), got {type(res).__name__}"
            )
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(
                f"placement_strategy must be one of {PLACEMENT_STRATEGIES}, got "
                f"{self.placement_strategy!r}"
            )


@dataclass(frozen=True)
class FailureConfig:
    """What to do when a worker dies.

    Args:
        max_failures: Restarts of the whole group allowed (from the last reported checkpoint)
            before the job fails; ``-1`` for unlimited.

    Raises:
        ConfigError: For a value below -1.
    """

    max_failures: int = 0

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_failures, bool)
            or not isinstance(self.max_failures, int)
            or (self.max_failures < -1)
        ):
            raise ConfigError(f"max_failures must be >= 0 or -1, got {self.max_failures!r}")


@dataclass(frozen=True)
class ResolvedScaling:
    """A concrete job shape: ``num_workers`` workers of ``num_cpus``/``num_gpus`` each."""

    num_workers: int
    num_cpus: float
    num_gpus: float
    memory: int | None
    use_gpu: bool
    placement_strategy: str

    def describe(self) -> str:
        """``"2 workers x (1 CPU, 0 GPU)"``."""
        return (
            f"{self.num_workers} worker{'s' if self.num_workers != 1 else ''} x "
            f"({self.num_cpus:g} CPU, {self.num_gpus:g} GPU)"
        )


def resolve_scaling(config: ScalingConfig, nodes: Sequence[NodeInfo]) -> ResolvedScaling:
    """Resolve auto values against ``nodes`` and check the request can be placed.

    Raises:
        ConfigError: If the request contradicts itself (GPUs per worker with
            ``use_gpu=False``; ``num_cpus=0`` for a job without GPUs).
        ResourceError: If the cluster cannot hold the request (the message says what was asked
            and what exists).
    """
    alive = [n for n in nodes if n.num_cpus > 0 or n.num_gpus > 0]
    if not alive:
        raise ResourceError("the Ray cluster has no nodes with CPUs or GPUs")
    total_cpus = sum(n.num_cpus for n in alive)
    total_gpus = sum(n.num_gpus for n in alive)
    have = f"the cluster has {len(alive)} node(s), {total_cpus:g} CPUs, {total_gpus:g} GPUs"
    res = config.resources_per_worker or AUTO_RESOURCES
    use_gpu = config.use_gpu
    if use_gpu is None:
        use_gpu = bool(res.num_gpus) if res.num_gpus is not None else total_gpus > 0
    if use_gpu and total_gpus == 0:
        raise ResourceError(f"use_gpu=True asks for GPUs, but {have}")
    if not use_gpu and res.num_gpus:
        raise ConfigError(f"num_gpus={res.num_gpus} per worker contradicts use_gpu=False")
    gpus = float(res.num_gpus or 1.0) if use_gpu else 0.0  # use_gpu=True: at least one each
    if res.num_cpus == 0 and not gpus:
        why = "use_gpu=False" if config.use_gpu is False else have
        raise ConfigError(f"{_NOTHING_TO_RUN_ON} (this job uses no GPUs: {why})")

    workers = config.num_workers
    if workers == -1:
        if use_gpu:
            workers = sum(int(n.num_gpus // gpus) for n in alive if n.num_gpus >= gpus)
        else:
            workers = len([n for n in alive if n.num_cpus >= 1])
    if workers <= 0:
        raise ResourceError(f"no worker fits: each needs {gpus:g} GPU; {have}")

    cpus = res.num_cpus
    if cpus == -1:
        if use_gpu:
            per_node = [n.num_cpus / max(1, int(n.num_gpus // gpus)) for n in alive if n.num_gpus]
            cpus = max(1.0, math.floor(min(per_node)))
        elif config.num_workers == -1:
            cpus = max(1.0, min(n.num_cpus for n in alive if n.num_cpus >= 1))
        else:
            cpus = max(1.0, math.floor(total_cpus / workers))
            cpus = min(cpus, max(n.num_cpus for n in alive))

    asked = f"{workers} worker(s) x ({cpus:g} CPU, {gpus:g} GPU)"
    if gpus * workers > total_gpus + 1e-9:
        raise ResourceError(f"{asked} needs {gpus * workers:g} GPUs, but {have}")
    if cpus * workers > total_cpus + 1e-9:
        raise ResourceError(f"{asked} needs {cpus * workers:g} CPUs, but {have}")
    if not any(n.num_cpus >= cpus and n.num_gpus >= gpus for n in alive):
        raise ResourceError(f"no single node can hold one worker of {asked}; {have}")
    fits = sum(
        min(
            int(n.num_cpus // cpus) if cpus else workers,
            int(n.num_gpus // gpus) if gpus else workers,
        )
        for n in alive
    )
    if fits < workers:
        raise ResourceError(f"{asked} cannot be packed onto the nodes (room for {fits}); {have}")
    return ResolvedScaling(
        num_workers=workers,
        num_cpus=float(cpus),
        num_gpus=float(gpus),
        memory=res.memory,
        use_gpu=bool(use_gpu),
        placement_strategy=config.placement_strategy,
    )


@dataclass(frozen=True)
class NodeScalingConfig:
    """A job shape given per node, as distributors of training functions take it.

    Args:
        num_nodes: Nodes to use (``-1``: every node that can hold a worker).
        num_workers_per_node: Workers per node (``-1``: one per GPU of the node when GPUs are
            used, else one per node).
        resource_requirements_per_worker: CPUs/GPUs of each worker (default ``None``: auto —
            the node's CPUs split among its workers, one GPU each when the cluster has GPUs).
            A ``WorkerResourceConfig`` without ``num_gpus`` asks for no GPU, as in Snowflake.

    Raises:
        ConfigError: For 0 or negative (other than -1) counts, or resources that are not a
            WorkerResourceConfig.
    """

    num_nodes: int = -1
    num_workers_per_node: int = -1
    resource_requirements_per_worker: WorkerResourceConfig | None = None

    def __post_init__(self) -> None:
        for name in ("num_nodes", "num_workers_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
                raise ConfigError(f"{name} must be a positive integer or -1 (auto), got {value!r}")
        res = self.resource_requirements_per_worker
        if res is not None and not isinstance(res, WorkerResourceConfig):
            raise ConfigError(
                "resource_requirements_per_worker must be a WorkerResourceConfig, got "
                f"{type(res).__name__}"
            )

    def resolve(self, nodes: Sequence[NodeInfo]) -> ResolvedScaling:
        """Resolve against the live cluster's ``nodes`` (``mlruntime.get_nodes()``).

        One node packs its workers (``STRICT_PACK``); one worker per node spreads them
        strictly (``STRICT_SPREAD``); otherwise workers are spread across nodes.

        Raises:
            ConfigError: For ``num_cpus=0`` in a job without GPUs.
            ResourceError: If the cluster cannot hold the request; says what exists.
        """
        res = self.resource_requirements_per_worker or AUTO_RESOURCES
        use_gpu = None if res.num_gpus is None else res.num_gpus > 0
        auto_config = ScalingConfig(resources_per_worker=res, use_gpu=use_gpu)
        if self.num_nodes == -1 and self.num_workers_per_node == -1:
            return resolve_scaling(auto_config, nodes)
        alive = [n for n in nodes if n.num_cpus > 0 or n.num_gpus > 0]
        if self.num_nodes > len(alive):
            raise ResourceError(
                f"num_nodes={self.num_nodes} but the cluster has {len(alive)} node(s)"
            )
        node_count = len(alive) if self.num_nodes == -1 else self.num_nodes
        per_node, cpus = self.num_workers_per_node, res.num_cpus
        if per_node == -1 or cpus == -1:
            auto = resolve_scaling(auto_config, nodes)
            if per_node == -1:  # what auto gives one node
                per_node = max(1, auto.num_workers // max(1, len(alive)))
            if cpus == -1:
                fewest = min(n.num_cpus for n in alive if n.num_cpus >= 1)
                cpus = auto.num_cpus if auto.use_gpu else max(1.0, float(fewest // per_node))
        if node_count == 1:
            strategy = "STRICT_PACK"
        elif per_node == 1:
            strategy = "STRICT_SPREAD"
        else:
            strategy = "SPREAD"
        config = ScalingConfig(
            num_workers=node_count * per_node,
            resources_per_worker=WorkerResourceConfig(cpus, res.num_gpus, res.memory),
            use_gpu=use_gpu,
            placement_strategy=strategy,
        )
        return resolve_scaling(config, nodes)


_held_elsewhere: tuple[dict[str, float], str] | None = None


@contextlib.contextmanager
def resources_held_elsewhere(resources: dict[str, float], advice: str) -> Iterator[None]:
    """While inside, jobs started from this process fail at once, before any placement, when
    they need more than the cluster has beside ``resources`` (:func:`check_fits_beside_held`).

    For a caller holding resources its own jobs can never get while it runs: a tuning run's
    trial, whose run reserves CPUs for it and for every trial beside it (``mlruntime.tune``).
    Without it such a job waited out the placement timeout.

    Args:
        resources: ``{"CPU": n, "GPU": m}`` held for the caller and its peers.
        advice: The end of the error's message: what to change.
    """
    global _held_elsewhere
    # one caller per process at a time (a Tune trial: Tune joins its thread before the next)
    saved = _held_elsewhere
    _held_elsewhere = ({k.upper(): float(v) for k, v in resources.items()}, advice)
    try:
        yield
    finally:
        _held_elsewhere = saved


def check_fits_beside_held(scaling: ResolvedScaling, nodes: Sequence[NodeInfo]) -> None:
    """Check that a job could ever be placed beside what is held elsewhere
    (:func:`resources_held_elsewhere`; nothing to check outside it).

    Args:
        scaling: The job's resolved scaling.
        nodes: The cluster's nodes (the job's listing).

    Raises:
        ResourceError: If the job needs more CPUs or GPUs than the cluster has beside them.
    """
    if _held_elsewhere is None:
        return
    held, advice = _held_elsewhere
    for key, each in (("CPU", scaling.num_cpus), ("GPU", scaling.num_gpus)):
        need = scaling.num_workers * each
        total = sum(n.num_cpus if key == "CPU" else n.num_gpus for n in nodes)
        left = total - held.get(key, 0.0)
        if need > left + 1e-9:
            raise ResourceError(
                f"this job needs {scaling.describe()} ({need:g} {key}), but the cluster's "
                f"{total:g} {key} less the {held.get(key, 0.0):g} held for its caller and "
                f"its peers leave {left:g}: it could never be placed while they run. {advice}"
            )
