"""PyTorchDistributor on a simulated 2-node cluster (ray.cluster_utils.Cluster) with fake GPUs:
one worker per GPU, torchrun's variables per node, and a collective across the nodes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mlruntime import get_context
from mlruntime.testing import simulated_cluster
from mlruntime_pytorch import PyTorchDistributor, PyTorchScalingConfig


def where_am_i() -> dict[str, Any]:
    ctx = get_context()
    total = torch.tensor([1.0])
    dist.all_reduce(total)  # fake GPUs have no CUDA behind them: gloo carries the collective
    return {
        "env": {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")},
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "node": ctx.rank_info.node_id,
        "device": ctx.rank_info.local_device,
        "backend": dist.get_backend(),
        "sum": float(total.item()),
    }


def test_auto_scaling_runs_one_worker_per_gpu_across_nodes(tmp_path: Path) -> None:
    with simulated_cluster([(2, 2), (2, 2)]):
        result = PyTorchDistributor(where_am_i, verbose=False).run(artifact_location=tmp_path)
        narrowed = PyTorchDistributor(
            where_am_i, PyTorchScalingConfig(num_nodes=2, num_workers_per_node=1), verbose=False
        ).run(artifact_location=tmp_path / "one-per-node")
    ranks = result.return_values
    assert [r["env"]["RANK"] for r in ranks] == ["0", "1", "2", "3"]
    assert [r["env"]["GROUP_RANK"] for r in ranks] == ["0", "0", "1", "1"]
    assert [r["env"]["LOCAL_RANK"] for r in ranks] == ["0", "1", "0", "1"]
    assert {r["env"]["LOCAL_WORLD_SIZE"] for r in ranks} == {"2"}
    assert ranks[0]["node"] == ranks[1]["node"] != ranks[2]["node"] == ranks[3]["node"]
    assert [r["device"] for r in ranks] == [0, 1, 0, 1]
    assert {r["cuda_visible"] for r in ranks} == {"0,1"}
    assert {r["sum"] for r in ranks} == {4.0} and {r["backend"] for r in ranks} == {"gloo"}
    spread = narrowed.return_values
    assert len(spread) == 2 and spread[0]["node"] != spread[1]["node"]
    assert {r["sum"] for r in spread} == {2.0}
