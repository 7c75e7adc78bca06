"""PyTorchDistributor on a real Ray with gloo: process group and torchrun environment, Snowflake's
sample train_funcs (their own init_process_group, log_metrics), DDP on a DuckDB table with
disjoint equal shards, reports and checkpoints, a killed rank resuming mid-epoch, every rank's
error, a rank stuck in a collective, and bad input."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from mlruntime import Checkpoint, DataConnector, Session, ShardedDataConnector, get_context
from mlruntime.errors import ConfigError, ResourceError, WorkerError
from mlruntime.runtime.cluster import NodeInfo
from mlruntime_pytorch import (
    FailureConfig,
    PyTorchDistributor,
    PyTorchScalingConfig,
    WorkerResourceConfig,
)

TWO = PyTorchScalingConfig(
    num_nodes=1,
    num_workers_per_node=2,
    resource_requirements_per_worker=WorkerResourceConfig(num_cpus=1, num_gpus=0),
)


def distributor(fn: Any, **kwargs: Any) -> PyTorchDistributor:
    return PyTorchDistributor(fn, kwargs.pop("scaling_config", TWO), verbose=False, **kwargs)


@pytest.fixture
def table_dc(tmp_path: Path) -> DataConnector:
    """A warehouse table of 1,001 rows: id, 4 float features and a linear target, to be split
    among the ranks."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1001, 4)).astype(np.float32)
    data: dict[str, Any] = {"id": np.arange(1001)}
    for j in range(4):
        data[f"x{j}"] = x[:, j]
    data["y"] = (x @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)).astype(np.float32)
    session = Session(tmp_path / "warehouse.duckdb")
    session.create_table("points", data)
    return ShardedDataConnector.from_dataframe(session.table("points"))


def describe() -> dict[str, Any]:
    ctx = get_context()
    total = torch.tensor([float(ctx.get_rank() + 1)])
    dist.all_reduce(total)
    env = {
        k: os.environ[k]
        for k in (
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
        )
    }
    ctx.report({"rank_sum": float(total.item())}, checkpoint=Checkpoint.from_dict({"step": 1}))
    return {
        "initialized": dist.is_initialized(),
        "backend": dist.get_backend(),
        "dist_rank": dist.get_rank(),
        "env": env,
        "params": ctx.get_hyper_params(),
        "sum": float(total.item()),
    }


def test_process_group_and_torchrun_env_are_ready(ray_cluster: None, tmp_path: Path) -> None:
    params = {"lr": 0.1, "layers": (8, 4), "name": "mlp", "dtype": np.float32}
    result = distributor(describe).run(hyper_params=params, artifact_location=tmp_path)
    ranks = result.return_values
    assert [r["dist_rank"] for r in ranks] == [0, 1]
    assert {r["backend"] for r in ranks} == {"gloo"} and all(r["initialized"] for r in ranks)
    assert {r["sum"] for r in ranks} == {3.0}  # a real all_reduce across both ranks
    env0, env1 = ranks[0]["env"], ranks[1]["env"]
    assert (env0["RANK"], env1["RANK"], env0["WORLD_SIZE"]) == ("0", "1", "2")
    assert (env1["LOCAL_RANK"], env1["LOCAL_WORLD_SIZE"]) == ("1", "2")
    assert env0["MASTER_ADDR"] == env1["MASTER_ADDR"] and env0["MASTER_PORT"] == env1["MASTER_PORT"]
    assert ranks[1]["params"] == params and ranks[1]["params"]["layers"] == (8, 4)
    assert result.get_metrics() == {"rank_sum": 3.0}
    assert result.get_model_dir() == str(tmp_path / "model")
    location = Path(result.get_checkpoint_location() or "")
    assert location.parent == tmp_path / "checkpoints" and (location / "state.pkl").is_file()
    # A second run on the warm workers gets a fresh process group.
    again = distributor(describe).run(artifact_location=tmp_path / "again")
    assert {r["sum"] for r in again.return_values} == {3.0}


def snowflake_sample_train() -> dict[str, Any]:
    """What Snowflake's samples do in train_func: set up the process group themselves (three
    ways), report through the metrics reporter, and destroy the group at the end."""
    ctx = get_context()
    dist.init_process_group("gloo")
    dist.init_process_group()
    dist.init_process_group(
        backend="gloo",
        init_method="env://",
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    total = torch.tensor([float(ctx.get_world_rank() + 1)])
    dist.all_reduce(total)  # the group the plugin set up is the one in use
    refused = []
    for kwargs in ({"world_size": 3}, {"backend": "nccl"}, {"rank": 1 - ctx.get_rank()}):
        with pytest.raises(ConfigError) as info:
            dist.init_process_group(**kwargs)
        refused.append(str(info.value))
    reporter = ctx.get_metrics_reporter()
    reporter.log_metrics({"loss": 0.5, "test_accuracy": [0.5, 0.75]})
    reporter.log_metrics({"loss": 0.25, "sum": float(total.item())})
    dist.destroy_process_group()
    return {
        "world_rank": ctx.get_world_rank(),
        "default_backend": ctx.get_default_backend(),
        "supported": ctx.get_supported_backends(),
        "sum": float(total.item()),
        "refused": refused,
        "initialized_after_destroy": dist.is_initialized(),
    }


def test_snowflake_sample_train_funcs_run_unchanged(ray_cluster: None, tmp_path: Path) -> None:
    result = distributor(snowflake_sample_train).run(artifact_stage_location=tmp_path)
    ranks = result.return_values
    assert [r["world_rank"] for r in ranks] == [0, 1]
    assert {r["sum"] for r in ranks} == {3.0}
    assert {r["default_backend"] for r in ranks} == {"gloo"}  # CPU workers
    assert ranks[0]["supported"] == ["gloo"]
    world_size, nccl, rank = ranks[1]["refused"]
    assert world_size.startswith("dist.init_process_group(world_size=3) inside train_func")
    existing = "already set up this job's default process group (backend='gloo', world_size=2"
    assert existing + ", rank=1)" in world_size
    assert "backend='nccl' needs a CUDA GPU, which this worker does not have" in nccl
    assert "rank=0" in rank
    assert all(r["initialized_after_destroy"] for r in ranks)  # harmless; torn down after
    assert result.get_metrics() == {"loss": 0.25, "test_accuracy": [0.5, 0.75], "sum": 3.0}
    assert result.get_metrics_history()[0] == {"loss": 0.5, "test_accuracy": [0.5, 0.75]}
    assert result.get_model_dir() == str(tmp_path / "model")  # Snowflake's argument name
    # The next job on the same (warm) workers gets a fresh group, torch's functions restored.
    again = distributor(describe).run(artifact_location=tmp_path / "again")
    assert {r["sum"] for r in again.return_values} == {3.0}


def test_torch_functions_are_replaced_only_while_train_func_runs() -> None:
    from mlruntime_pytorch import process_group

    original = dist.init_process_group, dist.destroy_process_group
    process_group.install()
    try:
        assert dist.init_process_group is process_group.init_process_group
        assert dist.distributed_c10d.destroy_process_group is process_group.destroy_process_group
    finally:
        process_group.uninstall()
    assert (dist.init_process_group, dist.destroy_process_group) == original
    assert dist.distributed_c10d.init_process_group is original[0]


def sgd_step(model: Any, optimizer: Any, batch: dict[str, Any]) -> Any:
    """One optimizer step of y ~ x0..x3 on a batch; returns the loss."""
    x = torch.cat([batch[f"x{j}"] for j in range(4)], dim=1)  # (B, 1) columns -> (B, 4)
    loss = torch.nn.functional.mse_loss(model(x), batch["y"])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def train_linear(config: dict[str, Any]) -> dict[str, Any]:
    ctx = get_context()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    data = ctx.get_dataset_map()["train"].to_torch_dataset(batch_size=50, shuffle=True, seed=1)
    seen: list[int] = []
    steps = 0
    for epoch in range(config["epochs"]):
        for batch in data:
            loss = sgd_step(model, optimizer, batch)
            steps += 1
            if epoch == 0:
                seen.extend(batch["id"].reshape(-1).tolist())
        ctx.report({"epoch": epoch, "loss": loss.item()})
    if ctx.get_rank() == 0:
        torch.save(model.module.state_dict(), Path(ctx.get_model_dir()) / "model.pt")
    return {"seen": seen, "steps": steps, "weight": model.module.weight.detach().numpy()}


def test_ddp_trains_on_disjoint_equal_shards_of_a_table(
    ray_cluster: None, table_dc: DataConnector, tmp_path: Path
) -> None:
    result = distributor(train_linear).run(
        dataset_map={"train": table_dc},
        hyper_params={"lr": 0.1, "epochs": 8},
        artifact_location=tmp_path,
    )
    r0, r1 = result.return_values
    assert not set(r0["seen"]) & set(r1["seen"])  # no row seen by two ranks in an epoch
    assert len(r0["seen"]) == len(r1["seen"]) == 500  # equal shards: 1,001 -> 2 x 500
    assert r0["steps"] == r1["steps"] == 80
    np.testing.assert_allclose(r0["weight"], r1["weight"], rtol=1e-6)  # DDP kept them in sync
    np.testing.assert_allclose(r0["weight"][0], [1.0, -2.0, 0.5, 3.0], atol=0.05)
    history = result.get_metrics_history()
    assert [m["epoch"] for m in history] == list(range(8))
    assert history[-1]["loss"] < 0.01 < history[0]["loss"]
    saved = torch.load(Path(result.get_model_dir()) / "model.pt")
    np.testing.assert_allclose(saved["weight"].numpy(), r0["weight"], rtol=1e-6)


def resumable_train() -> dict[str, Any]:
    """Checkpoints the model, the optimizer and the data position every 4 steps; rank 1 dies
    at step 7 of the first attempt."""
    ctx = get_context()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = ctx.get_dataset_map()["train"].to_torch_dataset(batch_size=25, shuffle=True, seed=4)
    seen: list[list[int]] = [[], []]
    step = 0
    checkpoint = ctx.get_checkpoint()
    if checkpoint is not None:
        state = checkpoint.to_dict()
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        data.load_state_dict(state["data"])
        seen, step = state["seen"], state["step"]
    for batch in data:
        sgd_step(model, optimizer, batch)
        step += 1
        ids: list[Any] = [None, None]
        dist.all_gather_object(ids, batch["id"].reshape(-1).tolist())
        for rank, got in enumerate(ids):
            seen[rank].extend(got)
        if ctx.get_attempt() == 0 and ctx.get_rank() == 1 and step == 7:
            os.kill(os.getpid(), signal.SIGKILL)
        if step % 4 == 0:
            state = {
                "model": model.module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "data": data.state_dict(),
                "seen": seen,
                "step": step,
            }
            ctx.report({"step": step}, checkpoint=Checkpoint.from_dict(state))
    return {"seen": seen, "step": step, "attempt": ctx.get_attempt()}


def test_killed_rank_restarts_and_resumes_mid_epoch_seeing_each_row_once(
    ray_cluster: None, table_dc: DataConnector, tmp_path: Path
) -> None:
    result = distributor(resumable_train, failure_config=FailureConfig(max_failures=1)).run(
        dataset_map={"train": table_dc}, artifact_location=tmp_path
    )
    assert len(result.attempts) == 1 and "rank 1: process died" in str(result.attempts[0])
    assert result.attempts[0].resumed_from_checkpoint is False
    out = result.return_values[0]
    assert out["attempt"] == 1 and out["step"] == 20  # 500 rows per rank / 25 per batch
    seen = out["seen"]
    assert sorted(seen[0] + seen[1]) == list(range(1000))  # every row of the epoch once
    assert result.get_metrics_history()[0]["step"] == 8  # resumed after the step-4 checkpoint
    # Reported checkpoints are directories under artifact_location, numbered across attempts
    # (step 4 from the first attempt, steps 8..20 from the second); the last two stay.
    stored = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert stored == [f"checkpoint_{i:06d}" for i in (3, 4)]
    assert result.get_checkpoint_location() == str(tmp_path / "checkpoints" / stored[-1])


def fail_on_both_ranks() -> None:
    rank = get_context().get_rank()
    if rank == 0:
        raise ValueError("bad learning rate on rank 0")
    raise KeyError("missing feature on rank 1")


def test_every_failed_rank_is_reported(ray_cluster: None, tmp_path: Path) -> None:
    with pytest.raises(WorkerError) as info:
        distributor(fail_on_both_ranks).run(artifact_location=tmp_path)
    message = str(info.value)
    assert "2 of 2 rank(s) failed" in message
    assert "ValueError: bad learning rate on rank 0" in message
    assert "KeyError" in message and "missing feature on rank 1" in message
    assert "fail_on_both_ranks" in message  # tracebacks included


def one_rank_fails_while_the_other_waits_in_all_reduce(how: str) -> None:
    if get_context().get_rank() == 1:
        if how == "dies":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("rank 1 lost its data")
    dist.all_reduce(torch.ones(1))  # would wait for rank 1 until the process group timeout


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["raises", "dies"])
def test_a_rank_waiting_in_a_collective_for_a_failed_peer_is_torn_down(
    ray_cluster: None, tmp_path: Path, how: str
) -> None:
    from functools import partial

    fn = partial(one_rank_fails_while_the_other_waits_in_all_reduce, how)
    with pytest.raises(WorkerError) as info:
        distributor(fn).run(artifact_location=tmp_path)
    failures = {f.rank: f for f in info.value.failures}
    if how == "raises":
        assert "RuntimeError: rank 1 lost its data" in str(failures[1])
    else:
        assert failures[1].died and "rank 1: process died" in str(info.value)
    # rank 0 either saw its peer go (gloo error) or was stopped by the group: never awaited
    assert set(failures) <= {0, 1}


def test_bad_input_is_refused_before_workers_start(table_dc: DataConnector) -> None:
    with pytest.raises(ConfigError, match="train_func must be callable"):
        PyTorchDistributor("train.py")  # type: ignore[arg-type]
    lock = threading.Lock()

    def holds_a_lock() -> None:
        with lock:
            pass

    with pytest.raises(ConfigError, match="cannot be sent to workers: it is not picklable"):
        distributor(holds_a_lock).run()
    with pytest.raises(ConfigError, match=r"dataset_map\['train'\] is a DataFrame"):
        distributor(describe).run(dataset_map={"train": table_dc.to_pandas()})
    with pytest.raises(ConfigError, match="scaling_config must be a PyTorchScalingConfig"):
        PyTorchDistributor(describe, scaling_config={"num_nodes": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_workers_per_node must be a positive integer"):
        PyTorchScalingConfig(num_workers_per_node=0)
    with pytest.raises(ConfigError, match="pass one"):
        distributor(describe).run(artifact_location="a", artifact_stage_location="b")


def node(cpus: float, gpus: float, name: str) -> NodeInfo:
    return NodeInfo(name, name, "10.0.0.1", cpus, gpus, 8 << 30, name == "a")


def test_scaling_config_resolves_against_the_cluster() -> None:
    cpu_nodes = [node(8, 0, "a"), node(4, 0, "b")]
    auto = PyTorchScalingConfig().resolve(cpu_nodes)
    assert (auto.num_workers, auto.num_cpus, auto.num_gpus) == (2, 4.0, 0.0)
    per_node = PyTorchScalingConfig(num_workers_per_node=2).resolve(cpu_nodes)
    assert (per_node.num_workers, per_node.num_cpus, per_node.placement_strategy) == (
        4,
        2.0,
        "SPREAD",
    )
    one_each = PyTorchScalingConfig(num_nodes=2, num_workers_per_node=1).resolve(cpu_nodes)
    assert one_each.placement_strategy == "STRICT_SPREAD" and one_each.num_workers == 2
    gpu_nodes = [node(16, 4, "a"), node(16, 4, "b")]
    gpus = PyTorchScalingConfig().resolve(gpu_nodes)
    assert (gpus.num_workers, gpus.num_gpus, gpus.num_cpus, gpus.use_gpu) == (8, 1.0, 4.0, True)
    with pytest.raises(ResourceError, match="num_nodes=3 but the cluster has 2 node"):
        PyTorchScalingConfig(num_nodes=3).resolve(cpu_nodes)
    with pytest.raises(ResourceError, match="needs 4 GPUs"):
        PyTorchScalingConfig(
            num_nodes=1,
            num_workers_per_node=4,
            resource_requirements_per_worker=WorkerResourceConfig(num_cpus=1, num_gpus=1),
        ).resolve([node(8, 2, "a")])
