"""Benchmark of the tf.data path: ``to_tf_dataset`` vs in-memory tf.data and Ray Data, one run.

2,000,000 rows x 20 float32 + int label in Parquet (8 files), one full pass at batch 1,024 of
``(features, label)`` elements, each batch touched from Python:

- ours: ``DataConnector.from_sources(...).to_tf_dataset(batch_size=1024, label_cols="label")``
  (reads the files during the pass);
- in memory: ``tf.data.Dataset.from_tensor_slices((features, label)).batch(1024)`` over the
  same data already decoded into numpy (reading it is not timed);
- Ray Data: ``ray.data.read_parquet(files).to_tf(FEATURES, "label", batch_size=1024)``.

Targets (issue: TensorFlow plugin): ours >= 0.7x in-memory, >= 2x Ray Data.

Run: ``.venv/bin/python tools/bench/bench_tensorflow.py [--rows N] [--repeat K] [--no-ray]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_data import FEATURES, best_of, make_data

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
    folder = Path(tempfile.gettempdir()) / f"mlruntime-bench-data-{args.rows}"
    paths = make_data(folder, args.rows)

    import pyarrow.parquet as pq
    import tensorflow as tf

    from mlruntime import DataConnector

    dc = DataConnector.from_sources(str(folder))
    ours_s, ours_rows = best_of(
        args.repeat, lambda: full_pass(dc.to_tf_dataset(batch_size=BATCH, label_cols="label"))
    )
    table = pq.read_table(paths)
    features = {c: table.column(c).to_numpy() for c in FEATURES}
    label = table.column("label").to_numpy()
    memory_s, memory_rows = best_of(
        args.repeat,
        lambda: full_pass(
            tf.data.Dataset.from_tensor_slices((features, label))
            .batch(BATCH, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        ),
    )
    results = [
        ("ours: to_tf_dataset (reads Parquet)", ours_rows / ours_s),
        ("in memory: from_tensor_slices().batch()", memory_rows / memory_s),
    ]
    if not args.no_ray:
        import mlruntime

        mlruntime.init(num_cpus=4)
        import ray.data

        ray_s, ray_rows = best_of(
            args.repeat,
            lambda: full_pass(
                ray.data.read_parquet(paths).to_tf(FEATURES, "label", batch_size=BATCH)
            ),
        )
        results.append(("Ray Data: read_parquet().to_tf()", ray_rows / ray_s))
    print(
        f"\n{args.rows:,} rows x {len(FEATURES)} float32 + label, batch {BATCH}, best of "
        f"{args.repeat}"
    )
    print(f"{'pass':<44}{'rows/s':>14}")
    for name, rate in results:
        print(f"{name:<44}{rate:>14,.0f}")
    print("\ntargets:")
    checks = [("to_tf_dataset >= 0.7x in memory", results[0][1] / results[1][1], 0.7)]
    if not args.no_ray:
        checks.append(("to_tf_dataset >= 2x Ray Data to_tf", results[0][1] / results[2][1], 2.0))
    for label_text, value, target in checks:
        print(f"  {label_text:<40} {value:6.2f} {'ok' if value >= target else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
