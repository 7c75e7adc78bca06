"""Models saved by mlruntime in their framework's own format, which loads without running code.

``save_model(model, folder)`` writes XGBoost boosters and estimators as UBJSON, LightGBM
boosters as their text format, Keras models as ``.keras`` and PyTorch modules' weights as
safetensors (or ``torch.save`` of the ``state_dict``, read back with ``weights_only=True``,
where safetensors is not installed), with a small JSON description beside them; anything
else is pickled (trusted input only). ``load_model(folder)`` reads either back. Frameworks are
imported only when a model of theirs is saved or loaded.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
from typing import Any

__all__ = [
    "DESCRIPTION_FILE",
    "PICKLE_FILE",
    "import_framework",
    "load_model",
    "load_torch_weights",
    "native_format",
    "save_model",
    "save_torch_weights",
    "torch_weights_file",
]

DESCRIPTION_FILE = "mlruntime_model.json"
"""The description of a saved model: its format, file and class."""

PICKLE_FILE = "model.pkl"
"""Where a model with no native format is pickled (load it only from storage you trust)."""


def import_framework(name: str) -> Any:
    """Import a framework when a model is saved or loaded (core never imports one itself)."""
    return importlib.import_module(name)


def _family(model: Any) -> str:
    return type(model).__module__.split(".")[0]


def _is_subclass_of(model: Any, module: str, name: str) -> bool:
    """Whether ``model`` is an instance of ``module.name`` (never importing ``module``)."""
    return any(
        klass.__module__.split(".")[0] == module and klass.__name__ == name
        for klass in type(model).__mro__
    )


def native_format(model: Any) -> str | None:
    """The native format :func:`save_model` would use for ``model`` (``None``: pickle)."""
    family = _family(model)
    if family == "xgboost":
        if _is_subclass_of(model, "xgboost", "Booster"):
            return "xgboost-booster"
        if _is_subclass_of(model, "xgboost", "XGBModel"):
            return "xgboost-sklearn"
    if family == "lightgbm" and _is_subclass_of(model, "lightgbm", "Booster"):
        return "lightgbm-booster"
    if family in ("keras", "tf_keras") or (
        family == "tensorflow" and _is_subclass_of(model, "keras", "Model")
    ):
        return "keras" if hasattr(model, "save") else None
    if _is_subclass_of(model, "torch", "Module"):
        return "torch-state-dict"
    return None


def torch_weights_file() -> str:
    """``model.safetensors`` where safetensors is installed, else ``model.pt``."""
    try:
        import_framework("safetensors")
    except ImportError:
        return "model.pt"
    return "model.safetensors"


def save_torch_weights(module: Any, path: str) -> None:
    """Save a PyTorch module's ``state_dict`` at ``path``: safetensors for a ``.safetensors``
    path, else ``torch.save`` of the tensors (which ``weights_only=True`` loads safely)."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if path.endswith(".safetensors"):
        import_framework("safetensors.torch").save_file(state, path)
    else:
        import_framework("torch").save(state, path)


def load_torch_weights(path: str) -> dict[str, Any]:
    """The ``state_dict`` :func:`save_torch_weights` wrote (no stored code runs)."""
    if path.endswith(".safetensors"):
        return dict(import_framework("safetensors.torch").load_file(path))
    torch = import_framework("torch")
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def save_model(model: Any, folder: str | os.PathLike[str], *, torch_weights: bool = True) -> str:
    """Save ``model`` into ``folder`` (a local folder that exists); return its format.

    PyTorch modules keep only their weights: :func:`load_model` needs ``torch_module`` (a new
    module of the same architecture) to load them into.

    Args:
        model: The model.
        folder: Where to write it.
        torch_weights: Save a PyTorch module's weights only (``False``: pickle it whole,
            which needs no module to load into but runs code when loaded).

    Returns:
        ``"xgboost-booster"``, ``"xgboost-sklearn"``, ``"lightgbm-booster"``, ``"keras"``,
        ``"torch-state-dict"`` or ``"pickle"``.
    """
    folder = os.fspath(folder)
    kind = native_format(model) or "pickle"
    if kind == "torch-state-dict" and not torch_weights:
        kind = "pickle"
    description: dict[str, Any] = {"format": kind, "class": type(model).__name__}
    if kind in ("xgboost-booster", "xgboost-sklearn"):
        description["file"] = "model.ubj"
        model.save_model(os.path.join(folder, "model.ubj"))
        if kind == "xgboost-sklearn":
            description["module"] = type(model).__module__
    elif kind == "lightgbm-booster":
        description["file"] = "model.txt"
        model.save_model(os.path.join(folder, "model.txt"))
    elif kind == "keras":
        description["file"] = "model.keras"
        model.save(os.path.join(folder, "model.keras"))
    elif kind == "torch-state-dict":
        description["file"] = torch_weights_file()
        save_torch_weights(model, os.path.join(folder, description["file"]))
    else:
        description["file"] = PICKLE_FILE
        with open(os.path.join(folder, PICKLE_FILE), "wb") as handle:
            pickle.dump(model, handle, protocol=pickle.HIGHEST_PROTOCOL)
    with open(os.path.join(folder, DESCRIPTION_FILE), "w") as handle:
        json.dump(description, handle)
    return kind


def load_model(folder: str | os.PathLike[str], torch_module: Any = None) -> Any:
    """The model :func:`save_model` wrote into ``folder``.

    Args:
        folder: The folder.
        torch_module: For PyTorch weights: the module to load them into (returned);
            without it the ``state_dict`` itself is returned.

    Returns:
        The model (``None`` if the folder holds none).

    Raises:
        ValueError: If the description names an unknown format.
    """
    folder = os.fspath(folder)
    described = os.path.join(folder, DESCRIPTION_FILE)
    if not os.path.exists(described):  # written before models had descriptions: pickle
        legacy = os.path.join(folder, PICKLE_FILE)
        if not os.path.exists(legacy):
            return None
        with open(legacy, "rb") as handle:
            return pickle.load(handle)
    with open(described) as handle:
        description = json.load(handle)
    kind = description["format"]
    path = os.path.join(folder, description["file"])
    if kind == "xgboost-booster":
        return import_framework("xgboost").Booster(model_file=path)
    if kind == "xgboost-sklearn":
        klass = getattr(importlib.import_module(description["module"]), description["class"])
        model = klass()
        model.load_model(path)
        return model
    if kind == "lightgbm-booster":
        return import_framework("lightgbm").Booster(model_file=path)
    if kind == "keras":  # safe_mode (the default): no lambda layers run on load
        return import_framework("keras").models.load_model(path)
    if kind == "torch-state-dict":
        state = load_torch_weights(path)
        if torch_module is None:
            return state
        torch_module.load_state_dict(state)
        return torch_module
    if kind == "pickle":
        with open(path, "rb") as handle:
            return pickle.load(handle)
    raise ValueError(f"unknown model format {kind!r} in {described}")
