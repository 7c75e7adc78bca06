"""DataConnector -> xgboost.QuantileDMatrix / DMatrix, streamed batch by batch.

Usable without Ray: ``DataConnector.from_sources("data/").to_xgboost_dmatrix(label_col="y")``.
A QuantileDMatrix is built through XGBoost's DataIter, which passes over the data several times
(four in XGBoost 3: sizes, quantile sketches, the binned matrix). The decoded batches of the
first pass are kept for the others while they fit in a quarter of the memory available (at most
one decoded copy, as a user holding the matrix would; never the 3x of a pandas round trip); past
that every pass reads again, and peak memory stays near the quantized matrix plus one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import xgboost

from mlruntime.data.connector import DataConnector
from mlruntime.train.features import available_memory, check_training_columns, feature_batches
from mlruntime_xgboost._defaults import CACHE_FRACTION, DEFAULT_BATCH_ROWS

__all__ = ["ConnectorIter", "build_dmatrix", "to_xgboost_dmatrix"]


class ConnectorIter(xgboost.DataIter):
    """XGBoost's DataIter over a connector's ``(X, y, w)`` batches.

    The first pass's batches are kept for the next passes while they take at most
    ``cache_bytes`` (default: ``CACHE_FRACTION`` of :func:`available_memory`); past that they
    are dropped and every pass reads the connector again. ``first_pass``: batches already being
    read (:func:`~mlruntime.train.features.read_ahead_features` over the same connector and
    columns), taken by the first pass instead of reading.
    """

    def __init__(
        self,
        connector: DataConnector,
        input_cols: Sequence[str],
        label_col: str | None,
        weight_col: str | None,
        batch_size: int = DEFAULT_BATCH_ROWS,
        cache_bytes: int | None = None,
        first_pass: Iterator[Any] | None = None,
    ) -> None:
        self._source = (connector, list(input_cols), label_col, weight_col)
        self._batch_size = batch_size
        self._batches: Iterator[Any] | None = None
        self._ahead = first_pass  # taken by the first pass that reads (XGBoost resets first)
        if cache_bytes is None:
            cache_bytes = int((available_memory() or 0) * CACHE_FRACTION)
        self._budget = cache_bytes
        self._cache: list[tuple[Any, Any, Any]] | None = []
        self._cached_bytes = 0
        self._complete = False  # a whole pass is in the cache
        self._replay: int | None = None  # position in the cache during a replayed pass
        super().__init__(release_data=True)

    @property
    def cached(self) -> bool:
        """Whether passes after the first replay the kept batches (no second read)."""
        return self._cache is not None and self._complete

    def next(self, input_data: Any) -> bool:
        if self._replay is not None:
            assert self._cache is not None
            if self._replay >= len(self._cache):
                return False
            x, y, w = self._cache[self._replay]
            self._replay += 1
        else:
            if self._batches is None and self._ahead is not None:
                self._batches, self._ahead = self._ahead, None
            elif self._batches is None:
                connector, cols, label, weight = self._source
                self._batches = feature_batches(
                    connector, cols, label, weight, batch_size=self._batch_size
                )
            try:
                x, y, w = next(self._batches)
            except StopIteration:
                self._complete = True
                return False
            self._keep(x, y, w)
        kwargs: dict[str, Any] = {"data": x, "feature_names": self._source[1]}
        if y is not None:
            kwargs["label"] = y
        if w is not None:
            kwargs["weight"] = w
        input_data(**kwargs)
        return True

    def _keep(self, x: np.ndarray, y: np.ndarray | None, w: np.ndarray | None) -> None:
        if self._cache is None:
            return
        self._cached_bytes += sum(a.nbytes for a in (x, y, w) if a is not None)
        if self._cached_bytes > self._budget:
            self._cache = None  # too big to keep: later passes read again
        else:
            self._cache.append((x, y, w))

    def reset(self) -> None:
        self._batches = None
        if self.cached:
            self._replay = 0
        elif self._cache is not None:  # a pass cut short: start the cache over
            self._cache, self._cached_bytes = [], 0


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
    first_pass: Iterator[Any] | None = None,
    cache_bytes: int | None = None,
) -> Any:
    """Build the matrix from already-checked columns (workers call this on their shard).

    ``first_pass``: these columns' ``(X, y, w)`` batches already being read (read ahead), used
    instead of a first read. ``cache_bytes``: as for :class:`ConnectorIter`.
    """
    if quantile:
        it = ConnectorIter(
            connector,
            input_cols,
            label_col,
            weight_col,
            batch_size,
            cache_bytes=cache_bytes,
            first_pass=first_pass,
        )
        return xgboost.QuantileDMatrix(it, ref=ref, max_bin=max_bin, nthread=nthread)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ws: list[np.ndarray] = []
    batches = first_pass
    if batches is None:
        batches = feature_batches(
            connector, input_cols, label_col, weight_col, batch_size=batch_size
        )
    for x, y, w in batches:
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
