"""DataConnector -> DMatrix / QuantileDMatrix without Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from mlruntime import DataConnector
from mlruntime.errors import ColumnError, DataError

FEATURES = [f"f{i}" for i in range(5)]


def test_quantile_dmatrix_streams_every_row_from_parquet(
    parquet_folder: Path, frame: pd.DataFrame
) -> None:
    dc = DataConnector.from_sources(parquet_folder)
    dm = dc.to_xgboost_dmatrix(label_col="y", input_cols=FEATURES, batch_size=300)
    assert isinstance(dm, xgb.QuantileDMatrix)
    assert (dm.num_row(), dm.num_col()) == (4000, 5)
    assert dm.feature_names == FEATURES
    np.testing.assert_allclose(dm.get_label(), frame["y"].to_numpy(), rtol=1e-6)
    booster = xgb.train({"max_depth": 3}, dm, 5)
    reference = xgb.train({"max_depth": 3}, xgb.QuantileDMatrix(frame[FEATURES], frame["y"]), 5)
    np.testing.assert_allclose(
        booster.inplace_predict(frame[FEATURES].to_numpy()),
        reference.inplace_predict(frame[FEATURES].to_numpy()),
        rtol=1e-5,
    )


def test_plain_dmatrix_with_weights_and_default_features(frame: pd.DataFrame) -> None:
    frame = frame.assign(w=np.linspace(0.5, 1.5, len(frame)).astype(np.float32))
    dm = DataConnector.from_dataframe(frame.drop(columns=["key"])).to_xgboost_dmatrix(
        label_col="y", weight_col="w", quantile=False
    )
    assert isinstance(dm, xgb.DMatrix) and not isinstance(dm, xgb.QuantileDMatrix)
    assert dm.feature_names == FEATURES  # every column but label and weight
    np.testing.assert_allclose(dm.get_weight(), frame["w"].to_numpy())


def test_adapter_refuses_bad_columns(frame: pd.DataFrame) -> None:
    dc = DataConnector.from_dataframe(frame.assign(name="a"))
    with pytest.raises(ColumnError, match="column 'GHOST' is not in the data"):
        dc.to_xgboost_dmatrix(label_col="GHOST")
    with pytest.raises(ColumnError, match=r"feature column 'name' has type (large_)?string"):
        dc.to_xgboost_dmatrix(label_col="y", input_cols=["f0", "name"])
    with pytest.raises(DataError, match="label column 'y' has 1 null"):
        DataConnector.from_dataframe(
            frame.assign(y=[None] + [1.0] * (len(frame) - 1))
        ).to_xgboost_dmatrix(label_col="y", input_cols=FEATURES)


def _assert_same_matrix(dm: xgb.QuantileDMatrix, frame: pd.DataFrame) -> None:
    """Rows, labels and bin edges equal a 64-bin QuantileDMatrix built from the frame."""
    reference = xgb.QuantileDMatrix(frame[FEATURES].to_numpy(), frame["y"], max_bin=64)
    assert dm.num_row() == len(frame)
    np.testing.assert_array_equal(dm.get_label(), reference.get_label())
    for got, want in zip(dm.get_quantile_cut(), reference.get_quantile_cut(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the adapter's reads of a connector (one per call of ``feature_batches``)."""
    from mlruntime_xgboost import adapter

    reads: list[int] = []
    original = adapter.feature_batches

    def counted(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        reads.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(adapter, "feature_batches", counted)
    return reads


@pytest.mark.parametrize("budget", [None, 0, 20_000])  # default, nothing kept, two batches
def test_the_second_pass_replays_kept_batches_within_the_memory_budget(
    parquet_folder: Path, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch, budget: int | None
) -> None:
    from mlruntime_xgboost import adapter

    reads = _count_reads(monkeypatch)
    connector = DataConnector.from_sources(parquet_folder)
    it = adapter.ConnectorIter(connector, FEATURES, "y", None, batch_size=500, cache_bytes=budget)
    dm = xgb.QuantileDMatrix(it, max_bin=64)
    # 8 batches of 500 rows x (5 features + label) float32 = 12,000 bytes each
    assert it.cached is (budget is None)
    if budget is None:
        assert len(reads) == 1
    else:  # XGBoost makes several passes (four in 3.x): each one reads again
        assert len(reads) >= 2
    _assert_same_matrix(dm, frame)


@pytest.mark.parametrize("budget", [None, 0])  # kept for the next passes, or read again
def test_the_first_pass_takes_batches_read_ahead(
    parquet_folder: Path, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch, budget: int | None
) -> None:
    from mlruntime.train.features import read_ahead_features
    from mlruntime_xgboost import adapter

    connector = DataConnector.from_sources(parquet_folder)
    # started before anything else, as a worker does before importing xgboost
    ahead = read_ahead_features(connector, FEATURES, "y", batch_size=500)
    reads = _count_reads(monkeypatch)
    it = adapter.ConnectorIter(
        connector, FEATURES, "y", None, batch_size=500, cache_bytes=budget, first_pass=ahead
    )
    dm = xgb.QuantileDMatrix(it, max_bin=64)
    if budget is None:
        assert reads == []  # the read-ahead was the only read
    else:  # the first pass was the read-ahead, the others read again
        assert len(reads) >= 1
    _assert_same_matrix(dm, frame)


def test_a_worker_reads_ahead_and_caches_within_one_budget_shared_by_its_node(
    parquet_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlruntime_xgboost import estimator

    class Ctx:  # what the trainer asks of its worker's context
        def get_local_world_size(self) -> int:
            return 4

        def get_dataset_map(self) -> dict[str, DataConnector]:
            return {"train": DataConnector.from_sources(parquet_folder)}

    monkeypatch.setattr(estimator, "available_memory", lambda: 400_000_000)
    trainer = estimator._XGBTrainer()
    spec = {"features": FEATURES, "label": "y", "weight": None}
    ahead = trainer.read_ahead(Ctx(), spec)  # type: ignore[arg-type]
    try:
        # a quarter of what is available, split among the node's 4 workers, taken once for
        # the head start and the matrix build's cache of the same batches
        assert trainer.cache_bytes == 25_000_000
        batch = estimator.DEFAULT_BATCH_ROWS * (len(FEATURES) + 1) * 4
        assert ahead is not None and ahead._limit == 25_000_000 // batch == 7
    finally:
        assert ahead is not None
        ahead.close()
