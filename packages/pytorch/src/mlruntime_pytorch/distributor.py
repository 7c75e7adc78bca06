"""PyTorchDistributor: run a DDP ``train_func`` on every worker of a Ray cluster.

Core owns launch, sharding, restarts and the context; this module only says how torch joins:
torchrun's environment on every rank, the default process group (gloo on CPU, nccl on GPU) and
the local GPU as the current device.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

from mlruntime.runtime.context import Context, RankInfo
from mlruntime.runtime.distributor import Backend
from mlruntime.runtime.scaling import NodeScalingConfig, WorkerResourceConfig
from mlruntime.train.train_func import TrainFuncDistributor

__all__ = ["PyTorchDistributor", "PyTorchScalingConfig", "TorchBackend", "WorkerResourceConfig"]

PROCESS_GROUP_TIMEOUT_S = float(os.environ.get("MLRUNTIME_TORCH_PG_TIMEOUT_S", "1800"))
"""How long a collective may wait for a peer before torch gives up (core kills a group whose
rank failed well before that)."""


class PyTorchScalingConfig(NodeScalingConfig):
    """The shape of a PyTorch job: ``num_nodes``, ``num_workers_per_node`` and
    ``resource_requirements_per_worker``, each ``-1``/``None`` for auto (one worker per GPU,
    else one per node). Fields, auto rules and errors: :class:`mlruntime.NodeScalingConfig`.
    """


class TorchBackend(Backend):
    """torchrun's environment and the default process group on every rank."""

    name = "torch"

    def worker_env(self, rank: RankInfo, master_addr: str, master_port: int) -> dict[str, str]:
        """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK/NODE_RANK, MASTER_*; on
        one machine gloo is kept on the loopback interface."""
        lo = "lo0" if sys.platform == "darwin" else "lo"
        loopback = (
            {"GLOO_SOCKET_IFNAME": lo, "NCCL_SOCKET_IFNAME": lo}
            if master_addr.startswith("127.")
            else {}
        )
        return {
            **loopback,
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
        """Set the local GPU as the current device, initialize the default process group and
        let ``train_func`` call ``dist.init_process_group`` / ``destroy_process_group`` itself
        (:mod:`mlruntime_pytorch.process_group`)."""
        import torch
        import torch.distributed as dist

        from mlruntime_pytorch import process_group

        process_group.uninstall()  # in case a failed job left it in place
        use_cuda = context.rank_info.local_device is not None and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(context.rank_info.local_device)
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        if dist.is_initialized():
            dist.destroy_process_group()
        backend = "nccl" if use_cuda else "gloo"
        timeout = timedelta(seconds=PROCESS_GROUP_TIMEOUT_S)
        dist.init_process_group(
            backend=backend,
            store=_rendezvous_store(context, timeout),
            rank=context.get_rank(),
            world_size=context.get_world_size(),
            timeout=timeout,
        )
        context.collective_backends = ("nccl", "gloo") if use_cuda else ("gloo",)
        process_group.install()

    def teardown(self, context: Context) -> None:
        """Put torch's ``init_process_group`` back and destroy the process group (the worker
        may serve another job)."""
        import torch.distributed as dist

        from mlruntime_pytorch import process_group

        process_group.uninstall()
        if dist.is_initialized():
            dist.destroy_process_group()


def _rendezvous_store(context: Context, timeout: timedelta) -> Any:
    """torch's rendezvous store, served by rank 0 at the master address.

    torch's own ``TCPStore`` server listens on every interface whatever host it is given; on
    one machine (a loopback master address) rank 0 hands it a socket it bound to loopback
    itself, so the store is out of other machines' reach.
    """
    import socket

    import torch.distributed as dist

    host, port = context.get_master_addr(), context.get_master_port()
    is_master = context.get_rank() == 0
    world = context.get_world_size()
    if not (is_master and host.startswith("127.")):
        return dist.TCPStore(host, port, world, is_master, timeout, wait_for_workers=False)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(max(128, world))
        store = dist.TCPStore(
            host,
            port,
            world,
            True,
            timeout,
            wait_for_workers=False,
            master_listen_fd=listener.fileno(),
        )
    except BaseException:
        listener.close()
        raise
    listener.detach()  # the store owns the socket now
    return store


class PyTorchDistributor(TrainFuncDistributor):
    """Run a PyTorch ``train_func`` on every worker, DDP-ready.

    Inside ``train_func`` the default process group is initialized (gloo on CPU, nccl on GPU,
    the local GPU set as current device), torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) are set, and ``get_context()`` answers ranks,
    this rank's datasets, hyper-parameters, the model folder and the checkpoint to resume from.
    A ``train_func`` that calls ``dist.init_process_group(...)`` itself, as Snowflake's samples
    do, gets the existing group when it asks for the same one (no backend, or the one in use:
    ``get_context().get_default_backend()``), and a clear error when it asks for another;
    its ``dist.destroy_process_group()`` is harmless. ``run(dataset_map=..., hyper_params=...,
    artifact_location=...)`` (or Snowflake's ``artifact_stage_location=``) returns a Result
    (see :meth:`mlruntime.train_func.TrainFuncDistributor.run`).

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
        ...     dist.init_process_group(backend=ctx.get_default_backend())  # optional: a no-op
        ...     data = ctx.get_dataset_map()["train"].to_torch_dataset(batch_size=256)
        ...     model = torch.nn.parallel.DistributedDataParallel(make_model())
        ...     for batch in data: ...
        ...     ctx.get_metrics_reporter().log_metrics({"loss": loss.item()})
        >>> result = PyTorchDistributor(train_func).run(dataset_map={"train": dc})
        >>> result.get_metrics()["loss"]
    """

    name = "pytorch"
    backend = TorchBackend()
    scaling_config_type = PyTorchScalingConfig
