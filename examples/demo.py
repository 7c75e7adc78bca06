"""mlruntime demo: embedded Ray + embedded DuckDB, zero set-up.

Run with ``python3 tools/dev.py demo``. It lists the installed plugins, creates a table in the
DuckDB warehouse under MLRUNTIME_HOME, saves it as a versioned dataset, and has Ray workers each
read only their own shard straight from the dataset's Parquet files, checking that together they
saw every row exactly once.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

import mlruntime
from mlruntime import DataConnector, ShardedDataConnector


def main() -> int:
    started = time.perf_counter()
    home = os.environ.setdefault("MLRUNTIME_HOME", tempfile.mkdtemp(prefix="mlruntime-demo-"))
    print(f"mlruntime {mlruntime.__version__}; MLRUNTIME_HOME={home}")
    for plugin in mlruntime.list_plugins():
        print(f"  plugin {plugin.name:<11} {plugin.version or '-':<8} {plugin.status}")

    rows = 200_000
    session = mlruntime.get_active_session()
    session.sql(
        "CREATE OR REPLACE TABLE trips AS SELECT i AS id, random() * 30 AS distance, "
        f"(random() * 50)::FLOAT AS fare FROM range({rows}) t(i)"
    ).fetchall()
    df = session.table("trips")
    dataset = mlruntime.create_from_dataframe("trips", f"v{int(time.time())}", df)
    print(f"DuckDB table 'trips' -> dataset {dataset}")

    mlruntime.init()
    nodes = mlruntime.get_nodes()
    print(f"Ray: {len(nodes)} node(s), {sum(n.num_cpus for n in nodes):g} CPUs")

    import ray

    sharded = ShardedDataConnector(DataConnector.from_dataset(dataset))

    @ray.remote(num_cpus=1)
    def shard_stats(rank: int, world: int) -> tuple[int, int, float]:
        shard = sharded.get_shard(rank=rank, world_size=world)  # reads only its own rows
        ids, fares, count = 0, 0.0, 0
        for batch in shard.to_batches(8192, drop_last_batch=False):
            ids += int(batch["id"].sum())
            fares += float(np.asarray(batch["fare"], dtype=np.float64).sum())
            count += len(batch["id"])
        return count, ids, fares / count

    world = 2
    results = ray.get([shard_stats.remote(r, world) for r in range(world)])
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
