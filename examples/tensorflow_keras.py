"""Train a Keras model on 2 workers from a warehouse table with TensorFlowDistributor, resuming
from the last epoch checkpoint if a worker dies, then score a holdout table with it.

``tf.distribute.MultiWorkerMirroredStrategy`` forms the cluster from the ``TF_CONFIG`` every
worker gets; each worker reads only its own shard of the table through ``to_tf_dataset``.
Run: ``.venv/bin/python examples/tensorflow_keras.py`` (embedded Ray + DuckDB).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mlruntime import (
    Checkpoint,
    DataConnector,
    FailureConfig,
    ParquetSink,
    Session,
    ShardedDataConnector,
    get_context,
)
from mlruntime_tensorflow import (
    TensorFlowDistributor,
    TFScalingConfig,
    WorkerResourceConfig,
    batch_inference,
)

FEATURES = [f"x{i}" for i in range(8)]
WEIGHTS = np.linspace(-1.0, 1.0, len(FEATURES)).astype(np.float32)


def make_model() -> Any:
    """A small regression MLP on a (rows, 8) float32 matrix."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((len(FEATURES),)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def train_func(config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every worker: multi-worker Keras training on this rank's shard."""
    import keras
    import tensorflow as tf

    ctx = get_context()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # joins the workers in TF_CONFIG
    data = ctx.get_dataset_map()["train"].to_tf_dataset(
        batch_size=config["batch_size"], label_cols="y", shuffle=True, seed=0
    )
    data = data.map(lambda x, y: (tf.stack([x[c] for c in FEATURES], axis=1), y))
    with strategy.scope():
        model = make_model()
    start = 0
    checkpoint = ctx.get_checkpoint()
    if checkpoint is not None:  # a worker died: resume after the last finished epoch
        folder = checkpoint.to_directory()
        model.load_weights(folder / "model.weights.h5")
        start = int((folder / "epoch.txt").read_text()) + 1

    class Report(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            die_at = config.get("kill_rank_1_at_epoch")
            if die_at == epoch and ctx.get_attempt() == 0 and ctx.get_rank() == 1:
                os.kill(os.getpid(), 9)  # what a lost node looks like to the job

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            folder = Path(tempfile.mkdtemp(prefix="keras-ckpt-"))
            model.save_weights(folder / "model.weights.h5")
            (folder / "epoch.txt").write_text(str(epoch))
            metrics = {"epoch": epoch, "loss": float(logs["loss"])}
            ctx.report(metrics, checkpoint=Checkpoint.from_directory(folder))

    model.fit(data, epochs=config["epochs"], initial_epoch=start, verbose=0, callbacks=[Report()])
    if ctx.get_rank() == 0:
        model.save(Path(ctx.get_model_dir()) / "model.keras")
    return {"weights": [w.tolist() for w in model.get_weights()], "started_at_epoch": start}


def main(
    rows: int = 4000,
    epochs: int = 4,
    folder: str | None = None,
    kill_rank_1_at_epoch: int | None = None,
) -> dict[str, Any]:
    """Train on ``rows`` rows of a warehouse table on 2 workers; return metrics and scores."""
    folder = folder or tempfile.mkdtemp(prefix="mlruntime-keras-")
    session = Session(Path(folder) / "warehouse.duckdb")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows + 1000, len(FEATURES))).astype(np.float32)
    y = x @ WEIGHTS + 0.5
    columns = {"id": np.arange(len(x)), **{n: x[:, i] for i, n in enumerate(FEATURES)}, "y": y}
    session.create_table("samples", columns)
    train = ShardedDataConnector.from_sql(
        f"SELECT * FROM samples WHERE id < {rows}", session=session
    )
    holdout = DataConnector.from_sql(f"SELECT * FROM samples WHERE id >= {rows}", session=session)
    scaling = TFScalingConfig(
        num_nodes=1,
        num_workers_per_node=2,
        resource_requirements_per_worker=WorkerResourceConfig(num_cpus=1, num_gpus=0),
    )
    result = TensorFlowDistributor(
        train_func, scaling, FailureConfig(max_failures=1), verbose=False
    ).run(
        dataset_map={"train": train},
        hyper_params={
            "epochs": epochs,
            "batch_size": 64,
            "kill_rank_1_at_epoch": kill_rank_1_at_epoch,
        },
        artifact_location=Path(folder) / "run",
    )
    import keras

    model = keras.saving.load_model(Path(result.get_model_dir()) / "model.keras")
    scores = batch_inference(
        model,
        holdout,
        ParquetSink(Path(folder) / "scores"),
        FEATURES,
        key_cols=["id", "y"],
        scaling_config=scaling,
        verbose=False,
    )
    import pyarrow.parquet as pq

    scored = pq.read_table(scores)
    error = scored.column("prediction").to_numpy() - scored.column("y").to_numpy()
    return {
        "result": result,
        "holdout_mse": float(np.mean(error**2)),
        "scored_rows": scored.num_rows,
    }


if __name__ == "__main__":
    out = main()
    for row in out["result"].get_metrics_history():
        print(f"epoch {row['epoch']}: loss {row['loss']:.4f}")
    print(f"holdout mse {out['holdout_mse']:.4f} over {out['scored_rows']} scored rows")
