"""How many-model runs save and load a partition's model: pickle and framework formats.

Each serde names its file and writes/reads it at a local path. Framework imports happen inside
the methods, so this module imports no framework.
"""

from __future__ import annotations

import json
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from mlruntime.store.model_files import (
    import_framework,
    load_torch_weights,
    save_torch_weights,
    torch_weights_file,
)

__all__ = [
    "KerasSerde",
    "LightGBMSerde",
    "ModelSerde",
    "PickleSerde",
    "TensorFlowSerde",
    "TorchSerde",
    "XGBoostSerde",
]


class ModelSerde(ABC):
    """Saves and loads one model (Snowflake's ``ModelSerde``): subclass it for other formats."""

    @property
    @abstractmethod
    def filename(self) -> str:
        """The model's artifact name (``"model.pkl"`` ...)."""

    @abstractmethod
    def write(self, model: Any, file_path: str) -> None:
        """Save ``model`` at ``file_path``."""

    @abstractmethod
    def read(self, file_path: str) -> Any:
        """Load the model saved at ``file_path``."""


class PickleSerde(ModelSerde):
    """Any picklable model, as ``model.pkl`` (the default; trusted input only)."""

    @property
    def filename(self) -> str:
        return "model.pkl"

    def write(self, model: Any, file_path: str) -> None:
        with open(file_path, "wb") as handle:
            pickle.dump(model, handle, protocol=pickle.HIGHEST_PROTOCOL)

    def read(self, file_path: str) -> Any:
        with open(file_path, "rb") as handle:
            return pickle.load(handle)


class TorchSerde(ModelSerde):
    """A PyTorch module.

    Without ``model_factory`` (Snowflake's behaviour) the module is saved whole with
    ``torch.save`` as ``model.pth``: loading it unpickles, which runs code, so load only runs
    you trust. With ``model_factory`` (a function returning a new module of the same
    architecture) only the weights are saved, as ``model.safetensors`` where safetensors is
    installed (else a ``state_dict`` in ``model.pt``, read with ``weights_only=True``), and
    loading runs no stored code.

    Args:
        model_factory: Builds the module the weights are loaded into.
    """

    def __init__(self, model_factory: Callable[[], Any] | None = None) -> None:
        self.model_factory = model_factory
        self._weights_file = torch_weights_file() if model_factory is not None else None

    @property
    def filename(self) -> str:
        return self._weights_file or "model.pth"

    def write(self, model: Any, file_path: str) -> None:
        if self.model_factory is None:
            import_framework("torch").save(model, file_path)
            return
        save_torch_weights(model, file_path)

    def read(self, file_path: str) -> Any:
        if self.model_factory is None:
            return import_framework("torch").load(file_path, weights_only=False)
        module = self.model_factory()
        module.load_state_dict(load_torch_weights(file_path))
        return module


class TensorFlowSerde(ModelSerde):
    """A Keras model as ``model.keras`` (Keras 3's format; Snowflake writes ``model.h5``)."""

    @property
    def filename(self) -> str:
        return "model.keras"

    def write(self, model: Any, file_path: str) -> None:
        model.save(file_path)

    def read(self, file_path: str) -> Any:
        return import_framework("keras").models.load_model(file_path)


KerasSerde = TensorFlowSerde
"""Another name of :class:`TensorFlowSerde`."""


class XGBoostSerde(ModelSerde):
    """An XGBoost ``Booster`` or scikit-learn estimator in XGBoost's JSON format
    (``model.json``); an estimator comes back as its class (``XGBRegressor`` ...)."""

    @property
    def filename(self) -> str:
        return "model.json"

    def write(self, model: Any, file_path: str) -> None:
        model.save_model(file_path)

    def read(self, file_path: str) -> Any:
        xgboost = import_framework("xgboost")
        booster = xgboost.Booster(model_file=file_path)
        meta = booster.attr("scikit_learn")
        if not meta:
            return booster
        kind = json.loads(meta).get("_estimator_type", "regressor")
        classes = {
            "classifier": xgboost.XGBClassifier,
            "ranker": xgboost.XGBRanker,
        }
        estimator = classes.get(kind, xgboost.XGBRegressor)()
        estimator.load_model(file_path)
        return estimator


class LightGBMSerde(ModelSerde):
    """A LightGBM model in LightGBM's text format (``model.txt``); it comes back as a
    ``lightgbm.Booster`` (a scikit-learn estimator's ``booster_``)."""

    @property
    def filename(self) -> str:
        return "model.txt"

    def write(self, model: Any, file_path: str) -> None:
        booster = getattr(model, "booster_", model)
        booster.save_model(file_path)

    def read(self, file_path: str) -> Any:
        return import_framework("lightgbm").Booster(model_file=file_path)
