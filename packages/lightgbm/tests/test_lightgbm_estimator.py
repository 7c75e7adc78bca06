"""LightGBMEstimator on a real Ray: socket-network data-parallel training, quality against one
process, early stopping on every rank, categorical columns, sinks, save/load, restarts after a
killed worker, GPU flag and clear errors on bad input."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlruntime import DataConnector, FailureConfig, ParquetSink, Session, get_context
from mlruntime.errors import ColumnError, ConfigError, DataError, WorkerError
from mlruntime_lightgbm import LightGBMEstimator, LightGBMScalingConfig

FEATURES = [f"f{i}" for i in range(5)]
PARAMS = {"num_leaves": 15, "learning_rate": 0.2, "seed": 3, "deterministic": True}


def estimator(workers: int = 2, **kwargs: object) -> LightGBMEstimator:
    return LightGBMEstimator(
        n_estimators=kwargs.pop("n_estimators", 20),  # type: ignore[arg-type]
        params=dict(PARAMS, **kwargs.pop("params", {})),  # type: ignore[arg-type]
        scaling_config=LightGBMScalingConfig(num_workers=workers, num_cpu_per_worker=1),
        verbose=False,
        **kwargs,  # type: ignore[arg-type]
    )


def single_process(frame: pd.DataFrame, rounds: int = 20) -> lgb.Booster:
    data = lgb.Dataset(frame[FEATURES].to_numpy(np.float32), label=frame["y"].to_numpy())
    return lgb.train(
        {**PARAMS, "objective": "regression", "verbose": -1, "num_threads": 1}, data, rounds
    )


def rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def test_adapter_builds_a_dataset_without_ray(frame: pd.DataFrame) -> None:
    ds = DataConnector.from_dataframe(
        frame.assign(c=np.where(frame["f0"] > 0.5, "a", "b"))
    ).to_lightgbm_dataset(label_col="y", input_cols=[*FEATURES, "c"])
    ds.construct()
    assert (ds.num_data(), ds.num_feature()) == (len(frame), 6)
    assert ds.get_feature_name() == [*FEATURES, "c"]


def test_one_worker_matches_single_process_lightgbm(
    ray_cluster: None, parquet_folder: Path, frame: pd.DataFrame
) -> None:
    booster = estimator(workers=1).fit(DataConnector.from_sources(parquet_folder), FEATURES, "y")
    x = frame[FEATURES].to_numpy(np.float32)
    np.testing.assert_allclose(
        booster.predict(x), single_process(frame).predict(x), rtol=1e-6, atol=1e-6
    )


def test_two_workers_match_single_process_quality(
    ray_cluster: None, parquet_folder: Path, frame: pd.DataFrame
) -> None:
    est = estimator(workers=2)
    booster = est.fit(
        DataConnector.from_sources(parquet_folder), FEATURES, "y", eval_set=frame.iloc[:500]
    )
    x, y = frame[FEATURES].to_numpy(np.float32), frame["y"].to_numpy()
    ours, reference = booster.predict(x), single_process(frame).predict(x)
    assert abs(rmse(ours, y) - rmse(reference, y)) < 0.03 * rmse(reference, y)
    assert np.corrcoef(ours, reference)[0, 1] > 0.995
    results = est.get_eval_results()
    assert len(results["train"]["l2"]) == 20 and len(results["eval"]["l2"]) == 20
    assert est.last_result.get_metrics()["round"] == 20
    # rounds reach the driver in batches, every one of them, in order, with its metrics
    history = est.last_result.get_metrics_history()
    assert [m["round"] for m in history] == list(range(1, 21))
    assert [m["train-l2"] for m in history] == results["train"]["l2"]


def test_early_stopping_stops_every_rank_together(ray_cluster: None, frame: pd.DataFrame) -> None:
    noise = frame.assign(y=np.random.default_rng(1).normal(size=len(frame)))
    est = estimator(n_estimators=200, callbacks=[lgb.early_stopping(3, verbose=False)])
    booster = est.fit(frame, FEATURES, "y", eval_set=noise.iloc[:300])  # returns: no rank hangs
    assert booster.num_trees() < 200
    assert booster.best_iteration >= 1


def test_categorical_string_and_dictionary_columns(
    ray_cluster: None, frame: pd.DataFrame, tmp_path: Path
) -> None:
    city = np.where(frame["f3"] > 0.5, "paris", np.where(frame["f4"] > 0.5, "oslo", "rome"))
    data = frame.assign(city=city, y=frame["y"] + (city == "paris") * 3.0)
    data["city_dict"] = pd.Categorical(data["city"])
    est = estimator()
    est.fit(data, ["f0", "f1", "f2", "city"], "y")
    pred = est.predict(data)
    assert rmse(pred, data["y"].to_numpy()) < 0.6
    path = tmp_path / "model.txt"
    est.save_model(path)
    loaded = LightGBMEstimator(verbose=False)
    loaded.load_model(path)
    np.testing.assert_allclose(loaded.predict(data), pred, rtol=1e-6)
    by_dict = estimator(n_estimators=5)
    by_dict.fit(data, ["f0", "city_dict"], "y")
    assert by_dict.predict(data).shape == (len(data),)


def test_predict_to_a_sink_and_a_table(
    ray_cluster: None, frame: pd.DataFrame, tmp_path: Path
) -> None:
    est = estimator(n_estimators=10)
    booster = est.fit(frame, FEATURES, "y")
    expected = booster.predict(frame[FEATURES].to_numpy(np.float32))
    np.testing.assert_allclose(est.predict(frame), expected, rtol=1e-6)
    out = est.predict(frame, sink=ParquetSink(tmp_path / "scores"), key_cols=["key"])
    scored = pq.read_table(out).to_pandas().sort_values("key")
    assert scored["key"].tolist() == list(range(len(frame)))
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=1e-6)
    from mlruntime import DuckDBTableSink

    session = Session(tmp_path / "w.duckdb")
    est.predict(frame, sink=DuckDBTableSink("scores", session), key_cols=["key"])
    assert session.sql("SELECT count(*) FROM scores").fetchall() == [(len(frame),)]


def kill_rank_one(env: lgb.callback.CallbackEnv) -> None:
    ctx = get_context()
    if ctx.get_attempt() == 0 and ctx.get_rank() == 1 and env.iteration + 1 == 12:
        os.kill(os.getpid(), signal.SIGKILL)


def test_killed_worker_resumes_from_the_last_checkpoint(
    ray_cluster: None, frame: pd.DataFrame
) -> None:
    est = estimator(
        n_estimators=25,
        callbacks=[kill_rank_one],
        failure_config=FailureConfig(max_failures=1),
        checkpoint_frequency=5,
    )
    booster = est.fit(frame, FEATURES, "y")
    assert booster.num_trees() == 25
    assert len(est.last_result.attempts) == 1
    assert est.last_result.get_metrics_history()[0]["round"] == 11
    assert len(est.get_eval_results()["train"]["l2"]) == 25


def test_bad_input_is_refused_before_workers_start(frame: pd.DataFrame) -> None:
    est = estimator()
    with pytest.raises(ColumnError, match="column 'GHOST' is not in the data"):
        est.fit(frame, ["f0", "GHOST"], "y")
    with pytest.raises(ColumnError, match="label column 'name' has type"):
        est.fit(frame.assign(name="x"), FEATURES, "name")
    with pytest.raises(DataError, match="label column 'y' has 1 null"):
        est.fit(frame.assign(y=[None] + [1.0] * (len(frame) - 1)), FEATURES, "y")
    with pytest.raises(ColumnError, match="eval_set: column 'y' is not in the data"):
        est.fit(frame, FEATURES, "y", eval_set=frame.drop(columns=["y"]))


def test_lightgbm_errors_on_workers_are_surfaced(ray_cluster: None, frame: pd.DataFrame) -> None:
    # No probe on the driver: LightGBM itself judges the parameters, on the workers, and its
    # message comes back as a ConfigError (the WorkerError with every rank's error chained).
    with pytest.raises(ConfigError, match=r"invalid LightGBM parameters.*no_such_objective") as err:
        estimator(objective="no_such_objective").fit(frame, FEATURES, "y")
    assert isinstance(err.value.__cause__, WorkerError)
    est = estimator(params={"objective": "multiclass", "num_class": 2})
    with pytest.raises(ConfigError, match=r"Label must be in \[0, 2\)"):
        est.fit(frame.assign(y=(frame["y"] * 10).round()), FEATURES, "y")


@pytest.mark.parametrize("monotone", [False, True])
def test_gamma_objective_on_positive_labels_is_accepted(
    ray_cluster: None, frame: pd.DataFrame, monotone: bool
) -> None:
    # A probe on 0/1 labels used to refuse this valid config before any worker started.
    data = frame.assign(y=np.exp(frame["y"] / 4.0))  # strictly positive
    params = {"monotone_constraints": [1, 1, 1, 0, -1]} if monotone else {}
    est = estimator(objective="gamma", n_estimators=8, params=params)
    booster = est.fit(data, FEATURES, "y")
    assert "objective=gamma" in booster.model_to_string()
    history = est.get_eval_results()["train"]["gamma"]
    assert len(history) == 8 and history[-1] < history[0]


def test_gpus_with_a_build_without_gpu_support_fail_clearly(frame: pd.DataFrame) -> None:
    from mlruntime.testing import simulated_cluster

    try:
        lgb.train(
            {"device_type": "gpu", "verbose": -1},
            lgb.Dataset(np.arange(20.0).reshape(10, 2), label=np.arange(10.0)),
            1,
        )
        pytest.skip("this LightGBM build supports GPUs")
    except lgb.basic.LightGBMError:
        pass
    with simulated_cluster([(2, 0), (2, 1), (2, 1)]):
        est = LightGBMEstimator(n_estimators=3, verbose=False)
        with pytest.raises(ConfigError, match="this LightGBM build cannot use them"):
            est.fit(frame, FEATURES, "y")


def test_cli_trains_from_files(ray_cluster: None, parquet_folder: Path, tmp_path: Path) -> None:
    from mlruntime.cli import main

    out = tmp_path / "model.txt"
    code = main(
        [
            "train",
            "lightgbm",
            "--data",
            str(parquet_folder),
            "--label",
            "y",
            "--features",
            *FEATURES,
            "--workers",
            "2",
            "--cpus-per-worker",
            "1",
            "--rounds",
            "6",
            "--param",
            "num_leaves=7",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    booster = lgb.Booster(model_file=str(out))
    assert booster.num_trees() == 6
    assert max(t["num_leaves"] for t in booster.dump_model()["tree_info"]) <= 7


def test_categories_are_gathered_from_every_workers_shard(
    ray_cluster: None, frame: pd.DataFrame, tmp_path: Path
) -> None:
    # A warehouse table whose two halves hold different cities: rank 0's shard has only
    # "oslo"/"paris", rank 1's only "rome"/"lima". Every rank must encode with the union.
    half = len(frame) // 2
    city = np.where(np.arange(len(frame)) < half, "oslo", "rome").astype(object)
    city[: half // 2] = "paris"
    city[half + half // 2 :] = "lima"
    effect = {"oslo": 0.0, "paris": 3.0, "rome": -2.0, "lima": 5.0}
    data = frame.assign(city=city, y=frame["y"] + np.array([effect[c] for c in city]))
    session = Session(tmp_path / "w.duckdb")
    session.create_table("trips", data)
    est = estimator()
    est.fit(session.table("trips"), ["f0", "f1", "f2", "city"], "y")
    union = ["lima", "oslo", "paris", "rome"]
    assert est._categories["city"].to_pylist() == union
    assert est.get_booster().pandas_categorical == [union]  # what predict encodes with
    assert est.predict(data).shape == (len(data),)
    session.close()
