"""Snowflake's DPF walkthrough, ported: sf-samples ``samples/ml/distributed_partition_function/
dpf_example.ipynb`` (supply chain allocation with ``scipy.optimize.linprog`` per region).

Differences: imports (``snowflake.ml.modeling.distributors.distributed_partition_function.*``
-> ``mlruntime.partition``, the session from ``mlruntime``); ``session.use_schema`` and
``CREATE STAGE`` left out (a stage is a folder under the storage, made on first write; the
harness attaches the ``MY_DATABASE.MY_SCHEMA`` catalog); the
stage-mode data step uses DuckDB's ``COPY ... TO <stage folder> (PARTITION_BY)`` for
Snowflake's ``COPY INTO @stage PARTITION BY`` and ``LIST @stage``; the ML Jobs (``@remote``)
section is left out.
"""

# ---- Setup
import json
import os
from datetime import datetime

import numpy as np
import pandas as pd

from mlruntime import get_active_session

session = get_active_session()

# Configuration — set target database/schema
database = "MY_DATABASE"
schema = "MY_SCHEMA"

input_stage = f"{database}.{schema}.DPF_INPUT_STAGE"
dpf_stage = f"{database}.{schema}.DPF_RESULTS_STAGE"
input_table = f"{database}.{schema}.SUPPLY_CHAIN_DATA"
output_table = f"{database}.{schema}.OPTIMIZED_SHIPPING_MANIFEST"

print(f"Session: {session}")

# ---- Import DPF modules
from mlruntime.partition import DPF, DPFRun, ExecutionOptions, RunStatus  # noqa: E402
from mlruntime import scale_cluster  # noqa: E402

# Scale to 3 nodes for parallel processing
scale_cluster(expected_cluster_size=3)


# ---- Create Synthetic Supply Chain Data
def create_supply_chain_data(session, table_name):
    """Generate synthetic supply chain data with factories and warehouses across regions."""
    regions = ["NA_WEST", "NA_EAST", "EMEA_CENTRAL", "APAC_SOUTH", "LATAM"]
    np.random.seed(42)
    data = []

    for reg in regions:
        # 3 Factories per region (supply)
        for i in range(3):
            data.append(
                {
                    "REGION": reg,
                    "LOCATION_ID": f"FACT_{reg}_{i}",
                    "TYPE": "FACTORY",
                    "LAT": np.random.uniform(25, 55),
                    "LON": np.random.uniform(-130, -60),
                    "CAPACITY": 1000,
                    "DEMAND": 0,
                }
            )
        # 10 Warehouses per region (demand)
        for j in range(10):
            data.append(
                {
                    "REGION": reg,
                    "LOCATION_ID": f"WH_{reg}_{j}",
                    "TYPE": "WAREHOUSE",
                    "LAT": np.random.uniform(25, 55),
                    "LON": np.random.uniform(-130, -60),
                    "CAPACITY": 0,
                    "DEMAND": 250,
                }
            )

    df = pd.DataFrame(data)
    sdf = session.create_dataframe(df)
    sdf.write.mode("overwrite").save_as_table(table_name)
    print(f"Created '{table_name}' with {len(df)} rows across {len(regions)} regions")
    return session.table(table_name)


supply_chain_sdf = create_supply_chain_data(session, input_table)
supply_chain_sdf.show()


# ---- DataFrame Mode, Step 1: Define the Processing Function
def solve_allocation(data_connector, context):
    """
    Solve the supply chain allocation problem for a single region.

    Uses linear programming to find the optimal shipment plan that minimizes
    total transportation cost (based on distance) subject to:
      - Factory capacity constraints (supply)
      - Warehouse demand constraints (demand)

    Args:
        data_connector: Provides access to the partition's data.
        context: PartitionContext with partition_id and artifact methods.
    """
    import json

    import numpy as np
    import pandas as pd
    from scipy.optimize import linprog
    from scipy.spatial.distance import cdist

    df = data_connector.to_pandas()
    region = context.partition_id
    print(f"[{region}] Processing {len(df)} locations")

    factories = df[df["TYPE"] == "FACTORY"].reset_index(drop=True)
    warehouses = df[df["TYPE"] == "WAREHOUSE"].reset_index(drop=True)
    n_fact = len(factories)
    n_wh = len(warehouses)

    # Build cost matrix (Euclidean distance as proxy for shipping cost)
    cost_matrix = cdist(factories[["LAT", "LON"]], warehouses[["LAT", "LON"]], metric="euclidean")
    c = cost_matrix.flatten()

    # Inequality constraint: total outbound from Factory_i <= Capacity_i
    A_ub = np.zeros((n_fact, n_fact * n_wh))
    for i in range(n_fact):
        A_ub[i, i * n_wh : (i + 1) * n_wh] = 1
    b_ub = factories["CAPACITY"].values.astype(float)

    # Equality constraint: total inbound to Warehouse_j == Demand_j
    A_eq = np.zeros((n_wh, n_fact * n_wh))
    for j in range(n_wh):
        A_eq[j, j::n_wh] = 1
    b_eq = warehouses["DEMAND"].values.astype(float)

    # Solve
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, method="highs")

    if res.success:
        allocation = res.x.reshape((n_fact, n_wh))
        manifest = []
        for i in range(n_fact):
            for j in range(n_wh):
                qty = allocation[i, j]
                if qty > 0.1:
                    manifest.append(
                        {
                            "REGION": region,
                            "ORIGIN": factories.loc[i, "LOCATION_ID"],
                            "DESTINATION": warehouses.loc[j, "LOCATION_ID"],
                            "SHIPMENT_QTY": round(float(qty), 2),
                            "UNIT_DISTANCE": round(float(cost_matrix[i, j]), 4),
                        }
                    )

        manifest_df = pd.DataFrame(manifest)

        summary = {
            "region": region,
            "status": "OPTIMAL",
            "total_cost": round(float(res.fun), 2),
            "shipment_count": len(manifest),
            "total_units_shipped": round(sum(m["SHIPMENT_QTY"] for m in manifest), 2),
        }
        print(f"[{region}] Optimal cost: {summary['total_cost']}, shipments: {len(manifest)}")

        # Upload summary as a stage artifact
        context.upload_to_stage(
            summary,
            "summary.json",
            write_function=lambda obj, path: json.dump(obj, open(path, "w")),
        )

        # Write results to a Snowflake table using the bounded session pool
        context.with_session(
            lambda session: session.create_dataframe(manifest_df)
            .write.mode("append")
            .save_as_table(output_table)
        )
    else:
        print(f"[{region}] Optimization failed: {res.message}")


# ---- Step 2: Initialize and Run DPF
dpf = DPF(func=solve_allocation, stage_name=dpf_stage)

session.sql(f"DROP TABLE IF EXISTS {output_table}").collect()

run = dpf.run(
    partition_by="REGION",
    snowpark_dataframe=session.table(input_table),
    run_id=f"supply_chain_{datetime.now():%Y%m%d_%H%M%S}",
    execution_options=ExecutionOptions(use_head_node=True, num_cpus_per_worker=1),
)
print(f"Launched: {run.run_id}")

# ---- Step 3: Monitor Progress and Wait for Completion
final_status = run.wait()  # Shows progress
print(f"Job completed with status: {final_status}")

# Quick summary of all partition statuses
progress = run.get_progress()
for status, partitions in progress.items():
    print(f"{status}: {len(partitions)} partitions")


# ---- Step 4: Retrieve Results from Each Partition
def print_results(summaries):
    """Format and display the supply chain optimization results."""
    for s in summaries:
        print(f"  {s['region']}: cost={s['total_cost']}, shipments={s['shipment_count']}")

    total_cost = sum(s["total_cost"] for s in summaries)
    total_shipments = sum(s["shipment_count"] for s in summaries)
    print(f"\n  TOTAL: cost={total_cost:.2f}, shipments={total_shipments}")


if final_status == RunStatus.SUCCESS:
    summaries = []
    for partition_id, details in run.partition_details.items():
        files = details.stage_artifacts_manager.list()
        print(f"Partition '{partition_id}' artifacts: {files}")

        summary = details.stage_artifacts_manager.get(
            "summary.json",
            read_function=lambda path: json.load(open(path)),
        )
        summaries.append(summary)

    print_results(summaries)
else:
    print(f"Run did not succeed: {final_status}")

# View the results written to the Snowflake table
session.table(output_table).show()

# ---- Inspect Partition Logs
for partition_id, details in run.partition_details.items():
    print(f"--- {partition_id} ---")
    print(details.logs)

# ---- Step 5: Restore Results from a Completed Run
restored_run = DPFRun.restore_from(
    run_id=run.run_id,
    stage_name=dpf_stage,
)

print(f"Restored run status: {restored_run.status}")
for partition_id, details in restored_run.partition_details.items():
    print(f"  {partition_id}: {details.status}")

# ---- Stage Mode: Process Files from a Stage
# (mlruntime: a stage is a folder under the storage; DuckDB writes one folder per region)
stage_dir = os.path.join(os.environ["MLRUNTIME_HOME"], "stages", input_stage, "supply_chain")
os.makedirs(os.path.dirname(stage_dir), exist_ok=True)  # CREATE STAGE
session.sql(
    f"COPY (SELECT * FROM {input_table}) TO '{stage_dir}' (FORMAT PARQUET, PARTITION_BY (REGION))"
)

dpf_from_stage = DPF(func=solve_allocation, stage_name=dpf_stage)

session.sql(f"DROP TABLE IF EXISTS {output_table}").collect()

stage_run = dpf_from_stage.run_from_stage(
    stage_location=f"@{input_stage}/supply_chain/",
    run_id=f"supply_chain_stage_{datetime.now():%Y%m%d_%H%M%S}",
    file_pattern="*.parquet",
    execution_options=ExecutionOptions(
        use_head_node=True,
        num_cpus_per_worker=1,
    ),
)
print(f"Launched: {stage_run.run_id}")

stage_status = stage_run.wait()
print(f"Stage mode completed with status: {stage_status}")

# View the results written to the Snowflake table
session.table(output_table).show()

# ---- Clean Up
scale_cluster(expected_cluster_size=1)

# Uncomment to drop objects created by this notebook
# session.sql(f"DROP TABLE IF EXISTS {input_table}").collect()
# session.sql(f"DROP TABLE IF EXISTS {output_table}").collect()
# session.sql(f"DROP STAGE IF EXISTS {dpf_stage}").collect()
# session.sql(f"DROP STAGE IF EXISTS {input_stage}").collect()
# session.sql(f"DROP STAGE IF EXISTS {job_stage}").collect()
