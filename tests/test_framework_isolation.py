"""Each framework's import cost stays inside its own plugin: importing the plugin packages
imports no framework, and using one framework's adapter imports no other framework."""

from __future__ import annotations

import pytest

from mlruntime.testing import imported_modules_after

PLUGINS = "import mlruntime_xgboost, mlruntime_lightgbm, mlruntime_pytorch, mlruntime_tensorflow"


def test_plugin_packages_import_no_framework() -> None:
    assert imported_modules_after(PLUGINS) == []


def test_the_torch_path_never_imports_tensorflow() -> None:
    code = f"""
    {PLUGINS}
    import pyarrow as pa
    from mlruntime import DataConnector
    dc = DataConnector.from_dataframe(pa.table({{"x": [1.0, 2.0, 3.0, 4.0]}}))
    assert len(list(dc.to_torch_dataset(batch_size=2))) == 2
    """
    assert imported_modules_after(code, ("tensorflow", "keras", "xgboost", "lightgbm")) == []


def test_the_tf_path_never_imports_torch() -> None:
    code = f"""
    {PLUGINS}
    import pyarrow as pa
    from mlruntime import DataConnector
    dc = DataConnector.from_dataframe(pa.table({{"x": [1.0, 2.0, 3.0, 4.0]}}))
    assert len(list(dc.to_tf_dataset(batch_size=2))) == 2
    """
    assert imported_modules_after(code, ("torch", "xgboost", "lightgbm")) == []


@pytest.mark.parametrize(
    ("module", "estimator", "framework"),
    [
        ("mlruntime_xgboost", "XGBEstimator", "xgboost"),
        ("mlruntime_lightgbm", "LightGBMEstimator", "lightgbm"),
    ],
)
def test_a_gbdt_worker_unpickles_its_job_without_importing_the_framework(
    module: str, estimator: str, framework: str
) -> None:
    # The worker reads its shard ahead while the framework loads (1.5-2 s in a new process,
    # scikit-learn and SciPy with it): that needs a job (trainer, backend) whose unpickling
    # imports none of them.
    code = f"""
    import pickle
    from functools import partial
    from ray import cloudpickle
    from mlruntime.train.gbdt_worker import run_trainer
    from {module} import {estimator}
    est = {estimator}(n_estimators=2)
    job = (partial(run_trainer, est._trainer(), {{"params": {{}}}}), est._backend())
    pickle.loads(cloudpickle.dumps(job))
    """
    assert imported_modules_after(code, (framework, "sklearn", "scipy")) == []
