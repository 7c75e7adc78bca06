"""DataConnector -> lightgbm.Dataset, read into one preallocated float32 matrix.

Usable without Ray: ``DataConnector.from_sources("data/").to_lightgbm_dataset(label_col="y")``.
String and dictionary columns become categorical features. lightgbm is imported only to build
the Dataset (workers read their shard with :func:`shard_matrix` while it loads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from mlruntime.data.connector import DataConnector
from mlruntime.train.features import check_training_columns, is_categorical, table_to_matrix

__all__ = ["categories_of", "merge_categories", "shard_matrix", "to_lightgbm_dataset"]


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
    import lightgbm as lgb

    features = check_training_columns(
        connector, input_cols, label_col, weight_col, allow_categorical=True
    )
    schema = connector.schema
    categories: dict[str, pa.Array] = {
        f: categories_of(connector, f) for f in features if is_categorical(schema.field(f).type)
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


def shard_matrix(
    connector: DataConnector,
    features: Sequence[str],
    label_col: str | None,
    weight_col: str | None = None,
    categories: dict[str, pa.Array] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read ``connector`` into one float32 matrix (preallocated, filled table by table), and
    the label and weight vectors. Categorical columns become codes of ``categories``."""
    n = connector.count_rows()
    x = np.empty((n, len(features)), dtype=np.float32)
    y = np.empty(n, dtype=np.float32) if label_col else None
    w = np.empty(n, dtype=np.float32) if weight_col else None
    extra = [c for c in (label_col, weight_col) if c]
    pos = 0
    for table in connector.iter_tables(columns=list(dict.fromkeys([*features, *extra]))):
        rows = table.num_rows
        x[pos : pos + rows] = table_to_matrix(table, features, categories=categories)
        if y is not None:
            y[pos : pos + rows] = table_to_matrix(table, [label_col])[:, 0]  # type: ignore[list-item]
        if w is not None:
            w[pos : pos + rows] = table_to_matrix(table, [weight_col])[:, 0]  # type: ignore[list-item]
        pos += rows
    return x, y, w


def categories_of(connector: DataConnector, column: str) -> pa.Array:
    """The sorted distinct non-null values of a string/dictionary column: its categories."""
    import pyarrow.compute as pc

    values = connector.select([column]).to_arrow().column(0)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    unique = pc.unique(values.combine_chunks()).drop_null()
    return unique.take(pc.array_sort_indices(unique))


def merge_categories(
    per_rank: Sequence[dict[str, pa.Array]], columns: Sequence[str]
) -> dict[str, pa.Array]:
    """The sorted union of every rank's categories of each of ``columns``."""
    import pyarrow.compute as pc

    merged: dict[str, pa.Array] = {}
    for column in columns:
        values = pa.concat_arrays([rank[column] for rank in per_rank])
        unique = pc.unique(values)
        merged[column] = unique.take(pc.array_sort_indices(unique))
    return merged
