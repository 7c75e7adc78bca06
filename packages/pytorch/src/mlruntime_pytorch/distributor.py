"""PyTorchDistributor: run a DDP ``train_func`` on every worker of a Ray cluster.

Core owns launch, sharding, restarts and the context; this module only says how torch joins:
torchrun's environment on every rank, the default process group (gloo on CPU, nccl on GPU) and
the local GPU as the current device.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mlruntime.context import Context, RankInfo
from mlruntime.distributor import Backend, Distributor, Result
from mlruntime.errors import ConfigError, ResourceError
from mlruntime.scaling import (
    FailureConfig,
    ResolvedScaling,
    ScalingConfig,
    WorkerResourceConfig,
    resolve_scaling,
)

__all__ = ["PyTorchDistributor", "PyTorchScalingConfig", "TorchBackend", "WorkerResourceConfig"]

PROCESS_GROUP_TIMEOUT_S = float(os.environ.get("MLRUNTIME_TORCH_PG_TIMEOUT_S", "1800"))
"""How long a collective may wait for a peer before torch gives up (core kills a group whose
rank failed well before that)."""


@dataclass(frozen=True)
class PyTorchScalingConfig:
    """The shape of a PyTorch job.

    Args:
        num_nodes: Nodes to use (``-1``: every node that can hold a worker).
        num_workers_per_node: Workers per node (``-1``: one per GPU of the node when GPUs are
            used, else one per node).
        resource_requirements_per_worker: CPUs/GPUs of each worker (default: auto — the
            node's CPUs split among its workers, one GPU each when the cluster has GPUs).

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

    def resolve(self, nodes: list[Any]) -> ResolvedScaling:
        """Resolve against the live cluster's ``nodes`` (``mlruntime.get_nodes()``).

        Raises:
            ResourceError: If the cluster cannot hold the request; says what exists.
        """
        res = self.resource_requirements_per_worker or WorkerResourceConfig()
        use_gpu = None if res.num_gpus is None else res.num_gpus > 0
        alive = [n for n in nodes if n.num_cpus > 0 or n.num_gpus > 0]
        if self.num_nodes != -1 and self.num_nodes > len(alive):
            raise ResourceError(
                f"num_nodes={self.num_nodes} but the cluster has {len(alive)} node(s)"
            )
        if self.num_nodes == -1 and self.num_workers_per_node == -1:
            return resolve_scaling(ScalingConfig(resources_per_worker=res, use_gpu=use_gpu), nodes)
        auto = resolve_scaling(ScalingConfig(resources_per_worker=res, use_gpu=use_gpu), nodes)
        node_count = len(alive) if self.num_nodes == -1 else self.num_nodes
        per_node = self.num_workers_per_node
        if per_node == -1:  # what auto gives one node
            per_node = max(1, auto.num_workers // max(1, len(alive)))
        if node_count == 1:
            strategy = "STRICT_PACK"
        elif per_node == 1:
            strategy = "STRICT_SPREAD"
        else:
            strategy = "SPREAD"
        cpus = res.num_cpus
        if cpus == -1:
            fewest = min(n.num_cpus for n in alive if n.num_cpus >= 1)
            cpus = max(1.0, float(int(fewest // per_node))) if not auto.use_gpu else auto.num_cpus
        config = ScalingConfig(
            num_workers=node_count * per_node,
            resources_per_worker=WorkerResourceConfig(cpus, res.num_gpus, res.memory),
            use_gpu=use_gpu,
            placement_strategy=strategy,
        )
        return resolve_scaling(config, nodes)


class TorchBackend(Backend):
    """torchrun's environment and the default process group on every rank."""

    name = "torch"

    def worker_env(self, rank: RankInfo, master_addr: str, master_port: int) -> dict[str, str]:
        """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK/NODE_RANK, MASTER_*."""
        return {
            "RANK": str(rank.world_rank),
            "WORLD_SIZE": str(rank.world_size),
            "LOCAL_RANK": str(rank.local_rank),
            "LOCAL_WORLD_SIZE": str(rank.local_world_size),
            "GROUP_RANK": str(rank.node_rank),
            "NODE_RANK": str(rank.node_rank),
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
        }

    def setup(self, context: Context) -> None:
        """Set the local GPU as the current device and initialize the default process group."""
        import torch
        import torch.distributed as dist

        use_cuda = context.rank_info.local_device is not None and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(context.rank_info.local_device)
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        if dist.is_initialized():
            dist.destroy_process_group()
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=f"tcp://{context.get_master_addr()}:{context.get_master_port()}",
            rank=context.get_rank(),
            world_size=context.get_world_size(),
            timeout=timedelta(seconds=PROCESS_GROUP_TIMEOUT_S),
        )

    def teardown(self, context: Context) -> None:
        """Destroy the process group (the worker may serve another job)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class PyTorchDistributor(Distributor):
    """Run a PyTorch ``train_func`` on every worker, DDP-ready.

    Inside ``train_func`` the default process group is initialized (gloo on CPU, nccl on GPU,
    the local GPU set as current device), torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) are set, and ``get_context()`` answers ranks,
    this rank's datasets, hyper-parameters, the model folder and the checkpoint to resume from.

    Args:
        train_func: A function of no arguments (or of one: the hyper-parameters dict).
        scaling_config: Nodes, workers per node and their resources (default: auto).
        failure_config: Restarts from the last checkpoint when a worker dies.
        verbose: Print phases, rank 0's metrics and a timing summary.

    Raises:
        ConfigError: If ``train_func`` is not callable or the configs have the wrong type.

    Example:
        >>> def train_func():
        ...     ctx = get_context()
        ...     data = ctx.get_dataset_map()["train"].to_torch_dataset(batch_size=256)
        ...     model = torch.nn.parallel.DistributedDataParallel(make_model())
        ...     for batch in data: ...
        ...     ctx.report({"loss": loss.item()})
        >>> result = PyTorchDistributor(train_func).run(dataset_map={"train": dc})
        >>> result.get_metrics()["loss"]
    """

    name = "pytorch"
    backend = TorchBackend()

    def __init__(
        self,
        train_func: Callable[..., Any],
        scaling_config: PyTorchScalingConfig | None = None,
        failure_config: FailureConfig | None = None,
        *,
        verbose: bool = True,
    ) -> None:
        if not callable(train_func):
            raise ConfigError(f"train_func must be callable, got {type(train_func).__name__}")
        if scaling_config is not None and not isinstance(scaling_config, PyTorchScalingConfig):
            raise ConfigError(
                "scaling_config must be a PyTorchScalingConfig, got "
                f"{type(scaling_config).__name__}"
            )
        super().__init__(None, failure_config, verbose=verbose)
        self.train_func = train_func
        self.torch_scaling = scaling_config or PyTorchScalingConfig()

    def resolve(self) -> ResolvedScaling:
        """Connect to Ray and resolve the scaling config against the live cluster."""
        from mlruntime.runtime import get_nodes, init

        init()
        return self.torch_scaling.resolve(get_nodes())

    def run(
        self,
        *,
        dataset_map: dict[str, Any] | None = None,
        hyper_params: dict[str, Any] | None = None,
        artifact_location: str | os.PathLike[str] | None = None,
        equal_shards: bool = True,
    ) -> Result:
        """Run ``train_func`` on every worker and return rank 0's report.

        Args:
            dataset_map: Name -> DataConnector; each rank gets its own shard (equal-sized by
                default so DDP ranks take the same number of steps), read straight from
                storage on the worker. A ShardedDataConnector is passed as is.
            hyper_params: Values ``get_context().get_hyper_params()`` returns, types kept.
            artifact_location: Folder for the run's model dir and checkpoints (default: a new
                folder under ``MLRUNTIME_HOME/runs``).
            equal_shards: Give every rank the same number of rows (the remainder is dropped).

        Returns:
            A Result: ``get_metrics()`` (rank 0's last report), ``get_metrics_history()``,
            ``get_model_dir()``, ``get_checkpoint_location()``, ``get_checkpoint()``, and
            ``return_values`` (what ``train_func`` returned on each rank).

        Raises:
            ConfigError: ``train_func`` not picklable, ``dataset_map`` values that are not
                DataConnectors — before any worker starts.
            ResourceError: A scaling request the cluster cannot meet.
            WorkerError: Ranks failed (every rank's error and traceback), after the allowed
                restarts.
        """
        params = dict(hyper_params or {})
        fn = _CallTrainFunc(self.train_func)
        return self.launch(
            fn,
            dataset_map=dataset_map,
            hyper_params=params,
            artifact_location=artifact_location,
            equal_shards=equal_shards,
        )


class _CallTrainFunc:
    """Calls the user's function with the hyper-parameters when it takes an argument."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "train_func")

    def __call__(self) -> Any:
        import inspect

        from mlruntime.context import get_context

        try:
            wants_config = bool(inspect.signature(self.fn).parameters)
        except (TypeError, ValueError):
            wants_config = False
        if wants_config:
            return self.fn(get_context().get_hyper_params())
        return self.fn()
