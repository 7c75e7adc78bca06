"""What ``mlruntime.tune`` checks before anything starts (no Ray): search spaces, the tuner's
settings, and the packages a search needs; and the Ray Tune switches a run sets only while
it runs."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import numpy as np
import pytest

from mlruntime import tune
from mlruntime.errors import ConfigError
from mlruntime.tune import tuner as tuner_module
from mlruntime.tune.search import BayesOpt, GridSearch
from mlruntime.tune.space import check_space, grid_size, to_tune_space


def config(**kwargs: Any) -> tune.TunerConfig:
    return tune.TunerConfig(metric="loss", mode="min", verbose=False, **kwargs)


def train() -> None:
    pass


def test_a_list_is_a_grid_and_anything_else_a_constant_with_its_draws_drawn() -> None:
    from ray import tune as ray_tune

    space = {
        "hidden_layer_sizes": (64, 32),  # one sklearn value: a constant
        "depth": [2, 4, 6],
        # a dict is a constant whose sampling functions are drawn (Ray Tune's nesting); a
        # list inside it stays a constant, as in Ray Tune
        "opt": {"lr": tune.loguniform(1e-4, 1e-1), "metrics": ["auc", "logloss"], "name": "sgd"},
        "class_weight": {0: 1.0, 1: 5.0},  # scikit-learn's: keys are not names
        "seed": 7,
    }
    converted = to_tune_space(space, "grid")
    assert converted["hidden_layer_sizes"] == (64, 32) and converted["seed"] == 7
    assert converted["depth"] == ray_tune.grid_search([2, 4, 6])
    assert isinstance(converted["opt"]["lr"], ray_tune.search.sample.Float)
    assert converted["opt"]["metrics"] == ["auc", "logloss"] and converted["opt"]["name"] == "sgd"
    assert converted["class_weight"] is space["class_weight"]  # nothing drawn: as it is
    assert grid_size(space) == 3
    as_choices = to_tune_space(space, "choice")  # BayesOpt: lists are choices
    assert isinstance(as_choices["depth"], ray_tune.search.sample.Categorical)
    assert as_choices["opt"]["metrics"] == ["auc", "logloss"]
    tuner = tune.Tuner(train, space, config(search_alg=GridSearch()))
    assert tuner._trial_count() == 3


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (range(1, 4), "range"),
        ({1, 2}, "set"),
        (np.arange(3), "ndarray"),
        (iter([1, 2]), "list_iterator"),
        ((x for x in [1, 2]), "generator"),
    ],
)
def test_ambiguous_values_are_refused_before_anything_starts(value: Any, kind: str) -> None:
    with pytest.raises(ConfigError, match=rf"'x': a {kind} is neither a grid nor a constant"):
        tune.Tuner(train, {"x": value}, config())
    with pytest.raises(ConfigError, match=rf"a {kind} is neither a choice"):
        check_space({"x": value}, "choice")
    check_space({"x": {"inside": value}})  # inside a dict: a constant, as in Ray Tune


def test_bad_spaces_are_refused_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="an empty list"):
        tune.Tuner(train, {"lr": []}, config())
    with pytest.raises(ConfigError, match="names must be strings without '/', got 1"):
        tune.Tuner(train, {1: 2}, config())  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="names must be strings without '/', got 'opt/lr'"):
        tune.Tuner(train, {"opt/lr": tune.uniform(0, 1)}, config())
    with pytest.raises(ConfigError, match=r"'opt/1': a sampling function's name must be"):
        tune.Tuner(train, {"opt": {1: tune.uniform(0, 1)}}, config())
    with pytest.raises(ConfigError, match=r"'a/b/c': names leading to a sampling function"):
        tune.Tuner(train, {"a": {"b/c": {"d": tune.uniform(0, 1)}}}, config())
    with pytest.raises(ConfigError, match="search_space must be a dict"):
        tune.Tuner(train, [("x", 1)], config())  # type: ignore[arg-type]
    # numpy scalars (bounds computed with numpy) are numbers like any other
    assert tune.uniform(np.float32(0.5), np.int64(2)).lower == 0.5
    assert tune.randint(np.int64(1), np.int32(5)).upper == 5
    assert tune.loguniform(np.float64(1e-3), 1).lower == 1e-3
    with pytest.raises(ConfigError, match="randint lower must be an integer"):
        tune.randint(1.5, 5)
    for too_far in (float("inf"), 10**400, "2"):
        with pytest.raises(ConfigError, match="upper must be a finite number"):
            tune.uniform(0, too_far)  # type: ignore[arg-type]


def test_bayes_opt_without_optuna_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def without_optuna(name: str, *args: Any) -> Any:
        return None if name == "optuna" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_optuna)
    with pytest.raises(
        ConfigError, match=r'BayesOpt needs optuna: pip install "mlruntime\[tune\]"'
    ):
        tune.Tuner(train, {"x": tune.uniform(0, 1)}, config(search_alg=BayesOpt()))


def test_the_settings_are_checked_when_made() -> None:
    made = config(num_trials=np.int64(3), max_concurrent_trials=np.int32(2), scheduler="ASHA")
    assert (made.num_trials, made.max_concurrent_trials, made.scheduler) == (3, 2, "asha")
    assert type(made.num_trials) is int
    # keys in any case, numpy numbers: stored as Ray takes them (and as the run's settings
    # file holds them: JSON)
    resources = config(resource_per_trial={"cpu": np.int64(2), "GPU": np.float32(0.5)})
    assert resources.resource_per_trial == {"CPU": 2.0, "GPU": 0.5}
    assert json.dumps(resources.resource_per_trial) == '{"CPU": 2.0, "GPU": 0.5}'
    bad: list[tuple[dict[str, Any], str]] = [
        ({"resource_per_trial": {"cpus": 4}}, "a trial asks for 'CPU' and 'GPU', got 'cpus'"),
        ({"resource_per_trial": {"memory": 4e9}}, "got 'memory'"),
        ({"resource_per_trial": {"CPU": float("nan")}}, r"resource_per_trial\['CPU'\] must be"),
        ({"resource_per_trial": {"CPU": -1}}, r"must be >= 0"),
        ({"resource_per_trial": {"CPU": 10**400}}, r"must be >= 0"),
        ({"resource_per_trial": {"cpu": 1, "CPU": 2}}, "names CPU twice"),
        ({"resource_per_trial": [1]}, "resource_per_trial must be a dict"),
        ({"max_concurrent_trials": 2.5}, "max_concurrent_trials must be a positive integer"),
        ({"max_concurrent_trials": True}, "max_concurrent_trials must be a positive integer"),
        ({"max_concurrent_trials": 0}, "max_concurrent_trials must be a positive integer"),
        ({"num_trials": 0}, "num_trials must be a positive integer"),
        ({"max_rounds": 0}, "max_rounds must be a positive integer"),
        ({"scheduler": "hyperband"}, "scheduler must be 'asha', a Ray Tune scheduler or None"),
        ({"scheduler": object()}, "a Ray Tune scheduler .ray.tune.schedulers. or None, got object"),
        ({"uses_snowflake_trainer": "yes"}, "uses_snowflake_trainer must be True, False or None"),
        ({"name": "../elsewhere"}, "name must be a folder name"),
        ({"name": ""}, "name must be a folder name"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=message):
            config(**kwargs)
    from ray.tune.schedulers import MedianStoppingRule

    rule = MedianStoppingRule()
    assert config(scheduler=rule).scheduler is rule


def test_ray_tunes_switches_are_set_only_while_a_run_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = list(tuner_module._TUNE_ENV)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # the user's own choice is kept
    outer = tuner_module._tune_environment()
    inner = tuner_module._tune_environment()  # a second run in another thread of the driver
    with outer:
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
        assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "1"
        assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"
        inner.__enter__()
    # the first run ended, the second still runs: the switches stay
    assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"
    inner.__exit__(None, None, None)
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
    assert "TUNE_GLOBAL_CHECKPOINT_S" not in os.environ
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ
    # a switch set by the user meanwhile is theirs, and stays
    with tuner_module._tune_environment():
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "30"
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "30"
