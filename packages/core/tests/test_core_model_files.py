"""Models mlruntime saves itself are in their framework's own format (loading runs no stored
code); only models with none are pickled. Real XGBoost, LightGBM and PyTorch models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlruntime.partition import TorchSerde
from mlruntime.store.model_files import DESCRIPTION_FILE, load_model, save_model


def _xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((200, 3))
    return x, x @ np.array([1.0, 2.0, 3.0])


def _saved(model: Any, folder: Path, **kwargs: Any) -> tuple[str, list[str]]:
    kind = save_model(model, folder, **kwargs)
    files = sorted(p.name for p in folder.iterdir())
    assert json.loads((folder / DESCRIPTION_FILE).read_text())["format"] == kind
    return kind, files


def test_gbdt_models_are_saved_in_their_own_format(tmp_path: Path) -> None:
    import lightgbm as lgb
    import xgboost as xgb

    x, y = _xy()
    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(x, label=y), num_boost_round=5)
    estimator = xgb.XGBRegressor(n_estimators=5, max_depth=2).fit(x, y)
    lgbm = lgb.train({"verbose": -1}, lgb.Dataset(x, y), num_boost_round=5)
    for name, model, kind, file in (
        ("booster", booster, "xgboost-booster", "model.ubj"),
        ("estimator", estimator, "xgboost-sklearn", "model.ubj"),
        ("lightgbm", lgbm, "lightgbm-booster", "model.txt"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        assert _saved(model, folder) == (kind, sorted([DESCRIPTION_FILE, file]))
        loaded = load_model(folder)
        assert type(loaded) is type(model)
        before = model.predict(xgb.DMatrix(x) if name == "booster" else x)
        after = loaded.predict(xgb.DMatrix(x) if name == "booster" else x)
        np.testing.assert_allclose(after, before, rtol=1e-6)


def test_torch_weights_load_without_unpickling_and_other_models_are_pickled(
    tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 1)
    weights = tmp_path / "weights"
    weights.mkdir()
    kind, files = _saved(module, weights)
    assert kind == "torch-state-dict" and "model.pkl" not in files
    stored = next(weights / f for f in files if f.startswith("model."))
    if stored.suffix == ".pt":  # no safetensors: a plain state_dict, safe to load
        assert set(torch.load(stored, weights_only=True)) == {"weight", "bias"}
    fresh = load_model(weights, torch_module=torch.nn.Linear(3, 1))
    assert torch.equal(fresh.weight, module.weight) and torch.equal(fresh.bias, module.bias)

    whole = tmp_path / "whole"
    whole.mkdir()
    assert _saved(module, whole, torch_weights=False)[0] == "pickle"
    assert torch.equal(load_model(whole).weight, module.weight)
    other = tmp_path / "other"
    other.mkdir()
    assert _saved({"a": 1}, other) == ("pickle", sorted([DESCRIPTION_FILE, "model.pkl"]))
    assert load_model(other) == {"a": 1}


def test_torch_serde_with_a_factory_keeps_weights_only(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(4, 2)
    serde = TorchSerde(model_factory=lambda: torch.nn.Linear(4, 2))
    assert serde.filename in ("model.safetensors", "model.pt")
    path = str(tmp_path / serde.filename)
    serde.write(module, path)
    loaded = serde.read(path)
    assert isinstance(loaded, torch.nn.Linear) and torch.equal(loaded.weight, module.weight)
    whole = TorchSerde()  # Snowflake's behaviour: the module pickled whole
    assert whole.filename == "model.pth"
    whole.write(module, str(tmp_path / "model.pth"))
    assert torch.equal(whole.read(str(tmp_path / "model.pth")).bias, module.bias)
