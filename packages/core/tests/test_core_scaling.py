"""Scaling configs resolve auto values against the cluster and refuse impossible requests;
GPU workers that reserve no CPU are placed on a real Ray node with fake GPUs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlruntime.errors import ConfigError, ResourceError
from mlruntime.runtime.cluster import NodeInfo
from mlruntime.runtime.context import get_context
from mlruntime.runtime.distributor import Distributor
from mlruntime.runtime.scaling import (
    FailureConfig,
    ScalingConfig,
    WorkerResourceConfig,
    resolve_scaling,
)
from mlruntime.testing import simulated_cluster


def node(name: str, cpus: float, gpus: float = 0) -> NodeInfo:
    return NodeInfo(name, name, name, cpus, gpus, 2**34, name == "head")


CPU_CLUSTER = [node("head", 8), node("n1", 8), node("n2", 8)]
GPU_CLUSTER = [node("head", 4), node("g1", 16, 4), node("g2", 16, 4)]


def test_auto_without_gpus_is_one_worker_per_node_with_its_cpus() -> None:
    r = resolve_scaling(ScalingConfig(), CPU_CLUSTER)
    assert (r.num_workers, r.num_cpus, r.num_gpus, r.use_gpu) == (3, 8, 0, False)


def test_auto_with_gpus_is_one_worker_per_gpu() -> None:
    r = resolve_scaling(ScalingConfig(), GPU_CLUSTER)
    assert (r.num_workers, r.num_gpus, r.use_gpu) == (8, 1, True)
    assert r.num_cpus == 4  # 16 CPUs shared by the 4 GPU workers of a node


def test_use_gpu_false_on_a_gpu_cluster_uses_cpus_only() -> None:
    r = resolve_scaling(ScalingConfig(use_gpu=False), GPU_CLUSTER)
    assert (r.num_workers, r.num_gpus) == (3, 0)
    assert r.num_cpus == 4  # the smallest node's CPUs, so one worker fits on every node


def test_fixed_workers_split_the_cpus() -> None:
    r = resolve_scaling(ScalingConfig(num_workers=2), [node("head", 2)])
    assert (r.num_workers, r.num_cpus) == (2, 1)
    r = resolve_scaling(
        ScalingConfig(num_workers=4, resources_per_worker=WorkerResourceConfig(num_cpus=0.5)),
        [node("head", 2)],
    )
    assert r.num_cpus == 0.5


def test_fractional_gpus_share_a_gpu() -> None:
    r = resolve_scaling(
        ScalingConfig(num_workers=8, resources_per_worker=WorkerResourceConfig(1, 0.5)),
        [node("g", 8, 4)],
    )
    assert (r.num_workers, r.num_gpus) == (8, 0.5)


@pytest.mark.parametrize(
    ("config", "nodes", "message"),
    [
        (
            ScalingConfig(use_gpu=True),
            CPU_CLUSTER,
            r"use_gpu=True asks for GPUs, but the cluster "
            r"has 3 node\(s\), 24 CPUs, 0 GPUs",
        ),
        (ScalingConfig(num_workers=9, use_gpu=True), GPU_CLUSTER, "needs 9 GPUs, but"),
        (ScalingConfig(num_workers=30), CPU_CLUSTER, "needs 30 CPUs, but"),
        (
            ScalingConfig(num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=9)),
            CPU_CLUSTER,
            "no single node can hold one worker",
        ),
        (
            ScalingConfig(num_workers=3, resources_per_worker=WorkerResourceConfig(num_cpus=5)),
            [node("a", 8), node("b", 8)],
            r"cannot be packed onto the nodes \(room for 2\)",
        ),
    ],
)
def test_impossible_requests_say_what_was_asked_and_what_exists(
    config: ScalingConfig, nodes: list[NodeInfo], message: str
) -> None:
    with pytest.raises(ResourceError, match=message):
        resolve_scaling(config, nodes)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ScalingConfig(num_workers=0), "num_workers must be a positive integer or -1"),
        (lambda: ScalingConfig(num_workers=-3), "num_workers must be"),
        (lambda: ScalingConfig(num_workers=1.5), "num_workers must be"),  # type: ignore[arg-type]
        (lambda: WorkerResourceConfig(num_cpus=-2), "num_cpus must be >= 0 or -1"),
        (lambda: WorkerResourceConfig(num_cpus=0), "num_cpus=0 and num_gpus=0 has nothing"),
        (lambda: WorkerResourceConfig(0, num_gpus=0), "num_cpus=0 is for GPU workers"),
        (lambda: WorkerResourceConfig(num_gpus=1.5), "num_gpus=1.5 is not possible"),
        (lambda: WorkerResourceConfig(num_gpus=-1), "num_gpus must be >= 0"),
        (lambda: WorkerResourceConfig(memory=0), "memory must be a positive"),
        (lambda: ScalingConfig(placement_strategy="RANDOM"), "placement_strategy must be one"),
        (
            lambda: ScalingConfig(resources_per_worker={"CPU": 1}),  # type: ignore[arg-type]
            "resources_per_worker must be a WorkerResourceConfig",
        ),
        (lambda: FailureConfig(max_failures=-2), "max_failures must be >= 0 or -1"),
    ],
)
def test_nonsense_configs_fail_at_construction(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


def test_gpus_per_worker_with_use_gpu_false_is_a_contradiction() -> None:
    with pytest.raises(ConfigError, match="contradicts use_gpu=False"):
        resolve_scaling(
            ScalingConfig(use_gpu=False, resources_per_worker=WorkerResourceConfig(1, 1)),
            GPU_CLUSTER,
        )


def test_a_resource_config_without_num_gpus_asks_for_no_gpu_as_in_snowflake() -> None:
    assert WorkerResourceConfig(num_cpus=2).num_gpus == 0
    r = resolve_scaling(
        ScalingConfig(num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=2)),
        GPU_CLUSTER,
    )
    assert (r.num_workers, r.num_cpus, r.num_gpus, r.use_gpu) == (2, 2, 0, False)
    # No resource config at all: auto, one GPU per worker on a GPU cluster.
    assert resolve_scaling(ScalingConfig(num_workers=2), GPU_CLUSTER).num_gpus == 1
    # num_gpus=None stays auto.
    auto = WorkerResourceConfig(num_cpus=2, num_gpus=None)
    r = resolve_scaling(ScalingConfig(num_workers=2, resources_per_worker=auto), GPU_CLUSTER)
    assert (r.num_gpus, r.use_gpu) == (1, True)
    r = resolve_scaling(ScalingConfig(resources_per_worker=auto), CPU_CLUSTER)
    assert (r.num_gpus, r.use_gpu) == (0, False)


def test_use_gpu_true_gives_each_worker_a_gpu_when_num_gpus_is_not_given() -> None:
    config = ScalingConfig(
        num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=1), use_gpu=True
    )
    r = resolve_scaling(config, GPU_CLUSTER)
    assert (r.num_workers, r.num_cpus, r.num_gpus, r.use_gpu) == (2, 1, 1, True)


def test_gpu_workers_may_reserve_no_cpu() -> None:
    zero_cpu = WorkerResourceConfig(num_cpus=0, num_gpus=1)
    r = resolve_scaling(ScalingConfig(resources_per_worker=zero_cpu), GPU_CLUSTER)
    assert (r.num_workers, r.num_cpus, r.num_gpus) == (8, 0, 1)
    assert r.describe() == "8 workers x (0 CPU, 1 GPU)"
    # A node without free CPUs still holds them.
    r = resolve_scaling(ScalingConfig(resources_per_worker=zero_cpu), [node("g", 0, 2)])
    assert (r.num_workers, r.num_cpus) == (2, 0)


def test_zero_cpus_in_a_job_without_gpus_is_a_clear_error() -> None:
    auto_gpus = WorkerResourceConfig(num_cpus=0, num_gpus=None)
    with pytest.raises(ConfigError, match=r"nothing to run on.*this job uses no GPUs: the cluster"):
        resolve_scaling(ScalingConfig(resources_per_worker=auto_gpus), CPU_CLUSTER)
    with pytest.raises(ConfigError, match=r"this job uses no GPUs: use_gpu=False"):
        resolve_scaling(ScalingConfig(resources_per_worker=auto_gpus, use_gpu=False), GPU_CLUSTER)


def gpu_worker_view() -> dict[str, object]:
    import ray

    ctx = get_context()
    return {
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "gpu_ids": ctx.rank_info.gpu_ids,
        "free_cpus": ray.available_resources().get("CPU", 0.0),
        "default_backend": ctx.get_default_backend(),
        "supported": ctx.get_supported_backends(),
    }


def test_zero_cpu_gpu_workers_are_placed_and_run_one_thread(
    ray_cluster: None, tmp_path: Path
) -> None:
    # ray_cluster first: Ray is then imported the way mlruntime.init does it (loopback), as in
    # a full test run, so later tests' embedded Ray still binds to loopback.
    # A real Ray node with 2 CPUs and 2 (fake) GPUs: the two GPU workers reserve no CPU.
    with simulated_cluster([(2, 2)]):
        config = ScalingConfig(resources_per_worker=WorkerResourceConfig(num_cpus=0, num_gpus=1))
        result = Distributor(config, verbose=False).run(gpu_worker_view, artifact_location=tmp_path)
    ranks = result.return_values
    assert len(ranks) == 2 and all(len(r["gpu_ids"]) == 1 for r in ranks)
    assert {r["omp"] for r in ranks} == {"1"}  # still one thread, not zero
    assert {r["free_cpus"] for r in ranks} == {2.0}  # the CPUs stay free for other work
    # A generic job's GPU workers would meet over nccl (this worker sees GPUs).
    assert {r["default_backend"] for r in ranks} == {"nccl"}
    assert ranks[0]["supported"] == ["nccl", "gloo"]
