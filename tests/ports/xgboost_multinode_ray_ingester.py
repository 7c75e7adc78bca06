"""Port of Snowflake's multi-node XGBoost example with ``RayDataIngester``.

Source: docs.snowflake.com, "Container Runtime on multi-node clusters" (developer-guide/
snowflake-ml/container-runtime-multi-node). Differences from the original: the imports only.
The table is made by the test harness (the original's commented-out data-generation SQL).
"""

from mlruntime import DataConnector, RayDataIngester, get_active_session
from mlruntime_xgboost import XGBEstimator, XGBScalingConfig

session = get_active_session()
table_name = "MULTINODE_SAMPLE_TRAIN_DS"

sample_train_df = session.table(table_name)
INPUT_COLS = list(sample_train_df.columns)
LABEL_COL = "TARGET"
INPUT_COLS.remove(LABEL_COL)

params = {
    "eta": 0.1,
    "max_depth": 8,
    "min_child_weight": 100,
    "tree_method": "hist",
}

scaling_config = XGBScalingConfig(
    use_gpu=False
)

estimator = XGBEstimator(
    n_estimators=50,
    objective="reg:squarederror",
    params=params,
    scaling_config=scaling_config,
)
data_connector = DataConnector.from_dataframe(
    sample_train_df, ingestor_class=RayDataIngester
)

xgb_model = estimator.fit(
    data_connector, input_cols=INPUT_COLS, label_col=LABEL_COL
)
