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


def test_scale_cluster_on_the_embedded_ray(
    ray_cluster: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The embedded Ray is one machine: its size is there at once, more nodes never come."""
    assert mlruntime.scale_cluster(1) is True
    with caplog.at_level("WARNING", logger="mlruntime.runtime.cluster"):
        assert mlruntime.scale_cluster(2) is False
    assert "embedded Ray" in caplog.text and "ray start --head" in caplog.text
    for bad, match in [
        ({"expected_cluster_size": 0}, ">= 1"),
        ({"expected_cluster_size": 1.5}, "whole number"),
        ({"expected_cluster_size": 2, "options": {"rollback_after": 5}}, "unknown"),
        ({"expected_cluster_size": 2, "options": {"rollback_after_seconds": -1}}, ">= 0"),
        ({"expected_cluster_size": 2, "options": {"rollback_after_seconds": float("nan")}}, ">= 0"),
        ({"expected_cluster_size": 2, "options": {"rollback_after_seconds": None}}, ">= 0"),
        ({"expected_cluster_size": 2, "options": {"block_until_min_cluster_size": "2"}}, "whole"),
        ({"expected_cluster_size": 2, "options": {"block_until_min_cluster_size": 3}}, "between"),
    ]:
        with pytest.raises(ConfigError, match=match):
            mlruntime.scale_cluster(**bad)  # type: ignore[arg-type]


def test_scale_cluster_waits_for_nodes_to_join(caplog: pytest.LogCaptureFixture) -> None:
    """On a cluster of its own (``ray start``-like), it waits for the nodes being started."""
    import threading
    import time

    from mlruntime.testing import simulated_cluster

    mlruntime.shutdown()
    assert mlruntime.scale_cluster(1) is True
    assert mlruntime.scale_cluster(2) is False
    assert not mlruntime.is_initialized()  # no Ray started for it: init's options stay free
    with simulated_cluster([(1, 0)]) as cluster:
        assert mlruntime.scale_cluster(2, is_async=True) is False  # not there yet, no wait
        answer: list[bool] = []
        waiting = threading.Thread(
            target=lambda: answer.append(
                mlruntime.scale_cluster(2, options={"rollback_after_seconds": 90})
            )
        )
        waiting.start()
        time.sleep(1.0)
        assert waiting.is_alive()  # it waits for the node
        cluster.add_node(num_cpus=1)  # (Ray starts nodes from the main thread only)
        waiting.join()
        assert answer == [True]
        assert len(mlruntime.get_nodes()) == 2
        assert mlruntime.scale_cluster(3, options={"block_until_min_cluster_size": 2}) is True
        with caplog.at_level("WARNING", logger="mlruntime.runtime.cluster"):
            assert mlruntime.scale_cluster(3, options={"rollback_after_seconds": 1}) is False
            assert mlruntime.scale_cluster(1) is True  # there, and more: no node stopped
        assert "ray start --address=" in caplog.text and "stops none" in caplog.text
