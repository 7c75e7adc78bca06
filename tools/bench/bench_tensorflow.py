"""Benchmark of the tf.data path: ``to_tf_dataset`` vs in-memory tf.data and Ray Data, one run.

2,000,000 rows x 20 float32 + int32 label in 8 Parquet files (bench_data's data), one full
pass at batch 1,024 of ``(features, label)`` elements, each batch touched from Python:

- ours: ``DataConnector.from_sources(folder).to_tf_dataset(batch_size=1024,
  label_cols="label")`` (features a dict of columns; reads the files during the pass);
- the limit, the fastest plain tf.data idiom: ONE
  ``tf.data.Dataset.from_tensor_slices((features, label)).batch(1024).prefetch(AUTOTUNE)``
  built once over numpy arrays already in memory, tried with features as one float32 (N, 20)
  array and as a dict of column arrays; the faster counts (and is named in the output).
  Reading the files into those arrays is timed separately and printed, not counted;
- Ray Data: ``ray.data.read_parquet(files).to_tf(FEATURES, "label", batch_size=1024)`` (reads
  the files during the pass), Ray told the machine's real CPU count.

Prints rows/s and ratios ours / baseline from the same run. Targets (issue: TensorFlow
plugin): ours >= 0.7x the in-memory limit, >= 2x Ray Data. Nothing is asserted.

Run: ``.venv/bin/python tools/bench/bench_tensorflow.py [--rows N] [--repeat K] [--no-ray]``.
Timings are the best of ``--repeat`` passes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_data import FEATURES, best_of, init_ray, make_data, read_matrix, real_cpus

BATCH = 1024


def full_pass(dataset: Any) -> int:
    rows = 0
    for _, label in dataset:
        rows += int(label.shape[0])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data baseline")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    folder = Path(tempfile.gettempdir()) / f"mlruntime-bench-data-{args.rows}"
    paths = make_data(folder, args.rows)

    import pyarrow.parquet as pq
    import tensorflow as tf

    from mlruntime import DataConnector

    cpus = real_cpus()
    print(
        f"{args.rows:,} rows x {len(FEATURES)} float32 + label in {len(paths)} Parquet files, "
        f"batch {BATCH}, best of {args.repeat}; {cpus} CPUs (Ray is told num_cpus={cpus})"
    )
    print("what each row runs:")
    print(
        f"  ours: DataConnector.from_sources(folder).to_tf_dataset(batch_size={BATCH}, "
        "label_cols='label'), reading the files during the pass"
    )
    print(
        "  limit: tf.data.Dataset.from_tensor_slices((features, label))"
        f".batch({BATCH}).prefetch(AUTOTUNE) over numpy arrays in memory (read apart)"
    )
    if not args.no_ray:
        print(
            f"  Ray Data: ray.data.read_parquet(files).to_tf(FEATURES, 'label', "
            f"batch_size={BATCH}), reading the files during the pass"
        )

    dc = DataConnector.from_sources(str(folder))
    ours_s, ours_rows = best_of(
        args.repeat, lambda: full_pass(dc.to_tf_dataset(batch_size=BATCH, label_cols="label"))
    )

    def in_memory(features: Any, label: Any) -> tuple[float, int]:
        """Best pass over one dataset built once from the arrays (as a training loop would)."""
        dataset = (
            tf.data.Dataset.from_tensor_slices((features, label))
            .batch(BATCH, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        )
        return best_of(args.repeat, lambda: full_pass(dataset))

    start = time.perf_counter()
    matrix, label = read_matrix(paths, FEATURES, "label")
    matrix_read_s = time.perf_counter() - start
    matrix_s, matrix_rows = in_memory(matrix, label)
    del matrix
    start = time.perf_counter()
    table = pq.read_table(paths, columns=[*FEATURES, "label"])
    columns = {c: table.column(c).to_numpy() for c in FEATURES}
    label = table.column("label").to_numpy()
    del table
    dict_read_s = time.perf_counter() - start
    dict_s, dict_rows = in_memory(columns, label)
    del columns
    variants = [
        ("one float32 (N, 20) array", matrix_rows / matrix_s, matrix_read_s),
        ("a dict of 20 column arrays", dict_rows / dict_s, dict_read_s),
    ]
    kind, limit, read_s = max(variants, key=lambda v: v[1])
    print(
        "limit: from_tensor_slices over "
        + "; over ".join(f"{name}: {rate:,.0f} rows/s" for name, rate, _ in variants)
        + f" -> the limit is the faster, features as {kind}; reading the files into it took "
        f"{read_s:.2f}s (not counted)"
    )

    results = [
        ("ours: to_tf_dataset (reads Parquet)", ours_rows / ours_s),
        ("limit: in memory, from_tensor_slices().batch()", limit),
    ]
    ray_rate = None
    if not args.no_ray:
        init_ray()
        import ray.data

        ray_s, ray_rows = best_of(
            args.repeat,
            lambda: full_pass(
                ray.data.read_parquet(paths).to_tf(FEATURES, "label", batch_size=BATCH)
            ),
        )
        ray_rate = ray_rows / ray_s
        results.append(("Ray Data: read_parquet().to_tf()", ray_rate))
    print(f"\n{'pass':<50}{'rows/s':>14}")
    for name, rate in results:
        print(f"{name:<50}{rate:>14,.0f}")
    ours_rate = results[0][1]
    with_read = ours_rows / (ours_rows / limit + read_s)
    print("\nratios, ours / baseline (rows/s: higher is better), and targets:")
    checks: list[tuple[str, float, float | None]] = [
        ("to_tf_dataset / in-memory limit >= 0.7", ours_rate / limit, 0.7),
        ("to_tf_dataset / limit counting its read", ours_rate / with_read, None),
    ]
    if ray_rate is not None:
        checks.append(("to_tf_dataset / Ray Data to_tf >= 2", ours_rate / ray_rate, 2.0))
    for label_text, value, target in checks:
        verdict = "" if target is None else ("ok" if value >= target else "MISSED")
        print(f"  {label_text:<44} {value:6.2f} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
