"""A small pretrained tabular model shipped with the package, for fine-tuning without downloads.

``TabularMLP`` is a 20 -> 64 -> 64 backbone with a linear head, pretrained on a synthetic
regression task over 20 standard-normal features whose target mixes smooth non-linear functions
of them (:func:`source_task`). Its backbone transfers to tasks built from the same kind of
features (:func:`related_task`). The weights file (``tabular_mlp_20.pt``, 23 KB) is rebuilt,
bit for bit on one machine, by ``python -m mlruntime_pytorch.pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "IN_FEATURES",
    "WEIGHTS",
    "TabularMLP",
    "load_pretrained_tabular_mlp",
    "related_task",
    "source_task",
]

IN_FEATURES = 20
HIDDEN = 64
WEIGHTS = Path(__file__).with_name("tabular_mlp_20.pt")
"""The shipped state dict of a ``TabularMLP(out_features=1)``."""


class TabularMLP(nn.Module):
    """``backbone`` (20 -> 64 -> 64, ReLU) followed by a linear ``head``.

    Args:
        out_features: Outputs of the head.
    """

    def __init__(self, out_features: int = 1) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(IN_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU()
        )
        self.head = nn.Linear(HIDDEN, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``head(backbone(x))`` for a ``(rows, 20)`` float tensor."""
        return self.head(self.backbone(x))


def load_pretrained_tabular_mlp(
    out_features: int = 1, *, freeze_backbone: bool = False
) -> TabularMLP:
    """A ``TabularMLP`` with the shipped pretrained weights (read from the package, no network).

    Args:
        out_features: Outputs of the head; other than 1, the head is new (randomly initialized)
            and only the backbone is pretrained.
        freeze_backbone: Turn off gradients of the backbone (fine-tune the head only).

    Raises:
        FileNotFoundError: If the weights file is missing from the installation.
    """
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    model = TabularMLP(out_features)
    if out_features != 1:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=out_features == 1)
    if freeze_backbone:
        for param in model.backbone.parameters():
            param.requires_grad_(False)
    return model


def _basis(x: np.ndarray) -> np.ndarray:
    """Smooth non-linear functions of the features that both tasks are made of."""
    return np.stack(
        [
            np.sin(x[:, 0] + x[:, 1]),
            np.tanh(x[:, 2] * x[:, 3]),
            np.abs(x[:, 4]) - 0.8,
            np.cos(x[:, 5]) * x[:, 6],
            np.maximum(x[:, 7], 0) - 0.4,
            x[:, 8] * x[:, 9] * 0.5,
        ],
        axis=1,
    ).astype(np.float32)


def source_task(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of the pretraining task: 20 features, target a mix of :func:`_basis`."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, IN_FEATURES)).astype(np.float32)
    y = _basis(x) @ np.array([1.0, 1.5, -1.0, 0.8, 1.2, -0.6], dtype=np.float32)
    return x, y.astype(np.float32)


def related_task(rows: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of a downstream task: the same basis, other weights and an offset."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, IN_FEATURES)).astype(np.float32)
    y = _basis(x) @ np.array([-0.7, 1.0, 1.4, -1.1, 0.5, 0.9], dtype=np.float32) + 0.3
    return x, y.astype(np.float32)


def pretrain(rows: int = 50_000, epochs: int = 30, seed: int = 0) -> dict[str, Any]:
    """Train ``TabularMLP`` on :func:`source_task` and return its state dict."""
    torch.manual_seed(seed)
    x, y = source_task(rows, seed)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)[:, None]
    model = TabularMLP(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(rows, generator=generator).split(256):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(tx[idx]), ty[idx])
            loss.backward()
            optimizer.step()
    return model.state_dict()


if __name__ == "__main__":  # pragma: no cover - rebuilds the shipped weights
    torch.save(pretrain(), WEIGHTS)
    print(f"wrote {WEIGHTS} ({WEIGHTS.stat().st_size} bytes)")
