"""Fine-tune a pretrained torch model on a warehouse table with PyTorchDistributor, then score
the table with it into another table.

The model (``mlruntime_pytorch.pretrained``) ships with the plugin, so nothing is downloaded.
Run: ``.venv/bin/python examples/pytorch_finetune.py`` (embedded Ray + DuckDB, 2 workers).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlruntime import DataConnector, DuckDBTableSink, Session, ShardedDataConnector, get_context
from mlruntime_pytorch import (
    PyTorchDistributor,
    PyTorchScalingConfig,
    WorkerResourceConfig,
    batch_inference,
)
from mlruntime_pytorch.pretrained import IN_FEATURES, load_pretrained_tabular_mlp, related_task

FEATURES = [f"f{i}" for i in range(IN_FEATURES)]


def finetune(config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every worker: DDP fine-tuning of the pretrained model on this rank's shard."""
    ctx = get_context()
    torch.manual_seed(config["seed"])
    model = load_pretrained_tabular_mlp()
    model.head.reset_parameters()  # a new task: keep the backbone, learn a fresh head
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=config["lr"])
    data = ctx.get_dataset_map()["train"].to_torch_dataset(
        batch_size=config["batch_size"], shuffle=True, seed=config["seed"]
    )
    for epoch in range(config["epochs"]):
        total, batches = 0.0, 0
        for batch in data:
            x = torch.cat([batch[name] for name in FEATURES], dim=1)  # (B, 1) columns
            loss = torch.nn.functional.mse_loss(ddp(x), batch["target"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        ctx.report({"epoch": epoch, "train_mse": total / max(1, batches)})
    if ctx.get_rank() == 0:
        torch.save(model.state_dict(), Path(ctx.get_model_dir()) / "finetuned.pt")
    return {"batches_per_epoch": batches}


def main(rows: int = 4000, workers: int = 2, epochs: int = 3, folder: str | None = None) -> dict:
    """Fine-tune on ``rows`` rows of a related task; return the metrics and scores."""
    folder = folder or tempfile.mkdtemp(prefix="mlruntime-finetune-")
    session = Session(Path(folder) / "warehouse.duckdb")
    x, y = related_task(rows, seed=1)
    session.create_table("train", {**{n: x[:, i] for i, n in enumerate(FEATURES)}, "target": y})
    xv, yv = related_task(1000, seed=5)
    session.create_table(
        "holdout",
        {"id": np.arange(1000), **{n: xv[:, i] for i, n in enumerate(FEATURES)}, "target": yv},
    )
    scaling = PyTorchScalingConfig(
        num_nodes=1,
        num_workers_per_node=workers,
        resource_requirements_per_worker=WorkerResourceConfig(num_cpus=1, num_gpus=0),
    )
    result = PyTorchDistributor(finetune, scaling, verbose=False).run(
        dataset_map={"train": ShardedDataConnector.from_dataframe(session.table("train"))},
        hyper_params={"lr": 3e-3, "epochs": epochs, "batch_size": 64, "seed": 0},
        artifact_location=Path(folder) / "run",
    )
    model = load_pretrained_tabular_mlp()
    model.load_state_dict(torch.load(Path(result.get_model_dir()) / "finetuned.pt"))
    scored = batch_inference(
        model,
        DataConnector.from_dataframe(session.table("holdout")),
        DuckDBTableSink("holdout_scored", session=session),
        FEATURES,
        key_cols=["id"],
        scaling_config=scaling,
        verbose=False,
    )
    joined = session.sql(
        "SELECT avg((s.prediction - h.target) ^ 2) AS mse, count(*) AS n FROM holdout_scored s "
        "JOIN holdout h USING (id)"
    ).fetchall()[0]
    return {
        "history": result.get_metrics_history(),
        "holdout_mse": float(joined[0]),
        "scored_rows": int(joined[1]),
        "scored_table": scored,
        "model_dir": result.get_model_dir(),
        "batches_per_epoch": result.return_values[0]["batches_per_epoch"],
    }


if __name__ == "__main__":
    out = main()
    for row in out["history"]:
        print(f"epoch {row['epoch']}: train mse {row['train_mse']:.4f}")
    print(f"holdout mse {out['holdout_mse']:.4f} over {out['scored_rows']} scored rows")
