"""Snowflake's many-model training walkthrough, ported: sf-samples
``samples/ml/many_model_training/mmt_example.ipynb`` (an XGBoost model per LOCATION_ID).

Differences: imports (``snowflake.ml.modeling.distributors.many_model`` and
``...distributed_partition_function.*`` -> ``mlruntime.partition``, ``DataConnector`` and the
session from ``mlruntime``); ``CREATE STAGE`` and ``ls @stage`` left out (a stage is a folder
under the storage); the table name without ``get_current_database()/get_current_schema()``;
the Model Registry section (3.1) left out; the commented-out ``scale_cluster`` cell dropped.
"""

# ---- Step 1: Basic Setup
from mlruntime import get_active_session

session = get_active_session()

# Create a stage that will be used to store various training artifacts, including models, logs
stage_name = "MY_STAGE"

from typing import Any  # noqa: E402

import pandas as pd  # noqa: E402
import xgboost as xgb  # noqa: E402
from sklearn.metrics import mean_squared_error, r2_score  # noqa: E402

from mlruntime import DataConnector  # noqa: E402
from mlruntime.partition import PartitionContext  # noqa: E402


def user_training_func(data_connector: DataConnector, context: PartitionContext) -> Any:
    """
    User-defined function that takes in a DataConnector object and returns a trained model.

    Args:
        data_connector: A Snowflake DataConnector object containing partitioned training data.

    Returns:
        Trained model object.
    """
    partition_id = context.partition_id
    assert partition_id is not None

    # Load partitioned data.
    pandas_df: pd.DataFrame = data_connector.to_pandas()

    # Define feature and label columns
    NUMERICAL_COLUMNS = ["X1", "X2", "X3"]
    LABEL_COLUMNS = "X4"

    # Train the model
    model = xgb.XGBRegressor()
    model.fit(pandas_df[NUMERICAL_COLUMNS], pandas_df[LABEL_COLUMNS])

    # Evaluate on training data
    preds = model.predict(pandas_df[NUMERICAL_COLUMNS])
    mse = mean_squared_error(pandas_df[LABEL_COLUMNS], preds)
    r2 = r2_score(pandas_df[LABEL_COLUMNS], preds)

    # Print metrics
    print(f"[Partition {partition_id}] Training MSE: {mse:.4f}, R²: {r2:.4f}")

    return model


import uuid  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.datasets import make_regression  # noqa: E402


def _init_snowpark_df(curr_session, partition_counts=2):
    """
    Initializes and returns a Snowpark DataFrame containing synthetic regression data.
    """
    # Generate synthetic data
    cols = ["X1", "X2", "X3", "X4"]
    X, _ = make_regression(n_samples=1000, n_features=4, noise=0.1, random_state=0)
    df = pd.DataFrame(X, columns=cols)
    df["LOCATION_ID"] = np.arange(len(df)) % partition_counts

    # Add random dates between 2020-01-01 and 2023-01-01
    date_range = pd.date_range("2020-01-01", "2023-01-01", freq="D")
    df["DATE"] = np.random.choice(date_range, size=len(df))

    # Create Snowpark DataFrame and save to a uniquely named table
    snowpark_df = curr_session.create_dataframe(df)
    table_name = f"mmt_test_{uuid.uuid4().hex.upper()}"
    snowpark_df.write.mode("overwrite").save_as_table(table_name)

    return curr_session.table(table_name)


snowpark_df = _init_snowpark_df(session)

# ---- Step 2: Invoke MMT API & Monitor MMT Training Run
from mlruntime.partition import (  # noqa: E402
    ExecutionOptions,  # noqa: F401
    ManyModelTraining,
    RunStatus,
)

trainer = ManyModelTraining(
    user_training_func,
    stage_name=stage_name,
)

run_id = "my_mmt_model_v1"
training_run = trainer.run(
    snowpark_dataframe=snowpark_df,
    partition_by="LOCATION_ID",
    run_id=run_id,
    on_existing_artifacts="overwrite",  # or "error"
)

assert training_run.wait() == RunStatus.SUCCESS

print(training_run.get_progress()["DONE"][0].logs)  # inspect result

# To obtain models trained with each partition
for partition_id in training_run.partition_details.keys():
    model = training_run.get_model(partition_id)
    assert isinstance(model, xgb.XGBRegressor)

# ---- Step 3.2: Alternative ManyModelInference Method (Container Execution)
from mlruntime.partition import ManyModelInference  # noqa: E402


def xgb_inference_func(data_connector: DataConnector, model, context: PartitionContext):
    """Simple inference function."""
    df = data_connector.to_pandas()
    X = df[["X1", "X2", "X3"]].values
    predictions = model.predict(X)

    # Write prediction results to persistent storage
    results = df.copy()
    results["predictions"] = predictions

    return predictions


mmi = ManyModelInference(
    inference_func=xgb_inference_func,
    stage_name=stage_name,
    training_run_id=run_id,  # run_id from previous many model training run at step 2
)


inference_run = mmi.run(
    partition_by="LOCATION_ID",
    snowpark_dataframe=snowpark_df,  # inference on the training data, for illustration
    run_id="basic_inference_run",
    on_existing_artifacts="overwrite",
)

assert inference_run.wait() == RunStatus.SUCCESS
print(inference_run.get_progress())


# ---- Step 4: Troubleshooting Failed Runs
def user_func_error(data_connector: DataConnector, context: PartitionContext):
    pandas_df = data_connector.to_pandas()

    NUMERICAL_COLUMNS = ["X1", "X2", "X3"]
    LABEL_COLUMNS = ["X4"]
    model = xgb.XGBRegressor()

    # INTENTIONAL USER-CODE FAILURE: fitss function does not exist
    model.fitss(pandas_df[NUMERICAL_COLUMNS], pandas_df[LABEL_COLUMNS])

    return model


model_name = "my_mmt_model"
model_version = "v2"
run_id = f"{model_name}_{model_version}"

trainer = ManyModelTraining(
    user_func_error,
    stage_name=stage_name,
)

failed_trainer_run = trainer.run(
    snowpark_dataframe=snowpark_df,
    partition_by="LOCATION_ID",
    run_id=run_id,
    on_existing_artifacts="overwrite",  # or "error"
)

# Helper function for illustartion purposes of getting failed logs.
import time  # noqa: E402

while True:
    if "FAILED" in failed_trainer_run.get_progress():
        break
    time.sleep(1)

# User can optionally choose to cancel the entire MMT run when at least one failed run is detected.
failed_trainer_run.cancel()

# Show first failed partition logs
print(failed_trainer_run.get_progress()["FAILED"][0].logs)

# ---- Step 5: Inspecting Models and Logs After Notebook/Session Closure
from mlruntime.partition import DPFRun  # noqa: E402

restored_run = DPFRun.restore_from(
    run_id=run_id,
    stage_name=stage_name,
)

# Check the status of the trained model
model_status = restored_run.status
print(model_status)

# You can also access other APIs to inspect logs and metadata
print(restored_run.get_progress())
