"""mlruntime demo: embedded Ray + embedded DuckDB, zero set-up.

Run with ``python3 tools/dev.py demo``. It lists the installed plugins, creates a table in the
DuckDB warehouse under MLRUNTIME_HOME, saves it as a versioned dataset, has Ray workers each
read only their own shard straight from the dataset's Parquet files (checking that together they
saw every row exactly once), then trains on it for real on 2 workers: distributed XGBoost
scoring the table back into the warehouse, and a PyTorch DDP model fed by ``to_torch_dataset``.
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
        "CREATE OR REPLACE TABLE trips AS SELECT id, distance, "
        "(2.5 + 1.8 * distance + random() - 0.5)::FLOAT AS fare FROM ("
        f"SELECT i AS id, (random() * 30)::FLOAT AS distance FROM range({rows}) t(i))"
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
    print(f"every row seen exactly once: {ok}")
    trained = train_xgboost(dataset, session) and train_pytorch(dataset)
    print(f"{time.perf_counter() - started:.1f}s in all")
    mlruntime.shutdown()
    return 0 if ok and trained else 1


def train_xgboost(dataset: object, session: object) -> bool:
    """Distributed XGBoost on 2 workers, then scoring on the workers into a warehouse table."""
    try:
        from mlruntime_xgboost import XGBEstimator, XGBScalingConfig
    except ImportError:
        print("xgboost plugin not installed: pip install 'mlruntime[xgboost]'")
        return True
    from mlruntime import DuckDBTableSink

    est = XGBEstimator(
        n_estimators=30,
        params={"max_depth": 4, "eta": 0.3},
        scaling_config=XGBScalingConfig(num_workers=2, num_cpu_per_worker=1),
        verbose=False,
    )
    data = DataConnector.from_dataset(dataset)
    est.fit(data, input_cols=["distance"], label_col="fare")
    rmse = est.get_eval_results()["train"]["rmse"][-1]
    sink = DuckDBTableSink("trip_predictions", session=session, mode="overwrite")
    est.predict(data, sink=sink, key_cols=["id"])
    scored = session.sql(  # type: ignore[attr-defined]
        "SELECT count(*), sqrt(avg((p.prediction - t.fare) ^ 2)) FROM trip_predictions p "
        "JOIN trips t USING (id)"
    ).fetchall()[0]
    print(
        f"XGBoost on 2 workers: train rmse {rmse:.3f}; scored {scored[0]:,} rows into "
        f"'trip_predictions' (rmse {scored[1]:.3f})"
    )
    return bool(scored[0] == data.num_rows and rmse < 1.0)


def fit_fare_per_km(config: dict[str, float]) -> dict[str, float]:
    """Runs on every worker: DDP linear regression fare ~ distance on this rank's shard."""
    import torch

    from mlruntime import get_context

    ctx = get_context()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    data = ctx.get_dataset_map()["trips"].to_torch_dataset(batch_size=1024, shuffle=True, seed=0)
    for epoch in range(int(config["epochs"])):
        for batch in data:  # distance and fare scaled to about [0, 1]
            pred = model(batch["distance"] / 30.0)  # scalar columns come as (B, 1)
            loss = torch.nn.functional.mse_loss(pred, batch["fare"] / 60.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ctx.report({"epoch": epoch, "mse": loss.item() * 60.0**2})
    weight, bias = (float(p.detach()) for p in model.module.parameters())
    return {"per_km": weight * 60.0 / 30.0, "base": bias * 60.0}


def train_pytorch(dataset: object) -> bool:
    """PyTorch DDP on 2 workers, each reading its own shard of the dataset."""
    try:
        from mlruntime_pytorch import PyTorchDistributor, PyTorchScalingConfig
    except ImportError:
        print("pytorch plugin not installed: pip install 'mlruntime[pytorch]'")
        return True
    from mlruntime import WorkerResourceConfig

    scaling = PyTorchScalingConfig(
        num_nodes=1,
        num_workers_per_node=2,
        resource_requirements_per_worker=WorkerResourceConfig(num_cpus=1, num_gpus=0),
    )
    result = PyTorchDistributor(fit_fare_per_km, scaling, verbose=False).run(
        dataset_map={"trips": ShardedDataConnector.from_dataset(dataset)},
        hyper_params={"lr": 0.05, "epochs": 6},
    )
    fit = result.return_values[0]
    print(
        f"PyTorch DDP on 2 workers: fare = {fit['base']:.2f} + {fit['per_km']:.2f} x km "
        f"(true 2.50 + 1.80 x km), last mse {result.get_metrics()['mse']:.3f}"
    )
    return abs(fit["per_km"] - 1.8) < 0.1


if __name__ == "__main__":
    sys.exit(main())
