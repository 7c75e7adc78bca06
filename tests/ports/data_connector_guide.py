"""Port of Snowflake's "Load and write data" guide, its code blocks run in order as one script.

Source: docs.snowflake.com/en/developer-guide/snowflake-ml/load-data (the Python code blocks,
concatenated in the order the guide gives them). Differences from the original:

- the imports: ``snowflake.ml.data.data_connector`` and ``snowflake.snowpark.context`` ->
  ``mlruntime``; ``snowflake.ml.modeling.distributors.xgboost.xgboost_estimator`` ->
  ``mlruntime_xgboost``;
- ``clf = xgb.Classifier()`` -> ``clf = xgb.XGBClassifier()`` (a defect of the published code:
  xgboost has no ``Classifier``);
- ``y = batch_data.pop(label_col).squeeze()`` -> ``y = batch.pop(label_col).squeeze()`` (a defect
  of the published code: ``batch_data`` is undefined; the loop variable is ``batch``);
- ``NUMERICAL_COLS = ["FEATURE1", "FEATURE2"]`` and ``LABEL_COL = "TARGET"`` are defined right
  before the ``XGBEstimator`` fit (the guide uses them without defining them).

Kept as published: the table name ``"example-table-name"`` (DuckDB accepts it), and the torch
block's ``torch.stack([...])`` without ``dim``, which stacks the two features as rows: a
``(2, 32)`` tensor per batch rather than ``(32, 2)``. ``file_cache_config`` is accepted and
ignored by mlruntime.

Not ported (blocks of the guide left out):

- ``DataConnector.from_dataset(snowflake_dataset)``: ``snowflake_dataset`` is never defined in
  the guide (a Dataset would come from ``snowflake.ml.dataset``; see the Datasets guide);
- the ``ShardedDataConnector`` digits example: it uses the legacy
  ``snowflake.ml.modeling.pytorch`` names (``PyTorchTrainer``, ``ScalingConfig``,
  ``getContext``), which mlruntime does not provide, and reads ``batch_size`` before assigning
  it;
- the ``SFStageParquetDataSource`` example: it reads from a Snowflake stage through
  ``snowflake.ml.ray.datasource``, which mlruntime does not provide.

The tables ``"example-table-name"`` and ``TRAINING_TABLE`` (``FEATURE1``, ``FEATURE2``,
``TARGET``) are made by the test harness; the guide assumes they exist.
"""

from mlruntime import DataConnector
from mlruntime import get_active_session

session = get_active_session()

# Create DataConnector from a Snowflake table
data_connector = DataConnector.from_dataframe(session.table("example-table-name"))

from mlruntime import DataConnector
from mlruntime import get_active_session
import xgboost as xgb

session = get_active_session()

# Specify training table location
table_name = "TRAINING_TABLE"

# Load table into DataConnector
data_connector = DataConnector.from_dataframe(session.table(table_name))

# Convert to pandas dataframe
pandas_df = data_connector.to_pandas()

# Prepare features and labels
label_column_name = 'TARGET'
X, y = pandas_df.drop(label_column_name, axis=1), pandas_df[label_column_name]

# Train classifier
clf = xgb.XGBClassifier()
clf.fit(X, y)

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from mlruntime import DataConnector

# Create DataConnector (see previous examples)
# data_connector = DataConnector.from_dataframe(...)

# Convert to PyTorch dataset
torch_dataset = data_connector.to_torch_dataset(batch_size=32)
dataloader = DataLoader(torch_dataset, batch_size=None)

label_col = 'TARGET'
feature_cols = ['FEATURE1', 'FEATURE2']

for batch_idx, batch in enumerate(dataloader):
    y = batch.pop(label_col).squeeze()
    X = torch.stack(
        [tensor.squeeze() for key, tensor in batch.items() if key in feature_cols]
    )

from mlruntime import DataConnector

# Create DataConnector (see previous examples)
# data_connector = DataConnector.from_dataframe(...)

# Convert to TensorFlow dataset
tf_ds = data_connector.to_tf_dataset(
    batch_size=4,
    shuffle=True,
    drop_last_batch=True
)

for batch in tf_ds:
    print(batch)

from mlruntime import DataConnector
from mlruntime_xgboost import (
    XGBEstimator,
    XGBScalingConfig,
)
from mlruntime import get_active_session

session = get_active_session()

# Create DataConnector from a Snowpark dataframe
snowflake_df = session.table("TRAINING_TABLE")
data_connector = DataConnector.from_dataframe(snowflake_df)

# Create Snowflake XGBoost estimator
snowflake_est = XGBEstimator(
    n_estimators=1,
    objective="reg:squarederror",
    scaling_config=XGBScalingConfig(use_gpu=False),
)

# Train using the data connector
# When using a data connector, input_cols and label_col must be provided
NUMERICAL_COLS = ["FEATURE1", "FEATURE2"]
LABEL_COL = "TARGET"
fit_booster = snowflake_est.fit(
    data_connector,
    input_cols=NUMERICAL_COLS,
    label_col=LABEL_COL
)

data_connector = DataConnector.from_dataframe(
    session.table("TRAINING_TABLE"),
    file_cache_config={
        "max_disk_pct": 60,  # Adjust based on dataset size
    }
)
