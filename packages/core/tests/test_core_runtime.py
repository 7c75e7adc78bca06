"""Connecting to Ray: the embedded local Ray is reused, bound to loopback, and lists its nodes."""

from __future__ import annotations

import pytest

import mlruntime
from mlruntime.errors import ConfigError


def test_init_reuses_the_running_ray(ray_cluster: None) -> None:
    import ray

    context_before = ray.get_runtime_context().get_node_id()
    mlruntime.init()
    assert mlruntime.is_initialized()
    assert ray.get_runtime_context().get_node_id() == context_before


def test_embedded_ray_is_bound_to_loopback_and_lists_its_cpus(ray_cluster: None) -> None:
    nodes = mlruntime.get_nodes()
    assert [n.is_head for n in nodes] == [True]
    assert nodes[0].address == "127.0.0.1"
    assert nodes[0].num_cpus == mlruntime.cluster_resources()["CPU"]
    assert nodes[0].num_gpus == 0
    assert nodes[0].memory_bytes > 0


def test_nodes_read_as_snowflakes_node_mappings(ray_cluster: None) -> None:
    nodes = mlruntime.get_nodes()
    node = nodes[0]
    assert len(nodes) == 1
    assert dict(node) == {"name": node.name, "cpus": int(node.num_cpus), "gpus": 0}
    assert (node["name"], node["cpus"], node["gpus"]) == (node.name, node.num_cpus, 0)
    assert isinstance(node["cpus"], int)  # whole counts are ints, as in Snowflake
    assert list(node.keys()) == ["name", "cpus", "gpus"]
    assert dict(node.items()) == dict(node)
    assert "cpus" in node and "num_cpus" not in node
    assert node.get("gpus") == 0 and node.get("memory") is None
    with pytest.raises(KeyError):
        node["memory"]
    assert node.to_dict()["num_cpus"] == node.num_cpus  # the attributes stay


def test_init_with_a_different_address_while_connected_is_refused(ray_cluster: None) -> None:
    with pytest.raises(ConfigError, match=r"already connected to another cluster.*shutdown"):
        mlruntime.init(address="10.255.255.1:6379")
