"""``mlruntime.tune`` on a real Ray Tune: grids, reproducible random search, BayesOpt over every
sampling type, ASHA early stopping, data staged once, nested distributed estimators, fast
failure for impossible resources, and restore after the driver is killed."""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import mlruntime
from mlruntime import DataConnector, tune
from mlruntime.errors import ConfigError, NotInWorkerError, ResourceError
from mlruntime.store import storage
from mlruntime.testing import run_for_result, wait_for_idle_workers
from mlruntime.tune import get_tuner_context, progress
from mlruntime.tune import tuner as tuner_module
from mlruntime.tune.search import BayesOpt, GridSearch, RandomSearch


def quadratic() -> None:
    ctx = get_tuner_context()
    p = ctx.get_hyper_params()
    rows = ctx.get_dataset_map()["data"].count_rows()
    for step in range(3):
        loss = (p["x"] - 2) ** 2 + p.get("y", 0) + step * 0.0
        ctx.report({"loss": loss, "rows": rows}, model={"x": p["x"], "y": p.get("y")})


def quiet(**kwargs: object) -> tune.TunerConfig:
    return tune.TunerConfig(metric="loss", mode="min", verbose=False, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def data() -> DataConnector:
    return DataConnector.from_dataframe(pd.DataFrame({"a": np.arange(50)}))


def test_grid_is_the_full_product_and_the_best_model_comes_back(
    ray_cluster: None, data: DataConnector
) -> None:
    space = {"x": [1, 2, 3], "y": [0, 10], "const": 7}
    result = tune.Tuner(quadratic, space, quiet(search_alg=GridSearch())).run({"data": data})
    frame = result.results
    assert sorted(zip(frame["config/x"], frame["config/y"], strict=True)) == [
        (x, y) for x in (1, 2, 3) for y in (0, 10)
    ]
    assert set(frame["config/const"]) == {7}
    assert set(frame["rows"]) == {50} and set(frame["training_iteration"]) == {3}
    assert result.best_result["config/x"].tolist() == [2]
    assert result.best_model == {"x": 2, "y": 0}
    # kept under mlruntime's storage
    assert result.path.startswith(storage.join(storage.storage_uri(), "tune") + "/")
    assert Path(result.path, tuner_module.SETTINGS_FILE).is_file()


def test_random_search_is_reproducible_and_bayes_takes_every_sampling_type(
    ray_cluster: None, data: DataConnector
) -> None:
    space = {"x": tune.uniform(0, 4), "y": tune.randint(0, 3)}

    def configs(seed: int) -> list[tuple[float, int]]:
        config = quiet(search_alg=RandomSearch(random_state=seed), num_trials=3)
        frame = tune.Tuner(quadratic, space, config).run({"data": data}).results
        return sorted(zip(frame["config/x"], frame["config/y"], strict=True))

    first = configs(7)
    assert first == configs(7) and first != configs(8)
    assert all(0 <= x <= 4 and y in (0, 1, 2) for x, y in first)
    bayes_space = {
        "x": tune.loguniform(0.1, 4),
        "y": tune.choice([0, 5]),
        "z": tune.randint(1, 4),
    }
    config = quiet(search_alg=BayesOpt(random_state=0), num_trials=4)
    frame = tune.Tuner(quadratic, bayes_space, config).run({"data": data}).results
    assert len(frame) == 4
    assert frame["config/x"].between(0.1, 4).all() and set(frame["config/y"]) <= {0, 5}
    assert frame["config/z"].isin([1, 2, 3]).all()


def rounds() -> None:
    ctx = get_tuner_context()
    bad = ctx.get_hyper_params()["bad"]
    for step in range(1, 21):
        ctx.report({"loss": bad * 10 + 1.0 / step})


def test_asha_stops_bad_trials_early(ray_cluster: None) -> None:
    config = quiet(search_alg=GridSearch(), scheduler="asha", max_rounds=20)
    frame = tune.Tuner(rounds, {"bad": [0, 1, 2, 3, 4, 5]}, config).run().results
    reported = dict(zip(frame["config/bad"], frame["training_iteration"], strict=True))
    assert reported[0] == 20  # the best trial runs to the end
    assert min(reported.values()) < 20 and sum(reported.values()) < 6 * 20


def swallows_the_stop() -> None:
    ctx = get_tuner_context()
    bad = ctx.get_hyper_params()["bad"]
    for step in range(1, 21):
        try:  # catches everything, Tune's stop of the trial (SystemExit) too
            ctx.report({"loss": bad * 10 + 1.0 / step})
        except BaseException:
            pass


def test_a_trial_whose_code_catches_tunes_stop_ends_and_its_process_is_reused(
    ray_cluster: None,
) -> None:
    """Ray raises SystemExit once to stop a trial; code that catches it and goes on reported
    again, or reached Tune's own report as it returned, and waited for ever: the process
    could not be reused for the next trial, and the run hung. It now ends there."""
    config = quiet(search_alg=GridSearch(), scheduler="asha", max_rounds=20)
    outcome: list[Any] = []

    def tuning() -> None:
        try:
            outcome.append(tune.Tuner(swallows_the_stop, {"bad": [0, 1, 2, 3, 4, 5]}, config).run())
        except BaseException as exc:  # reported below, with the hang
            outcome.append(exc)

    run = threading.Thread(target=tuning, daemon=True)
    run.start()
    run.join(timeout=120)
    assert not run.is_alive(), "the run hung"
    assert not isinstance(outcome[0], BaseException), outcome[0]
    frame = outcome[0].results
    assert (frame["status"] == "TERMINATED").all()
    reported = dict(zip(frame["config/bad"], frame["training_iteration"], strict=True))
    assert reported[0] == 20 and min(reported.values()) < 20


def report_twice_then_fail_on_two() -> None:
    ctx = get_tuner_context()
    x = ctx.get_hyper_params()["x"]
    ctx.report({"loss": 10.0 * x, "round": 1}, model={"x": x})
    time.sleep(0.3)  # the second round
    ctx.report({"loss": float(x), "round": 2})
    if x == 2:
        raise ValueError("after two reports")


def count_train_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the trials Ray Tune asks for a result, once per ask (the driver's side)."""
    from ray.tune.execution.tune_controller import TuneController

    calls: list[str] = []
    original = TuneController._schedule_trial_train

    def counted(self: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(trial.trial_id)
        return original(self, trial, *args, **kwargs)

    monkeypatch.setattr(TuneController, "_schedule_trial_train", counted)
    return calls


def test_without_a_scheduler_a_trials_last_report_ends_it(
    ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last report ends the trial (one ask per report, none for the function's end); a
    trial that fails after reporting keeps its last report; with a scheduler each report goes
    at once (the function's end is one more ask)."""
    calls = count_train_calls(monkeypatch)
    config = quiet(search_alg=GridSearch(), max_concurrent_trials=1)
    result = tune.Tuner(report_twice_then_fail_on_two, {"x": [1, 2]}, config).run()
    frame = result.results.set_index("config/x")
    assert frame["status"].to_dict() == {1: "TERMINATED", 2: "ERROR"}
    assert frame["round"].to_dict() == {1: 2, 2: 2}
    assert frame["training_iteration"].to_dict() == {1: 2, 2: 2}
    # a held report carries its own round's time (Tune's own would be the next round's)
    assert (frame["time_this_iter_s"] >= 0.3).all(), frame["time_this_iter_s"]
    assert result.best_model == {"x": 1}
    asks = {x: calls.count(trial) for x, trial in frame["trial_id"].items()}
    assert asks == {1: 2, 2: 3}  # the failed trial: its two reports, then its error

    calls.clear()
    config = quiet(search_alg=GridSearch(), scheduler="asha", max_rounds=20)
    result = tune.Tuner(report_twice_then_fail_on_two, {"x": [1]}, config).run()
    assert result.results["round"].tolist() == [2] and result.best_model == {"x": 1}
    assert calls.count(result.results["trial_id"][0]) == 3


def test_tune_reads_its_trainable_from_the_cluster_store_once_per_run(
    ray_cluster: None, data: DataConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Tune reads the trainable back from the cluster's key-value store three times per
    trial it makes; during a run those reads are memoized, and Tune's registry is as it was
    after."""
    from ray.tune import registry

    reads: list[bytes] = []
    original = registry._internal_kv_get

    def counted(key: bytes, *args: Any, **kwargs: Any) -> Any:
        reads.append(key)
        return original(key, *args, **kwargs)

    monkeypatch.setattr(registry, "_internal_kv_get", counted)
    config = quiet(search_alg=GridSearch(), max_concurrent_trials=1)
    frame = tune.Tuner(quadratic, {"x": [1, 2, 3, 4, 5, 6]}, config).run({"data": data}).results
    assert len(frame) == 6 and set(frame["status"]) == {"TERMINATED"}
    assert 0 < len(reads) <= 3, reads  # 18 or more, read per trial
    memo = {"get", "contains", "register", "unregister"} & set(vars(registry._global_registry))
    assert not memo


def test_the_trainable_class_is_exported_without_disassembling_it(
    ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray tags each class it exports with a hash of its disassembly (12-17 ms for Tune's
    trainable); during a run the hash is of the code itself, and Ray's own is back after."""
    from ray._private import function_manager
    from ray._private.worker import global_worker

    disassembled: list[str] = []
    original = function_manager.FunctionActorManager.compute_collision_identifier

    def counted(self: Any, function_or_class: Any) -> bytes:
        disassembled.append(function_or_class.__name__)
        return original(self, function_or_class)

    monkeypatch.setattr(
        function_manager.FunctionActorManager, "compute_collision_identifier", counted
    )
    config = quiet(search_alg=GridSearch(), max_concurrent_trials=1)
    frame = tune.Tuner(report_pid, {"x": [1, 2]}, config).run().results
    assert set(frame["status"]) == {"TERMINATED"}
    assert not [name for name in disassembled if "ImplicitFunc" in name], disassembled
    manager = global_worker.function_actor_manager
    assert "compute_collision_identifier" not in vars(manager)

    def other(config: Any) -> int:
        return 2

    same = tuner_module._export_identifier
    assert same(quadratic) == same(quadratic) != same(other)
    assert same(tune.TunerConfig) == same(tune.TunerConfig) != same(tune.TunerResults)
    assert len(same(quadratic)) == 32

    # Ray's actor class holds the user's class: its code counts
    def holding(user_class: type) -> type:
        return type("Class", (), {"__ray_actor_class__": user_class, "ready": lambda self: 1})

    assert same(holding(tune.TunerConfig)) != same(holding(tune.TunerResults))
    assert same(holding(tune.TunerConfig)) == same(holding(tune.TunerConfig))


def test_the_registry_memo_forgets_on_registration_and_ends_with_its_block() -> None:
    from ray.tune.registry import TRAINABLE_CLASS, _global_registry

    methods = {"get", "contains", "register", "unregister"}
    seen: list[Any] = []

    def read_register_read_fail() -> None:
        with tuner_module._registry_reads_memoized():
            assert methods <= set(vars(_global_registry))
            seen.append(_global_registry.get(TRAINABLE_CLASS, "mlruntime_memo_probe"))
            _global_registry.register(TRAINABLE_CLASS, "mlruntime_memo_probe", 2)
            seen.append(_global_registry.get(TRAINABLE_CLASS, "mlruntime_memo_probe"))
            raise RuntimeError("inside")

    _global_registry.register(TRAINABLE_CLASS, "mlruntime_memo_probe", 1)
    try:
        with pytest.raises(RuntimeError, match="inside"):
            read_register_read_fail()
        assert seen == [1, 2]  # the registration forgot the memoized 1
        assert not methods & set(vars(_global_registry))
    finally:
        _global_registry.unregister(TRAINABLE_CLASS, "mlruntime_memo_probe")


def test_bad_requests_fail_before_any_trial(ray_cluster: None, data: DataConnector) -> None:
    too_big = quiet(resource_per_trial={"CPU": 64})
    with pytest.raises(ResourceError, match="largest node"):
        tune.Tuner(quadratic, {"x": 1}, too_big).run({"data": data})
    with pytest.raises(ResourceError, match=r"1 GPU\(s\), but the largest node has .* 0 GPU"):
        tune.Tuner(quadratic, {"x": 1}, quiet(resource_per_trial={"GPU": 1})).run({"data": data})
    jobs_too_big = quiet(uses_snowflake_trainer=True, resource_per_trial={"CPU": 64})
    with pytest.raises(ResourceError, match="each trial's job needs 64 CPU"):
        tune.Tuner(quadratic, {"x": 1}, jobs_too_big).run({"data": data})
    with pytest.raises(ConfigError, match="mode"):
        tune.TunerConfig(metric="loss", mode="lowest")
    with pytest.raises(ConfigError, match="dataset_map"):
        tune.Tuner(quadratic, {"x": 1}, quiet()).run({"data": [1, 2]})
    with pytest.raises(ConfigError, match="randint"):
        tune.randint(3, 3)
    with pytest.raises(NotInWorkerError):
        get_tuner_context()


def test_the_progress_line_counts_every_trial_of_the_run(
    ray_cluster: None,
    data: DataConnector,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trials done of the run's total (not of the trials made so far), failed ones counted;
    to a log, the first trial's line and the final one (none between, however fast the
    trials end); a trial reserving nothing (``{"CPU": 0}``) runs."""
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 1e6)
    config = tune.TunerConfig(
        metric="loss",
        mode="min",
        search_alg=GridSearch(),
        max_concurrent_trials=1,
        resource_per_trial={"CPU": 0},
    )
    result = tune.Tuner(fail_on_three, {"x": [1, 2, 3, 4]}, config).run({"data": data})
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "trial(s) done" in ln]
    assert lines == [
        "tuning: 1 trial(s) done of 4; best loss 1",
        "tuning: 4 trial(s) done of 4 (1 failed); best loss 1",
    ]
    assert result.results["status"].tolist().count("ERROR") == 1


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as a console's standard output does."""

    def isatty(self) -> bool:
        return True


def test_in_a_terminal_the_progress_is_one_line_rewritten_in_place(
    ray_cluster: None, data: DataConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    # one redraw, then none until the final count (shown at once, however soon)
    monkeypatch.setattr(progress, "LIVE_EVERY_S", 1e6)
    config = tune.TunerConfig(
        metric="loss", mode="max", search_alg=GridSearch(), max_concurrent_trials=1
    )
    tune.Tuner(fail_on_three, {"x": [1, 3, 2]}, config).run({"data": data})
    out = terminal.getvalue()
    progress_part = out[out.index("\r") :]
    assert progress_part.endswith("\n") and progress_part.count("\n") == 1  # one line
    written = progress_part[:-1].split("\r")[1:]
    assert [text.rstrip() for text in written] == [
        "tuning: 0 trial(s) done of 3; best loss 1",  # the first report: a best value
        "tuning: 3 trial(s) done of 3 (1 failed); best loss 2",
    ]


def fail_on_three() -> None:
    ctx = get_tuner_context()
    if ctx.get_hyper_params()["x"] == 3:
        raise ValueError("three")
    ctx.report({"loss": float(ctx.get_hyper_params()["x"])})


def diverging() -> None:
    ctx = get_tuner_context()
    x = ctx.get_hyper_params()["x"]
    loss = {1: float("inf"), 2: 0.5, 3: float("nan"), 4: 0.25}[x]
    ctx.report({"loss": loss}, model={"x": x})


def test_nan_and_infinite_values_are_never_the_best(
    ray_cluster: None, data: DataConnector, caplog: pytest.LogCaptureFixture
) -> None:
    # mode max: the infinite value is not best (Ray Tune's own best skips it too), and the
    # best model is the best row's trial's
    highest = tune.TunerConfig(metric="loss", mode="max", search_alg=GridSearch(), verbose=False)
    most = tune.Tuner(diverging, {"x": [1, 2, 3]}, highest)
    result = most.run({"data": data})
    assert result.best_result["config/x"].tolist() == [2] and result.best_model == {"x": 2}
    least = tune.Tuner(diverging, {"x": [1, 2, 3, 4]}, quiet(search_alg=GridSearch()))
    assert least.run({"data": data}).best_model == {"x": 4}
    # none finite: no best, a warning (the run's results stay), not Tune's RuntimeError
    none = tune.Tuner(diverging, {"x": [1, 3]}, quiet(search_alg=GridSearch()))
    result = none.run({"data": data})
    assert result.best_result.empty and result.best_model is None
    assert len(result.results) == 2
    assert "no trial reported a finite value of the metric 'loss'" in caplog.text
    caplog.clear()  # all NaN: reported, not finite (not "no trial reported the metric")
    result = tune.Tuner(diverging, {"x": [3]}, quiet(search_alg=GridSearch())).run({"data": data})
    assert result.best_result.empty and "no trial reported a finite value" in caplog.text


def nested() -> None:
    ctx = get_tuner_context()
    p = ctx.get_hyper_params()
    opt = p["opt"]
    assert opt["metrics"] == ["auc", "logloss"] and p["layers"] == (64, 32)
    ctx.report({"loss": opt["lr"] * p["depth"] + len(p["layers"])})


def test_draws_inside_a_dict_reach_the_trial_in_place_and_the_environment_is_left_as_it_was(
    ray_cluster: None, data: DataConnector
) -> None:
    switches = (
        "RAY_AIR_NEW_OUTPUT",
        "TUNE_GLOBAL_CHECKPOINT_S",
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS",
    )
    before = {name: os.environ.get(name) for name in switches}
    space = {
        "opt": {"lr": tune.uniform(0.1, 1), "metrics": ["auc", "logloss"]},
        "depth": [1, 2],
        "layers": (64, 32),
    }
    config = quiet(search_alg=RandomSearch(random_state=0), num_trials=2)
    frame = tune.Tuner(nested, space, config).run({"data": data}).results
    assert len(frame) == 4  # two draws times the grid's two values
    assert sorted(frame["config/depth"]) == [1, 1, 2, 2]
    assert frame["config/opt/lr"].between(0.1, 1).all() and frame["config/opt/lr"].nunique() > 1
    assert (frame["loss"] - frame["config/opt/lr"] * frame["config/depth"] == 2).all()
    assert frame["status"].eq("TERMINATED").all()  # the trials' own checks held
    assert {name: os.environ.get(name) for name in switches} == before


def test_restore_reads_the_runs_settings_and_warns_for_older_runs(
    ray_cluster: None, data: DataConnector, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    config = quiet(resource_per_trial={"CPU": 1}, max_concurrent_trials=1)
    path = tune.Tuner(quadratic, {"x": [1]}, config).run({"data": data}).path
    restored = tune.Tuner.restore(path)  # train_func from the run
    assert restored.train_func.__name__ == "quadratic"
    assert restored.config.resource_per_trial == {"CPU": 1}
    assert restored.config.max_concurrent_trials == 1
    settings = Path(path, tuner_module.SETTINGS_FILE)
    old = json.loads(settings.read_text())
    # settings an earlier version stored and a TunerConfig now refuses are read as it takes
    # them; the space passed is not the run's (Tune restores its own) and is not checked
    earlier = {**old, "resource_per_trial": {"cpu": 1, "memory": 5e8}, "max_concurrent_trials": 1.0}
    settings.write_text(json.dumps(earlier))
    restored = tune.Tuner.restore(path, search_space={"x": range(3)})
    assert restored.config.resource_per_trial == {"CPU": 1.0}
    assert restored.config.max_concurrent_trials == 1
    assert old["hold_reports"] is True  # no scheduler: a restored run holds reports too
    del old["resource_per_trial"], old["max_concurrent_trials"]  # as runs were written before
    settings.write_text(json.dumps(old))
    with caplog.at_level("WARNING", logger="mlruntime.tune.tuner"):
        assert tune.Tuner.restore(path).config.resource_per_trial is None
    assert "before runs stored their trials' resources" in caplog.text


def test_a_restore_refuses_datasets_other_than_those_the_run_started_with(
    ray_cluster: None, data: DataConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other columns, other types or other rows (of a dataset staged from the driver) are
    refused before Tune restores anything: the run's finished trials read the first data."""
    monkeypatch.setattr(tuner_module, "RUNNING_CHECK_S", 0.05)  # its driver has ended
    config = quiet(search_alg=GridSearch(), max_concurrent_trials=1)
    path = tune.Tuner(quadratic, {"x": [1, 2]}, config).run({"data": data}).path
    frame = pd.DataFrame({"a": np.arange(50)})
    for other, says in (
        (frame.iloc[:49], r"\(49 rows, against 50\)"),
        (frame.astype("float64"), r"\(a: int64 now double\)"),
        (frame.rename(columns={"a": "b"}), r"\(columns \['a'\] missing; columns \['b'\] new\)"),
    ):
        with pytest.raises(ConfigError, match=r"dataset 'data' is not the one .*" + says):
            tune.Tuner.restore(path).run({"data": DataConnector.from_dataframe(other)})
    # the same rows, of another frame's selected column, held as categories: the same dataset
    same = DataConnector.from_dataframe(frame.astype("category").assign(c=1)).select(["a"])
    result = tune.Tuner.restore(path).run({"data": same})
    assert sorted(result.results["config/x"]) == [1, 2] and (result.results["rows"] == 50).all()


def report_without_the_metric(folder: str) -> None:
    Path(folder, f"{os.getpid()}-{time.time()}").touch()  # one file per trial started
    get_tuner_context().report({"los": 1.0})


def report_a_non_number() -> None:
    get_tuner_context().report({"loss": "0.5"})


def report_a_0d_array() -> None:
    get_tuner_context().report({"loss": np.array(get_tuner_context().get_hyper_params()["x"])})


def report_nothing() -> None:
    pass


def test_a_train_func_too_large_to_store_leaves_no_earlier_one_behind(
    ray_cluster: None, data: DataConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an earlier run of the same name stored its function: a restore would have run it
    name = f"reused-{os.getpid()}-{time.time_ns()}"
    folder = Path(storage.join(storage.storage_uri(), "tune", name))
    folder.mkdir(parents=True)
    (folder / tuner_module.TRAIN_FUNC_FILE).write_bytes(b"an earlier run's function")
    monkeypatch.setattr(tuner_module, "TRAIN_FUNC_MAX_BYTES", 1)
    config = quiet(search_alg=GridSearch(), name=name)
    path = tune.Tuner(quadratic, {"x": [2]}, config).run({"data": data}).path
    assert Path(path) == folder and not (folder / tuner_module.TRAIN_FUNC_FILE).exists()
    with pytest.raises(ConfigError, match="stored no train_func: pass it"):
        tune.Tuner.restore(path)


def report_tensors() -> None:
    import torch

    ctx = get_tuner_context()
    x = ctx.get_hyper_params()["x"]
    for step in range(2):  # held reports: each goes with the next, the last ends the trial
        ctx.report({"loss": torch.tensor(float(x)), "eval": {"acc": torch.tensor([0.5 + step])}})
    if x == 2:
        ctx.report({"loss": 0.0, "hist": torch.zeros(3)})


def test_tensors_of_one_element_are_reported_as_numbers_and_larger_ones_refused_at_once(
    ray_cluster: None, data: DataConnector
) -> None:
    pytest.importorskip("torch")
    # Ray Tune refuses tensors in metrics; a held report failed only at the trial's next
    # report or its end, the finished trial marked failed and its last report lost
    result = tune.Tuner(report_tensors, {"x": [1]}, quiet(search_alg=GridSearch())).run(
        {"data": data}
    )
    row = result.results.iloc[0]
    assert (row["status"], row["loss"], row["eval/acc"], row["training_iteration"]) == (
        "TERMINATED",
        1.0,
        1.5,
        2,
    )
    with pytest.raises(tune.ReportError, match=r"'hist' as a PyTorch tensor of shape \(3,\)"):
        tune.Tuner(report_tensors, {"x": [2]}, quiet(search_alg=GridSearch())).run({"data": data})


def test_bad_reports_end_the_run_at_once_with_the_fix_named(
    ray_cluster: None, tmp_path: Path
) -> None:
    # Tune's own check failed the run with a message naming tune.report() and TuneConfig();
    # a report's value that was not a number ran every trial and then failed in Ray's
    # get_best_result with "No best trial found"
    config = quiet(num_trials=8, max_concurrent_trials=1)
    train = functools.partial(report_without_the_metric, str(tmp_path))
    with pytest.raises(tune.ReportError, match=r"\['los'\] without the run's metric 'loss'"):
        tune.Tuner(train, {"x": tune.uniform(0, 1)}, config).run()
    assert 1 <= len(list(tmp_path.iterdir())) <= 2  # not all 8 trials: the run ended
    with pytest.raises(ConfigError, match=r"'loss' = '0\.5' .*must be a number"):
        tune.Tuner(report_a_non_number, {"x": tune.uniform(0, 1)}, config).run()


def test_metric_values_that_convert_to_numbers_are_reported_as_floats() -> None:
    from mlruntime.tune.tuner import _checked_metrics

    def value(metrics: dict[Any, Any], metric: str = "m") -> Any:
        from mlruntime.tune.tuner import _flat_paths

        out: Any = _checked_metrics(metrics, metric)
        for key in _flat_paths(out)[metric]:
            out = out[key]
        return out

    assert value({"m": 3}) == 3 and isinstance(value({"m": 3}), int)
    assert value({"m": np.float32(0.5)}) == 0.5
    assert value({"m": np.array(0.25)}) == 0.25 and type(value({"m": np.array(0.25)})) is float
    # nested metrics are named as Tune flattens them; the caller's dicts are left as they were
    nested = {"eval": {"loss": np.array(0.5), "n": 1}, "x": 1}
    assert value(nested, "eval/loss") == 0.5 and type(value(nested, "eval/loss")) is float
    assert isinstance(nested["eval"]["loss"], np.ndarray)
    assert value({"eval/loss": 2.0}, "eval/loss") == 2.0
    # as Ray Tune flattens: a "/" in a key, keys that are not strings, the nested value wins
    assert value({"a/b": {"c": np.array(1.5)}}, "a/b/c") == 1.5
    assert value({"eval": {1: np.array(3.0)}}, "eval/1") == 3.0
    with pytest.raises(tune.ReportError, match="must be a number"):
        _checked_metrics({"eval/loss": 1.0, "eval": {"loss": "x"}}, "eval/loss")
    for bad in ("0.5", b"1", None, [1.0], np.array([1.0, 2.0])):
        with pytest.raises(tune.ReportError, match="must be a number"):
            _checked_metrics({"m": bad}, "m")
    with pytest.raises(tune.ReportError, match=r"got \['a', 'b'\] without the run's metric"):
        _checked_metrics({"b": 1, "a": 2}, "m")
    with pytest.raises(tune.ReportError, match="without the run's metric 'eval/loss'"):
        _checked_metrics({"eval": {"rmse": 1.0}}, "eval/loss")
    # with Ray Tune's TUNE_DISABLE_STRICT_METRIC_CHECKING=1 a report may leave it out
    assert _checked_metrics({"b": 1}, "m", required=False) == {"b": 1}
    with pytest.raises(tune.ReportError, match="must be a number"):
        _checked_metrics({"m": "x"}, "m", required=False)


def test_the_report_error_is_found_however_the_trials_failure_wraps_it() -> None:
    # Tuner.run raises it from the results, for a restored run too (its stopper is Tune's
    # unpickled copy): as Ray wraps it, as full tracebacks wrap it, as a train_func rewraps it
    from types import SimpleNamespace

    from ray.exceptions import RayTaskError

    from mlruntime.tune.tuner import _raise_report_error, _report_error

    def failed(error: BaseException | None) -> SimpleNamespace:
        return SimpleNamespace(error=error)

    bad = tune.ReportError("report() got ['los'] without the run's metric 'loss'")
    by_ray = RayTaskError("train", "Traceback ...", bad).as_instanceof_cause()
    try:
        try:
            raise bad
        except tune.ReportError as exc:
            raise RuntimeError("training failed") from exc
    except RuntimeError as exc:
        rewrapped = RayTaskError("train", "Traceback ...", exc).as_instanceof_cause()
    assert _report_error(by_ray) is bad and _report_error(rewrapped) is bad
    other = RuntimeError("an exception of the user's with a cause attribute of its own")
    other.cause = ValueError("not Ray's")  # type: ignore[attr-defined]
    other.__context__ = bad
    assert _report_error(other) is bad  # both ways looked at
    hidden = RuntimeError("replaced")
    hidden.__context__, hidden.__suppress_context__ = bad, True  # raise ... from None
    assert _report_error(hidden) is None
    assert _report_error(RayTaskError("train", "tb", KeyError("b")).as_instanceof_cause()) is None
    assert _report_error(None) is None
    assert _report_error("Trainable runner reuse requires reset_config()") is None  # as text
    _raise_report_error([failed(None), failed(KeyError("b"))])  # other failures: nothing
    with pytest.raises(tune.ReportError) as raised:
        _raise_report_error([failed(None), failed(rewrapped)])
    assert str(raised.value) == str(bad) and raised.value.__cause__ is rewrapped


def test_a_0d_array_is_a_metric_and_a_run_with_no_reports_says_so(
    ray_cluster: None, caplog: pytest.LogCaptureFixture
) -> None:
    space = {"x": [0.5, 0.25]}
    result = tune.Tuner(report_a_0d_array, space, quiet(search_alg=GridSearch())).run()
    assert sorted(result.results["loss"]) == [0.25, 0.5]
    assert result.best_result["config/x"].tolist() == [0.25]
    with caplog.at_level("WARNING", logger="mlruntime.tune.tuner"):
        result = tune.Tuner(report_nothing, space, quiet(search_alg=GridSearch())).run()
    assert result.best_result.empty and result.best_model is None
    assert set(result.results["status"]) == {"TERMINATED"}
    assert "no trial reported the metric 'loss'" in caplog.text


def nested_xgboost(timed: bool = False) -> None:
    from mlruntime_xgboost import XGBEstimator, XGBScalingConfig

    start = time.time()
    ctx = get_tuner_context()
    depth = ctx.get_hyper_params()["max_depth"]
    est = XGBEstimator(
        n_estimators=5,
        params={"max_depth": depth},
        scaling_config=XGBScalingConfig(num_workers=2, num_cpu_per_worker=1),
        verbose=False,
    )
    est.fit(ctx.get_dataset_map()["train"], ["x0", "x1"], "y")
    rmse = est.get_eval_results()["train"]["rmse"][-1]
    times = {"start": start, "end": time.time()} if timed else {}
    ctx.report({"rmse": rmse, "workers": len(est.last_result.return_values), **times})


def nested_config() -> tune.TunerConfig:
    """Grid trials that each drive a 2-worker x 1-CPU estimator."""
    return tune.TunerConfig(
        metric="rmse",
        mode="min",
        search_alg=GridSearch(),
        uses_snowflake_trainer=True,
        resource_per_trial={"CPU": 2},
        verbose=False,
    )


def test_a_trial_can_run_a_two_worker_estimator(ray_cluster: None, tmp_path: Path) -> None:
    pytest.importorskip("mlruntime_xgboost")
    rng = np.random.default_rng(0)
    x = rng.random((2000, 2))
    session = mlruntime.Session(tmp_path / "w.duckdb")
    session.create_table("t", {"x0": x[:, 0], "x1": x[:, 1], "y": x[:, 0] * 3 + x[:, 1]})
    config = nested_config()
    train = DataConnector.from_dataframe(session.table("t"))  # a DuckDB table: staged once
    result = tune.Tuner(nested_xgboost, {"max_depth": [2, 4]}, config).run({"train": train})
    frame = result.results
    assert sorted(frame["config/max_depth"]) == [2, 4] and set(frame["workers"]) == {2}
    assert (frame["rmse"] < 1.0).all()
    session.close()


def timed_nested_xgboost() -> None:
    nested_xgboost(timed=True)


def test_trials_with_estimators_run_side_by_side_on_a_bigger_cluster(tmp_path: Path) -> None:
    """Two nodes x 2 CPUs: two trials at once, each driving a 2-worker x 1-CPU estimator.
    The trial processes reserve nothing their estimators need, so both jobs are placed
    together (their run intervals overlap) instead of one waiting for the other."""
    pytest.importorskip("mlruntime_xgboost")
    from mlruntime.testing import simulated_cluster

    rng = np.random.default_rng(0)
    x = rng.random((2000, 2))
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "y": x[:, 0] * 3 + x[:, 1]})
    config = nested_config()
    with simulated_cluster([(2, 0), (2, 0)]):
        train = DataConnector.from_dataframe(frame)
        space = {"max_depth": [2, 3, 4, 5]}
        result = tune.Tuner(timed_nested_xgboost, space, config).run({"train": train})
    runs = result.results.sort_values("start")
    assert len(runs) == 4 and set(runs["workers"]) == {2}
    starts, ends = runs["start"].tolist(), runs["end"].tolist()
    # with 4 CPUs and 2-CPU trials, the second trial starts before the first one ends
    assert starts[1] < ends[0]


DRIVER = textwrap.dedent(
    """
    import contextlib, io, os, sys, time
    import pandas as pd
    import ray
    import mlruntime
    from mlruntime import DataConnector, tune
    from mlruntime.errors import ConfigError
    from mlruntime.tune import get_tuner_context
    from mlruntime.tune.search import GridSearch

    marks = sys.argv[2]

    def slow():
        ctx = get_tuner_context()
        x = ctx.get_hyper_params()["x"]
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
        rows = ctx.get_dataset_map()["data"].count_rows()
        mark = f"start-{x}-{cpus:g}-{rows}-{os.getpid()}-{time.time()}"
        open(os.path.join(marks, mark), "w").close()
        time.sleep(1.5)
        ctx.report({"loss": float(x)})

    config = tune.TunerConfig(metric="loss", mode="min", search_alg=GridSearch(),
                              max_concurrent_trials=1, resource_per_trial={"CPU": 2},
                              name="restorable")
    data = {"data": DataConnector.from_dataframe(pd.DataFrame({"a": range(7)}))}
    if sys.argv[1] == "start":
        tune.Tuner(slow, {"x": list(range(6))}, config).run(data)
    else:
        path = os.path.join(os.environ["MLRUNTIME_HOME"], "tune", "restorable")
        named = False
        try:  # the stored train_func; the datasets must come again
            tune.Tuner.restore(path).run()
        except ConfigError as exc:
            named = "['data']" in str(exc)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            result = tune.Tuner.restore(path).run(data)
        last = [ln for ln in out.getvalue().splitlines() if "done of" in ln][-1]
        print("RESULT", sorted(result.results["config/x"]), result.best_result["config/x"].tolist(),
              "missing data named:", named, "|", last)
    """
)


def test_restore_finishes_a_run_whose_driver_was_killed(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "MLRUNTIME_HOME": str(tmp_path / "home"),
        # Tune's periodic save once in 30 s (a value the user sets is kept): what the restore
        # finds saved as finished was saved as the trial ended (each runs over a second)
        "TUNE_GLOBAL_CHECKPOINT_S": "30",
    }
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen(
        [sys.executable, str(script), "start", str(marks)], env=env, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    # while its driver runs it, a restore is refused before anything starts: it would remove
    # the datasets staged for that driver's trials and run the same trials beside them
    path = str(tmp_path / "home" / "tune" / "restorable")
    data = DataConnector.from_dataframe(pd.DataFrame({"a": range(7)}))
    with pytest.raises(ConfigError, match=r"is still running \(another driver saved its state"):
        tune.Tuner.restore(path).run({"data": data})
    # the kill comes halfway through a trial (each sleeps 1.5 s), the third or a later one:
    # the trials before it were saved as finished only as they ended
    while time.monotonic() < deadline:
        started = [float(p.name.split("-")[-1]) for p in marks.iterdir()]
        if 3 <= len(started) < 6 and time.time() < max(started) + 0.75:
            time.sleep(max(started) + 0.75 - time.time())
            break
        time.sleep(0.05)
    else:
        driver.kill()
        pytest.fail("the third to fifth trials never started")
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its embedded Ray die at once
    driver.wait()
    started_before = {p.name.split("-")[1] for p in marks.iterdir()}
    assert 2 <= len(started_before) < 6
    result = run_for_result([sys.executable, str(script), "restore", str(marks)], env, 300)
    # the progress line counts on from the trials done before the kill
    assert result == (
        "[0, 1, 2, 3, 4, 5] [0] missing data named: True | "
        "tuning: 6 trial(s) done of 6; best loss 0"
    )
    starts: dict[str, int] = {}
    for p in marks.iterdir():
        _, x, cpus, rows, *_ = p.name.split("-")
        # the restored trials reserve what the run asked for, and read the datasets given
        assert (cpus, rows) == ("2", "7"), p.name
        starts[x] = starts.get(x, 0) + 1
    # trials that finished before the kill were not run again: at most the one running at the
    # kill ran twice
    assert sum(starts.values()) <= 7 and set(starts) == {str(x) for x in range(6)}


def xgboost_trial() -> None:
    import xgboost as xgb

    ctx = get_tuner_context()
    rng = np.random.default_rng(0)
    x = rng.random((100, 2))
    data = xgb.DMatrix(x, label=x[:, 0] * ctx.get_hyper_params()["scale"])
    booster = xgb.train({"max_depth": 2}, data, num_boost_round=3)
    for _ in range(2):  # a model every round: only a trial's latest is kept
        ctx.report({"loss": float(ctx.get_hyper_params()["scale"])}, model=booster)


def test_a_reported_booster_is_stored_in_xgboosts_format(ray_cluster: None) -> None:
    import xgboost as xgb

    from mlruntime.store.model_files import DESCRIPTION_FILE

    config = quiet(search_alg=GridSearch(), max_concurrent_trials=1)
    result = tune.Tuner(xgboost_trial, {"scale": [1.0, 2.0]}, config).run()
    assert isinstance(result.best_model, xgb.Booster)
    stored = sorted(p.name for p in Path(result.path).rglob("*") if p.name.startswith("model"))
    assert stored == ["model.ubj", "model.ubj"], stored  # one per trial
    assert any(Path(result.path).rglob(DESCRIPTION_FILE))
    # Tune's JSON results are kept; not its CSV copy of them (written in the driver between
    # trials), nor its TensorBoard logger (tensorboardX -> torch, 3 s of the driver's start)
    assert len(list(Path(result.path).rglob("result.json"))) == 2
    assert not list(Path(result.path).rglob("progress.csv"))
    assert not list(Path(result.path).rglob("events.out.tfevents*"))


def runtime_env_probe() -> None:
    import ray

    env = dict(ray.get_runtime_context().runtime_env or {})
    ctx = get_tuner_context()
    ctx.report(
        {
            "loss": 0.0,
            "own_env_vars": len(env.get("env_vars") or {}),
            "pl_disable_fork": os.environ.get("PL_DISABLE_FORK") == "1",
        }
    )


def test_trial_actors_need_no_runtime_env_of_their_own(ray_cluster: None) -> None:
    # Ray starts a fresh process for any actor whose runtime env differs from the job's (the
    # pre-started idle workers stay unused); Tune's default trial env holds only
    # PL_DISABLE_FORK, which the trial sets itself.
    from ray.tune.execution import class_cache

    before = dict(class_cache.DEFAULT_ENV_VARS)
    result = tune.Tuner(runtime_env_probe, {"x": [1]}, quiet(search_alg=GridSearch())).run()
    row = result.results.iloc[0]
    assert row["own_env_vars"] == 0
    assert bool(row["pl_disable_fork"])
    assert before == class_cache.DEFAULT_ENV_VARS  # Tune's default is back after the run


def nested_job(workers: int, fn: Any) -> list[Any]:
    """Inside a trial: ``fn`` on ``workers`` x 1 CPU; the ranks' return values."""
    from mlruntime.runtime.distributor import Distributor
    from mlruntime.runtime.scaling import ScalingConfig, WorkerResourceConfig

    scaling = ScalingConfig(
        num_workers=workers, resources_per_worker=WorkerResourceConfig(num_cpus=1)
    )
    return Distributor(scaling, verbose=False).run(fn).return_values


def job_trials(**kwargs: Any) -> tune.TunerConfig:
    """Grid trials that each drive a job (``uses_snowflake_trainer``)."""
    return tune.TunerConfig(
        metric="loss",
        mode="min",
        search_alg=GridSearch(),
        uses_snowflake_trainer=True,
        verbose=False,
        **kwargs,
    )


def one_worker_job() -> None:
    from mlruntime.runtime.context import get_context

    world = nested_job(1, lambda: get_context().get_world_size())[0]
    get_tuner_context().report({"loss": 0.0, "world": world})


def test_a_trial_can_run_a_one_worker_job(ray_cluster: None) -> None:
    # A one-worker job is a plain actor: it must not land in the trial's own placement group,
    # which captures the trial's children (it holds no CPU for them).
    config = job_trials()
    result = tune.Tuner(one_worker_job, {"x": [1, 2]}, config).run()
    assert list(result.results["world"]) == [1, 1]


class _Fits:
    """A callable object whose call fits an estimator made outside it."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def __call__(self) -> None:
        self.estimator.fit(None, [], "y")


def test_detection_finds_estimators_and_distributors_in_train_funcs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import functools

    import mlruntime.runtime.distributor as distributor_module
    from mlruntime.runtime.distributor import Distributor
    from mlruntime.train.gbdt import GBDTEstimator
    from mlruntime.tune.jobs import starts_jobs

    def plain() -> None:
        get_tuner_context().report({"loss": float(np.mean(np.arange(3)))})

    def by_module() -> None:
        distributor_module.Distributor(verbose=False).run(os.getpid)

    def by_class() -> None:
        Distributor(verbose=False).run(os.getpid)

    estimator = GBDTEstimator.__new__(GBDTEstimator)  # made outside the function

    def by_instance() -> None:
        estimator.fit(None, [], "y")

    def helper_of_helper() -> None:
        one_worker_job()  # a module function that imports the distributor inside it

    def by_lambda_inside() -> None:
        run = lambda: nested_job(1, os.getpid)  # noqa: E731
        run()

    def module_imported_inside() -> None:
        import mlruntime.runtime.distributor as d

        d.Distributor(verbose=False).run(os.getpid)

    def plugin_not_imported() -> None:  # a module that does not exist: not imported to look
        from mlruntime_not_installed import SomeEstimator  # type: ignore[import-not-found]

        SomeEstimator().fit()

    def legacy_trainer_not_imported() -> None:  # Snowflake's legacy PyTorchTrainer name
        from mlruntime_not_installed import PyTorchTrainer  # type: ignore[import-not-found]

        PyTorchTrainer(os.getpid).run()

    def other_plugin_names() -> None:
        from mlruntime_not_installed import to_dataset  # type: ignore[import-not-found]

        pd.concat([to_dataset()])

    assert not starts_jobs(plain)
    assert not starts_jobs(report_pid)
    assert not starts_jobs(other_plugin_names)
    assert starts_jobs(module_imported_inside)
    assert starts_jobs(plugin_not_imported)
    assert starts_jobs(legacy_trainer_not_imported)
    for func in (by_module, by_class, by_instance, one_worker_job, helper_of_helper):
        assert starts_jobs(func), func.__name__
    assert starts_jobs(by_lambda_inside)
    assert starts_jobs(functools.partial(by_class))
    assert starts_jobs(_Fits(estimator))
    assert not starts_jobs(helper_of_helper, depth=0)  # the job is two calls down

    # the user's own classes and objects: the methods the code reaches are read (and those
    # they call on self), and what an object holds under the names it reads
    class Trainer:
        def __init__(self, rounds: int) -> None:
            self.rounds = rounds

        def run(self) -> None:
            self._fit()

        def _fit(self) -> None:
            Distributor(verbose=False).run(os.getpid)

        def score(self) -> float:
            return float(self.rounds)

    @dataclasses.dataclass
    class Holder:
        estimator: Any
        note: str = ""

    class Reporter:  # a class of the user's that starts nothing
        def report(self) -> None:
            get_tuner_context().report({"loss": float(pd.Series([1.0]).mean())})

    trainer, holder, reporter = Trainer(3), Holder(estimator), Reporter()

    def by_users_class() -> None:
        Trainer(rounds=3).run()

    def by_users_object() -> None:
        trainer.run()

    def by_what_an_object_holds() -> None:
        holder.estimator.fit(None, [], "y")

    def by_a_plain_class() -> None:
        Reporter().report()
        reporter.report()
        DataConnector.from_dataframe(pd.DataFrame({"a": [1]})).to_pandas()

    def by_a_method_that_starts_none() -> None:  # Trainer.run would, but is not called
        get_tuner_context().report({"loss": trainer.score(), "note": holder.note})

    class Base:
        def run(self) -> None:
            Distributor(verbose=False).run(os.getpid)

    class Derived(Base):
        def run(self) -> None:  # the job is in the base's run, reached through super()
            super().run()

    class Config:
        estimator = GBDTEstimator  # a class attribute

    class Outer:  # a user object held by another
        def __init__(self) -> None:
            self.inner = holder

    class CallableTrainer:
        def __call__(self) -> None:
            self._fit()

        def _fit(self) -> None:
            Distributor(verbose=False).run(os.getpid)

    outer = Outer()

    def by_super() -> None:
        Derived().run()

    def by_a_class_attribute() -> None:
        Config.estimator()

    def by_a_held_object() -> None:
        outer.inner.estimator.fit(None, [], "y")

    for func in (by_users_class, by_users_object, by_what_an_object_holds, by_super):
        assert starts_jobs(func), func.__name__
    for func in (by_a_class_attribute, by_a_held_object, CallableTrainer(), trainer.run):
        assert starts_jobs(func), func
    assert not starts_jobs(by_a_method_that_starts_none)

    # a big class whose methods name each other and the class: read once, not per mention
    body = "\n".join(
        f"    def m{i}(self):\n        return Big.m{(i + 1) % 200}(self) or self.m{i // 2}()"
        for i in range(200)
    )
    scope: dict[str, Any] = {"__name__": "__main__"}  # as a notebook's
    exec(f"class Big:\n{body}\n", scope)
    big = scope["Big"]()

    def uses_big() -> None:
        big.m0()

    from mlruntime.tune import jobs

    real_uses, reads = jobs._uses, []

    def counted(*args: Any) -> bool:
        reads.append(args[0])
        return real_uses(*args)

    monkeypatch.setattr(jobs, "_uses", counted)
    assert not starts_jobs(uses_big)
    assert len(reads) <= 4 * 200  # each method once per depth (17 s before, on this one)
    assert not starts_jobs(by_a_plain_class)


def test_a_trial_that_starts_a_job_is_detected(ray_cluster: None) -> None:
    # No uses_snowflake_trainer: the run sees that train_func starts jobs, and its trials
    # reserve nothing (with one CPU each, as plain trials, the jobs could never be placed).
    config = quiet(search_alg=GridSearch())
    assert config.uses_snowflake_trainer is None
    result = tune.Tuner(one_worker_job, {"x": [1, 2]}, config).run()
    assert list(result.results["world"]) == [1, 1]


def test_a_job_that_cannot_fit_beside_the_trials_fails_at_once(ray_cluster: None) -> None:
    # Declared not to start jobs, and it does: the trials hold every CPU, and the job fails
    # before any placement with the advice, instead of waiting out the placement timeout.
    config = quiet(search_alg=GridSearch(), uses_snowflake_trainer=False)
    with pytest.raises(ResourceError, match="uses_snowflake_trainer=True") as caught:
        tune.Tuner(every_cpu_job, {"x": [1, 2]}, config).run()
    assert "could never be placed" in str(caught.value)
    # a job that fits beside the two trials' CPUs runs
    assert tune.Tuner(one_worker_job, {"x": [1, 2]}, config).run().results["world"].eq(1).all()


def every_cpu_job() -> None:
    cpus = int(sum(node.num_cpus for node in mlruntime.get_nodes()))
    nested_job(cpus, os.getpid)
    get_tuner_context().report({"loss": 0.0})


def report_pid() -> None:
    get_tuner_context().report({"loss": 0.0, "pid": os.getpid()})


def test_trials_start_on_idle_workers_and_the_pool_is_topped_up_after(ray_cluster: None) -> None:
    from mlruntime.runtime.distributor import release_idle_groups

    release_idle_groups()  # warm groups of earlier tests would hold CPUs and processes
    cpus = int(sum(node.num_cpus for node in mlruntime.get_nodes()))
    before = set(wait_for_idle_workers(cpus))
    assert len(before) >= cpus  # one idle worker per CPU for this job
    result = tune.Tuner(report_pid, {"x": [1, 2]}, quiet(search_alg=GridSearch())).run()
    trial_pids = set(result.results["pid"])
    assert trial_pids <= before  # the trials' placement groups took idle workers
    # their processes exited with the trials, and new idle ones took their place (Ray
    # itself starts none)
    after = set(wait_for_idle_workers(cpus))
    assert len(after) >= cpus
    assert not trial_pids & after
    assert len(after - before) >= len(trial_pids)


def first_quick_then_slow() -> None:
    """Trial 0 ends at once, the others after 0.5 s."""
    ctx = get_tuner_context()
    if ctx.get_hyper_params()["x"] != 0:
        time.sleep(0.5)
    ctx.report({"loss": 0.0, "pid": os.getpid()})


class _Holder:
    def ready(self) -> bool:
        return True


@pytest.mark.parametrize("scheduler", [None, "asha"])
def test_a_trial_waits_for_its_own_actor_instead_of_ending_it(
    ray_cluster: None, scheduler: str | None
) -> None:
    """The first trial ends before the second trial's actor has started (a new process: every
    idle worker but one is held here). Tune's FIFO scheduler gave the second trial the first
    one's actor and removed its own, and did the same to every trial after it: 15 processes
    started only to be stopped, every trial on one actor. Now the second trial waits for its
    actor (the first one's runs the next new trials for the 7.5 s it may take)."""
    import ray
    from ray._private.state import actors

    from mlruntime.runtime.distributor import release_idle_groups
    from mlruntime.runtime.warm import idle_workers, top_up_idle_workers

    def idle() -> list[int]:
        return [pid for pids in idle_workers().values() for pid in pids]

    release_idle_groups()
    top_up_idle_workers(wait=True)  # the pool as full as it gets
    holders: list[Any] = []
    try:
        for _ in range(10):  # a worker still starting registers late: hold it too
            more = [ray.remote(num_cpus=0)(_Holder).remote() for _ in idle()[1:]]
            ray.get([holder.ready.remote() for holder in more])
            holders += more
            time.sleep(0.5)
            if len(idle()) <= 1:
                break
        assert len(idle()) <= 1
        before = set(actors())
        config = quiet(search_alg=GridSearch(), max_concurrent_trials=2, scheduler=scheduler)
        result = tune.Tuner(first_quick_then_slow, {"x": list(range(16))}, config).run()
    finally:
        for holder in holders:
            ray.kill(holder)
        top_up_idle_workers(
            wait=True, ended_actor_ids=[holder._actor_id.binary() for holder in holders]
        )
    assert len(result.results) == 16 and set(result.results["status"]) == {"TERMINATED"}
    created = [
        info["Pid"]
        for actor_id, info in actors().items()
        if actor_id not in before and "ImplicitFunc" in info["ActorClassName"]
    ]
    ran = set(result.results["pid"])
    assert len(ran) == 2 and sorted(created) == sorted(ran), (ran, created)


class _Trial:
    def __init__(self, trial_id: str, status: str) -> None:
        self.trial_id, self.status = trial_id, status
        self.last_result: dict[str, Any] = {}


class _Controller:
    def __init__(self, trials: list[_Trial]) -> None:
        self.trials = trials

    def get_trials(self) -> list[_Trial]:
        return self.trials


def test_the_schedulers_leave_pending_trials_to_tune_until_one_waits_too_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pending trial is picked (as FIFO picks it) only once it has waited PENDING_WAIT_S
    for its actor; a paused one when none is pending. The scheduler pickles as Tune's class
    and a function of mlruntime's, keeping what it knows."""
    import pickle

    import ray.cloudpickle
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    asha = {"max_t": 5, "metric": "loss", "mode": "min"}
    for base, args in ((FIFOScheduler, {}), (ASHAScheduler, asha)):
        scheduler = tuner_module._pending_trials_in_order(base)(**args)
        assert isinstance(scheduler, base) and type(scheduler).__name__ == base.__name__
        a, b, c = _Trial("a", "RUNNING"), _Trial("b", "PENDING"), _Trial("c", "PAUSED")
        controller = _Controller([a, b, c])
        for trial in (a, b, c):
            scheduler.on_trial_add(controller, trial)
        assert scheduler.choose_trial_to_run(controller) is None
        clock[0] += tuner_module.PENDING_WAIT_S
        assert scheduler.choose_trial_to_run(controller) is b
        b.status = "RUNNING"
        assert scheduler.choose_trial_to_run(controller) is c
        for dumps in (pickle.dumps, ray.cloudpickle.dumps):
            data = dumps(scheduler)
            assert b"PendingTrialsInOrder" not in data  # by reference, not by value
            copy = pickle.loads(data)
            assert type(copy) is type(scheduler) and copy._added == scheduler._added
        d = _Trial("d", "PENDING")
        controller.trials.append(d)
        copy.on_trial_add(controller, d)
        assert copy.choose_trial_to_run(controller) is None


class _StateManager:
    """Ray Tune's experiment state manager, the attributes the scheduler uses."""

    def __init__(self) -> None:
        self._last_save_time = float("-inf")
        self.taken: list[float] = []

    def _update_auto_checkpoint_time(self, time_taken: float) -> None:
        self.taken.append(time_taken)


def test_a_trial_that_ran_a_second_makes_the_runs_state_save_as_it_ends_unless_too_costly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray Tune saves at the end of a step unless it saved within its period: the scheduler
    makes that save due as a trial that ran FINISHED_SAVE_MIN_S or more ends, unless the
    latest save (timed through Tune's own hook, which it still calls) would cost over
    SAVE_SHARE of the trial's time per running trial. What it watches is not pickled."""
    import pickle

    from ray.tune.execution import tune_controller
    from ray.tune.schedulers import FIFOScheduler

    warnings: list[str] = []
    monkeypatch.setattr(tune_controller.logger, "warning", warnings.append)
    scheduler = tuner_module._pending_trials_in_order(FIFOScheduler)()
    a, b = _Trial("a", "RUNNING"), _Trial("b", "RUNNING")
    manager = _StateManager()
    # as Tune hands its controller to schedulers: wrapped, warning of attributes it does not
    # list (once per process: a warning seen before is seen again here)
    monkeypatch.setattr(tune_controller, "log_once", lambda key: True)
    controller = tune_controller.TrialRunnerWrapper(
        _with_manager(manager, [a, b]), None, runner_whitelist_attr={"get_trials"}
    )
    scheduler.on_trial_add(controller, a)
    scheduler.on_trial_add(controller, b)
    manager._update_auto_checkpoint_time(0.01)  # as Tune calls it after a save
    assert manager.taken == [0.01]
    manager._last_save_time = 99.5  # saved within the period
    scheduler.on_trial_complete(controller, a, {"time_total_s": 0.9})
    assert manager._last_save_time == 99.5  # a short trial waits for the periodic save
    scheduler.on_trial_complete(controller, a, {"time_total_s": 1.0})
    assert manager._last_save_time == float("-inf")  # due at the end of this step
    manager._update_auto_checkpoint_time(0.2)
    manager._last_save_time = 100.2
    scheduler.on_trial_complete(controller, a, {"time_total_s": 7.9})
    assert manager._last_save_time == 100.2  # 0.4 s for two running is over 5 % of 7.9 s
    scheduler.on_trial_complete(controller, a, {"time_total_s": 8.1})
    assert manager._last_save_time == float("-inf")
    manager._last_save_time = 100.3
    b.last_result = {"time_total_s": 9.0}
    scheduler.on_trial_error(controller, b)  # a failed trial too, by its last report
    assert manager._last_save_time == float("-inf")
    manager._last_save_time = 100.4
    scheduler.on_trial_complete(controller, a, None)  # no result: nothing, and no error
    assert manager._last_save_time == 100.4
    assert manager.taken == [0.01, 0.2]
    copy = pickle.loads(pickle.dumps(scheduler))
    assert "_state_saves" not in copy.__dict__ and copy._added == scheduler._added
    # a Ray Tune without such a manager: nothing watched, no save made due
    saves = tuner_module._StateSaves()
    assert saves.watch(_Controller([a])) is None
    saves.trial_ended(_Controller([a]), {"time_total_s": 8.0})
    assert warnings == []


def _with_manager(manager: _StateManager, trials: list[_Trial]) -> _Controller:
    controller = _Controller(trials)
    controller._checkpoint_manager = manager  # type: ignore[attr-defined]
    return controller


def report_modules() -> None:
    loaded = "mlruntime.runtime.distributor" in sys.modules
    get_tuner_context().report({"loss": 0.0, "pid": os.getpid(), "distributor": loaded})


def test_a_trial_that_runs_no_job_does_not_import_the_distributor(ray_cluster: None) -> None:
    # Trials reuse their process (one at a time here); releasing a job's warm groups after
    # each trial must not import the distributor (50 ms, 50 MB) into a process that ran none.
    config = quiet(search_alg=GridSearch(), max_concurrent_trials=1)
    result = tune.Tuner(report_modules, {"x": [1, 2, 3]}, config).run()
    assert result.results["pid"].nunique() == 1  # one reused trial process
    assert not result.results["distributor"].any()


def job_worker_pid() -> None:
    worker = nested_job(1, os.getpid)[0]
    get_tuner_context().report({"loss": 0.0, "worker": worker, "trial": os.getpid()})


def test_trials_one_at_a_time_run_their_jobs_on_one_warm_group(ray_cluster: None) -> None:
    # Nested estimators, one trial at a time (the default with uses_snowflake_trainer): the
    # next trial runs in the same process and its job takes the group the last one kept,
    # instead of new worker processes importing the framework for every trial.
    config = job_trials()
    result = tune.Tuner(job_worker_pid, {"x": [1, 2, 3]}, config).run()
    assert result.results["trial"].nunique() == 1
    assert result.results["worker"].nunique() == 1
    # Several at once: each trial releases its group (another trial's job may need the CPUs)
    config.max_concurrent_trials = None
    config.resource_per_trial = {"CPU": 1}
    two = tune.Tuner(job_worker_pid, {"x": [1, 2, 3, 4]}, config).run()
    assert two.results["worker"].nunique() == 4


def live_placement_groups() -> list[dict[str, Any]]:
    """Ray's placement groups not removed (of this test session's Ray)."""
    from ray.util import placement_group_table

    return [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]


def die_mid_job_then_run_one() -> None:
    """Trial ``x=1``: its process is killed while its two-worker job runs; ``x=2``: a job
    that needs every CPU."""
    from mlruntime.runtime.context import get_context

    ctx = get_tuner_context()
    if ctx.get_hyper_params()["x"] == 1:
        trial = os.getpid()

        def kill_the_trial() -> None:
            if get_context().get_rank() == 0:
                os.kill(trial, signal.SIGKILL)
            time.sleep(60)

        nested_job(2, kill_the_trial)
    cpus = int(sum(node.num_cpus for node in mlruntime.get_nodes()))
    pids = nested_job(cpus, os.getpid)
    ctx.report({"loss": 0.0, "workers": len(set(pids))})


def test_a_trial_that_dies_mid_job_leaves_nothing_reserved(ray_cluster: None) -> None:
    # The dead trial's job held a placement group, which Ray keeps until the driver exits:
    # the next trial's job, which needs every CPU, waited for it and failed.
    config = job_trials(max_concurrent_trials=1)
    result = tune.Tuner(die_mid_job_then_run_one, {"x": [1, 2]}, config).run()
    rows = result.results.set_index("config/x")
    assert rows.loc[1, "status"] == "ERROR"
    assert rows.loc[2, "status"] == "TERMINATED"
    assert rows.loc[2, "workers"] == int(sum(n.num_cpus for n in mlruntime.get_nodes()))
    assert live_placement_groups() == []


def two_worker_job_pids() -> None:
    pids = nested_job(2, os.getpid)
    get_tuner_context().report({"loss": 0.0, "workers": ",".join(map(str, sorted(pids)))})


def test_trials_one_at_a_time_leave_no_placement_group_behind(ray_cluster: None) -> None:
    # A placement group outlives the trial process that created it (Ray frees it with the
    # driver): a several-worker job's group is released after each trial, kept or not.
    config = job_trials(resource_per_trial={"CPU": 2}, max_concurrent_trials=1)
    result = tune.Tuner(two_worker_job_pids, {"x": [1, 2]}, config).run()
    assert result.results["workers"].nunique() == 2  # each trial's job had new workers
    assert live_placement_groups() == []
