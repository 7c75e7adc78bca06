"""The shared launch path on a real Ray: ranks, context, sharded data, reports, checkpoints,
fail-fast errors from every rank, restarts after a killed worker, warm reuse."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import mlruntime
from mlruntime import DataConnector, ShardedDataConnector
from mlruntime.errors import ConfigError, NotInWorkerError, WorkerError
from mlruntime.runtime.context import Checkpoint, get_context
from mlruntime.runtime.distributor import Backend, Distributor
from mlruntime.runtime.scaling import FailureConfig, ScalingConfig, WorkerResourceConfig
from mlruntime.testing import sample_table
from mlruntime.train.gbdt import GBDTBackend
from mlruntime.train.gbdt_worker import GBDTTrainer

TWO = ScalingConfig(num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=1))


def quiet(**kwargs: object) -> Distributor:
    return Distributor(kwargs.pop("scaling", TWO), verbose=False, **kwargs)  # type: ignore[arg-type]


def describe_rank() -> dict[str, object]:
    ctx = get_context()
    return {
        "rank": ctx.get_rank(),
        "world_rank": ctx.get_world_rank(),
        "world": ctx.get_world_size(),
        "local_rank": ctx.get_local_rank(),
        "local_world": ctx.get_local_world_size(),
        "node_rank": ctx.get_node_rank(),
        "master": (ctx.get_master_addr(), ctx.get_master_port()),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "params": ctx.get_hyper_params(),
        "model_dir": ctx.get_model_dir(),
        "checkpoint": ctx.get_checkpoint(),
        "backends": (ctx.get_default_backend(), ctx.get_supported_backends()),
    }


def test_get_context_outside_a_worker_is_a_clear_error() -> None:
    with pytest.raises(NotInWorkerError, match="only works inside a function run by a distributor"):
        get_context()


def test_every_rank_gets_its_context(ray_cluster: None, tmp_path: Path) -> None:
    params = {"lr": 0.01, "layers": [64, 32], "name": "mlp", "flag": True}
    result = quiet().run(describe_rank, hyper_params=params, artifact_location=tmp_path)
    ranks = result.return_values
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["world_rank"] for r in ranks] == [0, 1]  # Snowflake's samples' name for it
    assert {r["world"] for r in ranks} == {2}
    assert [r["local_rank"] for r in ranks] == [0, 1]
    assert {r["local_world"] for r in ranks} == {2}
    assert {r["node_rank"] for r in ranks} == {0}
    addr, port = ranks[0]["master"]
    assert addr == "127.0.0.1" and 1024 < port < 65536
    assert {r["omp"] for r in ranks} == {"1"}  # thread limits match the worker's CPUs
    assert ranks[1]["params"] == params  # Python types kept
    assert ranks[0]["model_dir"] == str(tmp_path / "model")
    assert ranks[0]["checkpoint"] is None
    assert ranks[0]["backends"] == ("gloo", ["gloo"])  # CPU workers
    assert Path(result.get_model_dir()).is_dir()


def count_shard_rows() -> dict[str, list[int]]:
    data = get_context().get_dataset_map()
    return {
        "plain": data["plain"].to_arrow().column("id").to_pylist(),
        "shard": data["sharded"].get_shard().to_arrow().column("id").to_pylist(),
        # reading the sharded connector itself on a worker reads its shard
        "direct": [
            int(i) for b in data["sharded"].to_batches(97, drop_last_batch=False) for i in b["id"]
        ],
        "rows": [data["sharded"].count_rows()],
        "sources": [type(s).__name__ for s in data["plain"].sources],
    }


@pytest.mark.parametrize("stage", ["objects", "parquet"])
def test_only_sharded_connectors_are_split_per_rank(
    ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    monkeypatch.setenv("MLRUNTIME_STAGE", stage)
    table = sample_table(0, 1001)
    dataset_map = {
        "plain": DataConnector.from_dataframe(table),
        "sharded": ShardedDataConnector.from_dataframe(table),
    }
    result = quiet().run(count_shard_rows, dataset_map=dataset_map, artifact_location=tmp_path)
    r0, r1 = result.return_values
    # A plain DataConnector: every rank reads all rows (Snowflake's rule).
    assert r0["plain"] == r1["plain"] == list(range(1001))
    # A sharded one: disjoint parts covering every row once.
    assert sorted(r0["shard"] + r1["shard"]) == list(range(1001))
    assert (len(r0["shard"]), len(r1["shard"])) == (500, 501)
    assert r0["direct"] == r0["shard"] and r1["direct"] == r1["shard"]
    assert (r0["rows"], r1["rows"]) == ([500], [501])
    # The frame travelled staged (objects or Parquet files), not inside the context.
    expected = {"objects": "ObjectSource", "parquet": "ParquetSource"}[stage]
    assert r0["sources"] == [expected]
    assert not (tmp_path / "inputs").exists()  # staged files are gone with the job

    equal = quiet().run(
        count_shard_rows, dataset_map=dataset_map, artifact_location=tmp_path, equal_shards=True
    )
    assert [len(v["shard"]) for v in equal.return_values] == [500, 500]
    explicit = {
        "plain": dataset_map["plain"],
        "sharded": ShardedDataConnector(table_dc(), equal=False),
    }
    kept = quiet().run(
        count_shard_rows, dataset_map=explicit, artifact_location=tmp_path, equal_shards=True
    )
    assert [len(v["shard"]) for v in kept.return_values] == [500, 501]  # its own equal wins


def table_dc() -> DataConnector:
    return DataConnector.from_dataframe(sample_table(0, 1001))


def test_a_duckdb_table_is_staged_and_each_rank_reads_its_part(
    ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from mlruntime.runtime import staging

    session = mlruntime.Session(tmp_path / "w.duckdb")
    table = sample_table(0, 200_000)
    session.create_table("t", table)
    store = ray.cluster_resources()["object_store_memory"]
    one_batch = table.nbytes / table.num_rows * staging.DUCKDB_BATCH_ROWS
    # Streamed batch by batch into the object store while the job's budget allows, the rest
    # into Parquet under the run folder.
    for share, expected in (
        (0.25, ["ObjectSource"]),  # the default: all of it fits
        (1.5 * one_batch / store, ["ObjectSource", "ParquetSource"]),  # one batch fits
        (1e-12, ["ParquetSource"]),  # nothing fits
    ):
        monkeypatch.setattr(staging, "OBJECT_STORE_SHARE", share)
        sharded = ShardedDataConnector.from_dataframe(session.table("t"))
        result = quiet().run(
            count_shard_rows,
            dataset_map={
                "plain": DataConnector.from_sql("select * from t", session),
                "sharded": sharded,
            },
            artifact_location=tmp_path,
        )
        r0, r1 = result.return_values
        assert sorted(r0["shard"] + r1["shard"]) == list(range(200_000))
        assert r0["plain"] == r1["plain"] == list(range(200_000))
        assert r0["sources"] == expected
    assert not (tmp_path / "inputs").exists()
    session.close()


def test_a_sharded_connector_is_a_picklable_plan_honouring_equal(tmp_path: Path) -> None:
    import pickle

    sharded = ShardedDataConnector.from_dataframe(sample_table(0, 11), equal=True)
    assert isinstance(sharded, DataConnector)
    parts = sharded.plan(3)
    assert [p.count_rows() for p in parts] == [3, 3, 3]
    assigned = sharded.assign(1, 3, parts[1])
    copy = pickle.loads(pickle.dumps(assigned))
    assert copy.get_shard(1, 3).to_arrow().column("id").to_pylist() == [3, 4, 5]
    assert copy.get_shard(0, 2).count_rows() == 5  # other shapes are planned anew (equal)
    assert sharded.select(["id"]).equal is True
    session = mlruntime.Session(tmp_path / "w.duckdb")
    session.create_table("t", sample_table(0, 4))
    with pytest.raises(ConfigError, match="cannot be sent to another process"):
        pickle.dumps(ShardedDataConnector.from_dataframe(session.table("t")))
    session.close()


def report_steps() -> list[list[str]]:
    """Reports 3 checkpoints; after each, lists the checkpoint folders already on disk."""
    ctx = get_context()
    ctx.phase("loading data")
    ctx.phase("fitting")
    folder = Path(ctx.get_model_dir()).parent / "checkpoints"
    on_disk = []
    for step in range(3):
        ctx.report(
            {"step": step, "loss": 1.0 / (step + 1)},
            checkpoint=Checkpoint.from_dict({"step": step}),
        )
        on_disk.append(sorted(p.name for p in folder.glob("checkpoint_*")))
    return on_disk


def test_reports_and_checkpoints_reach_the_result(
    ray_cluster: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLRUNTIME_QUIET", raising=False)
    caplog.set_level(logging.INFO, logger="mlruntime")
    d = Distributor(TWO, verbose=True)
    result = d.run(report_steps, artifact_location=tmp_path)
    assert result.get_metrics() == {"step": 2, "loss": 1.0 / 3}
    assert [m["step"] for m in result.get_metrics_history()] == [0, 1, 2]
    assert result.get_checkpoint().to_dict() == {"step": 2}
    location = Path(result.get_checkpoint_location())
    assert location.parent == tmp_path / "checkpoints" and (location / "state.pkl").exists()
    # Each checkpoint is a directory under artifact_location by the time report() returns,
    # and only the last two (checkpoints_to_keep's default) stay.
    names = [f"checkpoint_{i:06d}" for i in range(3)]
    assert result.return_values[0] == [names[:1], names[:2], names[1:]]
    assert location.name == names[-1]
    captured = capsys.readouterr()
    # One summary line on stdout with rank 0's last report; the bar went to stderr.
    summary = [line for line in captured.out.splitlines() if "finished in" in line]
    assert len(summary) == 1 and "last report: step=2, loss=0.33333" in summary[0]
    assert "loss=" in captured.err  # the progress bar showed rank 0's metrics
    # Phases are log records of the mlruntime loggers, not prints.
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("mlruntime")]
    assert any("connecting to Ray" in m for m in logged)
    assert any("training on 2 workers" in m for m in logged)
    assert any(m.endswith("loading data") for m in logged)
    assert {"connect", "place", "train", "loading data", "fitting", "total"} <= set(result.timings)


def log_metrics_as_in_snowflake() -> None:
    reporter = get_context().get_metrics_reporter()
    reporter.log_metrics({"loss": 0.5, "test_accuracy": [0.5, 0.75]})
    reporter.log_metrics({"loss": 0.25}, step=2)
    with pytest.raises(ConfigError, match="log_metrics needs a dict of name -> value, got list"):
        reporter.log_metrics([("loss", 1.0)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"log_metrics\(step=3\) contradicts"):
        reporter.log_metrics({"step": 1}, step=3)


def test_metrics_reporter_accumulates_what_it_logs(ray_cluster: None, tmp_path: Path) -> None:
    # artifact_stage_location is Snowflake's name for artifact_location.
    result = quiet().run(log_metrics_as_in_snowflake, artifact_stage_location=tmp_path)
    # calls accumulate: a name logged once stays in the result, later values win
    assert result.get_metrics() == {"loss": 0.25, "test_accuracy": [0.5, 0.75], "step": 2}
    assert result.get_metrics_history() == [
        {"loss": 0.5, "test_accuracy": [0.5, 0.75]},
        {"loss": 0.25, "test_accuracy": [0.5, 0.75], "step": 2},
    ]
    assert result.get_model_dir() == str(tmp_path / "model")
    with pytest.raises(ConfigError, match="artifact_stage_location is Snowflake's name for it"):
        quiet().run(
            log_metrics_as_in_snowflake,
            artifact_location=tmp_path,
            artifact_stage_location=tmp_path / "other",
        )


def test_quiet_shows_no_bar_and_no_summary(
    ray_cluster: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLRUNTIME_QUIET", "1")
    result = Distributor(TWO, verbose=True).run(report_steps, artifact_location=tmp_path)
    assert result.get_metrics()["step"] == 2
    captured = capsys.readouterr()
    assert "finished in" not in captured.out and "loss=" not in captured.err
    monkeypatch.delenv("MLRUNTIME_QUIET")
    Distributor(TWO, verbose=False).run(report_steps, artifact_location=tmp_path / "b")
    captured = capsys.readouterr()
    assert "finished in" not in captured.out and "loss=" not in captured.err


def two_ranks_fail() -> None:
    raise ValueError(f"bad value on rank {get_context().get_rank()}")


def test_errors_from_every_failed_rank_are_reported(ray_cluster: None, tmp_path: Path) -> None:
    with pytest.raises(WorkerError) as info:
        quiet().run(two_ranks_fail, artifact_location=tmp_path)
    err = info.value
    assert [f.rank for f in err.failures] == [0, 1]
    assert all(f.error_type == "ValueError" for f in err.failures)
    text = str(err)
    assert "2 of 2 rank(s) failed" in text
    assert "bad value on rank 0" in text and "bad value on rank 1" in text
    assert 'raise ValueError(f"bad value on rank' in text  # the tracebacks are there
    assert isinstance(err.failures[1].exception, ValueError)


def one_fails_one_hangs() -> None:
    if get_context().get_rank() == 0:
        raise RuntimeError("rank 0 gave up")
    time.sleep(3600)  # like a rank stuck in a collective waiting for rank 0


def test_a_hanging_rank_is_torn_down_when_another_fails(ray_cluster: None, tmp_path: Path) -> None:
    with pytest.raises(WorkerError, match="1 of 2 rank") as info:
        quiet().run(one_fails_one_hangs, artifact_location=tmp_path)
    assert [f.rank for f in info.value.failures] == [0]
    # The group is gone and the next job gets fresh workers.
    assert quiet().run(describe_rank, artifact_location=tmp_path).return_values[1]["rank"] == 1


def die_once_then_resume() -> dict[str, object]:
    ctx = get_context()
    start = ctx.get_checkpoint().to_dict()["step"] + 1 if ctx.get_checkpoint() else 0
    for step in range(start, 6):
        ctx.report({"step": step}, checkpoint=Checkpoint.from_dict({"step": step}))
        if step == 2 and ctx.get_attempt() == 0 and ctx.get_rank() == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies for real
        if ctx.get_attempt() == 0 and ctx.get_rank() == 1:
            time.sleep(0.2)  # rank 1 keeps working until the group is torn down
    return {"started_at": start, "attempt": ctx.get_attempt()}


def test_killed_worker_restarts_the_group_from_the_last_checkpoint(
    ray_cluster: None, tmp_path: Path
) -> None:
    d = quiet(failure_config=FailureConfig(max_failures=2))
    result = d.run(die_once_then_resume, artifact_location=tmp_path)
    assert result.return_values[0] == {"started_at": 3, "attempt": 1}
    assert [m["step"] for m in result.get_metrics_history()] == [3, 4, 5]
    assert len(result.attempts) == 1
    assert "process died" in str(result.attempts[0])
    assert result.get_checkpoint().to_dict() == {"step": 5}


def test_without_restarts_a_killed_worker_fails_with_the_history(
    ray_cluster: None, tmp_path: Path
) -> None:
    with pytest.raises(WorkerError, match="rank 0: process died") as info:
        quiet().run(die_once_then_resume, artifact_location=tmp_path)
    assert len(info.value.attempts) == 1


def test_a_warm_group_is_reused_by_the_next_job(ray_cluster: None, tmp_path: Path) -> None:
    d = quiet()
    first = d.run(os.getpid, artifact_location=tmp_path).return_values
    second = d.run(os.getpid, artifact_location=tmp_path).return_values
    assert first == second  # same worker processes


def report_tagged(tag: str) -> int:
    """Reports two steps tagged with ``tag``; returns the worker's pid."""
    for step in range(2):
        get_context().report({"tag": tag, "step": step})
    return os.getpid()


def test_a_reused_group_starts_each_job_with_an_empty_job_state(
    ray_cluster: None, tmp_path: Path
) -> None:
    # A new group's job does not wait for its job state (empty already); a reused one's is
    # emptied before the next job, so nothing of the last job's reports leaks into it.
    from functools import partial

    d = quiet()
    first = d.run(partial(report_tagged, "first"), artifact_location=tmp_path)
    second = d.run(partial(report_tagged, "second"), artifact_location=tmp_path)
    assert first.return_values == second.return_values  # the same (warm) workers
    for result, tag in ((first, "first"), (second, "second")):
        assert result.get_metrics_history() == [{"tag": tag, "step": 0}, {"tag": tag, "step": 1}]


def test_warm_groups_of_different_shapes_are_kept_while_they_fit(
    ray_cluster: None, tmp_path: Path
) -> None:
    import ray

    from mlruntime.runtime import distributor

    distributor.release_idle_groups()
    cpus = int(ray.cluster_resources()["CPU"])
    narrow = Distributor(
        ScalingConfig(num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=1)),
        verbose=False,
    )
    wide = Distributor(
        ScalingConfig(num_workers=1, resources_per_worker=WorkerResourceConfig(num_cpus=2)),
        verbose=False,
    )
    # alternating shapes (a CPU job and a GPU job, say): each reuses its own warm group
    runs = [d.run(os.getpid, artifact_location=tmp_path).return_values for d in (narrow, wide) * 2]
    assert runs[0] == runs[2] and runs[1] == runs[3] and runs[0] != runs[1]
    assert len(distributor._idle) == 2
    # a job that needs every CPU does not wait for the warm groups: they make room
    every_cpu = Distributor(
        ScalingConfig(num_workers=cpus, resources_per_worker=WorkerResourceConfig(num_cpus=1)),
        verbose=False,
    )
    assert len(every_cpu.run(os.getpid, artifact_location=tmp_path).return_values) == cpus
    assert len(distributor._idle) == 1  # only the last job's group is warm now
    distributor.release_idle_groups()


class RecordingBackend(Backend):
    name = "recording"

    def worker_env(self, rank, master_addr, master_port):  # type: ignore[no-untyped-def]
        return {"MY_RANK": str(rank.world_rank), "MY_MASTER": f"{master_addr}:{master_port}"}

    def setup(self, context):  # type: ignore[no-untyped-def]
        os.environ["SET_UP"] = "yes"


class RecordingDistributor(Distributor):
    backend = RecordingBackend()


def read_backend_env() -> tuple[str | None, str | None, str | None]:
    return os.environ.get("MY_RANK"), os.environ.get("MY_MASTER"), os.environ.get("SET_UP")


def test_backend_sets_env_and_runs_setup(ray_cluster: None, tmp_path: Path) -> None:
    result = RecordingDistributor(TWO, verbose=False).run(
        read_backend_env, artifact_location=tmp_path
    )
    (r0, m0, s0), (r1, m1, _) = result.return_values
    assert (r0, r1, s0) == ("0", "1", "yes")
    assert m0 == m1 and m0.startswith("127.0.0.1:")


class FirstOfAFamily(Backend):
    name = "first"
    worker_family = "test-family"


class SecondOfAFamily(Backend):
    name = "second"
    worker_family = "test-family"


class OfNoFamily(Backend):
    name = "alone"


def worker_pids(backend: Backend, tmp_path: Path, scaling: ScalingConfig = TWO) -> list[int]:
    """The worker processes a job of ``backend`` ran on."""
    runner = type("Runner", (Distributor,), {"backend": backend})(scaling, verbose=False)
    return runner.run(os.getpid, artifact_location=tmp_path).return_values


def test_backends_of_one_worker_family_run_on_each_others_warm_group(
    ray_cluster: None, tmp_path: Path
) -> None:
    # XGBoost then LightGBM on the same shape: the second job takes the first one's warm
    # workers instead of making them room and starting new processes
    from functools import partial

    from mlruntime.runtime import distributor

    distributor.release_idle_groups()
    pids = partial(worker_pids, tmp_path=tmp_path)
    first = pids(FirstOfAFamily())
    assert pids(SecondOfAFamily()) == first
    assert pids(FirstOfAFamily()) == first
    assert not set(pids(OfNoFamily())) & set(first)  # a backend of no family: its own group
    distributor.release_idle_groups()


def test_groups_with_gpus_are_not_shared_by_a_family(tmp_path: Path) -> None:
    # a framework's cached device memory stays in its process: the next framework's job on
    # the GPU gets a process of its own
    from mlruntime.testing import simulated_cluster

    gpu = ScalingConfig(
        num_workers=1, use_gpu=True, resources_per_worker=WorkerResourceConfig(num_gpus=1)
    )
    with simulated_cluster([(2, 2)]):
        first = worker_pids(FirstOfAFamily(), tmp_path, gpu)
        assert worker_pids(FirstOfAFamily(), tmp_path, gpu) == first  # its own: reused
        assert worker_pids(SecondOfAFamily(), tmp_path, gpu) != first


class WarmingBackend(Backend):
    name = "warming"

    def __init__(self) -> None:
        self.warmed: list[float] = []

    def driver_warm_up(self) -> None:
        self.warmed.append(time.time())


def sleep_then_time() -> float:
    time.sleep(1.0)
    return time.time()


def test_the_driver_warms_up_while_the_job_runs(ray_cluster: None, tmp_path: Path) -> None:
    # e.g. the driver imports xgboost (1 s) while the worker trains, not after: it loads the
    # booster once the job is done
    backend = WarmingBackend()
    runner = type("Runner", (Distributor,), {"backend": backend})(TWO, verbose=False)
    sent = time.time()
    ends = runner.run(sleep_then_time, artifact_location=tmp_path).return_values
    assert len(backend.warmed) == 1  # once per attempt
    assert sent < backend.warmed[0] < min(ends) - 0.5  # right after the job reached the ranks


class FakeGBDTBackend(GBDTBackend):
    name = "fake-gbdt"
    module = "mlruntime_fake_gbdt_framework"


def test_a_gbdt_backend_imports_its_framework_on_the_driver_while_the_job_runs(
    ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mlruntime_fake_gbdt_framework.py").write_text(
        "import time\nIMPORTED_AT = time.time()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, FakeGBDTBackend.module, raising=False)
    runner = type("Runner", (Distributor,), {"backend": FakeGBDTBackend()})(TWO, verbose=False)
    sent = time.time()
    ends = runner.run(sleep_then_time, artifact_location=tmp_path).return_values
    imported_at = sys.modules[FakeGBDTBackend.module].IMPORTED_AT
    assert sent < imported_at < min(ends) - 0.5
    assert FakeGBDTBackend.worker_family == "gbdt"  # shares warm groups with XGBoost, LightGBM
    monkeypatch.delitem(sys.modules, FakeGBDTBackend.module)


def test_bad_input_fails_before_any_worker_starts(tmp_path: Path) -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(ConfigError, match="train_func must be callable"):
        quiet().run(42, artifact_location=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not picklable"):
        quiet().run(lambda: lock.acquire(), artifact_location=tmp_path)
    with pytest.raises(ConfigError, match=r"dataset_map\['train'\] is a list"):
        quiet().run(describe_rank, dataset_map={"train": [1, 2]}, artifact_location=tmp_path)
    with pytest.raises(ConfigError, match="scaling_config must be a ScalingConfig"):
        Distributor({"num_workers": 2})  # type: ignore[arg-type]


@pytest.mark.timeout(180)
def test_warm_workers_never_starve_ray_data(
    ray_cluster: None, tmp_path: Path, parquet_dir: Path
) -> None:
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    every_cpu = ScalingConfig(
        num_workers=cpus, resources_per_worker=WorkerResourceConfig(num_cpus=1)
    )
    Distributor(every_cpu, verbose=False).run(os.getpid, artifact_location=tmp_path)
    ds = DataConnector.from_sources(parquet_dir).to_ray_dataset()  # needs CPUs for its reads
    assert ds.count() == 300


def test_idle_groups_are_released_after_keep_warm(ray_cluster: None, tmp_path: Path) -> None:
    import ray

    from mlruntime.runtime import distributor

    cpus = ray.cluster_resources()["CPU"]
    quiet().run(os.getpid, artifact_location=tmp_path)
    distributor.release_idle_groups(older_than=3600)  # not idle that long: kept
    assert distributor._idle
    distributor.release_idle_groups(older_than=0)
    assert not distributor._idle

    @ray.remote(num_cpus=cpus)
    def needs_every_cpu() -> int:
        return 1

    assert ray.get(needs_every_cpu.remote(), timeout=60) == 1  # the CPUs are free again


def print_lines() -> int:
    print(f"hello from {get_context().get_rank()}\nsecond line", flush=True)
    return os.getpid()


def test_worker_output_is_prefixed_by_rank(ray_cluster: None, tmp_path: Path) -> None:
    import ray

    pids = quiet().run(print_lines, artifact_location=tmp_path).return_values
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    for rank, pid in enumerate(pids):
        (log,) = logs.glob(f"worker-*-{pid}.out")  # what Ray forwards to the driver
        text = log.read_text()
        assert f"[rank {rank}] hello from {rank}\n[rank {rank}] second line\n" in text


def job_addresses() -> dict[str, object]:
    ctx = get_context()
    return {"node_ip": ctx.rank_info.node_ip, "master": ctx.get_master_addr()}


def test_a_job_on_the_driver_machine_uses_loopback_addresses_only(
    ray_cluster: None, tmp_path: Path
) -> None:
    from mlruntime.runtime.scaling import resolve_scaling
    from mlruntime.runtime.workers import WorkerGroup

    ranks = quiet().run(job_addresses, artifact_location=tmp_path).return_values
    assert ranks == [{"node_ip": "127.0.0.1", "master": "127.0.0.1"}] * 2
    group = WorkerGroup(resolve_scaling(TWO, mlruntime.get_nodes()))
    group.start()
    try:
        assert group.loopback and group.driver_host() == "127.0.0.1"
        import ray

        # free ports are found by binding on loopback, where the framework will listen
        ports = group.free_ports()
        assert len(ports) == 2 and all(p > 0 for p in ports)
        assert ray.get(group.actors[0].free_port.remote("127.0.0.1")) > 0
    finally:
        group.shutdown()


def csv_ids() -> list[int]:
    data = get_context().get_dataset_map()["data"]
    return [int(i) for b in data.to_batches(1000, drop_last_batch=False) for i in b["id"]]


@pytest.mark.parametrize("equal", [False, True])
def test_csv_files_are_split_by_bytes_and_counted_on_the_workers(
    ray_cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, equal: bool
) -> None:
    import pyarrow.csv as pcsv

    from mlruntime.data import sources

    monkeypatch.setattr(sources, "CSV_MIN_RANGE_BYTES", 4096)
    folder = tmp_path / "csv"
    folder.mkdir()
    table = sample_table(0, 30_001)
    pcsv.write_csv(table, folder / "big.csv")
    sharded = ShardedDataConnector.from_sources(folder, equal=equal)
    pieces = sharded.pieces()
    assert len(pieces) == 16 and all(p.num_rows is None for p in pieces)  # byte ranges

    # The driver plans without parsing: no range learns its row count on the driver.
    result = quiet().run(csv_ids, dataset_map={"data": sharded}, artifact_location=tmp_path)
    assert all(p.fragment.num_rows is None for p in sharded.pieces())
    ids0, ids1 = result.return_values
    assert not set(ids0) & set(ids1)
    if equal:  # counted on the workers, then cut into equal parts: only the last row dropped
        assert len(ids0) == len(ids1) == 15_000
        assert sorted(ids0 + ids1) == list(range(30_000))
    else:  # whole ranges balanced by bytes: every row once
        assert sorted(ids0 + ids1) == list(range(30_001))
        assert abs(len(ids0) - len(ids1)) < 30_001 // 8


class _Holder:
    def ping(self) -> int:
        return os.getpid()


def _free_cpus(expected: float) -> float:
    import ray

    for _ in range(100):  # Ray's view of free resources lags released actors a little
        free = ray.available_resources().get("CPU", 0.0)
        if free == expected:
            break
        time.sleep(0.05)
    return free


def test_one_worker_needs_no_placement_group_and_still_makes_room(ray_cluster: None) -> None:
    # A single worker is a plain actor with the worker's resources (Ray can start it on a
    # worker process it keeps idle; a placement group's actors never are): it holds its CPUs
    # like a reservation, and when others hold them, make_room is asked once and it starts.
    import ray

    from mlruntime.runtime.distributor import release_idle_groups
    from mlruntime.runtime.scaling import resolve_scaling
    from mlruntime.runtime.workers import WorkerGroup

    release_idle_groups()
    cpus = ray.cluster_resources()["CPU"]
    assert _free_cpus(cpus) == cpus
    whole = ScalingConfig(num_workers=1, resources_per_worker=WorkerResourceConfig(num_cpus=cpus))
    holder = ray.remote(num_cpus=1)(_Holder).remote()
    ray.get(holder.ping.remote())
    asked: list[int] = []

    def make_room() -> None:
        asked.append(1)
        ray.kill(holder)

    group = WorkerGroup(resolve_scaling(whole, mlruntime.get_nodes()), make_room=make_room)
    group.start()
    try:
        assert asked == [1]
        assert group._pg is None
        assert [(r.world_rank, r.world_size) for r in group.ranks] == [(0, 1)]
        assert group.run(lambda: os.environ["OMP_NUM_THREADS"]) == [str(int(cpus))]
        assert _free_cpus(0.0) == 0.0  # the worker holds every CPU while it lives
    finally:
        group.shutdown()
    assert _free_cpus(cpus) == cpus
    group = WorkerGroup(resolve_scaling(TWO, mlruntime.get_nodes()), make_room=make_room)
    group.start()
    try:
        assert asked == [1]  # room was free: nobody asked
        assert group._pg is not None  # several workers: placed together or not at all
    finally:
        group.shutdown()


class _GroupOwner:
    """An actor that starts a two-worker group of its own (a Tune trial running a job)."""

    def start(self, scaling: ScalingConfig = TWO) -> str:
        from mlruntime.runtime.scaling import resolve_scaling
        from mlruntime.runtime.workers import WorkerGroup

        self.group = WorkerGroup(resolve_scaling(scaling, mlruntime.get_nodes()))
        self.group.start()
        return str(self.group._pg.id.hex())


def _pg_state(pg_id: str) -> str:
    from ray.util import placement_group_table

    return str(placement_group_table()[pg_id]["state"])


def test_a_placement_group_left_by_a_dead_actor_is_freed_for_the_next_job(
    ray_cluster: None,
) -> None:
    # Ray frees a placement group with the driver, not with the actor that created it: an
    # actor (a Tune trial) that dies in the middle of a job leaves the job's CPUs reserved,
    # and the next job waited for them (PLACEMENT_TIMEOUT_S, then ResourceError).
    import ray
    from ray._private.state import actors

    from mlruntime.runtime.distributor import release_idle_groups
    from mlruntime.runtime.scaling import resolve_scaling
    from mlruntime.runtime.workers import WorkerGroup, release_orphaned_placement_groups

    release_idle_groups()
    cpus = ray.cluster_resources()["CPU"]
    assert cpus == 4  # the two groups below hold every CPU
    owner = ray.remote(num_cpus=0)(_GroupOwner).remote()
    mine = WorkerGroup(resolve_scaling(TWO, mlruntime.get_nodes()))
    try:
        owned = ray.get(owner.start.remote())
        mine.start()
        driver_pg = mine._pg.id.hex()
        # groups of a live actor and of the driver are left alone
        assert release_orphaned_placement_groups() == 0
        assert _pg_state(owned) == _pg_state(driver_pg) == "CREATED"
        owner_id = owner._actor_id.hex()
        ray.kill(owner)  # its workers end with it; its placement group does not
        deadline = time.monotonic() + 30
        while actors(actor_id=owner_id).get("State") != "DEAD":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _pg_state(owned) == "CREATED"
        # the next job does not fit beside the driver's group: it makes room, and the dead
        # actor's reservation is what it frees
        pids = Distributor(TWO, verbose=False).run(os.getpid).return_values
        assert len(set(pids)) == 2
        assert _pg_state(owned) == "REMOVED"
        assert _pg_state(driver_pg) == "CREATED"
        assert release_orphaned_placement_groups() == 0
    finally:
        ray.kill(owner)
        mine.shutdown()
        release_orphaned_placement_groups()
    release_idle_groups()


def _start_a_group_and_die() -> None:
    from mlruntime.runtime.scaling import resolve_scaling
    from mlruntime.runtime.workers import WorkerGroup

    WorkerGroup(resolve_scaling(TWO, mlruntime.get_nodes())).start()
    os._exit(1)


def test_a_placement_group_left_by_a_task_that_died_is_freed(ray_cluster: None) -> None:
    # A task's process (not an actor's) that dies mid-job: its group is told apart by the
    # worker process that made it, which Ray's worker table no longer lists as alive.
    import ray
    from ray.util import placement_group_table

    from mlruntime.runtime.distributor import release_idle_groups
    from mlruntime.runtime.workers import PLACEMENT_GROUP_PREFIX, release_orphaned_placement_groups

    def ours() -> list[str]:
        return [
            pg_id
            for pg_id, pg in placement_group_table().items()
            if pg["name"].startswith(PLACEMENT_GROUP_PREFIX) and pg["state"] != "REMOVED"
        ]

    release_idle_groups()
    assert ours() == []
    task = ray.remote(num_cpus=0, max_retries=0)(_start_a_group_and_die).remote()
    with pytest.raises(ray.exceptions.RayError):
        ray.get(task)
    left = ours()
    assert len(left) == 1  # Ray keeps it: its job's driver is alive
    deadline = time.monotonic() + 30
    while release_orphaned_placement_groups() == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert ours() == []


def test_a_group_waiting_to_be_placed_frees_what_an_actor_dying_meanwhile_held(
    ray_cluster: None,
) -> None:
    # The actor dies after the group started waiting (and after any make-room): the group
    # sweeps again while it waits, instead of waiting out PLACEMENT_TIMEOUT_S and failing.
    import threading

    import ray

    from mlruntime.runtime.distributor import release_idle_groups
    from mlruntime.runtime.scaling import resolve_scaling
    from mlruntime.runtime.workers import SWEEP_EVERY_S, WorkerGroup

    release_idle_groups()
    every_cpu = ScalingConfig(num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=2))
    owner = ray.remote(num_cpus=0)(_GroupOwner).remote()
    killer = threading.Timer(SWEEP_EVERY_S / 2, lambda: ray.kill(owner))
    group = WorkerGroup(resolve_scaling(TWO, mlruntime.get_nodes()))
    try:
        ray.get(owner.start.remote(every_cpu))
        assert _free_cpus(0.0) == 0.0
        killer.start()
        group.start()  # no make_room: only the sweep while it waits frees the CPUs
        assert len(set(group.run(os.getpid))) == 2
    finally:
        killer.cancel()
        ray.kill(owner)
        group.shutdown()
    release_idle_groups()


def many_reports() -> tuple[bool, bool]:
    ctx = get_context()
    for step in range(299):
        ctx.report({"step": step})
    sent_without_waiting = ctx._unconfirmed is not None
    ctx.report({"step": 299}, checkpoint=Checkpoint.from_dict({"step": 299}))
    return sent_without_waiting, ctx._unconfirmed is None  # a checkpoint's report waited


def test_every_report_sent_without_waiting_reaches_the_result(
    ray_cluster: None, tmp_path: Path
) -> None:
    # Metric reports do not wait for the job state's answer; the job's end waits for them.
    result = quiet().run(many_reports, artifact_location=tmp_path)
    assert result.return_values[0] == (True, True)
    assert result.get_metrics() == {"step": 299}
    assert [m["step"] for m in result.get_metrics_history()] == list(range(300))


def test_every_job_of_a_warm_worker_runs_on_the_same_thread(ray_cluster: None) -> None:
    # OpenMP keeps a thread team per calling thread: a job on another thread of the actor
    # started a second team beside the first (XGBoost's next rounds took 1.6-2x as long).
    import threading

    import ray

    from mlruntime.runtime.scaling import resolve_scaling
    from mlruntime.runtime.workers import WorkerGroup

    group = WorkerGroup(resolve_scaling(TWO, mlruntime.get_nodes()))
    group.start()
    try:
        threads = {tuple(group.run(threading.get_ident)) for _ in range(4)}
        assert len(threads) == 1
        # control calls are still answered while a job runs
        running = (
            group.actors[0]
            .execute.options(concurrency_group="job")
            .remote(time.sleep, None, (3.0,), {})
        )
        assert ray.get(group.actors[0].ping.remote(), timeout=2) > 0
        ray.get(running)
    finally:
        group.shutdown()


def _run_trainer_job(trainer: Any, spec: dict[str, Any], tmp_path: Path) -> Any:
    """``run_trainer`` with ``trainer`` as a real one-worker job over two rows (x, label y)."""
    from functools import partial

    import pandas as pd

    from mlruntime.train.gbdt_worker import run_trainer

    one = ScalingConfig(num_workers=1, resources_per_worker=WorkerResourceConfig(num_cpus=1))
    data = DataConnector.from_dataframe(pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 1.0]}))
    return Distributor(one, verbose=False).run(
        partial(run_trainer, trainer, spec), dataset_map={"train": data}, artifact_location=tmp_path
    )


class _Rejecting(GBDTTrainer):
    """A GBDT trainer whose framework fails either joining its collective or building."""

    framework = "fake"

    def framework_errors(self) -> tuple[type[BaseException], ...]:
        return (ValueError,)

    def __init__(self, fails_in: str) -> None:
        self.fails_in = fails_in

    def params(self, ctx: Any, spec: dict[str, Any]) -> dict[str, Any]:
        return {}

    def join(self, ctx: Any, params: dict[str, Any]) -> Any:
        import contextlib

        if self.fails_in == "join":
            raise ValueError("rendezvous interrupted")
        return contextlib.nullcontext()

    def build(
        self, ctx: Any, spec: dict[str, Any], params: dict[str, Any], ahead: Any = None
    ) -> Any:
        raise ValueError("unknown objective")


@pytest.mark.parametrize("fails_in", ["join", "build"])
def test_only_what_the_framework_rejects_after_joining_is_called_invalid_parameters(
    ray_cluster: None, tmp_path: Path, fails_in: str
) -> None:
    with pytest.raises(WorkerError) as err:
        _run_trainer_job(_Rejecting(fails_in), {"label": "y", "params": {"eta": 1}}, tmp_path)
    (failure,) = err.value.failures
    if fails_in == "join":  # a failed rendezvous is not the user's parameters
        assert failure.error_type == "ValueError" and "rendezvous interrupted" in failure.message
    else:
        assert failure.error_type == "ConfigError"
        assert "invalid fake parameters {'eta': 1}: unknown objective" in failure.message


class _LegacyRejecting:
    """A GBDT trainer written before ``read_ahead``: a ``framework_error`` class attribute and a
    three-argument ``build``."""

    framework = "legacy"
    framework_error = (ValueError,)

    def framework_errors(self) -> tuple[type[BaseException], ...]:
        return ()

    def read_ahead(self, ctx: Any, spec: dict[str, Any]) -> Any:
        return None

    def params(self, ctx: Any, spec: dict[str, Any]) -> dict[str, Any]:
        return {}

    def join(self, ctx: Any, params: dict[str, Any]) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def build(self, ctx: Any, spec: dict[str, Any], params: dict[str, Any]) -> Any:
        raise ValueError("unknown objective")


def test_a_trainer_written_before_read_ahead_still_runs_and_names_bad_parameters(
    ray_cluster: None, tmp_path: Path
) -> None:
    with pytest.raises(WorkerError) as err:
        _run_trainer_job(_LegacyRejecting(), {"label": "y", "params": {"eta": 1}}, tmp_path)
    (failure,) = err.value.failures
    assert failure.error_type == "ConfigError"
    assert "invalid legacy parameters {'eta': 1}: unknown objective" in failure.message


class _ReadsAhead(GBDTTrainer):
    """A GBDT trainer that reads ahead without end and takes only part of it in build."""

    framework = "fake"

    def read_ahead(self, ctx: Any, spec: dict[str, Any]) -> Any:
        import itertools

        from mlruntime.data.batching import ReadAhead

        return ReadAhead(itertools.count(), depth=2, name="mlruntime-read-ahead")

    def build(
        self, ctx: Any, spec: dict[str, Any], params: dict[str, Any], ahead: Any = None
    ) -> Any:
        return [next(ahead), next(ahead)]

    def train(self, ctx: Any, spec: dict[str, Any], params: Any, data: Any, *_: Any) -> Any:
        import threading

        readers = [t for t in threading.enumerate() if t.name == "mlruntime-read-ahead"]
        return {"built": data, "readers_left": len(readers)}

    def dump(self, model: Any) -> Any:
        return model


def test_what_a_trainer_reads_ahead_reaches_its_build_and_is_closed_before_training(
    ray_cluster: None, tmp_path: Path
) -> None:
    spec = {"label": "y", "params": {}, "checkpoint_every": 0}
    result = _run_trainer_job(_ReadsAhead(), spec, tmp_path)
    assert result.return_values[0]["model"] == {"built": [0, 1], "readers_left": 0}
