"""The progress view of a tuning run (``mlruntime.tune.progress``): what it shows, and how
often, in a terminal or notebook and in a log."""

from __future__ import annotations

import io
import sys
import time

import numpy as np
import pytest

from mlruntime.tune import progress
from mlruntime.tune.progress import Progress, is_live


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_counts_and_the_best_value() -> None:
    view = Progress("rmse", "min", 5)
    assert view.text() == "tuning: 0 trial(s) done of 5; best rmse n/a"
    assert view.result(0.5) and not view.result(0.7) and view.result(0.25)
    assert not view.result(float("nan")) and not view.result("0.1") and not view.result(True)
    assert not view.result(None)
    assert view.result(np.float32(0.125)) and view.best == 0.125  # numpy's numbers too
    view.trial_ended()
    view.trial_ended(failed=True)
    assert view.text() == "tuning: 2 trial(s) done of 5 (1 failed); best rmse 0.125"
    most = Progress("accuracy", "max", 2)
    assert most.result(0.5) and most.result(0.75) and not most.result(0.6)
    assert most.best == 0.75


def test_a_log_gets_the_first_line_then_one_per_interval_and_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 1e6)
    log = io.StringIO()
    view = Progress("loss", "min", 4)
    for loss in (3.0, 2.0, 1.0, 4.0):
        view.result(loss)
        view.trial_ended()
        view.show(log)
    view.show(log, final=True)
    assert log.getvalue().splitlines() == [
        "tuning: 1 trial(s) done of 4; best loss 3",
        "tuning: 4 trial(s) done of 4; best loss 1",
    ]
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)
    log = io.StringIO()
    view = Progress("loss", "min", 3)
    for _ in range(2):
        view.trial_ended()
        view.show(log)
        view.show(log)  # unchanged: not shown again
    assert len(log.getvalue().splitlines()) == 2
    # a run that ends early (stopped, or fewer trials than planned) shows where it stopped
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 1e6)
    view.trial_ended(failed=True)
    view.show(log)
    view.show(log, final=True)
    assert (
        log.getvalue().splitlines()[-1] == "tuning: 3 trial(s) done of 3 (1 failed); best loss n/a"
    )
    stopped = Progress("loss", "min", 10)
    log = io.StringIO()
    for _ in range(3):
        stopped.trial_ended()
        stopped.show(log)
    stopped.show(log, final=True)
    assert log.getvalue().splitlines() == [
        "tuning: 1 trial(s) done of 10; best loss n/a",
        "tuning: 3 trial(s) done of 10; best loss n/a",
    ]


def test_a_terminal_gets_one_line_rewritten_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LIVE_EVERY_S", 0.0)
    screen = Terminal()
    view = Progress("loss", "min", 12)
    view.result(123.456)
    view.show(screen)
    for _ in range(10):
        view.trial_ended()
        view.show(screen)
    view.result(1.0)  # a shorter line than the one before it
    view.show(screen)
    view.show(screen, final=True)
    out = screen.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n") and out.startswith("\r")
    written = out[1:-1].split("\r")
    assert [w.rstrip() for w in written][-1] == "tuning: 10 trial(s) done of 12; best loss 1"
    assert len(written) == 12 and len(written[-1]) == len(written[-2])  # padded over it
    # rate-limited: a burst of changes draws once, the final state is drawn at the end
    monkeypatch.setattr(progress, "LIVE_EVERY_S", 1e6)
    screen = Terminal()
    view = Progress("loss", "min", 12)
    for _ in range(5):
        view.trial_ended()
        view.show(screen)
    view.show(screen, final=True)
    assert screen.getvalue().split("\r")[1:] == [
        "tuning: 1 trial(s) done of 12; best loss n/a",
        "tuning: 5 trial(s) done of 12; best loss n/a\n",
    ]


def test_live_streams_are_terminals_and_notebook_cells() -> None:
    assert not is_live(io.StringIO()) and is_live(Terminal())
    # ipykernel's OutStream (a notebook cell's output) renders \r as a terminal does
    notebook_stream = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})
    assert is_live(notebook_stream())
    closed = io.StringIO()
    closed.close()
    assert not is_live(closed) and not is_live(object())


def test_a_restored_run_counts_on_and_draws_afresh() -> None:
    view = Progress("loss", "min", 6)
    view.trial_ended()
    view.result(2.0)
    view.show(io.StringIO())
    state = view.get_state()
    restored = Progress("loss", "min", 6)
    restored.set_state(state)
    assert restored.text() == "tuning: 1 trial(s) done of 6; best loss 2"
    log = io.StringIO()
    restored.show(log)  # drawn in the new driver, however recently the old one drew
    assert log.getvalue() == "tuning: 1 trial(s) done of 6; best loss 2\n"


def test_a_change_held_back_as_too_soon_is_shown_once_due(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.05)
    log = io.StringIO()
    view = Progress("loss", "min", 10)
    view.show(log, held=True)  # nothing held: nothing shown, not even the zero count
    assert log.getvalue() == ""
    view.trial_ended()
    view.show(log)
    view.trial_ended()
    view.show(log)  # too soon: held back
    view.show(log, held=True)  # still too soon
    assert log.getvalue().splitlines() == ["tuning: 1 trial(s) done of 10; best loss n/a"]
    time.sleep(0.06)
    view.show(log, held=True)
    view.show(log, held=True)  # shown already
    assert log.getvalue().splitlines()[1:] == ["tuning: 2 trial(s) done of 10; best loss n/a"]


def test_no_standard_output_shows_nothing_and_does_not_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdout", None)  # pythonw, a closed descriptor
    view = Progress("loss", "min", 1)
    view.trial_ended()
    view.show()
    view.show(final=True)


def test_the_tune_callback_reads_nested_metrics_and_keeps_its_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlruntime.tune.progress import progress_callback

    callback = progress_callback("eval/loss", "min", 2)
    # Tune passes callbacks the result as reported: nested, or flat as Tune names it
    callback.on_trial_result(iteration=1, trials=[], trial=None, result={"eval": {"loss": 0.5}})
    callback.on_trial_result(iteration=2, trials=[], trial=None, result={"eval/loss": 0.25})
    callback.on_trial_result(iteration=3, trials=[], trial=None, result={"other": 0.1})
    assert callback.get_state() == {"done": 0, "failed": 0, "best": 0.25}
    restored = progress_callback("eval/loss", "min", 2)
    restored.set_state(callback.get_state())
    restored.on_trial_complete(iteration=4, trials=[], trial=None)
    restored.on_trial_error(iteration=5, trials=[], trial=None)
    restored.on_experiment_end(trials=[])
    assert capsys.readouterr().out.splitlines() == [
        "tuning: 1 trial(s) done of 2; best eval/loss 0.25",
        "tuning: 2 trial(s) done of 2 (1 failed); best eval/loss 0.25",
    ]
