"""mlruntime demo: embedded Ray + embedded DuckDB, zero set-up.

Run with ``python3 tools/dev.py demo``. It lists the installed plugins, starts an embedded Ray,
creates a table in a DuckDB database under MLRUNTIME_HOME and has Ray workers read disjoint
slices of it as Arrow, checking that together they saw every row exactly once.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time

import duckdb
import numpy as np
import pyarrow as pa

import mlruntime


def main() -> int:
    started = time.perf_counter()
    home = os.environ.setdefault("MLRUNTIME_HOME", tempfile.mkdtemp(prefix="mlruntime-demo-"))
    print(f"mlruntime {mlruntime.__version__}; MLRUNTIME_HOME={home}")
    for plugin in mlruntime.list_plugins():
        print(f"  plugin {plugin.name:<11} {plugin.version or '-':<8} {plugin.status}")

    rows = 200_000
    db_path = os.path.join(home, "demo.duckdb")
    with duckdb.connect(db_path) as con:
        con.execute(
            "CREATE OR REPLACE TABLE trips AS SELECT i AS id, random() * 30 AS distance, "
            f"(random() * 50)::FLOAT AS fare FROM range({rows}) t(i)"
        )
        table: pa.Table = con.table("trips").to_arrow_table()
    print(f"DuckDB table 'trips': {table.num_rows:,} rows, columns {table.column_names}")

    mlruntime.init()
    nodes = mlruntime.get_nodes()
    print(f"Ray: {len(nodes)} node(s), {sum(n.num_cpus for n in nodes):g} CPUs")

    import ray

    @ray.remote(num_cpus=1)
    def shard_stats(part: pa.Table) -> tuple[int, int, float]:
        ids = part.column("id").to_numpy()
        return len(ids), int(ids.sum()), float(np.asarray(part.column("fare")).mean())

    n_shards = 2
    bounds = np.linspace(0, table.num_rows, n_shards + 1).astype(int)
    parts = [table.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds)]
    results = ray.get([shard_stats.remote(p) for p in parts])
    for rank, (count, _, mean_fare) in enumerate(results):
        print(f"  worker {rank}: {count:,} rows, mean fare {mean_fare:.2f}")
    seen = sum(r[0] for r in results)
    id_sum = sum(r[1] for r in results)
    ok = seen == rows and id_sum == rows * (rows - 1) // 2
    print(f"every row seen exactly once: {ok}; {time.perf_counter() - started:.1f}s in all")
    mlruntime.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
