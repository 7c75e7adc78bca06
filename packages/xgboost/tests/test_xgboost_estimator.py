"""XGBEstimator on a real Ray: data-parallel training, results, scoring to sinks, save/load,
restarts after a killed worker, fake-GPU placement and clear errors on bad input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from mlruntime import DataConnector, FailureConfig, ParquetSink, Session, get_context
from mlruntime.errors import ColumnError, ConfigError, DataError
from mlruntime_xgboost import XGBEstimator, XGBScalingConfig

FEATURES = [f"f{i}" for i in range(5)]
PARAMS = {"max_depth": 4, "eta": 0.3, "seed": 7}


def estimator(workers: int = 2, **kwargs: object) -> XGBEstimator:
    return XGBEstimator(
        n_estimators=kwargs.pop("n_estimators", 20),  # type: ignore[arg-type]
        params=dict(PARAMS, **kwargs.pop("params", {})),  # type: ignore[arg-type]
        scaling_config=XGBScalingConfig(num_workers=workers, num_cpu_per_worker=1),
        verbose=False,
        **kwargs,  # type: ignore[arg-type]
    )


def single_process(frame: pd.DataFrame, rounds: int = 20) -> xgb.Booster:
    dm = xgb.QuantileDMatrix(frame[FEATURES].to_numpy(), frame["y"].to_numpy())
    return xgb.train({**PARAMS, "tree_method": "hist", "objective": "reg:squarederror"}, dm, rounds)


def rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def test_one_worker_matches_single_process_xgboost(
    ray_cluster: None, parquet_folder: Path, frame: pd.DataFrame
) -> None:
    est = estimator(workers=1)
    booster = est.fit(DataConnector.from_sources(parquet_folder), FEATURES, "y")
    assert isinstance(booster, xgb.Booster) and booster.num_boosted_rounds() == 20
    x = frame[FEATURES].to_numpy()
    np.testing.assert_allclose(
        booster.inplace_predict(x), single_process(frame).inplace_predict(x), rtol=1e-5, atol=1e-5
    )
    # the booster says which device trained it
    assert booster.attr("mlruntime_trained_device") == "cpu"


def test_a_loaded_booster_gets_back_the_device_that_trained_it() -> None:
    from mlruntime_xgboost.estimator import _XGBTrainer

    x = np.random.default_rng(0).random((50, 2))
    trained = xgb.train({"device": "cpu"}, xgb.DMatrix(x, label=x[:, 0]), 2)
    trained.set_attr(mlruntime_trained_device="cuda:0")  # as a GPU worker's dump records it
    raw = bytes(trained.save_raw("ubj"))
    loaded = _XGBTrainer().load(raw)
    config = json.loads(loaded.save_config())["learner"]["generic_param"]
    assert loaded.attr("mlruntime_trained_device") == "cuda:0"
    # without a GPU here XGBoost itself keeps the CPU; with one, the config reads cuda:0
    assert config["device"] in ("cpu", "cuda:0")
    assert loaded.predict(xgb.DMatrix(x)).shape == (50,)


@pytest.mark.gpu
@pytest.mark.skipif(
    not (xgb.build_info().get("USE_CUDA") and os.path.exists("/dev/nvidia0")),
    reason="needs a CUDA GPU",
)
def test_gpu_training_shows_in_the_returned_booster(
    ray_cluster: None, parquet_folder: Path
) -> None:
    est = XGBEstimator(
        n_estimators=5, scaling_config=XGBScalingConfig(num_workers=1, use_gpu=True), verbose=False
    )
    booster = est.fit(DataConnector.from_sources(parquet_folder), FEATURES, "y")
    config = json.loads(booster.save_config())["learner"]["generic_param"]
    assert booster.attr("mlruntime_trained_device").startswith("cuda")
    assert config["device"].startswith("cuda")


def test_two_workers_train_the_same_model_within_xgboost_tolerance(
    ray_cluster: None, parquet_folder: Path, frame: pd.DataFrame
) -> None:
    est = estimator(workers=2)
    booster = est.fit(
        DataConnector.from_sources(parquet_folder), FEATURES, "y", eval_set=frame.iloc[:500]
    )
    x, y = frame[FEATURES].to_numpy(), frame["y"].to_numpy()
    ours, reference = booster.inplace_predict(x), single_process(frame).inplace_predict(x)
    # Distributed quantile sketches differ slightly from one process's; the fit must not.
    assert abs(rmse(ours, y) - rmse(reference, y)) < 0.02 * rmse(reference, y)
    assert np.corrcoef(ours, reference)[0, 1] > 0.995
    results = est.get_eval_results()
    assert set(results) == {"train", "eval"}
    assert len(results["train"]["rmse"]) == 20 and len(results["eval"]["rmse"]) == 20
    assert results["train"]["rmse"][-1] < results["train"]["rmse"][0]
    assert est.last_result.get_metrics()["round"] == 20
    # rounds reach the driver in batches, every one of them, in order, with its metrics
    history = est.last_result.get_metrics_history()
    assert [m["round"] for m in history] == list(range(1, 21))
    assert [m["train-rmse"] for m in history] == results["train"]["rmse"]


def test_params_override_arguments_and_each_worker_reads_a_shard(
    ray_cluster: None, frame: pd.DataFrame
) -> None:
    est = XGBEstimator(
        n_estimators=50,
        objective="reg:absoluteerror",
        params={"n_estimators": 5, "objective": "reg:squarederror", "max_depth": 2},
        scaling_config=XGBScalingConfig(2, 1),
        verbose=False,
    )
    booster = est.fit(frame, FEATURES, "y")
    assert booster.num_boosted_rounds() == 5
    config = json.loads(booster.save_config())
    assert config["learner"]["objective"]["name"] == "reg:squarederror"
    assert [r["device"] for r in est.last_result.return_values] == ["cpu", "cpu"]


def test_predict_in_process_and_to_a_sink(
    ray_cluster: None, frame: pd.DataFrame, tmp_path: Path
) -> None:
    est = estimator()
    booster = est.fit(frame, FEATURES, "y")
    expected = booster.inplace_predict(frame[FEATURES].to_numpy())
    np.testing.assert_allclose(est.predict(frame), expected, rtol=1e-6)
    out = est.predict(
        DataConnector.from_dataframe(frame), sink=ParquetSink(tmp_path / "scores"), key_cols=["key"]
    )
    scored = pq.read_table(out).to_pandas().sort_values("key")
    assert scored.columns.tolist() == ["key", "prediction"]
    assert scored["key"].tolist() == list(range(len(frame)))  # every row once
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=1e-6)


def test_scores_go_to_a_duckdb_table(
    ray_cluster: None, frame: pd.DataFrame, tmp_path: Path
) -> None:
    from mlruntime import DuckDBTableSink

    est = estimator(n_estimators=5)
    est.fit(frame, FEATURES, "y")
    session = Session(tmp_path / "w.duckdb")
    est.predict(frame, sink=DuckDBTableSink("scores", session), key_cols=["key"])
    assert session.sql("SELECT count(*), count(DISTINCT key) FROM scores").fetchall() == [
        (len(frame), len(frame))
    ]


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_save_and_load(ray_cluster: None, frame: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    est = estimator(n_estimators=5)
    est.fit(frame, FEATURES, "y")
    path = tmp_path / f"model{suffix}"
    est.save_model(path)
    if suffix == ".json":
        assert json.loads(path.read_text())["learner"]
    loaded = XGBEstimator(verbose=False)
    loaded.load_model(path)
    np.testing.assert_allclose(loaded.predict(frame), est.predict(frame), rtol=1e-6)
    with pytest.raises(FileNotFoundError):
        loaded.load_model(tmp_path / "missing.json")


class KillRankOne(xgb.callback.TrainingCallback):
    """Kills rank 1's process at round 12 of the first attempt."""

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: object) -> bool:
        ctx = get_context()
        if ctx.get_attempt() == 0 and ctx.get_rank() == 1 and model.num_boosted_rounds() == 12:
            os.kill(os.getpid(), signal.SIGKILL)
        return False


def test_killed_worker_resumes_from_the_last_checkpointed_round(
    ray_cluster: None, frame: pd.DataFrame
) -> None:
    est = estimator(
        n_estimators=30,
        callbacks=[KillRankOne()],
        failure_config=FailureConfig(max_failures=1),
        checkpoint_frequency=5,
    )
    booster = est.fit(frame, FEATURES, "y")
    assert booster.num_boosted_rounds() == 30  # same rounds as an undisturbed run
    result = est.last_result
    assert len(result.attempts) == 1 and "process died" in str(result.attempts[0])
    history = [m["round"] for m in result.get_metrics_history()]
    assert history[0] == 11  # resumed after the checkpoint at round 10
    assert len(est.get_eval_results()["train"]["rmse"]) == 30


def test_bad_input_is_refused_before_workers_start(frame: pd.DataFrame) -> None:
    est = estimator()
    with pytest.raises(ColumnError, match="column 'GHOST' is not in the data"):
        est.fit(frame, ["f0", "GHOST"], "y")
    with pytest.raises(ColumnError, match=r"feature column 'name' has type (large_)?string"):
        est.fit(frame.assign(name="x"), ["f0", "name"], "y")
    with pytest.raises(DataError, match="label column 'y' has 2 null"):
        est.fit(frame.assign(y=[None, None] + [1.0] * (len(frame) - 2)), FEATURES, "y")
    with pytest.raises(ColumnError, match="eval_set: column 'y' is not in the data"):
        est.fit(frame, FEATURES, "y", eval_set=frame.drop(columns=["y"]))
    with pytest.raises(ConfigError, match=r"invalid XGBoost parameters.*not:an-objective"):
        XGBEstimator(objective="not:an-objective", verbose=False).fit(frame, FEATURES, "y")
    with pytest.raises(ConfigError, match="scaling_config must be an XGBScalingConfig"):
        XGBEstimator(scaling_config={"num_workers": 2})  # type: ignore[arg-type]


def test_more_workers_than_rows_is_refused(ray_cluster: None, frame: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="cannot make 2 shards of 1 rows"):
        estimator().fit(frame.iloc[:1], FEATURES, "y")


def test_xgboost_errors_on_workers_are_surfaced(ray_cluster: None, frame: pd.DataFrame) -> None:
    est = estimator(params={"objective": "binary:logistic"})
    with pytest.raises(ConfigError, match=r"invalid XGBoost parameters.*for the logistic loss"):
        est.fit(frame.assign(y=frame["y"] * 10), FEATURES, "y")


def test_use_gpu_on_a_cluster_without_gpus_fails_before_starting(
    ray_cluster: None, frame: pd.DataFrame
) -> None:
    from mlruntime.errors import ResourceError

    est = XGBEstimator(scaling_config=XGBScalingConfig(use_gpu=True), verbose=False)
    with pytest.raises(ResourceError, match="use_gpu=True asks for GPUs"):
        est.fit(frame, FEATURES, "y")


def test_fake_gpus_give_each_worker_its_cuda_device(frame: pd.DataFrame) -> None:
    from mlruntime.testing import simulated_cluster

    with simulated_cluster([(2, 0), (2, 2), (2, 2)]):
        est = XGBEstimator(n_estimators=3, params={"max_depth": 2}, verbose=False)
        est.fit(frame, FEATURES, "y")  # auto: one worker per GPU, device set per worker
        devices = [r["device"] for r in est.last_result.return_values]
    assert devices == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


def test_cli_trains_from_a_table(ray_cluster: None, frame: pd.DataFrame, tmp_path: Path) -> None:
    from mlruntime.cli import main

    db = tmp_path / "w.duckdb"
    with Session(db) as session:
        session.create_table("houses", frame)
    out = tmp_path / "model.json"
    code = main(
        [
            "train",
            "xgboost",
            "--data",
            "houses",
            "--database",
            str(db),
            "--label",
            "y",
            "--features",
            *FEATURES,
            "--workers",
            "2",
            "--cpus-per-worker",
            "1",
            "--rounds",
            "4",
            "--param",
            "max_depth=3",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    booster = xgb.Booster(model_file=str(out))
    assert booster.num_boosted_rounds() == 4
    depths = [line.count("\t") for tree in booster.get_dump() for line in tree.splitlines()]
    assert max(depths) == 3  # --param max_depth=3 reached XGBoost (the default is 6)


@pytest.mark.parametrize("monotone", [False, True])
def test_gamma_objective_on_positive_labels_is_accepted(
    ray_cluster: None, frame: pd.DataFrame, monotone: bool
) -> None:
    # A probe on 0/1 labels used to refuse this valid config before any worker started.
    data = frame.assign(y=np.exp(frame["y"] / 4.0))  # strictly positive
    params = {"monotone_constraints": "(1,1,1,0,-1)"} if monotone else {}
    est = estimator(objective="reg:gamma", n_estimators=8, params=params)
    booster = est.fit(data, FEATURES, "y")
    assert json.loads(booster.save_config())["learner"]["objective"]["name"] == "reg:gamma"
    history = est.get_eval_results()["train"]["gamma-deviance"]
    assert len(history) == 8 and history[-1] < history[0]


def test_parameters_xgboost_rejects_come_back_from_rank_0_as_config_error(
    ray_cluster: None, frame: pd.DataFrame
) -> None:
    with pytest.raises(ConfigError, match=r"invalid XGBoost parameters.*max_depth"):
        estimator(params={"max_depth": -3}).fit(frame, FEATURES, "y")


def test_cli_predicts_from_a_saved_model_into_parquet_and_a_table(
    ray_cluster: None, frame: pd.DataFrame, tmp_path: Path
) -> None:
    from mlruntime.cli import main

    est = estimator(n_estimators=5)
    est.fit(frame, FEATURES, "y")
    model = tmp_path / "model.ubj"
    est.save_model(model)
    data = tmp_path / "data.parquet"
    frame.to_parquet(data)
    common = ["--model", str(model), "--data", str(data), "--workers", "2"]
    common += ["--cpus-per-worker", "1", "--key", "key", "--quiet"]
    assert main(["predict", "xgboost", *common, "--output", str(tmp_path / "scored")]) == 0
    scored = pq.read_table(tmp_path / "scored").to_pandas().sort_values("key")
    np.testing.assert_allclose(scored["prediction"], est.predict(frame), rtol=1e-6)
    db = tmp_path / "w.duckdb"
    args = [*common, "--table", "scored", "--database", str(db)]
    assert main(["predict", "xgboost", *args]) == 0
    with Session(db) as session:
        assert session.sql("SELECT count(*) FROM scored").fetchall()[0][0] == len(frame)
    assert main(["predict", "xgboost", *args]) == 2  # exists, mode=error: a clear error


class _TrackerIsLoopback(xgb.callback.TrainingCallback):
    """Fails the job unless the rendezvous tracker this rank dialled listens on loopback."""

    def after_iteration(self, model: object, epoch: int, evals_log: object) -> bool:
        uri = get_context().backend_info["tracker_args"]["dmlc_tracker_uri"]
        if uri != "127.0.0.1":
            raise AssertionError(f"the tracker is dialled on {uri}, not on loopback")
        return False


def test_local_job_dials_the_tracker_on_loopback(ray_cluster: None, frame: pd.DataFrame) -> None:
    est = estimator(n_estimators=2, callbacks=[_TrackerIsLoopback()])
    est.fit(frame, FEATURES, "y")
    assert est.get_booster().num_boosted_rounds() == 2


def test_null_labels_in_files_are_counted_on_the_workers(
    ray_cluster: None, frame: pd.DataFrame, tmp_path: Path
) -> None:
    # Parquet input: the driver reads no rows; each rank counts nulls in its shard, and every
    # rank raises the same error with the total (ranks 0 and 1 each hold some of them).
    labels = frame["y"].to_numpy().copy()
    labels[[3, 5, len(frame) - 2]] = np.nan
    folder = tmp_path / "data"
    folder.mkdir()
    table = pa.Table.from_pandas(frame.assign(y=labels), preserve_index=False)
    table = table.set_column(
        table.schema.get_field_index("y"),
        "y",
        pa.array(labels, mask=np.isnan(labels), type=pa.float64()),
    )
    pq.write_table(table, folder / "part.parquet", row_group_size=500)
    with pytest.raises(DataError, match="label column 'y' has 3 null"):
        estimator().fit(DataConnector.from_sources(folder), FEATURES, "y")


def test_a_single_worker_starts_no_tracker() -> None:
    from types import SimpleNamespace

    from mlruntime_xgboost.estimator import _XGBBackend

    backend = _XGBBackend()
    scaling = SimpleNamespace(num_workers=1, use_gpu=False, num_cpus=2.0)
    info = backend.driver_setup(SimpleNamespace(scaling=scaling))  # type: ignore[arg-type]
    assert info == {"tracker_args": None, "use_gpu": False, "nthread": 2}
    assert backend._tracker is None  # nothing to synchronise: no rendezvous, no collective
