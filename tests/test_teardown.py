"""Ctrl-C (SIGINT to the driver) during a job of each trainer leaves nothing behind: no worker
actor, no job-state actor, no placement group, no reserved CPU; the next job runs at once."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from mlruntime.testing import run_for_result

DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path

    import numpy as np
    import pandas as pd

    import mlruntime
    from mlruntime import DataConnector, Distributor, ScalingConfig, WorkerResourceConfig

    kind, marker = sys.argv[1], Path(sys.argv[2])
    mlruntime.init(num_cpus=2)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.random((2000, 4)), columns=["a", "b", "c", "d"])
    frame["y"] = frame.sum(axis=1)

    def touch(*_args):
        marker.touch()  # runs on a worker: training has started

    def interrupt_when_training():
        while not marker.exists():
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    def loop_forever():
        touch()
        while True:
            time.sleep(0.05)

    threading.Thread(target=interrupt_when_training, daemon=True).start()
    started = time.perf_counter()
    try:
        if kind == "xgboost":
            import xgboost as xgb
            from mlruntime_xgboost import XGBEstimator, XGBScalingConfig

            class Touch(xgb.callback.TrainingCallback):
                def after_iteration(self, model, epoch, evals_log):
                    touch()
                    return False

            XGBEstimator(
                n_estimators=1_000_000, scaling_config=XGBScalingConfig(2, 1),
                callbacks=[Touch()], verbose=False,
            ).fit(frame, None, "y")
        elif kind == "lightgbm":
            from mlruntime_lightgbm import LightGBMEstimator, LightGBMScalingConfig

            LightGBMEstimator(
                n_estimators=1_000_000, scaling_config=LightGBMScalingConfig(2, 1),
                callbacks=[touch], verbose=False,
            ).fit(frame, None, "y")
        elif kind == "pytorch":
            from mlruntime_pytorch import PyTorchDistributor, PyTorchScalingConfig

            scaling = PyTorchScalingConfig(1, 2, WorkerResourceConfig(num_cpus=1, num_gpus=0))
            PyTorchDistributor(loop_forever, scaling, verbose=False).run()
        elif kind == "tensorflow":
            from mlruntime_tensorflow import TensorFlowDistributor, TFScalingConfig

            scaling = TFScalingConfig(1, 2, WorkerResourceConfig(num_cpus=1, num_gpus=0))
            TensorFlowDistributor(loop_forever, scaling, verbose=False).run()
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "interrupted"
    interrupted_after = time.perf_counter() - started

    import ray
    from ray._private import state as gcs

    waited = time.perf_counter()
    while True:  # kills are asynchronous: give the GCS a moment to record them
        actors = [a for a in gcs.actors().values() if a["State"] != "DEAD"]
        groups = [
            g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"
        ]
        free = ray.available_resources().get("CPU", 0)
        if (not actors and not groups and free == 2) or time.perf_counter() - waited > 20:
            break
        time.sleep(0.1)
    released_after = time.perf_counter() - waited
    second = time.perf_counter()
    ranks = Distributor(
        ScalingConfig(num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=1)),
        verbose=False,
    ).run(lambda: mlruntime.get_context().get_rank()).return_values
    print("RESULT" + json.dumps({
        "outcome": outcome,
        "interrupted_after": interrupted_after,
        "alive_actors": [a["ActorClassName"] for a in actors],
        "placement_groups": len(groups),
        "free_cpus": free,
        "released_after": released_after,
        "second_job_ranks": ranks,
        "second_job_seconds": time.perf_counter() - second,
    }), flush=True)
    """
)


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm", "pytorch", "tensorflow"])
def test_ctrl_c_during_a_job_leaves_no_actor_no_placement_group(kind: str, tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "MLRUNTIME_HOME": str(tmp_path / "home"), "MLRUNTIME_KEEP_WARM_S": "0"}
    env.pop("RAY_ADDRESS", None)
    result = json.loads(
        run_for_result(
            [sys.executable, str(script), kind, str(tmp_path / "training-started")], env, 240
        )
    )
    print(kind, result)  # timings, for the record (never asserted)
    assert result["outcome"] == "interrupted"
    assert result["alive_actors"] == []
    assert result["placement_groups"] == 0
    assert result["free_cpus"] == 2
    assert result["second_job_ranks"] == [0, 1]
