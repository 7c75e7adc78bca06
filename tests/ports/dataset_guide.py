"""Port of Snowflake's "Snowflake Datasets" guide.

Source: docs.snowflake.com, developer-guide/snowflake-ml/dataset (its code blocks, in order).
Differences from the original:
- imports: ``from snowflake.ml import dataset`` -> ``import mlruntime as dataset``; the session
  comes from ``mlruntime.get_active_session()`` instead of ``Session.builder.configs(...)``;
- the table is generated with DuckDB SQL (``range``, ``random()``) instead of Snowflake's
  ``table(generator(rowcount => 100))`` / ``uniform(0, 10, random(1))``;
- ``model`` (left undefined in the guide, "details not included for brevity") is an identity
  function, and the two blocks that build ``input_tensor`` keep the guide's code;
- the PyTorch block builds tensors with ``torch.as_tensor`` instead of ``torch.from_numpy``:
  ``to_torch_datapipe`` (deprecated in Snowflake) is ``to_torch_dataset`` here, which yields
  tensors where Snowflake's datapipe yielded numpy arrays;
- not ported: the Snowpark ML ``RandomForestRegressor`` block (``snowflake.ml.modeling``) and
  ``df.explain()``, and the dask block (dask is not installed).
"""

import mlruntime as dataset
from mlruntime import get_active_session

session = get_active_session()

def model(x):
    return x

# Create a Snowpark DataFrame to serve as a data source
# In this example, we generate a random table with 100 rows and 1 column
df = session.sql(
  "select (random() * 10)::INT as x, (random() * 10)::INT as y from range(100)"
)

# Materialize DataFrame contents into a Dataset
ds1 = dataset.create_from_dataframe(
    session,
    "my_dataset",
    "version1",
    input_dataframe=df)

# Inspect currently selected version
print(ds1.selected_version) # DatasetVersion(dataset='my_dataset', version='version1')
print(ds1.selected_version.created_on) # Prints creation timestamp

# List all versions in the Dataset
print(ds1.list_versions()) # ["version1"]

# Create a new version
ds2 = ds1.create_version("version2", df)
print(ds1.selected_version.name)  # "version1"
print(ds2.selected_version.name)  # "version2"
print(ds1.list_versions())        # ["version1", "version2"]

# selected_version is immutable, meaning switching versions with
# ds1.select_version() returns a new Dataset object without
# affecting ds1.selected_version
ds3 = ds1.select_version("version2")
print(ds1.selected_version.name)  # "version1"
print(ds3.selected_version.name)  # "version2"

import tensorflow as tf

# Convert Snowflake Dataset to TensorFlow Dataset
tf_dataset = ds1.read.to_tf_dataset(batch_size=32)

# Train a TensorFlow model
for batch in tf_dataset:
    # Extract and build tensors as needed
    input_tensor = tf.stack(list(batch.values()), axis=-1)

    # Forward pass (details not included for brevity)
    outputs = model(input_tensor)

import torch

# Convert Snowflake Dataset to PyTorch DataPipe
pt_datapipe = ds1.read.to_torch_datapipe(batch_size=32)

# Train a PyTorch model
for batch in pt_datapipe:
    # Extract and build tensors as needed
    input_tensor = torch.stack([torch.as_tensor(v) for v in batch.values()], dim=-1)

    # Forward pass (details not included for brevity)
    outputs = model(input_tensor)

# Get a Snowpark DataFrame
ds_df = ds1.read.to_snowpark_dataframe()

print(ds1.read.files()) # ['snow://dataset/my_dataset/versions/version1/data_0_0_0.snappy.parquet']

import pyarrow.parquet as pq
pd_ds = pq.ParquetDataset(ds1.read.files(), filesystem=ds1.read.filesystem())
