"""TensorFlowDistributor on a real Ray: TF_CONFIG per rank, the Keras reference example (2
workers, MultiWorkerMirroredStrategy, a DuckDB table, a killed worker resuming from its epoch
checkpoint, batch inference to a sink), and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from mlruntime import ShardedDataConnector, get_context
from mlruntime.errors import ConfigError
from mlruntime.testing import load_module_from_path
from mlruntime_tensorflow import TensorFlowDistributor, TFScalingConfig, WorkerResourceConfig

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tensorflow_keras.py"
TWO = TFScalingConfig(
    num_nodes=1,
    num_workers_per_node=2,
    resource_requirements_per_worker=WorkerResourceConfig(num_cpus=1, num_gpus=0),
)


def load_example() -> ModuleType:
    return load_module_from_path(EXAMPLE, "tensorflow_keras_example")


def read_tf_config() -> dict[str, Any]:
    ctx = get_context()
    shard = ctx.get_dataset_map()["train"]
    return {
        "tf_config": json.loads(os.environ["TF_CONFIG"]),
        "threads": os.environ["TF_NUM_INTRAOP_THREADS"],
        "rows": shard.count_rows(),
        "pid": os.getpid(),
    }


def test_every_worker_gets_the_cluster_in_tf_config(ray_cluster: None, tmp_path: Path) -> None:
    data = ShardedDataConnector.from_dataframe({"x": np.arange(101.0)})
    result = TensorFlowDistributor(read_tf_config, TWO, verbose=False).run(
        dataset_map={"train": data}, artifact_location=tmp_path
    )
    r0, r1 = result.return_values
    workers = r0["tf_config"]["cluster"]["worker"]
    assert r1["tf_config"]["cluster"]["worker"] == workers and len(set(workers)) == 2
    assert [r0["tf_config"]["task"], r1["tf_config"]["task"]] == [
        {"type": "worker", "index": 0},
        {"type": "worker", "index": 1},
    ]
    assert all(w.startswith("127.0.0.1:") for w in workers)
    assert r0["threads"] == "1" and r0["rows"] == r1["rows"] == 50  # equal shards
    again = TensorFlowDistributor(read_tf_config, TWO, verbose=False).run(
        dataset_map={"train": data}, artifact_location=tmp_path / "again"
    )
    # TensorFlow cannot join a second cluster in one process: every job gets fresh workers.
    assert {r["pid"] for r in again.return_values}.isdisjoint({r0["pid"], r1["pid"]})


@pytest.mark.timeout(400)
def test_keras_on_two_workers_from_a_table_survives_a_killed_worker(
    ray_cluster: None, tmp_path: Path
) -> None:
    out = load_example().main(rows=4000, epochs=4, folder=str(tmp_path), kill_rank_1_at_epoch=2)
    result = out["result"]
    assert len(result.attempts) == 1 and "rank 1: process died" in str(result.attempts[0])
    assert [v["started_at_epoch"] for v in result.return_values] == [2, 2]  # after epoch 1
    assert [m["epoch"] for m in result.get_metrics_history()] == [2, 3]
    w0, w1 = (v["weights"] for v in result.return_values)
    for a, b in zip(w0, w1, strict=True):  # MultiWorkerMirroredStrategy kept them in sync
        np.testing.assert_allclose(a, b, rtol=1e-5)
    assert Path(result.get_checkpoint_location() or "").joinpath("model.weights.h5").is_file()
    assert (Path(result.get_model_dir()) / "model.keras").is_file()
    assert out["scored_rows"] == 1000  # batch inference of the Keras model to a sink
    assert out["holdout_mse"] < 0.05  # target variance is ~3; the model learned it


def test_bad_input_is_refused_before_workers_start() -> None:
    with pytest.raises(ConfigError, match="train_func must be callable"):
        TensorFlowDistributor(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scaling_config must be a TFScalingConfig"):
        TensorFlowDistributor(read_tf_config, scaling_config=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"dataset_map\['train'\] is a list"):
        TensorFlowDistributor(read_tf_config, TWO).run(dataset_map={"train": [1, 2]})
    with pytest.raises(ConfigError, match="num_nodes must be a positive integer"):
        TFScalingConfig(num_nodes=0)


def test_keras_shim_applies_once_and_only_where_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    from keras.src.backend.tensorflow import trainer

    from mlruntime_tensorflow import keras_compat

    assert keras_compat.patch_keras_multi_worker() is True
    patched = trainer.reduce_per_replica
    assert patched.__module__ == keras_compat.__name__
    assert trainer.TensorFlowTrainer._maybe_symbolic_build.__module__ == keras_compat.__name__
    assert keras_compat.patch_keras_multi_worker() is True and trainer.reduce_per_replica is patched
    monkeypatch.setattr(keras_compat, "_patched", False)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert keras_compat.patch_keras_multi_worker() is False
