"""Hyper-parameter tuning on Ray Tune, with Snowflake's names (``snowflake.ml.modeling.tune``).

``Tuner(train_func, search_space, TunerConfig(metric, mode, ...)).run(dataset_map)`` runs the
trials; inside a trial ``get_tuner_context()`` gives the hyper-parameters and datasets and
``report(metrics, model=None)`` reports. Sampling: ``uniform``, ``loguniform``, ``randint``
(upper exclusive), ``choice``; a list is a grid, a scalar a constant. Search algorithms are in
:mod:`mlruntime.tune.search`. Importing this package does not import Ray.
"""

from __future__ import annotations

from mlruntime.tune import search
from mlruntime.tune.search import BayesOpt, GridSearch, RandomSearch, SearchAlgorithm
from mlruntime.tune.space import (
    Choice,
    LogUniform,
    RandInt,
    SamplingFunction,
    Uniform,
    choice,
    loguniform,
    randint,
    uniform,
)
from mlruntime.tune.tuner import (
    ReportError,
    Tuner,
    TunerConfig,
    TunerContext,
    TunerResults,
    get_tuner_context,
)

__all__ = [
    "BayesOpt",
    "Choice",
    "GridSearch",
    "LogUniform",
    "RandInt",
    "RandomSearch",
    "ReportError",
    "SamplingFunction",
    "SearchAlgorithm",
    "Tuner",
    "TunerConfig",
    "TunerContext",
    "TunerResults",
    "Uniform",
    "choice",
    "get_tuner_context",
    "loguniform",
    "randint",
    "search",
    "uniform",
]
