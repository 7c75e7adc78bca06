"""``mlruntime.partition`` on a real Ray, DuckDB and Parquet: per-partition results, failures
with tracebacks, retries, fail_fast, resume after the driver is killed, ids with any
characters, status from another process, file partitions, and many-model round trips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mlruntime
from mlruntime import DataConnector
from mlruntime.errors import ColumnError, RunExistsError, RunNotFoundError
from mlruntime.partition import (
    DPF,
    DPFRun,
    ExecutionOptions,
    LightGBMSerde,
    ManyModelInference,
    ManyModelTraining,
    PartitionStatus,
    RunStatus,
    XGBoostSerde,
)
from mlruntime.partition.layout import encode_id


def quiet_wait(run: DPFRun) -> RunStatus:
    return run.wait(show_progress=False)


def summarize(data_connector: DataConnector, context: Any) -> None:
    df = data_connector.to_pandas()
    print(f"partition {context.partition_id}: {len(df)} rows")
    context.upload({"rows": len(df), "total": float(df["X"].sum())}, "summary.pkl")


@pytest.fixture
def sales() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 60, size=40)
    keys = np.repeat(np.arange(40), sizes)
    return pd.DataFrame({"STORE": keys, "X": rng.normal(size=len(keys))})


def test_every_partition_of_a_warehouse_table_gets_its_own_rows(
    ray_cluster: None, sales: pd.DataFrame
) -> None:
    session = mlruntime.get_active_session()
    session.write_pandas(sales, "PARTITION_SALES", auto_create_table=True, overwrite=True)
    run = DPF(summarize).run("STORE", session.table("PARTITION_SALES"), run_id="table-run")
    assert quiet_wait(run) == RunStatus.SUCCESS
    details = run.partition_details
    expected = sales.groupby("STORE")["X"].agg(["size", "sum"])
    assert sorted(details, key=int) == [str(k) for k in expected.index]
    for key, row in expected.iterrows():
        got = details[str(key)].artifacts.get("summary.pkl")
        assert got["rows"] == row["size"] and got["total"] == pytest.approx(row["sum"])
        assert details[str(key)].logs.strip() == f"partition {key}: {int(row['size'])} rows"
    assert run.get_progress().keys() == {"DONE"}
    # the staged input is gone once the run ends
    assert not (Path(run.path) / "input").exists()


def test_a_raising_partition_is_retried_then_recorded_while_the_others_finish(
    ray_cluster: None, sales: pd.DataFrame, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()

    def flaky(data_connector: DataConnector, context: Any) -> None:
        (calls / f"{context.partition_id}-{context.attempt}").touch()
        if context.partition_id == "7":
            raise ValueError("store 7 has no data worth modelling")
        if context.partition_id == "8" and context.attempt == 0:
            raise ConnectionError("transient")
        context.upload(len(data_connector.to_pandas()), "n.pkl")

    options = ExecutionOptions(max_retries=2)
    run = DPF(flaky).run("STORE", sales, run_id="flaky", execution_options=options)
    assert quiet_wait(run) == RunStatus.PARTIAL_FAILURE
    details = run.partition_details
    failed = details["7"]
    assert failed.status == PartitionStatus.FAILED and failed.attempts == 3
    assert failed.error == "ValueError: store 7 has no data worth modelling"
    assert "Traceback" in failed.traceback and "in flaky" in failed.traceback
    assert details["8"].status == "DONE" and details["8"].attempts == 2
    assert [d.partition_id for d in run.get_progress()["FAILED"]] == ["7"]
    assert len(run.get_progress()["DONE"]) == 39
    assert sorted(p.name for p in calls.iterdir() if p.name.startswith("7-")) == [
        "7-0",
        "7-1",
        "7-2",
    ]


def test_fail_fast_cancels_the_rest(ray_cluster: None) -> None:
    frame = pd.DataFrame({"K": np.arange(40), "X": np.ones(40)})

    def slow_or_bad(data_connector: DataConnector, context: Any) -> None:
        if context.partition_id == "0":
            raise RuntimeError("boom")
        time.sleep(0.5)

    options = ExecutionOptions(fail_fast=True, max_retries=0, max_partitions_per_task=1)
    started = time.monotonic()
    run = DPF(slow_or_bad).run("K", frame, run_id="fail-fast", execution_options=options)
    assert quiet_wait(run) == RunStatus.CANCELLED
    assert time.monotonic() - started < 15  # 40 x 0.5 s on 4 CPUs would take 5 s at least
    progress = run.get_progress()
    assert [d.partition_id for d in progress["FAILED"]] == ["0"]
    assert progress.get("CANCELLED") and len(progress.get("DONE", [])) < 39


def test_existing_runs_are_refused_overwritten_or_resumed(
    ray_cluster: None, sales: pd.DataFrame
) -> None:
    dpf = DPF(summarize)
    quiet_wait(dpf.run("STORE", sales, run_id="again"))
    with pytest.raises(RunExistsError, match="on_existing_artifacts"):
        dpf.run("STORE", sales, run_id="again")
    run = dpf.run("STORE", sales, run_id="again", on_existing_artifacts="resume")
    assert quiet_wait(run) == RunStatus.SUCCESS  # nothing left to do
    run = dpf.run("STORE", sales, run_id="again", on_existing_artifacts="overwrite")
    assert quiet_wait(run) == RunStatus.SUCCESS and len(run.partition_details) == 40
    with pytest.raises(ColumnError, match="'NOPE' is not in the data"):
        dpf.run("NOPE", sales, run_id="bad-column")
    with pytest.raises(RunNotFoundError):
        DPFRun.restore("never-ran")


def test_ids_with_slashes_and_unicode_are_safe_on_storage(ray_cluster: None) -> None:
    ids = ["a/b", "../up", ".", "", "東京/渋谷 🚀", "x" * 300, "100%", "a%2Fb"]
    frame = pd.DataFrame({"K": ids * 3, "V": np.arange(len(ids) * 3)})

    def keep(data_connector: DataConnector, context: Any) -> None:
        context.upload(sorted(data_connector.to_pandas()["V"].tolist()), "v.pkl")
        assert context.download("v.pkl") == sorted(data_connector.to_pandas()["V"].tolist())

    run = DPF(keep).run("K", frame, run_id="ids/../with 'quotes' ✓")
    assert quiet_wait(run) == RunStatus.SUCCESS
    details = run.partition_details
    assert set(details) == set(ids)
    for i, pid in enumerate(ids):
        assert details[pid].artifacts.get("v.pkl") == [i, i + len(ids), i + 2 * len(ids)]
    names = {p.name for p in (Path(run.path) / "partitions").iterdir()}
    assert len(names) == len(ids) and all("/" not in n and n not in (".", "..") for n in names)
    assert all(len(encode_id(pid)) <= 200 for pid in ids)
    assert DPFRun.restore("ids/../with 'quotes' ✓").status == RunStatus.SUCCESS


def test_run_from_files_makes_each_file_a_partition(ray_cluster: None, tmp_path: Path) -> None:
    folder = tmp_path / "files"
    (folder / "nested").mkdir(parents=True)
    for name, n in (("a.parquet", 5), ("nested/b.parquet", 7), ("c.parquet", 9)):
        pq.write_table(pa.table({"X": np.arange(n, dtype=float)}), folder / name)
    (folder / "notes.txt").write_text("not data")

    run = DPF(summarize).run_from_files(str(folder), run_id="files")
    assert quiet_wait(run) == RunStatus.SUCCESS
    rows = {pid: d.artifacts.get("summary.pkl")["rows"] for pid, d in run.partition_details.items()}
    assert rows == {"a.parquet": 5, "nested/b.parquet": 7, "c.parquet": 9}


def test_parquet_connectors_are_read_by_the_workers_with_a_filter(
    ray_cluster: None, sales: pd.DataFrame, tmp_path: Path
) -> None:
    folder = tmp_path / "sales"
    folder.mkdir()
    half = len(sales) // 2
    pq.write_table(
        pa.Table.from_pandas(sales.iloc[:half], preserve_index=False),
        folder / "p0.parquet",
        row_group_size=50,
    )
    pq.write_table(
        pa.Table.from_pandas(sales.iloc[half:], preserve_index=False),
        folder / "p1.parquet",
        row_group_size=50,
    )
    connector = DataConnector.from_sources([str(folder)])
    run = DPF(summarize).run("STORE", connector, run_id="parquet-filter")
    assert quiet_wait(run) == RunStatus.SUCCESS
    assert not (Path(run.path) / "input").exists()  # nothing was staged
    expected = sales.groupby("STORE")["X"].sum()
    for key, total in expected.items():
        got = run.partition_details[str(key)].artifacts.get("summary.pkl")
        assert got["total"] == pytest.approx(total)


def test_status_is_readable_from_another_process(ray_cluster: None, sales: pd.DataFrame) -> None:
    def fail_one(data_connector: DataConnector, context: Any) -> None:
        if context.partition_id == "3":
            raise KeyError("missing feature")

    run = DPF(fail_one).run(
        "STORE", sales, run_id="shown", execution_options=ExecutionOptions(max_retries=0)
    )
    quiet_wait(run)
    cli = [sys.executable, "-m", "mlruntime.cli"]
    done = subprocess.run(
        [*cli, "runs", "show", "shown", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["status"] == "PARTIAL_FAILURE" and shown["counts"] == {"DONE": 39, "FAILED": 1}
    assert shown["details"][0]["partition_id"] == "3"
    assert "KeyError" in shown["details"][0]["traceback"]
    text = subprocess.run(
        [*cli, "runs", "show", "shown"], capture_output=True, text=True, timeout=120, check=False
    ).stdout
    assert "PARTIAL_FAILURE" in text and "FAILED          3: KeyError: 'missing feature'" in text
    listed = subprocess.run(
        [*cli, "runs", "list"], capture_output=True, text=True, timeout=120, check=False
    ).stdout
    assert "shown" in listed


DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np, pandas as pd
    from mlruntime.partition import DPF, ExecutionOptions

    marks = sys.argv[2]

    def work(data_connector, context):
        open(os.path.join(marks, f"{context.partition_id}-{time.time_ns()}"), "w").close()
        time.sleep(0.3)

    frame = pd.DataFrame({"K": np.repeat(np.arange(24), 5), "X": np.ones(120)})
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # a new Ray of its own
    mode = "error" if sys.argv[1] == "start" else "resume"
    run = DPF(work).run("K", frame, run_id="killed", on_existing_artifacts=mode,
                        execution_options=ExecutionOptions(max_partitions_per_task=1))
    print("RESULT", run.wait(show_progress=False).value, flush=True)
    """
)


def _kill_processes_of_home(home: str) -> None:
    """SIGKILL every process started with ``MLRUNTIME_HOME=home`` (a killed driver's Ray
    workers may sit in their own sessions) and wait until they are gone, so no straggler
    finishes a partition after the test has read the run's status."""
    import psutil

    victims = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("MLRUNTIME_HOME") == home:
                proc.kill()
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    psutil.wait_procs(victims, timeout=30)


def test_resume_after_the_driver_is_killed_reruns_only_unfinished_partitions(
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "MLRUNTIME_HOME": str(tmp_path / "home"),
        "MLRUNTIME_QUIET": "1",
    }
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen(
        [sys.executable, str(script), "start", str(marks)], env=env, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while len(list(marks.iterdir())) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its embedded Ray die at once
    driver.wait()
    _kill_processes_of_home(env["MLRUNTIME_HOME"])  # Ray workers outside the process group
    before = [p.name.split("-")[0] for p in marks.iterdir()]
    assert 8 <= len(before) < 24
    show = subprocess.run(
        [sys.executable, "-m", "mlruntime.cli", "runs", "show", "killed", "--json", "--partitions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    status = json.loads(show.stdout)
    assert status["status"] == "IN_PROGRESS"
    done_before = {d["partition_id"] for d in status["details"] if d["status"] == "DONE"}
    assert done_before and len(done_before) < 24
    for p in marks.iterdir():
        p.unlink()
    resumed = subprocess.run(
        [sys.executable, str(script), "resume", str(marks)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "RESULT SUCCESS" in resumed.stdout, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rerun = sorted(p.name.split("-")[0] for p in marks.iterdir())
    # exactly the partitions not recorded DONE ran again, each once
    assert rerun == sorted(str(k) for k in range(24) if str(k) not in done_before)


def test_many_model_training_and_inference_round_trip(ray_cluster: None, tmp_path: Path) -> None:
    import lightgbm as lgb
    import xgboost as xgb

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "REGION": np.repeat(["north", "south/east"], 60),
            "X1": rng.normal(size=120),
            "X2": rng.normal(size=120),
        }
    )
    frame["Y"] = np.where(frame["REGION"] == "north", 3.0, -3.0) + frame["X1"]

    def train_xgb(data_connector: DataConnector, context: Any) -> Any:
        df = data_connector.to_pandas()
        return xgb.XGBRegressor(n_estimators=20, max_depth=2).fit(df[["X1", "X2"]], df["Y"])

    def train_lgb(data_connector: DataConnector, context: Any) -> Any:
        df = data_connector.to_pandas()
        data = lgb.Dataset(df[["X1", "X2"]], df["Y"])
        params = {"num_threads": 1, "verbose": -1, "min_data_in_leaf": 5}
        return lgb.train(params, data, num_boost_round=20)

    for name, train, serde in (
        ("mm-xgb", train_xgb, XGBoostSerde()),
        ("mm-lgb", train_lgb, LightGBMSerde()),
    ):
        training = ManyModelTraining(train, "MODELS_STAGE", serde=serde)
        run = training.run(partition_by="REGION", snowpark_dataframe=frame, run_id=name)
        assert quiet_wait(run) == RunStatus.SUCCESS
        north = run.get_model("north")
        assert north.predict(pd.DataFrame({"X1": [0.0], "X2": [0.0]}))[0] > 1.5
        restored = ManyModelTraining.restore_from(name, "MODELS_STAGE")
        assert type(restored.get_model("south/east")) is type(north)

        def score(data_connector: DataConnector, model: Any, context: Any) -> None:
            df = data_connector.to_pandas()
            context.upload(model.predict(df[["X1", "X2"]]).mean(), "mean.pkl")

        inference = ManyModelInference(score, "MODELS_STAGE", training_run_id=name)
        scored = inference.run("REGION", frame, run_id=f"{name}-scored")
        assert quiet_wait(scored) == RunStatus.SUCCESS
        means = {p: d.artifacts.get("mean.pkl") for p, d in scored.partition_details.items()}
        assert means["north"] > 1.5 and means["south/east"] < -1.5


def test_with_session_writes_through_the_driver(ray_cluster: None, sales: pd.DataFrame) -> None:
    session = mlruntime.get_active_session()
    session.sql("DROP TABLE IF EXISTS PARTITION_OUT")

    def write(data_connector: DataConnector, context: Any) -> None:
        df = data_connector.to_pandas().assign(PID=context.partition_id)
        context.with_session(
            lambda s: s.create_dataframe(df).write.mode("append").save_as_table("PARTITION_OUT")
        )

    small = sales[sales["STORE"] < 4]
    run = DPF(write).run("STORE", small, run_id="with-session")
    assert quiet_wait(run) == RunStatus.SUCCESS
    assert session.table("PARTITION_OUT").count() == len(small)


def test_import_is_cheap() -> None:
    code = (
        "import sys, mlruntime.partition as p; p.ExecutionOptions; "
        "print(sorted(m for m in ('ray', 'duckdb', 'xgboost', 'lightgbm', 'torch') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.strip() == "[]"
