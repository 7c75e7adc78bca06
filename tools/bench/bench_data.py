"""Benchmark of the data path: one full pass over Parquet, against the limit and Ray Data.

2,000,000 rows x 20 float32 features + int32 label in 8 Parquet files. Every pass reads the
files from disk (nothing is loaded or materialized beforehand) and builds, from ALL feature
columns, the float32 feature matrix a trainer needs. In one run it measures:

- the limit (plain pyarrow + numpy, the fastest idiom): ``pyarrow.parquet.read_table`` of the
  files, then every feature column of every record batch written into one preallocated
  float32 (N, 20) array (plus the label array);
- ours: ``DataConnector.from_sources(folder).to_batches`` at batch 1,024 and 65,536, shuffle
  off and on, each batch's feature columns stacked into a (batch, 20) float32 matrix;
- ours: ``DataConnector.to_torch_dataset`` (when the pytorch plugin provides it), same
  settings, each batch's columns ``torch.stack``-ed;
- Ray Data: ``ray.data.read_parquet(files).iter_batches`` / ``iter_torch_batches`` at the same
  batch sizes and with the same per-batch matrix building, Ray told the real CPU count;
- peak RSS growth of ``to_pandas()`` against the resulting frame's size.

and prints rows/s with ratios (ours / the limit, ours / Ray Data) computed in the same run.
Targets (issue: data layer): shuffle-off >= 0.8x the limit and >= 3x Ray Data at batch 1,024;
shuffle-on >= 0.5x the limit; to_pandas peak <= 2x the frame. Nothing is asserted.

Run: ``.venv/bin/python tools/bench/bench_data.py [--rows N] [--repeat K] [--no-ray]``.
Timings are the best of ``--repeat`` passes; these machines are noisy, compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{i}" for i in range(20)]

FILL_ROWS = 16_384
"""Rows written into the matrix at once by :func:`read_matrix` (a block that stays in cache)."""


def real_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), i.e. what the machine really has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def init_ray(preload: Sequence[str] = ()) -> int:
    """Start (or join) Ray through mlruntime, telling it the real CPU count (and the modules its
    worker processes preload); returns that count."""
    import mlruntime

    cpus = real_cpus()
    mlruntime.init(num_cpus=cpus, preload=list(preload))
    return cpus


def read_matrix(
    paths: Sequence[str], features: Sequence[str], label: str
) -> tuple[np.ndarray, np.ndarray]:
    """Parquet -> (float32 (N, F) matrix built from every feature column, label array).

    The fastest plain pyarrow/numpy idiom: ``read_table`` (multi-threaded), then each record
    batch's columns written into one preallocated C-ordered array, a cache-sized block of rows
    at a time (one copy of the data, against two for ``np.column_stack`` of whole columns).
    """
    table = pq.read_table(list(paths), columns=[*features, label])
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    pos = 0
    for batch in table.to_batches(max_chunksize=FILL_ROWS):
        n = batch.num_rows
        block = x[pos : pos + n]
        for j, name in enumerate(features):
            block[:, j] = batch.column(name).to_numpy(zero_copy_only=False)
        pos += n
    return x, table.column(label).to_numpy()


def make_data(folder: Path, rows: int, files: int = 8) -> list[str]:
    """Write the benchmark table (deterministic) as ``files`` Parquet files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    per = rows // files
    for i in range(files):
        path = folder / f"part-{i:02d}.parquet"
        paths.append(str(path))
        if path.exists():
            continue
        cols = {name: rng.random(per, dtype=np.float32) for name in FEATURES}
        cols["label"] = rng.integers(0, 2, per, dtype=np.int32)
        pq.write_table(pa.table(cols), path, row_group_size=131_072)
    return paths


def best_of(repeat: int, fn: Callable[[], int]) -> tuple[float, int]:
    """Run ``fn`` (returns rows seen) ``repeat`` times; best seconds and the rows."""
    best, rows = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        rows = fn()
        best = min(best, time.perf_counter() - start)
    return best, rows


def consume(batches: Iterable[dict[str, Any]]) -> int:
    """Build each numpy batch's float32 (batch, F) matrix from all feature columns; rows seen."""
    rows, buf = 0, None
    for batch in batches:
        n = len(batch["label"])
        if buf is None or len(buf) != n:
            buf = np.empty((n, len(FEATURES)), dtype=np.float32)
        np.stack([batch[c] for c in FEATURES], axis=1, out=buf)
        rows += n
    return rows


def consume_torch(batches: Iterable[dict[str, Any]]) -> int:
    """As :func:`consume` for batches of torch tensors (``torch.stack`` into one buffer)."""
    import torch

    rows, buf = 0, None
    for batch in batches:
        n = len(batch["label"])
        if buf is None or len(buf) != n:
            buf = torch.empty((n, len(FEATURES)), dtype=torch.float32)
        torch.stack([batch[c] for c in FEATURES], dim=1, out=buf)
        rows += n
    return rows


def limit_pass(paths: list[str]) -> int:
    matrix, _labels = read_matrix(paths, FEATURES, "label")
    return len(matrix)


def pandas_memory(path: str) -> dict[str, float | None]:
    """Peak RSS growth of ``to_pandas()`` (mlruntime's PeakMemory, in a fresh process) vs frame."""
    code = textwrap.dedent(
        f"""
        import gc, json
        from mlruntime import DataConnector
        from mlruntime.train.features import PeakMemory
        dc = DataConnector.from_sources({path!r})
        dc.to_pandas(limit=1000)
        gc.collect()
        memory = PeakMemory()
        df = dc.to_pandas()
        print(json.dumps({{"peak_growth": memory.growth(),
                           "frame": float(df.memory_usage(index=False).sum())}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=None, help="folder to keep the data in")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data baseline")
    args = parser.parse_args()

    folder = args.data or Path(tempfile.gettempdir()) / f"mlruntime-bench-data-{args.rows}"
    paths = make_data(folder, args.rows)
    from mlruntime import DataConnector

    cpus = real_cpus()
    has_torch = "to_torch_dataset" in _adapters()
    print(
        f"data: {args.rows:,} rows x {len(FEATURES)} float32 + int32 label in {len(paths)} "
        f"Parquet files; {cpus} CPUs (Ray is told num_cpus={cpus}); best of {args.repeat}"
    )
    print("what each row runs (every pass reads the files and builds the float32 matrix):")
    print(
        "  limit: pq.read_table(files) -> every feature column into one preallocated "
        "float32 (N, 20) array"
    )
    print(
        "  ours:  DataConnector.from_sources(folder).to_batches(bs, shuffle) "
        "[/ .to_torch_dataset(batch_size=bs, shuffle)] -> per batch np.stack / torch.stack"
    )
    if not args.no_ray:
        print(
            "  Ray:   ray.data.read_parquet(files).iter_batches(batch_size=bs, "
            "batch_format='numpy') [/ .iter_torch_batches(batch_size=bs)] -> same stacking"
        )

    results: dict[str, float] = {}
    limit_s, rows = best_of(args.repeat, lambda: limit_pass(paths))
    results["limit"] = rows / limit_s
    print(f"\n{'pass':<48}{'rows/s':>14}{'x limit':>10}")
    print(
        f"{'limit: read_table + fill one float32 matrix':<48}{results['limit']:>14,.0f}{1:>10.2f}"
    )

    def show(name: str, secs: float, n: int) -> None:
        results[name] = n / secs
        print(f"{name:<48}{results[name]:>14,.0f}{results[name] / results['limit']:>10.2f}")

    dc = DataConnector.from_sources(str(folder))
    for batch_size in (1024, 65536):
        for shuffle in (False, True):
            name = f"to_batches bs={batch_size} shuffle={'on' if shuffle else 'off'}"
            show(
                name,
                *best_of(
                    args.repeat,
                    lambda bs=batch_size, sh=shuffle: consume(
                        dc.to_batches(bs, shuffle=sh, seed=0)
                    ),
                ),
            )
            if has_torch:
                show(
                    name.replace("to_batches", "to_torch_dataset"),
                    *best_of(
                        args.repeat,
                        lambda bs=batch_size, sh=shuffle: consume_torch(
                            dc.to_torch_dataset(batch_size=bs, shuffle=sh, seed=0)
                        ),
                    ),
                )

    if not args.no_ray:
        init_ray()
        import ray.data

        for batch_size in (1024, 65536):
            # Same work as ours: read the Parquet files and hand out batches, every pass.
            show(
                f"ray iter_batches bs={batch_size}",
                *best_of(
                    args.repeat,
                    lambda bs=batch_size: consume(
                        ray.data.read_parquet(paths).iter_batches(
                            batch_size=bs, batch_format="numpy"
                        )
                    ),
                ),
            )
            if has_torch:
                show(
                    f"ray iter_torch_batches bs={batch_size}",
                    *best_of(
                        args.repeat,
                        lambda bs=batch_size: consume_torch(
                            ray.data.read_parquet(paths).iter_torch_batches(batch_size=bs)
                        ),
                    ),
                )

    mem = pandas_memory(str(folder))
    frame = float(mem["frame"] or 0)
    ratio = None if mem["peak_growth"] is None else mem["peak_growth"] / max(frame, 1.0)
    shown = "n/a (no peak-RSS counter here)" if ratio is None else f"{ratio:.2f}"
    print(f"to_pandas peak RSS growth / frame size: {shown} (frame {frame / 2**20:.0f} MiB)")

    print("\nratios (ours / baseline, rows/s; higher is better) and targets:")
    checks: list[tuple[str, float, float | None]] = [
        (
            "to_batches shuffle-off bs=1024 / limit >= 0.8",
            results["to_batches bs=1024 shuffle=off"] / results["limit"],
            0.8,
        ),
        (
            "to_batches shuffle-on bs=1024 / limit >= 0.5",
            results["to_batches bs=1024 shuffle=on"] / results["limit"],
            0.5,
        ),
    ]
    if ratio is not None:
        checks.append(
            ("to_pandas frame / peak RSS growth >= 0.5 (peak <= 2x)", 1 / max(ratio, 1e-9), 0.5)
        )
    for bs in (1024, 65536):
        if f"ray iter_batches bs={bs}" in results:
            checks.append(
                (
                    f"to_batches shuffle-off bs={bs} / Ray iter_batches"
                    + (" >= 3" if bs == 1024 else ""),
                    results[f"to_batches bs={bs} shuffle=off"]
                    / results[f"ray iter_batches bs={bs}"],
                    3.0 if bs == 1024 else None,
                )
            )
        if has_torch and f"ray iter_torch_batches bs={bs}" in results:
            checks.append(
                (
                    f"to_torch_dataset bs={bs} / Ray iter_torch_batches"
                    + (" >= 3" if bs == 1024 else ""),
                    results[f"to_torch_dataset bs={bs} shuffle=off"]
                    / results[f"ray iter_torch_batches bs={bs}"],
                    3.0 if bs == 1024 else None,
                )
            )
    for label, value, target in checks:
        verdict = "" if target is None else ("ok" if value >= target else "MISSED")
        print(f"  {label:<56} {value:6.2f} {verdict}")
    return 0


def _adapters() -> dict[str, object]:
    from mlruntime.plugins.registry import get_registry

    return dict(get_registry().adapters())


if __name__ == "__main__":
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    sys.exit(main())
