"""DataConnector -> lightgbm.Dataset, read into one preallocated float32 matrix.

Usable without Ray: ``DataConnector.from_sources("data/").to_lightgbm_dataset(label_col="y")``.
String and dictionary columns become categorical features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import pyarrow as pa

from mlruntime.connector import DataConnector
from mlruntime.training import check_training_columns, is_categorical
from mlruntime_lightgbm.estimator import _categories, shard_matrix

__all__ = ["to_lightgbm_dataset"]


def to_lightgbm_dataset(
    connector: DataConnector,
    label_col: str | None = None,
    input_cols: Sequence[str] | None = None,
    *,
    weight_col: str | None = None,
    reference: Any = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """Build a ``lightgbm.Dataset`` from the connector's rows (``to_lightgbm_dataset``).

    Args:
        connector: The data.
        label_col: Label column (``None`` for data to predict on).
        input_cols: Feature columns (default: every column but label and weight).
        weight_col: Optional sample weights.
        reference: For validation data, the training Dataset (shares its bins).
        params: Dataset parameters (``max_bin`` ...).

    Raises:
        ColumnError: For unknown or unusable columns.
        DataError: For null labels.
    """
    features = check_training_columns(
        connector, input_cols, label_col, weight_col, allow_categorical=True
    )
    schema = connector.schema
    categories: dict[str, pa.Array] = {
        f: _categories(connector, f) for f in features if is_categorical(schema.field(f).type)
    }
    x, y, w = shard_matrix(connector, features, label_col, weight_col, categories)
    cat_idx = [i for i, f in enumerate(features) if f in categories]
    return lgb.Dataset(
        x,
        label=y,
        weight=w,
        feature_name=list(features),
        categorical_feature=cat_idx or "auto",
        reference=reference,
        params=params,
        free_raw_data=True,
    )
