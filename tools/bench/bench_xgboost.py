"""Benchmark of distributed XGBoost: XGBEstimator vs one process and vs Ray Train, in one run.

1,000,000 rows x 20 float32 features + float32 label in 4 Parquet files, 50 rounds, hist,
max_depth 6, train rmse evaluated every round on every side. Every side reads the same Parquet
files from disk inside its timing (nothing is loaded beforehand), and Ray is told the
machine's real CPU count:

- (a) one process, the plain-framework baseline: read = ``pyarrow.parquet.read_table`` ->
  every feature column written into one preallocated float32 (N, 20) array; train =
  ``xgboost.QuantileDMatrix`` + ``xgboost.train`` with ``nthread`` = the CPUs ours uses in
  total (2 workers x 1 CPU = 2). Read and train are timed and printed separately;
- ours: ``XGBEstimator(...).fit(DataConnector.from_sources(folder), features, "label")`` with
  2 workers x 1 CPU (nthread 1 each; each worker streams its shard of the files into a
  QuantileDMatrix), Ray already up (cold: new workers, and warm: the second fit reuses them);
- (b) Ray Train: ``XGBoostTrainer(datasets={"train": ray.data.read_parquet(files)})`` with 2
  workers, each running ``get_dataset_shard("train").materialize().to_pandas()`` -> float32
  numpy -> ``QuantileDMatrix`` -> ``xgboost.train(nthread=1)``. It runs with
  Ray's defaults where they can run (workers reserve 1 CPU each like ours; Ray Data's default
  Parquet reader); where that would leave Ray Data fewer than the 2 free CPUs its default
  reader needs, so that Ray Train never gets its data (2 CPUs), the workers reserve 0.5 each
  and ``read_parquet`` uses the V1 reader (see ``ray_train_setup``; the output says which).

Prints seconds, ratios ours / (a) and ours / (b) from the same run, and peak RSS growth.
Targets (issue: XGBoost plugin): wall <= 1.3x (a) and <= 0.7x (b); summed peak RSS growth of
our workers <= 2x the float32 feature matrix. Nothing is asserted.

Run: ``.venv/bin/python tools/bench/bench_xgboost.py [--rows N] [--rounds R] [--no-ray-train]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_data import init_ray, read_matrix

FEATURES = [f"f{i}" for i in range(20)]

WORKERS = 2
"""Workers of ours and of Ray Train."""

CPUS_PER_WORKER = 1
"""CPUs (threads) of each of our workers."""

THREADS = WORKERS * CPUS_PER_WORKER
"""Threads the one-process baselines use: as many CPUs as ours uses in total."""


def ray_train_setup(cpus: int, workers: int = WORKERS) -> tuple[float, bool]:
    """How Ray Train runs here: (CPUs each worker reserves, whether read_parquet keeps Ray
    Data's default V2 Parquet reader).

    Ray's defaults wherever they can run: workers reserve ours' 1 CPU each, and the default
    reader, which needs 2 free CPUs at once (a 1-CPU ListFiles task, plus a free CPU to place
    each of its FooterReader actors). Where the workers would leave fewer (a 2-CPU machine),
    Ray Train would wait forever for its data, so the workers reserve what is left after one
    CPU for Ray Data (0.5 each on 2 CPUs) and read_parquet uses the V1 reader, plain 1-CPU
    read tasks (``DataContext.use_datasource_v2 = False``).
    """
    if cpus - workers * CPUS_PER_WORKER >= 2:
        return float(CPUS_PER_WORKER), True
    return min(float(CPUS_PER_WORKER), max(cpus - 1, 1) / workers), False


def ray_data_setup(v2_reader: bool) -> None:
    """Apply :func:`ray_train_setup`'s reader choice; call before ``read_parquet``."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.use_datasource_v2 = v2_reader
    ctx.enable_progress_bars = False


def reader_note(v2_reader: bool) -> str:
    """What the output says about :func:`ray_train_setup`'s reader choice."""
    return "" if v2_reader else " with the V1 reader (DataContext.use_datasource_v2=False)"


def make_data(folder: Path, rows: int, files: int = 4) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=len(FEATURES)).astype(np.float32)
    paths = []
    per = rows // files
    for i in range(files):
        path = folder / f"part-{i:02d}.parquet"
        paths.append(str(path))
        if path.exists():
            continue
        x = rng.random((per, len(FEATURES)), dtype=np.float32)
        y = x @ weights + rng.normal(0, 0.1, per).astype(np.float32)
        cols = {name: x[:, j] for j, name in enumerate(FEATURES)}
        cols["label"] = y
        pq.write_table(pa.table(cols), path, row_group_size=131_072)
    return paths


PARAMS = {"tree_method": "hist", "max_depth": 6, "objective": "reg:squarederror", "seed": 0}


def single_process(paths: list[str], rounds: int) -> dict[str, Any]:
    """(a): read seconds, train seconds, final train rmse, peak RSS growth of this process."""
    import xgboost as xgb

    from mlruntime.train.features import PeakMemory

    memory = PeakMemory()
    start = time.perf_counter()
    x, y = read_matrix(paths, FEATURES, "label")
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    dtrain = xgb.QuantileDMatrix(x, label=y, nthread=THREADS)
    evals: dict[str, dict[str, list[float]]] = {}
    xgb.train(
        {**PARAMS, "nthread": THREADS},
        dtrain,
        rounds,
        evals=[(dtrain, "train")],
        evals_result=evals,
        verbose_eval=False,
    )
    train_s = time.perf_counter() - start
    return {
        "read": read_s,
        "train": train_s,
        "rmse": evals["train"]["rmse"][-1],
        "growth": memory.growth(),
    }


def ours(folder: Path, rounds: int) -> tuple[float, float, int]:
    from mlruntime import DataConnector
    from mlruntime_xgboost import XGBEstimator, XGBScalingConfig

    est = XGBEstimator(
        n_estimators=rounds,
        params={k: v for k, v in PARAMS.items() if k != "objective"},
        scaling_config=XGBScalingConfig(num_workers=WORKERS, num_cpu_per_worker=CPUS_PER_WORKER),
        verbose=False,
    )
    start = time.perf_counter()
    est.fit(DataConnector.from_sources(str(folder)), FEATURES, "label")
    seconds = time.perf_counter() - start
    growth = sum(r["peak_memory_growth"] or 0 for r in est.last_result.return_values)
    return seconds, est.get_eval_results()["train"]["rmse"][-1], growth


def ray_train(
    paths: list[str], rounds: int, worker_cpus: float, v2_reader: bool
) -> tuple[float, float]:
    import ray.data
    import ray.train
    import xgboost as xgb
    from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

    from mlruntime.runtime.distributor import release_idle_groups

    release_idle_groups()  # our warm workers would hold the CPUs Ray Train needs
    ray_data_setup(v2_reader)

    def train_fn(config: dict) -> None:
        shard = ray.train.get_dataset_shard("train").materialize().to_pandas()
        # pandas 3 gives Ray Data's frames Arrow-backed dtypes: hand XGBoost plain float32
        x = shard[FEATURES].to_numpy(dtype=np.float32)
        dtrain = xgb.QuantileDMatrix(
            x, label=shard["label"].to_numpy(dtype=np.float32), nthread=CPUS_PER_WORKER
        )
        xgb.train(
            {**PARAMS, "nthread": CPUS_PER_WORKER},
            dtrain,
            config["rounds"],
            evals=[(dtrain, "train")],
            verbose_eval=False,
            callbacks=[RayTrainReportCallback()],
        )

    start = time.perf_counter()
    trainer = XGBoostTrainer(
        train_fn,
        train_loop_config={"rounds": rounds},
        datasets={"train": ray.data.read_parquet(paths)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=WORKERS, resources_per_worker={"CPU": worker_cpus}
        ),
        run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(prefix="bench-xgb-rt-")),
    )
    result = trainer.fit()
    seconds = time.perf_counter() - start
    return seconds, float(result.metrics.get("train-rmse", float("nan")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--no-ray-train", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MLRUNTIME_QUIET", "1")
    folder = Path(tempfile.gettempdir()) / f"mlruntime-bench-xgb-{args.rows}"
    paths = make_data(folder, args.rows)
    matrix_bytes = args.rows * len(FEATURES) * 4

    cpus = init_ray()
    rt_cpus, rt_v2 = ray_train_setup(cpus)
    print(
        f"{args.rows:,} rows x {len(FEATURES)} float32 in {len(paths)} Parquet files, "
        f"{args.rounds} rounds, hist, depth 6; {cpus} CPUs (Ray is told num_cpus={cpus})"
    )
    print("what each row runs (each reads the files from disk inside its timing):")
    print(
        f"  (a) one process: pq.read_table(files) -> fill float32 (N, {len(FEATURES)}) array; "
        f"QuantileDMatrix + xgboost.train(nthread={THREADS})"
    )
    print(
        f"  ours: XGBEstimator(XGBScalingConfig({WORKERS} workers x {CPUS_PER_WORKER} CPU))"
        ".fit(DataConnector.from_sources(folder)); each worker streams its shard into a "
        f"QuantileDMatrix, nthread={CPUS_PER_WORKER}"
    )
    if not args.no_ray_train:
        print(
            f"  (b) Ray Train: XGBoostTrainer({WORKERS} workers x {rt_cpus:g} CPU, "
            f"datasets={{'train': ray.data.read_parquet(files){reader_note(rt_v2)}}}); "
            "each worker: "
            "get_dataset_shard().materialize().to_pandas() -> float32 numpy -> QuantileDMatrix"
            f" + xgboost.train(nthread={CPUS_PER_WORKER})",
            flush=True,
        )

    single = single_process(paths, args.rounds)
    single_s = single["read"] + single["train"]
    cold_s, cold_rmse, cold_growth = ours(folder, args.rounds)
    warm_s, _, growth = ours(folder, args.rounds)
    rows: list[tuple[str, float, float]] = [
        ("(a) one process: read (pyarrow -> numpy)", single["read"], float("nan")),
        (f"(a) one process: train, nthread={THREADS}", single["train"], single["rmse"]),
        ("(a) one process: read + train", single_s, single["rmse"]),
        (f"ours: XGBEstimator {WORKERS}x{CPUS_PER_WORKER} CPU, cold", cold_s, cold_rmse),
        (f"ours: XGBEstimator {WORKERS}x{CPUS_PER_WORKER} CPU, warm", warm_s, cold_rmse),
    ]
    rt_s = None
    if not args.no_ray_train:
        rt_s, rt_rmse = ray_train(paths, args.rounds, rt_cpus, rt_v2)
        rows.append((f"(b) Ray Train XGBoostTrainer {WORKERS}x{rt_cpus:g} CPU", rt_s, rt_rmse))
    print(f"\n{'run':<48}{'seconds':>9}{'train rmse':>12}")
    for name, secs, err in rows:
        shown = f"{'':>12}" if math.isnan(err) else f"{err:>12.4f}"
        print(f"{name:<48}{secs:>9.2f}{shown}")
    print(
        f"workers' summed peak RSS growth during a fit: {growth / 2**20:.0f} MiB = "
        f"{growth / matrix_bytes:.2f}x the {matrix_bytes / 2**20:.0f} MiB feature matrix "
        f"(warm workers; the cold fit's {cold_growth / 2**20:.0f} MiB also counts one-off code "
        "pages and allocator arenas of fresh processes)"
    )
    if single["growth"] is not None:
        print(
            f"(a)'s peak RSS growth: {single['growth'] / 2**20:.0f} MiB = "
            f"{single['growth'] / matrix_bytes:.2f}x the feature matrix"
        )
    print("\nratios, ours / baseline (lower is better), and targets:")
    checks: list[tuple[str, float, float | None]] = [
        ("cold wall / (a) read + train <= 1.3", cold_s / single_s, 1.3),
        ("warm wall / (a) read + train <= 1.3", warm_s / single_s, 1.3),
        ("worker peak RSS growth / matrix <= 2", growth / matrix_bytes, 2.0),
    ]
    if rt_s is not None:
        checks.append(("cold wall / (b) Ray Train <= 0.7", cold_s / rt_s, 0.7))
        checks.append(("warm wall / (b) Ray Train", warm_s / rt_s, None))
    for label, value, target in checks:
        verdict = "" if target is None else ("ok" if value <= target else "MISSED")
        print(f"  {label:<44} {value:6.2f} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
