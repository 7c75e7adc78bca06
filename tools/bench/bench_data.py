"""Benchmark of the data path: one full pass over Parquet, against the limit and Ray Data.

2,000,000 rows x 20 float32 features + int32 label in 8 Parquet files. In one run it measures:

- the limit: ``pyarrow.parquet.read_table`` + conversion to one numpy array;
- ``DataConnector.to_batches`` at batch 1,024 and 65,536, shuffle off and on;
- ``DataConnector.to_torch_dataset`` (when the pytorch plugin provides it), same settings;
- Ray Data ``iter_batches`` / ``iter_torch_batches`` at the same batch sizes;
- peak RSS of ``to_pandas()`` against the resulting frame's size.

and prints rows/s with ratios. Targets (issue: data layer): shuffle-off >= 0.8x the limit and
>= 3x Ray Data at batch 1,024; shuffle-on >= 0.5x the limit; to_pandas peak <= 2x the frame.

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
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{i}" for i in range(20)]


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


def consume(batches: Iterable[dict[str, object]]) -> int:
    rows = 0
    for batch in batches:
        label = batch["label"]
        rows += len(label)  # type: ignore[arg-type]
    return rows


def limit_pass(paths: list[str]) -> int:
    table = pq.read_table(paths)
    matrix = np.column_stack([table.column(c).to_numpy() for c in FEATURES])
    labels = table.column("label").to_numpy()
    return int(len(matrix) + 0 * len(labels))


def pandas_memory(path: str) -> dict[str, float]:
    """Peak RSS growth of ``to_pandas()`` (Linux VmHWM, reset before the call) vs frame size."""
    code = textwrap.dedent(
        f"""
        import gc, json, psutil
        from mlruntime import DataConnector
        dc = DataConnector.from_sources({path!r})
        dc.to_pandas(limit=1000)
        gc.collect()
        open("/proc/self/clear_refs", "w").write("5")
        base = psutil.Process().memory_info().rss
        df = dc.to_pandas()
        peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                    if l.startswith("VmHWM:"))
        print(json.dumps({{"peak_growth": peak - base,
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

    results: dict[str, float] = {}
    limit_s, rows = best_of(args.repeat, lambda: limit_pass(paths))
    results["limit"] = rows / limit_s
    print(f"data: {rows:,} rows x {len(FEATURES)} float32 + label in {len(paths)} files")
    print(f"{'pass':<48}{'rows/s':>14}{'x limit':>10}")
    print(f"{'limit: read_table + one numpy array':<48}{results['limit']:>14,.0f}{1:>10.2f}")

    dc = DataConnector.from_sources(str(folder))
    has_torch = "to_torch_dataset" in _adapters()
    for batch_size in (1024, 65536):
        for shuffle in (False, True):
            name = f"to_batches bs={batch_size} shuffle={'on' if shuffle else 'off'}"
            secs, n = best_of(
                args.repeat,
                lambda bs=batch_size, sh=shuffle: consume(dc.to_batches(bs, shuffle=sh, seed=0)),
            )
            results[name] = n / secs
            print(f"{name:<48}{results[name]:>14,.0f}{results[name] / results['limit']:>10.2f}")
            if has_torch:
                tname = name.replace("to_batches", "to_torch_dataset")
                secs, n = best_of(
                    args.repeat,
                    lambda bs=batch_size, sh=shuffle: consume(
                        dc.to_torch_dataset(batch_size=bs, shuffle=sh, seed=0)
                    ),
                )
                results[tname] = n / secs
                ratio = results[tname] / results["limit"]
                print(f"{tname:<48}{results[tname]:>14,.0f}{ratio:>10.2f}")

    if not args.no_ray:
        import mlruntime

        mlruntime.init()
        import ray.data

        cached = ray.data.read_parquet(paths).materialize()
        for batch_size in (1024, 65536):
            # Same work as ours: read the Parquet files and hand out batches, every pass.
            name = f"ray iter_batches bs={batch_size}"
            secs, n = best_of(
                args.repeat,
                lambda bs=batch_size: consume(
                    ray.data.read_parquet(paths).iter_batches(batch_size=bs, batch_format="numpy")
                ),
            )
            results[name] = n / secs
            print(f"{name:<48}{results[name]:>14,.0f}{results[name] / results['limit']:>10.2f}")
            name = f"ray iter_batches (materialized) bs={batch_size}"
            secs, n = best_of(
                args.repeat,
                lambda bs=batch_size: consume(
                    cached.iter_batches(batch_size=bs, batch_format="numpy")
                ),
            )
            results[name] = n / secs
            print(f"{name:<48}{results[name]:>14,.0f}{results[name] / results['limit']:>10.2f}")
            if has_torch:
                tname = f"ray iter_torch_batches bs={batch_size}"
                secs, n = best_of(
                    args.repeat,
                    lambda bs=batch_size: consume(
                        ray.data.read_parquet(paths).iter_torch_batches(batch_size=bs)
                    ),
                )
                results[tname] = n / secs
                ratio = results[tname] / results["limit"]
                print(f"{tname:<48}{results[tname]:>14,.0f}{ratio:>10.2f}")

    mem = pandas_memory(str(folder))
    ratio = mem["peak_growth"] / mem["frame"]
    frame_mib = mem["frame"] / 2**20
    print(f"to_pandas peak RSS growth / frame size: {ratio:.2f} (frame {frame_mib:.0f} MiB)")

    print("\ntargets:")
    checks = [
        (
            "shuffle-off bs=1024 >= 0.8x limit",
            results["to_batches bs=1024 shuffle=off"] / results["limit"],
            0.8,
        ),
        (
            "shuffle-on bs=1024 >= 0.5x limit",
            results["to_batches bs=1024 shuffle=on"] / results["limit"],
            0.5,
        ),
        ("to_pandas frame / peak RSS growth >= 0.5 (peak <= 2x)", 1 / max(ratio, 1e-9), 0.5),
    ]
    if "ray iter_batches bs=1024" in results:
        checks.append(
            (
                "shuffle-off bs=1024 >= 3x Ray Data",
                results["to_batches bs=1024 shuffle=off"] / results["ray iter_batches bs=1024"],
                3.0,
            )
        )
    if has_torch and "ray iter_torch_batches bs=1024" in results:
        checks.append(
            (
                "to_torch_dataset bs=1024 >= 3x Ray iter_torch_batches",
                results["to_torch_dataset bs=1024 shuffle=off"]
                / results["ray iter_torch_batches bs=1024"],
                3.0,
            )
        )
    for label, value, target in checks:
        print(f"  {label:<52} {value:6.2f} {'ok' if value >= target else 'MISSED'}")
    return 0


def _adapters() -> dict[str, object]:
    from mlruntime.plugins import get_registry

    return dict(get_registry().adapters())


if __name__ == "__main__":
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    sys.exit(main())
