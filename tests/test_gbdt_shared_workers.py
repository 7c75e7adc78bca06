"""XGBoost and LightGBM are one family of backends: a LightGBM fit runs on the warm worker
group an XGBoost fit of the same shape left (and back), instead of making it room and starting
new worker processes. And their workers import them without their scikit-learn API."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mlruntime import DataConnector

FEATURES = ["a", "b", "c"]


def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.random((2_000, 3))
    return pd.DataFrame(x, columns=FEATURES).assign(y=x @ [3.0, -2.0, 1.0])


def warm_groups() -> list[object]:
    from mlruntime.runtime import distributor

    with distributor._idle_lock:
        return list(distributor._idle.values())


def test_xgboost_and_lightgbm_fits_share_one_warm_group(ray_cluster: None) -> None:
    from mlruntime.runtime.distributor import release_idle_groups
    from mlruntime_lightgbm import LightGBMEstimator
    from mlruntime_xgboost import XGBEstimator

    release_idle_groups()
    data = frame()
    dc = DataConnector.from_dataframe(data)
    x, y = data[FEATURES], data["y"].to_numpy()

    xgb_model = XGBEstimator(n_estimators=30, verbose=False).fit(dc, FEATURES, "y")
    (group,) = warm_groups()
    lgb_model = LightGBMEstimator(n_estimators=30, verbose=False).fit(dc, FEATURES, "y")
    assert warm_groups() == [group]  # the same group, not a new one beside or instead of it
    again = XGBEstimator(n_estimators=30, verbose=False).fit(dc, FEATURES, "y")
    assert warm_groups() == [group]

    import xgboost as xgb

    for prediction in (
        xgb_model.predict(xgb.DMatrix(x)),
        lgb_model.predict(x.to_numpy()),
        again.predict(xgb.DMatrix(x)),
    ):
        assert np.sqrt(np.mean((prediction - y) ** 2)) < 0.5 * y.std()
    release_idle_groups()


_IMPORT_IN_A_WORKER = """
import sys

import numpy as np

from mlruntime.train.gbdt_worker import import_framework
from {module} import {trainer}

import_framework({trainer}.framework_module)  # what run_trainer does first
import {framework}

x, y = np.random.default_rng(0).random((64, 3)), np.arange(64.0)
rounds = {train}
print("sklearn" in sys.modules, rounds)
import sklearn.metrics  # importable again, for a custom metric

print(sklearn.metrics.mean_squared_error([1.0], [1.0]))
"""

TRAIN = {
    "xgboost": (
        "mlruntime_xgboost.estimator",
        "_XGBTrainer",
        "xgboost.train({{}}, xgboost.DMatrix(x, label=y), 3).num_boosted_rounds()",
    ),
    "lightgbm": (
        "mlruntime_lightgbm.estimator",
        "_LightGBMTrainer",
        "lightgbm.train({{'verbose': -1}}, lightgbm.Dataset(x, label=y), 3).current_iteration()",
    ),
}


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("framework", sorted(TRAIN))
def test_workers_import_the_framework_without_its_scikit_learn_api(
    framework: str, keep: bool
) -> None:
    # import xgboost / lightgbm imported scikit-learn, SciPy's stats and pandas for their
    # scikit-learn wrappers: 0.5 s of a new worker's 0.7 s import, in every first fit
    module, trainer, train = TRAIN[framework]
    code = _IMPORT_IN_A_WORKER.format(
        module=module, trainer=trainer, framework=framework, train=train.format()
    )
    env = dict(os.environ)
    env.pop("MLRUNTIME_GBDT_SKLEARN", None)
    if keep:
        env["MLRUNTIME_GBDT_SKLEARN"] = "1"
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(keep), "3", "0.0"]


_LOAD_IN_A_WORKER = """
import pickle, sys

from mlruntime.train.gbdt_worker import import_framework

spec = pickle.loads(bytes.fromhex(sys.argv[1]))  # as Ray unpickles the job's arguments
print("{framework}" in sys.modules)
import_framework("{framework}")  # what run_trainer does first
callbacks = spec["callbacks"].load()
print("sklearn" in sys.modules, type(callbacks[0]).__name__, spec["params"])
"""


CALLBACKS = {
    "xgboost": lambda xgb: xgb.callback.EarlyStopping(rounds=3),
    "lightgbm": lambda lgb: lgb.early_stopping(3),
}


@pytest.mark.parametrize("framework", sorted(CALLBACKS))
def test_callbacks_are_unpickled_after_the_framework_import(framework: str) -> None:
    """A job's callbacks (framework objects) would import the framework, and scikit-learn
    with it, while Ray unpickles the job: they travel pickled and load after the import."""
    import importlib

    import ray.cloudpickle as cloudpickle

    from mlruntime.train.gbdt_worker import Deferred, defer_framework_values

    spec = {
        "callbacks": [CALLBACKS[framework](importlib.import_module(framework))],
        "params": {"eta": 0.1},
        "features": ["a"],
        "rounds": 3,
    }
    sent = defer_framework_values(spec, framework)
    assert isinstance(sent["callbacks"], Deferred)
    assert {k: v for k, v in sent.items() if k != "callbacks"} == {
        k: v for k, v in spec.items() if k != "callbacks"
    }
    assert defer_framework_values(spec, None) is spec
    env = {k: v for k, v in os.environ.items() if k != "MLRUNTIME_GBDT_SKLEARN"}
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_IN_A_WORKER.format(framework=framework),
            cloudpickle.dumps(sent).hex(),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    name = type(spec["callbacks"][0]).__name__
    assert run.stdout.split("\n")[:2] == ["False", f"False {name} {{'eta': 0.1}}"]
