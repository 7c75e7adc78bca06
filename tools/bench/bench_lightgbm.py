"""Benchmark of distributed LightGBM: LightGBMEstimator vs one process and vs Ray Train, one run.

1,000,000 rows x 20 float32 features + label in Parquet, 50 rounds, num_leaves 31:

- (a) one process: ``pyarrow.parquet.read_table`` -> numpy -> ``lightgbm.Dataset`` ->
  ``lightgbm.train(num_threads=2)``;
- ours: ``LightGBMEstimator`` with 2 workers x 1 CPU, Ray already up (cold: new workers, and
  warm: the second fit reuses them);
- (b) Ray Train's ``LightGBMTrainer`` with 2 workers reading a Ray Dataset of the same files
  (``tree_learner="data_parallel"``, ``pre_partition``, its network parameters).

Targets (issue: LightGBM plugin): wall <= 1.3x (a) and <= 0.7x (b), with Ray already up.

Run: ``.venv/bin/python tools/bench/bench_lightgbm.py [--rows N] [--rounds R] [--no-ray-train]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from bench_xgboost import FEATURES, make_data

PARAMS = {"objective": "regression", "num_leaves": 31, "verbose": -1, "seed": 0}


def single_process(paths: list[str], rounds: int) -> tuple[float, float]:
    import lightgbm as lgb

    start = time.perf_counter()
    table = pq.read_table(paths)
    x = np.column_stack([table.column(c).to_numpy() for c in FEATURES])
    y = table.column("label").to_numpy()
    train = lgb.Dataset(x, label=y, params={"verbose": -1})
    evals: dict[str, Any] = {}
    lgb.train(
        {**PARAMS, "num_threads": 2, "metric": "rmse"},
        train,
        rounds,
        valid_sets=[train],
        valid_names=["train"],
        callbacks=[lgb.record_evaluation(evals)],
    )
    return time.perf_counter() - start, evals["train"]["rmse"][-1]


def ours(folder: Path, rounds: int) -> tuple[float, float]:
    from mlruntime import DataConnector
    from mlruntime_lightgbm import LightGBMEstimator, LightGBMScalingConfig

    est = LightGBMEstimator(
        n_estimators=rounds,
        params={**{k: v for k, v in PARAMS.items() if k != "objective"}, "metric": "rmse"},
        scaling_config=LightGBMScalingConfig(num_workers=2, num_cpu_per_worker=1),
        verbose=False,
    )
    start = time.perf_counter()
    est.fit(DataConnector.from_sources(str(folder)), FEATURES, "label")
    seconds = time.perf_counter() - start
    train = est.get_eval_results().get("train", {})
    return seconds, (train.get("rmse") or [float("nan")])[-1]


def ray_train(paths: list[str], rounds: int) -> float:
    import ray.data
    import ray.train
    from ray.train.lightgbm import LightGBMTrainer, RayTrainReportCallback

    from mlruntime.distributor import release_idle_groups

    release_idle_groups()  # our warm workers would hold the CPUs Ray Train needs

    def train_fn(config: dict[str, Any]) -> None:
        import lightgbm as lgb

        shard = ray.train.get_dataset_shard("train").materialize().to_pandas()
        # pandas 3 gives Ray Data's frames Arrow-backed dtypes, which LightGBM refuses
        x = shard[FEATURES].to_numpy(dtype=np.float32)
        train = lgb.Dataset(x, label=shard["label"].to_numpy(dtype=np.float32))
        params = {
            **PARAMS,
            "num_threads": 1,
            "tree_learner": "data_parallel",
            "pre_partition": True,
            **ray.train.lightgbm.get_network_params(),
        }
        lgb.train(params, train, config["rounds"], callbacks=[RayTrainReportCallback()])

    start = time.perf_counter()
    trainer = LightGBMTrainer(
        train_fn,
        train_loop_config={"rounds": rounds},
        datasets={"train": ray.data.read_parquet(paths)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(prefix="bench-lgb-rt-")),
    )
    trainer.fit()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--no-ray-train", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MLRUNTIME_QUIET", "1")
    folder = Path(tempfile.gettempdir()) / f"mlruntime-bench-xgb-{args.rows}"
    paths = make_data(folder, args.rows)

    import mlruntime

    # 4 logical CPUs: Ray Train + Ray Data deadlock when 2 workers hold both CPUs of a 2-CPU
    # node (its read tasks need CPUs too); ours needs no more than the workers' 2.
    mlruntime.init(num_cpus=4)
    single_s, single_rmse = single_process(paths, args.rounds)
    cold_s, cold_rmse = ours(folder, args.rounds)
    warm_s, _ = ours(folder, args.rounds)
    rows = [
        ("(a) one process, read + train, 2 threads", single_s, single_rmse),
        ("ours: LightGBMEstimator 2x1 CPU, cold", cold_s, cold_rmse),
        ("ours: LightGBMEstimator 2x1 CPU, warm", warm_s, cold_rmse),
    ]
    print(f"ours: cold {cold_s:.2f}s, warm {warm_s:.2f}s", flush=True)
    if not args.no_ray_train:
        rows.append(
            ("(b) Ray Train LightGBMTrainer 2 workers", ray_train(paths, args.rounds), None)
        )
    print(f"\n{args.rows:,} rows x {len(FEATURES)} float32, {args.rounds} rounds, 31 leaves")
    print(f"{'run':<44}{'seconds':>9}{'train rmse':>12}")
    for name, secs, err in rows:
        shown = f"{err:>12.4f}" if err is not None else f"{'':>12}"
        print(f"{name:<44}{secs:>9.2f}{shown}")
    print("\ntargets:")
    checks = [
        ("cold wall <= 1.3x one process", cold_s / single_s, 1.3),
        ("warm wall <= 1.3x one process", warm_s / single_s, 1.3),
    ]
    if not args.no_ray_train:
        checks.append(("cold wall <= 0.7x Ray Train", cold_s / rows[3][1], 0.7))
    for label, value, target in checks:
        print(f"  {label:<40} {value:6.2f} {'ok' if value <= target else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
