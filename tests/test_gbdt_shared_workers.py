"""XGBoost and LightGBM are one family of backends: a LightGBM fit runs on the warm worker
group an XGBoost fit of the same shape left (and back), instead of making it room and starting
new worker processes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlruntime import DataConnector

FEATURES = ["a", "b", "c"]


def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.random((2_000, 3))
    return pd.DataFrame(x, columns=FEATURES).assign(y=x @ [3.0, -2.0, 1.0])


def warm_groups() -> list[object]:
    from mlruntime.runtime import distributor

    with distributor._idle_lock:
        return list(distributor._idle.values())


def test_xgboost_and_lightgbm_fits_share_one_warm_group(ray_cluster: None) -> None:
    from mlruntime.runtime.distributor import release_idle_groups
    from mlruntime_lightgbm import LightGBMEstimator
    from mlruntime_xgboost import XGBEstimator

    release_idle_groups()
    data = frame()
    dc = DataConnector.from_dataframe(data)
    x, y = data[FEATURES], data["y"].to_numpy()

    xgb_model = XGBEstimator(n_estimators=30, verbose=False).fit(dc, FEATURES, "y")
    (group,) = warm_groups()
    lgb_model = LightGBMEstimator(n_estimators=30, verbose=False).fit(dc, FEATURES, "y")
    assert warm_groups() == [group]  # the same group, not a new one beside or instead of it
    again = XGBEstimator(n_estimators=30, verbose=False).fit(dc, FEATURES, "y")
    assert warm_groups() == [group]

    import xgboost as xgb

    for prediction in (
        xgb_model.predict(xgb.DMatrix(x)),
        lgb_model.predict(x.to_numpy()),
        again.predict(xgb.DMatrix(x)),
    ):
        assert np.sqrt(np.mean((prediction - y) ** 2)) < 0.5 * y.std()
    release_idle_groups()
