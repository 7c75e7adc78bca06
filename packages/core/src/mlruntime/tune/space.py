"""Search spaces: Snowflake's sampling functions, turned into Ray Tune's.

A value of a search space is a sampling function (``uniform``, ``loguniform``, ``randint``,
``choice``), a list (a grid: every value is tried) or a scalar (a constant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlruntime.errors import ConfigError

__all__ = [
    "Choice",
    "LogUniform",
    "RandInt",
    "SamplingFunction",
    "Uniform",
    "choice",
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


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Uniform(SamplingFunction):
    """A float drawn uniformly from ``[lower, upper]``."""

    lower: float
    upper: float

    def __post_init__(self) -> None:
        if _number(self.lower, "lower") >= _number(self.upper, "upper"):
            raise ConfigError(f"uniform needs lower < upper, got {self.lower}, {self.upper}")

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

    def to_tune(self) -> Any:
        from ray import tune

        return tune.loguniform(self.lower, self.upper)


@dataclass(frozen=True)
class RandInt(SamplingFunction):
    """An integer drawn uniformly from ``[lower, upper)`` (upper exclusive, as Snowflake's)."""

    lower: int
    upper: int

    def __post_init__(self) -> None:
        for label, value in (("lower", self.lower), ("upper", self.upper)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"randint {label} must be an integer, got {value!r}")
        if self.lower >= self.upper:
            raise ConfigError(f"randint needs lower < upper, got {self.lower}, {self.upper}")

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


def to_tune_space(space: dict[str, Any], lists: str) -> dict[str, Any]:
    """The Ray Tune ``param_space`` of a search space.

    Args:
        space: Name -> sampling function, list or constant.
        lists: What a list becomes: ``"grid"`` (every value tried) or ``"choice"``.

    Raises:
        ConfigError: For a name that is not a string or an empty list.
    """
    from ray import tune

    out: dict[str, Any] = {}
    for name, value in space.items():
        if not isinstance(name, str):
            raise ConfigError(f"search space names must be strings, got {name!r}")
        if isinstance(value, SamplingFunction):
            out[name] = value.to_tune()
        elif isinstance(value, (list, tuple)):
            if not value:
                raise ConfigError(f"search space {name!r}: an empty list has nothing to try")
            out[name] = tune.grid_search(list(value)) if lists == "grid" else tune.choice(value)
        else:
            out[name] = value
    return out
