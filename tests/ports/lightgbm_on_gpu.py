"""Port of Snowflake's "LightGBM on GPU" quickstart, run on CPU.

Source: Snowflake-Labs/sfguide-getting-started-with-container-runtime-apis,
LightGBM_on_GPU_Quickstart.ipynb (all code cells). Differences from the original: the imports,
``use_gpu=True`` -> ``use_gpu=False`` and ``device="gpu"`` -> ``device="cpu"`` (no GPU here). The VEHICLE table is made
by the test harness (the quickstart loads it from a CSV on S3).
"""

# Initialize Snowflake session
from mlruntime import get_active_session
session = get_active_session()

# Load data from the Snowflake table
table_name = 'CR_QUICKSTART.PUBLIC.VEHICLE'
snowpark_df = session.table(table_name)

# Convert Snowpark DataFrame to Pandas DataFrame using DataConnector
from mlruntime import DataConnector
pandas_df = DataConnector.from_dataframe(snowpark_df).to_pandas()

# Drop the 'C2' column (datetime column) from the dataset
pandas_df = pandas_df.drop(columns=['C2'])

# Split the data into features (X) and target (y). Assume C6 is the target column.
X = pandas_df.drop('C6', axis=1)
y = pandas_df['C6']

# Train-test split: 90% training and 10% testing
from sklearn.model_selection import train_test_split
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.1, random_state=42)

# Print the sizes of the splits
print(f"Training set size: {X_train.shape[0]} rows")
print(f"Test set size: {X_test.shape[0]} rows")

# Import OSS LightGBM
import lightgbm as lgb

# Train a LightGBM regressor using the OSS approach
print('Training a sample LightGBM regressor using OSS solution')
oss_model = lgb.LGBMRegressor(n_estimators=100, random_state=42)
oss_model.fit(X_train, y_train)

# Make predictions on the test set using the OSS model
y_pred_oss = oss_model.predict(X_test)

# Print sample predictions
print(f'Sample predictions: {y_pred_oss[:10]}')

# Import necessary classes for Snowflake Container Runtime training
from mlruntime_lightgbm import LightGBMEstimator, LightGBMScalingConfig

# Set up the scaling configuration for multi-GPU usage
scaling_config = LightGBMScalingConfig(
    num_workers=-1,            # Use all available workers
    num_cpu_per_worker=-1,     # Use all available CPU cores per worker
    use_gpu=False              # Enable GPU for training
)

# Define the LightGBMEstimator for training
estimator = LightGBMEstimator(
    n_estimators=100,                     # Number of trees
    objective='regression',               # Objective function for regression
    params=dict(device="cpu"),            # Params to specify GPU usage
    scaling_config=scaling_config         # Use GPU and multi-worker scaling
)

# Drop the 'C2' column from the Snowpark DataFrame for training
snowpark_df = snowpark_df.drop(['C2'])

# Define the label column and input columns
label_col = 'C6'
input_cols = [col for col in snowpark_df.columns if col != 'C6']

# Split the Snowpark DataFrame into train and test sets
train_snowpark_df = snowpark_df.sample(0.9)  # 90% for training
test_snowpark_df = snowpark_df.subtract(train_snowpark_df)  # Remaining 10% for testing

# Drop the label column from the test data to match the input structure for prediction
test_snowpark_df = test_snowpark_df.drop([label_col])

# Create DataConnectors for the training and testing sets
train_data_connector = DataConnector.from_dataframe(train_snowpark_df)
test_data_connector = DataConnector.from_dataframe(test_snowpark_df)

# Train the model using Snowflake's Container Runtime API
estimator.fit(
    train_data_connector,   # Data for training
    input_cols=input_cols,  # Input features (all columns except 'C6')
    label_col=label_col     # Target column ('C6')
)

# Make predictions on the test set using the Snowflake Container Runtime model
y_pred_snowflake = estimator.predict(test_data_connector)

# Display the first 10 predictions
print(f'Snowflake Container Runtime predictions: {y_pred_snowflake[:10]}')
