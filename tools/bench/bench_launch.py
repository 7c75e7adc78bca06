"""Benchmark of launch latency: from the ``run`` call to the first line of user code on every rank.

2 workers x 1 CPU, no data, Ray already up and told the machine's real CPU count. In one run it
measures mlruntime's ``Distributor(...).run(fn)`` cold (a new worker group: the last one
released first) in two states of Ray's pool: with idle worker processes up (what a first job
finds once Ray has been up a few seconds, and any job a few seconds after the last one: the pool
is topped up in the background; outside the clock the bench waits for them), and right after
the release (no idle process ready yet: new processes start); and warm (the group kept from the
previous job). As baselines, Ray Train's
``DataParallelTrainer(fn).fit()`` (no framework backend) and ``TorchTrainer(fn).fit()`` (gloo
process group), same workers and CPUs. It prints the median and best latency of each and the
ratios ours / Ray Train TorchTrainer and ours / DataParallelTrainer, computed in the same run.
Target (issue: runtime): ours <= 0.5x Ray Train's TorchTrainer. Nothing is asserted.

Run: ``.venv/bin/python tools/bench/bench_launch.py [--repeat K]``. Each user function writes the
wall-clock time of its first line to a file; latency = the latest of those minus the call time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

MARKS = Path(tempfile.gettempdir()) / "mlruntime-bench-launch"


def mark_start(run_id: str) -> None:
    """The first line of user code: record when this rank got here."""
    now = time.time()
    folder = MARKS / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}-{uuid.uuid4().hex}").write_text(repr(now))


def latency(run_id: str, called_at: float, workers: int) -> float:
    stamps = [float(p.read_text()) for p in (MARKS / run_id).iterdir()]
    if len(stamps) != workers:
        raise RuntimeError(f"{run_id}: {len(stamps)} ranks reported, expected {workers}")
    return max(stamps) - called_at


def measure(
    launch: Callable[[str], None],
    repeat: int,
    workers: int = 2,
    prepare: Callable[[], None] | None = None,
) -> list[float]:
    """Latencies of ``repeat`` launches; ``prepare`` runs before each, outside the clock."""
    out = []
    for _ in range(repeat):
        if prepare is not None:
            prepare()
        run_id = uuid.uuid4().hex
        called = time.time()
        launch(run_id)
        out.append(latency(run_id, called, workers))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

    from bench_data import init_ray

    from mlruntime import Distributor, ScalingConfig, WorkerResourceConfig

    cpus = init_ray()
    storage = tempfile.mkdtemp(prefix="mlruntime-bench-ray-train-")

    def ours(run_id: str) -> None:
        d = Distributor(
            ScalingConfig(num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=1)),
            verbose=False,
        )
        d.run(lambda: mark_start(run_id), artifact_location=storage)

    def ours_cold(run_id: str) -> None:
        from mlruntime.runtime.distributor import release_idle_groups

        release_idle_groups()
        ours(run_id)

    def release_and_wait_for_idle_workers() -> None:
        from mlruntime.runtime.distributor import release_idle_groups
        from mlruntime.testing import wait_for_idle_workers

        release_idle_groups()
        wait_for_idle_workers(cpus)
        time.sleep(1.0)  # the top-up's processes finish starting

    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    def ray_train(trainer_cls: type) -> Callable[[str], None]:
        def launch(run_id: str) -> None:
            from mlruntime.runtime.distributor import release_idle_groups

            release_idle_groups()  # warm workers would hold the CPUs Ray Train needs

            trainer = trainer_cls(
                lambda: mark_start(run_id),
                scaling_config=ray.train.ScalingConfig(
                    num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}
                ),
                run_config=ray.train.RunConfig(storage_path=storage, name=run_id),
            )
            trainer.fit()

        return launch

    print(f"2 workers x 1 CPU; {cpus} CPUs (Ray is told num_cpus={cpus}); {args.repeat} runs each")
    print("what each row runs (fn = write the time of its first line):")
    print("  ours:  mlruntime.Distributor(ScalingConfig(num_workers=2, 1 CPU each)).run(fn)")
    print("         (cold: release_idle_groups() first, then idle workers up / none ready;")
    print("         warm: the previous run's workers)")
    print("  Ray:   ray.train DataParallelTrainer(fn) / ray.train.torch.TorchTrainer(fn)")
    print("         with ScalingConfig(num_workers=2, resources_per_worker={'CPU': 1}), .fit()")
    rows = [
        (
            "mlruntime Distributor, cold, idle workers up",
            measure(ours, args.repeat, prepare=release_and_wait_for_idle_workers),
        ),
        ("mlruntime Distributor, cold, none ready", measure(ours_cold, args.repeat)),
        ("mlruntime Distributor, warm (group reused)", measure(ours, args.repeat)),
        ("Ray Train DataParallelTrainer", measure(ray_train(DataParallelTrainer), args.repeat)),
        ("Ray Train TorchTrainer", measure(ray_train(TorchTrainer), args.repeat)),
    ]
    print(f"\n{'launch -> first user line on every rank':<46}{'median s':>10}{'min s':>9}")
    for name, values in rows:
        print(f"{name:<46}{statistics.median(values):>10.3f}{min(values):>9.3f}")
    torch_trainer = statistics.median(rows[4][1])
    plain_trainer = statistics.median(rows[3][1])
    print("\nratios of medians, ours / baseline (lower is better); target <= 0.5x TorchTrainer:")
    for name, values in rows[:3]:
        ratio = statistics.median(values) / torch_trainer
        plain = statistics.median(values) / plain_trainer
        print(
            f"  {name:<44} {ratio:6.3f}x TorchTrainer {'ok' if ratio <= 0.5 else 'MISSED':<6}"
            f" {plain:6.3f}x DataParallelTrainer"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
