"""Sizes the adapter and the estimator's workers share (no xgboost import: the workers read
ahead with them before xgboost is loaded)."""

DEFAULT_BATCH_ROWS = 131_072
"""Rows per batch handed to XGBoost's DataIter."""

CACHE_FRACTION = 0.25
"""Share of the memory available when a matrix build starts that its decoded batches may hold."""
