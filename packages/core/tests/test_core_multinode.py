"""Placement on a simulated 3-node cluster (ray.cluster_utils.Cluster) with fake GPUs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlruntime
from mlruntime.errors import ResourceError
from mlruntime.runtime.context import get_context
from mlruntime.runtime.distributor import Distributor
from mlruntime.runtime.scaling import ScalingConfig
from mlruntime.testing import simulated_cluster


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[object]:
    """A head with 2 CPUs and no GPU, and two nodes with 2 CPUs and 2 (fake) GPUs each."""
    with simulated_cluster([(2, 0), (2, 2), (2, 2)]) as cluster:
        yield cluster


def placement() -> dict[str, object]:
    ctx = get_context()
    info = ctx.rank_info
    return {
        "rank": ctx.get_rank(),
        "local_rank": ctx.get_local_rank(),
        "local_world": ctx.get_local_world_size(),
        "node_rank": ctx.get_node_rank(),
        "node_id": info.node_id,
        "gpu_ids": info.gpu_ids,
        "device": info.local_device,
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def test_nodes_are_listed_with_their_gpus(three_nodes: object) -> None:
    nodes = mlruntime.get_nodes()
    assert len(nodes) == 3
    assert sorted(n.num_gpus for n in nodes) == [0, 2, 2]
    assert mlruntime.cluster_resources()["GPU"] == 4


def test_auto_scaling_places_one_worker_per_gpu_with_ranks(
    three_nodes: object, tmp_path: Path
) -> None:
    result = Distributor(verbose=False).run(placement, artifact_location=tmp_path)
    ranks = result.return_values
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert [r["node_rank"] for r in ranks] == [0, 0, 1, 1]  # contiguous ranks per node
    assert [r["local_rank"] for r in ranks] == [0, 1, 0, 1]
    assert {r["local_world"] for r in ranks} == {2}
    assert ranks[0]["node_id"] == ranks[1]["node_id"] != ranks[2]["node_id"]
    head = next(n for n in mlruntime.get_nodes() if n.is_head)
    assert head.node_id not in {r["node_id"] for r in ranks}  # the GPU-less head got none
    for node_rank in (0, 1):
        on_node = [r for r in ranks if r["node_rank"] == node_rank]
        gpu_ids = sorted(g for r in on_node for g in r["gpu_ids"])
        assert len(gpu_ids) == 2 and all(len(r["gpu_ids"]) == 1 for r in on_node)
        # Every local worker sees the node's GPUs; its device index picks its own one.
        assert {r["cuda_visible"] for r in on_node} == {",".join(gpu_ids)}
        assert sorted(r["device"] for r in on_node) == [0, 1]
        for r in on_node:
            assert r["cuda_visible"].split(",")[r["device"]] == r["gpu_ids"][0]


def test_cpu_only_auto_scaling_is_one_worker_per_node(three_nodes: object, tmp_path: Path) -> None:
    d = Distributor(ScalingConfig(use_gpu=False), verbose=False)
    ranks = d.run(placement, artifact_location=tmp_path).return_values
    assert len(ranks) == 3
    assert len({r["node_id"] for r in ranks}) == 3  # spread: one per node
    assert {r["local_world"] for r in ranks} == {1}
    assert all(r["gpu_ids"] == () for r in ranks)


def test_more_gpus_than_exist_fails_before_placing(three_nodes: object, tmp_path: Path) -> None:
    d = Distributor(ScalingConfig(num_workers=5, use_gpu=True), verbose=False)
    with pytest.raises(ResourceError, match=r"needs 5 GPUs, but the cluster has 3 node\(s\)"):
        d.run(placement, artifact_location=tmp_path)


def test_init_connects_to_the_cluster_named_by_mlruntime_address(
    three_nodes: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlruntime.shutdown()
    monkeypatch.setenv("MLRUNTIME_ADDRESS", three_nodes.address)  # type: ignore[attr-defined]
    mlruntime.init()
    assert len(mlruntime.get_nodes()) == 3


def job_addresses() -> dict[str, object]:
    ctx = get_context()
    info = ctx.rank_info
    return {"node_ip": info.node_ip, "node_id": info.node_id, "master": ctx.get_master_addr()}


def test_ranks_on_several_nodes_meet_on_their_cluster_addresses(
    three_nodes: object, tmp_path: Path
) -> None:
    # Not loopback: the job spans nodes, so its ports are reached on the nodes' addresses.
    d = Distributor(ScalingConfig(num_workers=4, use_gpu=True), verbose=False)
    ranks = d.run(job_addresses, artifact_location=tmp_path).return_values
    addresses = {n.node_id: n.address for n in mlruntime.get_nodes()}
    assert len({r["node_id"] for r in ranks}) == 2
    assert all(r["node_ip"] == addresses[r["node_id"]] for r in ranks)  # the node's own address
    assert {r["master"] for r in ranks} == {ranks[0]["node_ip"]}
