"""Benchmark: batches from ``to_torch_dataset`` to the training device, against the limit.

1,000,000 rows x 20 float32 features + a label in 4 Parquet files (bench_xgboost's data),
batches of 4,096 rows, one process; each batch is consumed by a small step on the device
(``(x @ w).sum() + y.sum()``, w a 20 x 256 matrix), and the device is synchronised at the end:

- the limit: the files read once into one float32 ``(N, 20)`` tensor and a label tensor, pinned
  (on a GPU), then batches sliced off and copied with ``.to(device, non_blocking=True)`` (the
  read is timed apart and not counted);
- ours, matrix: ``to_torch_dataset(batch_size=4096, input_cols=FEATURES, label_col="label",
  device=device, pin_memory=True)`` — the files are read during the loop;
- ours, dict batches + ``torch.stack``: what a training loop did before ``input_cols``
  (``to_torch_dataset(batch_size=4096)``, ``torch.stack([b[c] for c in FEATURES], 1)``,
  ``.to(device)``).

Ratios are samples/s over the limit's, from the same run. The target (issue: speed) is >= 0.7x
the limit on a GPU. Without a CUDA GPU the device is the CPU (the output says so): then there
is no copy to overlap and the figures measure batch assembly only. Nothing is asserted.

Run: ``.venv/bin/python tools/bench/bench_torch_device.py [--rows N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_data import read_matrix
from bench_xgboost import FEATURES, make_data

BATCH = 4096


def consume(x: Any, y: Any, w: Any) -> Any:
    return (x @ w).sum() + y.sum()


def limit(paths: list[str], device: Any, w: Any) -> tuple[float, float, int]:
    import torch

    start = time.perf_counter()
    matrix, labels = read_matrix(paths, FEATURES, "label")
    x, y = torch.from_numpy(matrix), torch.from_numpy(labels)
    if device.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    read_s = time.perf_counter() - start
    total = torch.zeros((), device=device)
    start = time.perf_counter()
    rows = len(y) // BATCH * BATCH
    for i in range(0, rows, BATCH):
        xb = x[i : i + BATCH].to(device, non_blocking=True)
        yb = y[i : i + BATCH].to(device, non_blocking=True)
        total += consume(xb, yb, w)
    float(total)  # synchronises
    return read_s, time.perf_counter() - start, rows


def ours_matrix(folder: Path, device: Any, w: Any) -> tuple[float, int]:
    import torch

    from mlruntime import DataConnector

    ds = DataConnector.from_sources(str(folder)).to_torch_dataset(
        batch_size=BATCH,
        input_cols=FEATURES,
        label_col="label",
        expand_dims=False,
        device=device,
        pin_memory=True,
    )
    total = torch.zeros((), device=device)
    rows = 0
    start = time.perf_counter()
    for xb, yb in ds:
        total += consume(xb, yb, w)
        rows += len(yb)
    float(total)
    return time.perf_counter() - start, rows


def ours_stack(folder: Path, device: Any, w: Any) -> tuple[float, int]:
    import torch

    from mlruntime import DataConnector

    ds = DataConnector.from_sources(str(folder)).to_torch_dataset(
        batch_size=BATCH, expand_dims=False
    )
    total = torch.zeros((), device=device)
    rows = 0
    start = time.perf_counter()
    for batch in ds:
        xb = torch.stack([batch[c] for c in FEATURES], 1).to(device)
        yb = batch["label"].to(device)
        total += consume(xb, yb, w)
        rows += len(yb)
    float(total)
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    w = torch.randn(len(FEATURES), 256, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        paths = make_data(folder, args.rows)
        ours_matrix(folder, device, w)  # warm the page cache and torch's kernels once
        read_s, limit_s, rows = limit(paths, device, w)
        matrix_s, matrix_rows = ours_matrix(folder, device, w)
        stack_s, stack_rows = ours_stack(folder, device, w)
    base = rows / limit_s
    where = (
        f"GPU {torch.cuda.get_device_name(0)}"
        if device.type == "cuda"
        else "CPU (no CUDA GPU here: no copy to overlap; batch assembly only)"
    )
    print(f"{args.rows:,} rows x {len(FEATURES)}, batches of {BATCH}, device: {where}")
    print(
        f"  {'limit: pinned tensor sliced + copied':38s} {base:12,.0f} rows/s "
        f"(read apart: {read_s:.2f} s)"
    )
    for label, seconds, n in (
        ("ours: input_cols + device + pin_memory", matrix_s, matrix_rows),
        ("ours: dict batches + torch.stack", stack_s, stack_rows),
    ):
        speed = n / seconds
        print(f"  {label:38s} {speed:12,.0f} rows/s ({speed / base:4.2f}x the limit)")
    print("  target: ours (input_cols) >= 0.7x the limit on a GPU")


if __name__ == "__main__":
    main()
