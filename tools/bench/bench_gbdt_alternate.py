"""Benchmark: alternating XGBoost and LightGBM fits (comparing the two on one dataset).

A notebook comparing the two frameworks fits one, then the other, then the first again. Here:
``--switches`` fits alternating XGBoost and LightGBM (default 6), each with mlruntime's default
scaling (one worker with every CPU on one node), on ``--rows`` x 20 float32 features in Parquet
files (bench_xgboost's data, in the OS cache), ``--rounds`` rounds, Ray already up:

- ours: XGBoost and LightGBM are one family of backends (``Backend.worker_family = "gbdt"``),
  so each fit runs on the warm worker group the last one left;
- ours, one group per framework: the same with the family cleared in the driver (what every
  version before it did): each switch makes room for a new group, i.e. a new worker process
  that imports the other framework again;
- one process: the plain frameworks alternating in this process (both imported before the
  clock), reading the same files each time (``bench_gbdt_auto.plain``).

The first fit of each contender (new processes, imports) is left out; the medians of the next
ones are compared. Nothing is asserted.

Run: ``.venv/bin/python tools/bench/bench_gbdt_alternate.py [--rows N] [--rounds R]
[--switches S]``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_data import init_ray
from bench_gbdt_auto import ours, plain
from bench_xgboost import make_data

FRAMEWORKS = ("xgboost", "lightgbm")


def alternate(fit: object, switches: int) -> list[float]:
    """Seconds of each of ``switches`` alternating fits (``fit(framework) -> seconds``)."""
    out = []
    for i in range(switches):
        out.append(fit(FRAMEWORKS[i % 2]))  # type: ignore[operator]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--switches", type=int, default=6)
    args = parser.parse_args()
    os.environ.setdefault("MLRUNTIME_QUIET", "1")
    os.environ.setdefault("MLRUNTIME_HOME", tempfile.mkdtemp(prefix="bench-gbdt-alternate-"))
    folder = Path(tempfile.gettempdir()) / f"mlruntime-bench-xgb-{args.rows}"
    paths = make_data(folder, args.rows)
    for path in paths:
        Path(path).read_bytes()  # into the OS cache
    for framework in FRAMEWORKS:
        importlib.import_module(framework)
    cpus = init_ray()
    import mlruntime_lightgbm.estimator as lgb_estimator
    import mlruntime_xgboost.estimator as xgb_estimator
    from mlruntime.runtime.distributor import release_idle_groups
    from mlruntime.testing import wait_for_idle_workers

    backends = (xgb_estimator._XGBBackend, lgb_estimator._LightGBMBackend)

    def ours_fit(framework: str) -> float:
        return ours(framework, folder, args.rounds)[0]

    def plain_fit(framework: str) -> float:
        return sum(plain(framework, paths, args.rounds, cpus).values())

    def fresh_pool() -> None:
        release_idle_groups()
        wait_for_idle_workers(cpus)
        time.sleep(2.0)

    runs: dict[str, list[float]] = {}
    runs["one process, alternating"] = alternate(plain_fit, args.switches)
    fresh_pool()
    runs["ours (one gbdt worker family)"] = alternate(ours_fit, args.switches)
    fresh_pool()
    for backend in backends:
        backend.worker_family = None
    try:
        runs["ours, one group per framework"] = alternate(ours_fit, args.switches)
    finally:
        for backend in backends:
            backend.worker_family = "gbdt"
    release_idle_groups()

    print(
        f"{args.switches} alternating XGBoost / LightGBM fits, {args.rows:,} rows x 20, "
        f"{args.rounds} rounds, {cpus} CPUs, Ray up; medians of fits 2..{args.switches}"
    )
    base = statistics.median(runs["one process, alternating"][1:])
    for label, seconds in runs.items():
        later = statistics.median(seconds[1:])
        print(
            f"  {label:32s} first {seconds[0]:5.2f} s, then {later:5.2f} s per fit "
            f"({later / base:4.2f}x one process)  [{', '.join(f'{s:.2f}' for s in seconds)}]"
        )


if __name__ == "__main__":
    main()
