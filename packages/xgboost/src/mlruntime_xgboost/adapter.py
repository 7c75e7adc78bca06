"""DataConnector -> xgboost.QuantileDMatrix / DMatrix, streamed batch by batch.

Usable without Ray: ``DataConnector.from_sources("data/").to_xgboost_dmatrix(label_col="y")``.
A QuantileDMatrix is built through XGBoost's DataIter, so peak memory stays near the quantized
matrix plus one batch, not the 3x of a pandas round trip.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import xgboost

from mlruntime.data.connector import DataConnector
from mlruntime.train.features import check_training_columns, feature_batches

__all__ = ["ConnectorIter", "build_dmatrix", "to_xgboost_dmatrix"]

DEFAULT_BATCH_ROWS = 131_072


class ConnectorIter(xgboost.DataIter):
    """XGBoost's DataIter over a connector's ``(X, y, w)`` batches."""

    def __init__(
        self,
        connector: DataConnector,
        input_cols: Sequence[str],
        label_col: str | None,
        weight_col: str | None,
        batch_size: int = DEFAULT_BATCH_ROWS,
    ) -> None:
        self._source = (connector, list(input_cols), label_col, weight_col)
        self._batch_size = batch_size
        self._batches: Iterator[Any] | None = None
        super().__init__(release_data=True)

    def next(self, input_data: Any) -> bool:
        if self._batches is None:
            connector, cols, label, weight = self._source
            self._batches = feature_batches(
                connector, cols, label, weight, batch_size=self._batch_size
            )
        try:
            x, y, w = next(self._batches)
        except StopIteration:
            return False
        kwargs: dict[str, Any] = {"data": x, "feature_names": self._source[1]}
        if y is not None:
            kwargs["label"] = y
        if w is not None:
            kwargs["weight"] = w
        input_data(**kwargs)
        return True

    def reset(self) -> None:
        self._batches = None


def build_dmatrix(
    connector: DataConnector,
    input_cols: Sequence[str],
    label_col: str | None,
    weight_col: str | None = None,
    *,
    quantile: bool = True,
    ref: Any = None,
    max_bin: int | None = None,
    batch_size: int = DEFAULT_BATCH_ROWS,
    nthread: int | None = None,
) -> Any:
    """Build the matrix from already-checked columns (workers call this on their shard)."""
    if quantile:
        it = ConnectorIter(connector, input_cols, label_col, weight_col, batch_size)
        return xgboost.QuantileDMatrix(it, ref=ref, max_bin=max_bin, nthread=nthread)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ws: list[np.ndarray] = []
    for x, y, w in feature_batches(
        connector, input_cols, label_col, weight_col, batch_size=batch_size
    ):
        xs.append(x)
        if y is not None:
            ys.append(y)
        if w is not None:
            ws.append(w)
    x_all = np.concatenate(xs) if xs else np.empty((0, len(input_cols)), np.float32)
    return xgboost.DMatrix(
        x_all,
        label=np.concatenate(ys) if label_col and ys else None,
        weight=np.concatenate(ws) if weight_col and ws else None,
        feature_names=list(input_cols),
        nthread=nthread,
    )


def to_xgboost_dmatrix(
    connector: DataConnector,
    label_col: str | None = None,
    input_cols: Sequence[str] | None = None,
    *,
    weight_col: str | None = None,
    quantile: bool = True,
    ref: Any = None,
    max_bin: int | None = None,
    batch_size: int = DEFAULT_BATCH_ROWS,
    nthread: int | None = None,
) -> Any:
    """Build an XGBoost matrix from the connector's rows (``DataConnector.to_xgboost_dmatrix``).

    Args:
        connector: The data.
        label_col: Label column (``None`` for a matrix to predict on).
        input_cols: Feature columns (default: every column but label and weight).
        weight_col: Optional sample weights.
        quantile: Build a streamed ``QuantileDMatrix`` (for ``hist``) instead of a ``DMatrix``.
        ref: For an evaluation QuantileDMatrix, the training one (shares its bin edges).
        max_bin: Bins per feature for a QuantileDMatrix.
        batch_size: Rows per streamed batch.
        nthread: Threads XGBoost may use to build it.

    Returns:
        ``xgboost.QuantileDMatrix`` or ``xgboost.DMatrix``.

    Raises:
        ColumnError: For unknown or non-numeric columns.
        DataError: For null labels.
    """
    features = check_training_columns(connector, input_cols, label_col, weight_col)
    return build_dmatrix(
        connector,
        features,
        label_col,
        weight_col,
        quantile=quantile,
        ref=ref,
        max_bin=max_bin,
        batch_size=batch_size,
        nthread=nthread,
    )
