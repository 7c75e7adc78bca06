"""Search spaces: Snowflake's sampling functions, turned into Ray Tune's.

A value of a search space is a sampling function (``uniform``, ``loguniform``, ``randint``,
``choice``), a list (a grid: every value is tried; a ``choice`` for ``BayesOpt``) or anything
else, a tuple included, as a constant. A dict is a constant too, except that the sampling
functions inside it (at any depth) are drawn for each trial, as Ray Tune draws its own inside
``param_space``; a list inside a dict stays a constant (``{"eval_metric": ["auc", "logloss"]}``).
A ``range``, a set, a numpy array or an iterator at the top is refused (is it a grid or a
constant?): pass ``list(...)`` for a grid or a one-value list ``[value]`` for a constant.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from mlruntime.errors import ConfigError

__all__ = [
    "Choice",
    "LogUniform",
    "RandInt",
    "SamplingFunction",
    "Uniform",
    "check_space",
    "choice",
    "grid_size",
    "loguniform",
    "randint",
    "to_tune_space",
    "uniform",
]


class SamplingFunction:
    """Base of the sampling functions of a search space."""

    def to_tune(self) -> Any:
        """The Ray Tune domain for this function."""
        raise NotImplementedError


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float (numpy's numbers too), or ``None`` if it is not one (a
    bool, NaN, infinite, too large for a float, not a number)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _number(value: Any, what: str) -> float:
    """``value`` as a float (:func:`finite_number`).

    Raises:
        ConfigError: Unless it is a finite real number (not a bool).
    """
    number = finite_number(value)
    if number is None:
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return number


def _integer(value: Any, what: str) -> int:
    """``value`` as an int (numpy's integers too).

    Raises:
        ConfigError: Unless it is an integer (not a bool).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Uniform(SamplingFunction):
    """A float drawn uniformly from ``[lower, upper]``."""

    lower: float
    upper: float

    def __post_init__(self) -> None:
        low, high = _number(self.lower, "lower"), _number(self.upper, "upper")
        if low >= high:
            raise ConfigError(f"uniform needs lower < upper, got {self.lower}, {self.upper}")
        object.__setattr__(self, "lower", low)
        object.__setattr__(self, "upper", high)

    def to_tune(self) -> Any:
        from ray import tune

        return tune.uniform(self.lower, self.upper)


@dataclass(frozen=True)
class LogUniform(SamplingFunction):
    """A float drawn uniformly in log space from ``[lower, upper]`` (both > 0)."""

    lower: float
    upper: float

    def __post_init__(self) -> None:
        low, high = _number(self.lower, "lower"), _number(self.upper, "upper")
        if not 0 < low < high:
            raise ConfigError(f"loguniform needs 0 < lower < upper, got {self.lower}, {self.upper}")
        object.__setattr__(self, "lower", low)
        object.__setattr__(self, "upper", high)

    def to_tune(self) -> Any:
        from ray import tune

        return tune.loguniform(self.lower, self.upper)


@dataclass(frozen=True)
class RandInt(SamplingFunction):
    """An integer drawn uniformly from ``[lower, upper)`` (upper exclusive, as Snowflake's)."""

    lower: int
    upper: int

    def __post_init__(self) -> None:
        low = _integer(self.lower, "randint lower")
        high = _integer(self.upper, "randint upper")
        if low >= high:
            raise ConfigError(f"randint needs lower < upper, got {self.lower}, {self.upper}")
        object.__setattr__(self, "lower", low)
        object.__setattr__(self, "upper", high)

    def to_tune(self) -> Any:
        from ray import tune

        return tune.randint(self.lower, self.upper)


@dataclass(frozen=True)
class Choice(SamplingFunction):
    """One of ``options``, drawn uniformly."""

    options: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise ConfigError("choice needs at least one option")

    def to_tune(self) -> Any:
        from ray import tune

        return tune.choice(list(self.options))


def uniform(lower: float, upper: float) -> Uniform:
    """A float drawn uniformly from ``[lower, upper]``.

    Raises:
        ConfigError: Unless ``lower < upper``.
    """
    return Uniform(lower, upper)


def loguniform(lower: float, upper: float) -> LogUniform:
    """A float drawn uniformly in log space from ``[lower, upper]``.

    Raises:
        ConfigError: Unless ``0 < lower < upper``.
    """
    return LogUniform(lower, upper)


def randint(lower: int, upper: int) -> RandInt:
    """An integer from ``[lower, upper)`` (upper exclusive).

    Raises:
        ConfigError: Unless both are integers and ``lower < upper``.
    """
    return RandInt(lower, upper)


def choice(options: list[Any]) -> Choice:
    """One of ``options``.

    Raises:
        ConfigError: For no options.
    """
    return Choice(tuple(options))


def check_space(space: Any, lists: str = "grid") -> None:
    """Check a search space before anything starts (no Ray needed).

    Args:
        space: Name -> sampling function, list or constant (see the module's docstring).
        lists: What a list becomes: ``"grid"`` or ``"choice"``.

    Raises:
        ConfigError: For a space that is not a dict, a name that is not a string or holds a
            ``/`` (Ray Tune's separator of nested names: ``a/b`` is ``{"a": {"b": ...}}``),
            an empty list, or a ``range``, set, numpy array or iterator.
    """
    if not isinstance(space, dict):
        raise ConfigError(f"search_space must be a dict, got {type(space).__name__}")
    for name, value in space.items():
        if not isinstance(name, str) or "/" in name:
            raise ConfigError(f"search space names must be strings without '/', got {name!r}")
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"search space {name!r}: an empty list has nothing to try")
        elif isinstance(value, (range, set, frozenset)) or _is_array_or_iterator(value):
            kind = "a grid" if lists == "grid" else "a choice"
            raise ConfigError(
                f"search space {name!r}: a {type(value).__name__} is neither {kind} nor a "
                f"constant here: pass list(...) for {kind}, or a one-value list [value] for a "
                "constant"
            )
        elif isinstance(value, dict):
            _check_drawn_names(value, f"{name}/")


def _check_drawn_names(value: dict[Any, Any], path: str) -> None:
    """Refuse a key that is not a string, or holds a ``/``, on the way to a sampling function
    inside a constant dict (Ray Tune names it by its path)."""
    for key, item in value.items():
        if isinstance(item, dict):
            if _draws(item) and (not isinstance(key, str) or "/" in key):
                raise ConfigError(
                    f"search space {path + str(key)!r}: names leading to a sampling function "
                    "must be strings without '/'"
                )
            _check_drawn_names(item, f"{path}{key}/")
        elif isinstance(item, SamplingFunction) and (not isinstance(key, str) or "/" in key):
            raise ConfigError(
                f"search space {path + str(key)!r}: a sampling function's name must be a string "
                "without '/'"
            )


def _draws(value: Any) -> bool:
    """Whether ``value`` is or holds (in dicts, at any depth) a sampling function."""
    if isinstance(value, SamplingFunction):
        return True
    return isinstance(value, dict) and any(_draws(item) for item in value.values())


def _is_array_or_iterator(value: Any) -> bool:
    """A numpy (or similar) array of at least one dimension, or an iterator/generator."""
    if hasattr(value, "__next__"):
        return True
    shape = getattr(value, "shape", None)
    return hasattr(value, "__array__") and isinstance(shape, tuple) and len(shape) > 0


def grid_size(space: dict[str, Any]) -> int:
    """The combinations a grid over ``space``'s lists makes."""
    size = 1
    for value in space.values():
        if isinstance(value, list):
            size *= max(1, len(value))
    return size


def to_tune_space(space: dict[str, Any], lists: str) -> dict[str, Any]:
    """The Ray Tune ``param_space`` of a search space.

    Args:
        space: Name -> sampling function, list or constant.
        lists: What a list becomes: ``"grid"`` (every value tried) or ``"choice"``.

    Raises:
        ConfigError: As :func:`check_space`.
    """
    from ray import tune

    check_space(space, lists)
    out: dict[str, Any] = {}
    for name, value in space.items():
        if isinstance(value, list):
            out[name] = tune.grid_search(list(value)) if lists == "grid" else tune.choice(value)
        else:
            out[name] = _drawn(value)
    return out


def _drawn(value: Any) -> Any:
    """``value`` with its sampling functions (itself, or inside dicts) as Ray Tune's."""
    if isinstance(value, SamplingFunction):
        return value.to_tune()
    if isinstance(value, dict) and _draws(value):
        return {key: _drawn(item) for key, item in value.items()}
    return value
