"""Search algorithms of ``mlruntime.tune``: Snowflake's names, on Ray Tune's searchers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BayesOpt", "GridSearch", "RandomSearch", "SearchAlgorithm"]


class SearchAlgorithm:
    """Base of the search algorithms."""

    lists = "grid"
    """What a list in the search space becomes: ``"grid"`` or ``"choice"``."""

    def searcher(self, metric: str, mode: str, max_concurrent: int) -> Any:
        """The Ray Tune search algorithm running at most ``max_concurrent`` trials at once."""
        raise NotImplementedError

    def check(self) -> None:
        """Check, before anything starts, that the search can run here.

        Raises:
            ConfigError: If a package it needs is missing.
        """


@dataclass
class RandomSearch(SearchAlgorithm):
    """Random search: ``num_trials`` draws of the search space (lists are grids, as in
    Snowflake: every draw is combined with every grid value).

    Args:
        random_state: Seed for reproducible draws (``None``: a fresh order each run).
    """

    random_state: int | None = None

    def searcher(self, metric: str, mode: str, max_concurrent: int) -> Any:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=self.random_state, max_concurrent=max_concurrent)


@dataclass
class GridSearch(SearchAlgorithm):
    """Every combination of the lists in the search space, once each (``num_trials`` does not
    apply: the grid decides how many trials run)."""

    def searcher(self, metric: str, mode: str, max_concurrent: int) -> Any:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(constant_grid_search=True, max_concurrent=max_concurrent)


@dataclass
class BayesOpt(SearchAlgorithm):
    """Model-based search with Optuna's TPE sampler through Ray Tune; unlike Snowflake's
    BayesOpt it accepts every sampling type (``uniform``, ``loguniform``, ``randint``,
    ``choice``; a list is a ``choice`` here). Needs optuna (``pip install "mlruntime[tune]"``).

    Args:
        utility_kwargs: Snowflake's acquisition settings; accepted for compatibility, unused
            (TPE needs none).
        random_state: Seed of the sampler.
    """

    utility_kwargs: dict[str, Any] | None = None
    random_state: int | None = None
    lists: str = field(default="choice", init=False)

    def check(self) -> None:
        """Check that optuna is installed (without importing it).

        Raises:
            ConfigError: If it is not.
        """
        import importlib.util

        from mlruntime.errors import ConfigError

        if importlib.util.find_spec("optuna") is None:
            raise ConfigError(_NEEDS_OPTUNA)

    def searcher(self, metric: str, mode: str, max_concurrent: int) -> Any:
        from mlruntime.errors import ConfigError

        try:
            import optuna
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as exc:
            raise ConfigError(_NEEDS_OPTUNA) from exc
        from ray.tune.search import ConcurrencyLimiter

        sampler = optuna.samplers.TPESampler(seed=self.random_state)
        search = OptunaSearch(metric=metric, mode=mode, sampler=sampler)
        return ConcurrencyLimiter(search, max_concurrent=max_concurrent)


_NEEDS_OPTUNA = 'BayesOpt needs optuna: pip install "mlruntime[tune]" (or optuna)'
