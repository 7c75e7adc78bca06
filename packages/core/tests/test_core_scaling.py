"""Scaling configs resolve auto values against the cluster and refuse impossible requests."""

from __future__ import annotations

import pytest

from mlruntime.errors import ConfigError, ResourceError
from mlruntime.runtime.cluster import NodeInfo
from mlruntime.runtime.scaling import (
    FailureConfig,
    ScalingConfig,
    WorkerResourceConfig,
    resolve_scaling,
)


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
        (lambda: WorkerResourceConfig(num_cpus=0), "num_cpus must be > 0 or -1"),
        (lambda: WorkerResourceConfig(num_gpus=1.5), "num_gpus=1.5 is not possible"),
        (lambda: WorkerResourceConfig(num_gpus=-1), "num_gpus must be >= 0"),
        (lambda: WorkerResourceConfig(memory=0), "memory must be a positive"),
        (lambda: ScalingConfig(placement_strategy="RANDOM"), "placement_strategy must be one"),
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
