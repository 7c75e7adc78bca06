"""Benchmark: the driver's memory while a warehouse table feeds a 2-worker job.

A DuckDB warehouse file holds a table of 2,000,000 rows x (id + 20 float64 features + label)
(built beforehand by another process, as a user's warehouse would be). A fresh driver process
opens it, starts Ray, and runs a job whose two workers each read their shard of
``ShardedDataConnector.from_dataframe(session.table("t"))`` (summing a column, so every row is
read). A thread samples the driver's private resident memory (RSS less shared pages: Ray's
object store is mapped shared) every 5 ms; the figure is the peak growth during the job over
the value just before it, against the table's Arrow size. DuckDB's own block cache (what
``duckdb_memory()`` reports after the job) is shown apart: DuckDB keeps the blocks it scanned
in the driver process whoever reads them, up to its ``memory_limit``.

Modes, each in its own fresh driver process:

- floor ``scan``: DuckDB scans the table in the driver and the batches are dropped at once:
  what reading a table of the driver's warehouse costs any reader (DuckDB's block cache and
  allocator); the figure reported for the other modes is their growth above it;
- ``auto``: what a user gets (DuckDB batches go into Ray's object store while the job's budget,
  a quarter of the object store, allows; the rest would stream into Parquet);
- ``parquet``: forced into Parquet under the storage (``MLRUNTIME_STAGE=parquet``), as large
  results and clusters with small object stores get;
- baseline ``driver``: the table read whole on the driver (``relation.to_arrow_table()``, the
  way wave 1 and a plain ``ray.data.from_arrow`` user feed workers), then sharded.

Also timed: the job's wall time, so the cost of staging is visible (ratio against ``driver``).
Target (issue: multi-node): driver peak growth <= 0.1x the table in ``auto``.

Run: ``.venv/bin/python tools/bench/bench_driver_memory.py [--rows N]``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

FEATURES = 20

BUILD = textwrap.dedent(
    """
    import sys
    import duckdb
    rows, features, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    cols = ", ".join(f"random() AS f{j}" for j in range(features))
    con = duckdb.connect(path)
    con.execute(f"CREATE TABLE t AS SELECT range AS id, {cols}, random() AS y FROM range({rows})")
    con.close()
    """
)

DRIVER = textwrap.dedent(
    """
    import json, os, sys, threading, time
    import psutil
    mode, path = sys.argv[1], sys.argv[2]
    if mode in ("auto", "objects", "parquet"):
        os.environ["MLRUNTIME_STAGE"] = mode
    import mlruntime
    from mlruntime import DataConnector, Distributor, ScalingConfig, ShardedDataConnector
    from mlruntime import WorkerResourceConfig, get_context

    def total() -> float:
        data = get_context().get_dataset_map()["t"]
        return float(sum(t.column("f0").to_numpy().sum() for t in data.iter_tables(["f0"])))

    mlruntime.init()
    scaling = ScalingConfig(num_workers=2, resources_per_worker=WorkerResourceConfig(num_cpus=1))
    session = mlruntime.Session(path, read_only=True)
    relation = session.table("t")
    table_bytes = None
    # warm the worker group with a tiny job so both modes start from warm workers
    Distributor(scaling, verbose=False).run(lambda: 0)
    proc = psutil.Process()

    def private() -> int:  # resident and not shared: no object-store mappings, no file pages
        info = proc.memory_info()
        return info.rss - info.shared

    base, base_rss = private(), proc.memory_info().rss
    peak, peak_rss = [base], [base_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], private())
            peak_rss[0] = max(peak_rss[0], proc.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    if mode == "scan":  # the floor: DuckDB scans the table in this process, batches dropped
        rows = sum(b.num_rows for b in relation.to_arrow_reader(65_536))
        result = None
    elif mode == "driver":
        table = relation.to_arrow_table()
        table_bytes = table.nbytes
        data = ShardedDataConnector.from_dataframe(table)
    else:
        data = ShardedDataConnector.from_dataframe(relation)
    if mode != "scan":
        result = Distributor(scaling, verbose=False).run(total, dataset_map={"t": data})
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if table_bytes is None:
        rows = session.sql("SELECT count(*) FROM t").fetchall()[0][0]
        table_bytes = relation.limit(100_000).to_arrow_table().nbytes * rows / 100_000
    cache = session.sql(
        "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()"
    ).fetchall()[0][0]
    print("RESULT" + json.dumps({
        "peak_growth": peak[0] - base, "peak_rss_growth": peak_rss[0] - base_rss,
        "duckdb_cache": cache, "table_bytes": table_bytes, "seconds": seconds,
        "sum": None if result is None else sum(result.return_values),
    }))
    """
)


def run(mode: str, path: str) -> dict[str, float]:
    env = {**os.environ, "MLRUNTIME_QUIET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, mode, path],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=900,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    if out.returncode or not lines:
        raise SystemExit(f"{mode} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return dict(json.loads(lines[-1].removeprefix("RESULT")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "warehouse.duckdb")
        subprocess.run(
            [sys.executable, "-c", BUILD, str(args.rows), str(FEATURES), path], check=True
        )
        os.environ["MLRUNTIME_HOME"] = str(Path(tmp) / "home")
        results = {mode: run(mode, path) for mode in ("scan", "driver", "auto", "parquet")}
    table_mb = results["driver"]["table_bytes"] / 2**20
    print(f"driver memory, {args.rows:,}-row DuckDB table ({table_mb:.0f} MiB as Arrow), 2 workers")
    base = results["driver"]
    mib = 2**20
    floor = results["scan"]["peak_growth"]
    print(
        f"  floor: DuckDB scanning the table in the driver, batches dropped: private growth "
        f"{floor / mib:.1f} MiB ({floor / base['table_bytes']:.2f}x), DuckDB's block cache "
        f"{results['scan']['duckdb_cache'] / mib:.1f} MiB"
    )
    for mode, label in (
        ("driver", "baseline: read whole on the driver (to_arrow_table), then sharded"),
        ("auto", "ours (auto: here, batch by batch into the object store, within its budget)"),
        ("parquet", "ours (MLRUNTIME_STAGE=parquet: streamed into Parquet under the storage)"),
    ):
        r = results[mode]
        own = max(0.0, r["peak_growth"] - floor)
        print(f"  {label}")
        print(
            f"    private memory peak growth {r['peak_growth'] / mib:7.1f} MiB "
            f"({r['peak_growth'] / base['table_bytes']:.2f}x the table; all RSS incl. shared "
            f"mappings {r['peak_rss_growth'] / mib:.0f} MiB)"
        )
        print(
            f"    above the DuckDB-scan floor: {own / mib:6.1f} MiB = "
            f"{own / base['table_bytes']:.2f}x the table; "
            f"job {r['seconds']:5.2f} s ({r['seconds'] / base['seconds']:.2f}x the baseline)"
        )
    sums = {round(r["sum"], 3) for r in results.values() if r["sum"] is not None}
    print(f"  every mode read the same rows: {len(sums) == 1}")
    print(
        "  target: ours (auto) <= 0.10x the table above the floor. DuckDB keeps the blocks it\n"
        "  scanned in its cache (up to its memory_limit) in the process that holds the warehouse,\n"
        "  whoever reads the rows: that floor is DuckDB's, paid by any reader of the table."
    )


if __name__ == "__main__":
    main()
