"""Fine-tuning the shipped pretrained model through the distributor (the example, run for real)
and batch inference of a torch model into sinks, all or nothing."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mlruntime import DataConnector, ParquetSink
from mlruntime.errors import ColumnError, ConfigError, WorkerError
from mlruntime.testing import load_module_from_path
from mlruntime_pytorch import PyTorchScalingConfig, WorkerResourceConfig, batch_inference
from mlruntime_pytorch.pretrained import (
    WEIGHTS,
    TabularMLP,
    load_pretrained_tabular_mlp,
    related_task,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "pytorch_finetune.py"
TWO = PyTorchScalingConfig(
    num_nodes=1,
    num_workers_per_node=2,
    resource_requirements_per_worker=WorkerResourceConfig(num_cpus=1, num_gpus=0),
)


def load_example() -> ModuleType:
    return load_module_from_path(EXAMPLE, "pytorch_finetune_example")


def scratch_holdout_mse(epochs: int) -> float:
    """The same budget on one process from random weights: what pretraining must beat."""
    torch.manual_seed(0)
    x, y = related_task(4000, seed=1)
    xv, yv = related_task(1000, seed=5)
    model = TabularMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(tx[idx])[:, 0], ty[idx]).backward()
            optimizer.step()
    with torch.no_grad():
        pred = model(torch.from_numpy(xv))[:, 0].numpy()
    return float(np.mean((pred - yv) ** 2))


def test_pretrained_weights_ship_with_the_package() -> None:
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 64 * 1024
    model = load_pretrained_tabular_mlp()
    shipped = torch.load(WEIGHTS, weights_only=True)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, shipped[name])
    frozen = load_pretrained_tabular_mlp(3, freeze_backbone=True)
    assert frozen.head.out_features == 3
    assert not any(p.requires_grad for p in frozen.backbone.parameters())


def test_example_finetunes_the_pretrained_model_on_a_table(
    ray_cluster: None, tmp_path: Path
) -> None:
    out = load_example().main(rows=4000, workers=2, epochs=3, folder=str(tmp_path))
    history = out["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["train_mse"] < history[0]["train_mse"]
    assert out["batches_per_epoch"] == 2000 // 64  # each rank trained on its half
    assert out["scored_rows"] == 1000  # batch inference wrote every holdout row
    assert (Path(out["model_dir"]) / "finetuned.pt").is_file()
    # Starting from the shipped backbone beats random weights with the same budget by far.
    assert out["holdout_mse"] < 0.5 * scratch_holdout_mse(epochs=3)


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True) * 2


class FailsOnBigValues(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 900).any()):
            raise ValueError("value out of range for this model")
        return x[:, :1]


@pytest.fixture
def frame_dc() -> DataConnector:
    import pandas as pd

    ids = np.arange(1000)
    return DataConnector.from_dataframe(
        pd.DataFrame({"id": ids, "a": ids.astype(np.float32), "b": np.ones(1000, np.float32)})
    )


def test_batch_inference_scores_every_row_on_the_workers(
    ray_cluster: None, frame_dc: DataConnector, tmp_path: Path
) -> None:
    target = tmp_path / "scores"
    batch_inference(
        Doubler(),
        frame_dc,
        ParquetSink(target),
        ["a", "b"],
        key_cols=["id"],
        batch_size=128,
        scaling_config=TWO,
        verbose=False,
    )
    parts = sorted(target.glob("*.parquet"))
    assert len(parts) == 2  # one part per worker, committed together
    table = pq.read_table(target).sort_by("id")
    assert table.column("id").to_pylist() == list(range(1000))
    np.testing.assert_allclose(table.column("prediction").to_numpy(), (np.arange(1000) + 1) * 2)


def test_batch_inference_failure_leaves_the_sink_untouched(
    ray_cluster: None, frame_dc: DataConnector, tmp_path: Path
) -> None:
    target = tmp_path / "scores"
    batch_inference(
        Doubler(), frame_dc, ParquetSink(target), ["a", "b"], scaling_config=TWO, verbose=False
    )
    before = pq.read_table(target)
    with pytest.raises(WorkerError, match="value out of range for this model"):
        batch_inference(
            FailsOnBigValues(),
            frame_dc,
            ParquetSink(target, mode="overwrite"),
            ["a", "b"],
            scaling_config=TWO,
            verbose=False,
        )
    assert pq.read_table(target).equals(before)  # rank 0 succeeded, yet nothing was written


def test_batch_inference_refuses_bad_input(frame_dc: DataConnector, tmp_path: Path) -> None:
    with pytest.raises(ColumnError, match="'ghost' is not in the data"):
        batch_inference(Doubler(), frame_dc, ParquetSink(tmp_path / "x"), ["a", "ghost"])
    with pytest.raises(ConfigError, match=r"model must be a torch\.nn\.Module or a factory"):
        batch_inference("model.pt", frame_dc, ParquetSink(tmp_path / "x"), ["a"])
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        batch_inference(Doubler(), frame_dc, ParquetSink(tmp_path / "x"), ["a"], batch_size=0)
