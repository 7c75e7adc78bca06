"""Benchmark of distributed PyTorch training: PyTorchDistributor vs Ray Train and one process.

An MLP 20 -> 256 -> 256 -> 1, one epoch over 1,000,000 rows x 20 float32 (+ label) in 4
Parquet files (bench_xgboost's data), batch 1,024, SGD, 2 workers x 1 thread with gloo DDP, Ray
told the machine's real CPU count. Rows come in file order, or shuffled with ``--shuffle``:

- ours: ``PyTorchDistributor(loop).run(dataset_map={"train":
  ShardedDataConnector.from_sources(folder)})``, the loop iterating
  ``to_torch_dataset(batch_size=1024, shuffle=...)`` (each rank reads its own shard from the
  files during the loop);
- Ray Train: ``TorchTrainer(loop, datasets={"train": ray.data.read_parquet(files)})``, the loop
  iterating ``get_dataset_shard("train").iter_torch_batches(batch_size=1024)`` (shuffled:
  ``randomize_block_order()`` and a local shuffle buffer as large as ours), ``prepare_model``
  for DDP; Ray Data reads the files during the loop. It runs with
  Ray's defaults where they can run (workers reserve 1 CPU each like ours; Ray Data's default
  Parquet reader); where that would leave Ray Data fewer than the 2 free CPUs its default
  reader needs, so that Ray Train never gets its data (2 CPUs), the workers reserve 0.5 each
  and ``read_parquet`` uses the V1 reader (see ``ray_train_setup``; the output says which);
- the limit, one process, one thread: the files read once into one float32 (N, 20) tensor and
  a label tensor (timed separately and printed), then batches sliced off them,
  ``x[i:i+1024], y[i:i+1024]`` (shuffled: after ``x[perm], y[perm]`` with
  ``perm = torch.randperm(N)``, inside the timing).

Samples/s of the training loop are rows trained / seconds from the loop's start to its end on
each rank (the slowest rank counts), so ours and Ray Train include reading the files and the
limit does not; wall seconds are from the ``run``/``fit`` call to its return, with Ray already
up. Ratios ours / baseline come from the same run. Targets (issue: PyTorch plugin): ours >=
1.2x Ray Train, and ours per worker >= 0.9x the one-process limit (on 2 cores the two workers
also share caches and memory bandwidth, and DDP adds an all-reduce per step). Nothing is
asserted.

Run: ``.venv/bin/python tools/bench/bench_pytorch.py [--rows N] [--shuffle] [--no-ray-train]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_data import init_ray, read_matrix
from bench_xgboost import (
    CPUS_PER_WORKER,
    FEATURES,
    WORKERS,
    make_data,
    ray_data_setup,
    ray_train_setup,
    reader_note,
)

BATCH = 1024

SHUFFLE_BUFFER = 262_144
"""Rows ours mixes at once when shuffling (to_batches' default); Ray's local buffer matches."""


def make_mlp() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(len(FEATURES), 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 1),
    )


def step(model: Any, optimizer: Any, x: Any, y: Any) -> None:
    import torch

    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x)[:, 0], y).backward()  # y: (B,)
    optimizer.step()


def single_process(paths: list[str], shuffle: bool) -> tuple[float, float, int]:
    """The limit, one thread: (seconds reading the files into tensors, loop seconds, rows)."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    matrix, labels = read_matrix(paths, FEATURES, "label")
    x, y = torch.from_numpy(matrix), torch.from_numpy(labels)
    read_s = time.perf_counter() - start

    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    start = time.perf_counter()
    if shuffle:
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[perm], y[perm]
    for i in range(0, len(y) - BATCH + 1, BATCH):
        step(model, optimizer, x[i : i + BATCH], y[i : i + BATCH])
    return read_s, time.perf_counter() - start, len(y) // BATCH * BATCH


def our_loop() -> tuple[int, float, int]:
    import torch

    from mlruntime import get_context

    shuffle = bool(get_context().get_hyper_params()["shuffle"])
    model = torch.nn.parallel.DistributedDataParallel(make_mlp())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = (
        get_context()
        .get_dataset_map()["train"]
        .to_torch_dataset(batch_size=BATCH, shuffle=shuffle, seed=0)
    )
    rows, start = 0, time.perf_counter()
    for batch in data:
        x = torch.cat([batch[c] for c in FEATURES], dim=1)  # (B, 1) columns -> (B, F)
        step(model, optimizer, x, batch["label"].reshape(-1))
        rows += len(x)
    return rows, time.perf_counter() - start, torch.get_num_threads()


def ours(folder: Path, shuffle: bool) -> tuple[float, float, list[int]]:
    """(loop rows/s over both ranks, wall seconds of run(), torch threads per rank)."""
    from mlruntime import ShardedDataConnector
    from mlruntime_pytorch import PyTorchDistributor, PyTorchScalingConfig, WorkerResourceConfig

    scaling = PyTorchScalingConfig(
        num_nodes=1,
        num_workers_per_node=WORKERS,
        resource_requirements_per_worker=WorkerResourceConfig(num_cpus=CPUS_PER_WORKER, num_gpus=0),
    )
    start = time.perf_counter()
    result = PyTorchDistributor(our_loop, scaling, verbose=False).run(
        dataset_map={"train": ShardedDataConnector.from_sources(str(folder))},
        hyper_params={"shuffle": shuffle},
    )
    wall = time.perf_counter() - start
    values = result.return_values
    rate = sum(r for r, _, _ in values) / max(s for _, s, _ in values)
    return rate, wall, [t for _, _, t in values]


def ray_train(
    paths: list[str], shuffle: bool, worker_cpus: float, v2_reader: bool
) -> tuple[float, float, list[int]]:
    """(loop rows/s over both ranks, wall seconds of fit(), torch threads per rank)."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from mlruntime.runtime.distributor import release_idle_groups

    release_idle_groups()  # our warm workers would hold the CPUs Ray Train needs
    ray_data_setup(v2_reader)

    out = Path(tempfile.mkdtemp(prefix="bench-torch-rt-out-"))

    def loop(config: dict[str, Any]) -> None:
        import ray.train.torch
        import torch

        torch.set_num_threads(CPUS_PER_WORKER)
        model = ray.train.torch.prepare_model(make_mlp())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        shard = ray.train.get_dataset_shard("train")
        buffer = SHUFFLE_BUFFER if config["shuffle"] else None
        rows, start = 0, time.perf_counter()
        for batch in shard.iter_torch_batches(
            batch_size=BATCH, drop_last=True, local_shuffle_buffer_size=buffer
        ):
            x = torch.cat([batch[c] for c in FEATURES], dim=1)
            step(model, optimizer, x, batch["label"].reshape(-1))
            rows += len(x)
        seconds = time.perf_counter() - start
        rank = ray.train.get_context().get_world_rank()
        record = [rows, seconds, torch.get_num_threads()]
        (Path(config["out"]) / f"rank{rank}.json").write_text(json.dumps(record))
        ray.train.report({"rows": rows, "seconds": seconds})

    start = time.perf_counter()
    dataset = ray.data.read_parquet(paths)
    if shuffle:
        dataset = dataset.randomize_block_order(seed=0)
    trainer = TorchTrainer(
        loop,
        train_loop_config={"out": str(out), "shuffle": shuffle},
        datasets={"train": dataset},
        scaling_config=ray.train.ScalingConfig(
            num_workers=WORKERS, resources_per_worker={"CPU": worker_cpus}
        ),
        run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(prefix="bench-torch-rt-")),
    )
    trainer.fit()
    wall = time.perf_counter() - start
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    rate = sum(r for r, _, _ in ranks) / max(s for _, s, _ in ranks)
    return rate, wall, [t for _, _, t in ranks]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shuffle", action="store_true", help="shuffle rows on every side")
    parser.add_argument("--no-ray-train", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MLRUNTIME_QUIET", "1")
    folder = Path(tempfile.gettempdir()) / f"mlruntime-bench-xgb-{args.rows}"
    paths = make_data(folder, args.rows)

    cpus = init_ray()
    rt_cpus, rt_v2 = ray_train_setup(cpus)
    order = "shuffled" if args.shuffle else "in file order"
    print(
        f"MLP 20-256-256-1, 1 epoch of {args.rows:,} rows ({order}) from {len(paths)} Parquet "
        f"files, batch {BATCH}, SGD, gloo; {cpus} CPUs (Ray is told num_cpus={cpus})"
    )
    print("what each row runs:")
    print(
        "  limit (one process, 1 thread): read_table(files) -> float32 (N, 20) tensor, read "
        "timed apart; loop over x[i:i+B], y[i:i+B]"
        + (" after x[perm], y[perm], perm = torch.randperm(N)" if args.shuffle else "")
    )
    print(
        f"  ours: PyTorchDistributor({WORKERS} workers x {CPUS_PER_WORKER} CPU).run(dataset_map="
        "{'train': ShardedDataConnector.from_sources(folder)}); loop over "
        f"to_torch_dataset(batch_size={BATCH}, shuffle={args.shuffle}), reading during the loop"
    )
    if not args.no_ray_train:
        print(
            f"  Ray Train: TorchTrainer({WORKERS} workers x {rt_cpus:g} CPU, datasets={{'train': "
            "ray.data.read_parquet(files)"
            + (".randomize_block_order()" if args.shuffle else "")
            + reader_note(rt_v2)
            + f"}}); loop over get_dataset_shard().iter_torch_batches(batch_size={BATCH}"
            + (f", local_shuffle_buffer_size={SHUFFLE_BUFFER:,}" if args.shuffle else "")
            + "), reading during the loop",
            flush=True,
        )

    read_s, loop_s, trained = single_process(paths, args.shuffle)
    limit, limit_with_read = trained / loop_s, trained / (loop_s + read_s)
    print(f"limit: reading the files into tensors took {read_s:.2f}s (not in its samples/s)")
    cold_rate, cold_wall, _ = ours(folder, args.shuffle)
    warm_rate, warm_wall, threads = ours(folder, args.shuffle)
    rows: list[tuple[str, float, int, float | None]] = [
        ("limit: one process, in-memory slices, 1 thread", limit, 1, None),
        ("  same, counting its read from Parquet", limit_with_read, 1, None),
        (
            f"ours: PyTorchDistributor {WORKERS}x{CPUS_PER_WORKER} CPU, cold",
            cold_rate,
            WORKERS,
            cold_wall,
        ),
        (
            f"ours: PyTorchDistributor {WORKERS}x{CPUS_PER_WORKER} CPU, warm",
            warm_rate,
            WORKERS,
            warm_wall,
        ),
    ]
    print(f"ours: cold {cold_rate:,.0f} samples/s, warm {warm_rate:,.0f}", flush=True)
    rt_rate = rt_wall = None
    if not args.no_ray_train:
        rt_rate, rt_wall, rt_threads = ray_train(paths, args.shuffle, rt_cpus, rt_v2)
        rows.append(
            (f"Ray Train TorchTrainer {WORKERS}x{rt_cpus:g} CPU", rt_rate, WORKERS, rt_wall)
        )
        print(f"torch threads per rank: ours {threads}, Ray Train {rt_threads}")
    else:
        print(f"torch threads per rank: ours {threads}")
    print(f"\n{'run':<50}{'samples/s':>12}{'per worker':>12}{'wall s':>9}")
    for name, rate, workers, wall in rows:
        shown = f"{wall:>9.2f}" if wall is not None else f"{'':>9}"
        print(f"{name:<50}{rate:>12,.0f}{rate / workers:>12,.0f}{shown}")
    print("\nratios, ours / baseline (samples/s: higher is better), and targets:")
    checks: list[tuple[str, float, float | None]] = [
        ("ours per worker (warm) / limit >= 0.9", warm_rate / WORKERS / limit, 0.9),
        (
            "ours per worker (warm) / limit counting its read",
            warm_rate / WORKERS / limit_with_read,
            None,
        ),
    ]
    if rt_rate is not None and rt_wall is not None:
        checks.insert(0, ("ours (cold) / Ray Train >= 1.2", cold_rate / rt_rate, 1.2))
        checks.append(
            ("ours wall (cold) / Ray Train wall (lower: better)", cold_wall / rt_wall, None)
        )
    for label, value, target in checks:
        verdict = "" if target is None else ("ok" if value >= target else "MISSED")
        print(f"  {label:<52} {value:6.2f} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
