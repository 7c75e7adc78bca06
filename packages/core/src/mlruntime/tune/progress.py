"""The progress view of a tuning run: trials done of the run's total (failed ones among them)
and the best value of the metric so far.

Where it is shown decides how (``Progress.show``):

- a terminal or a Jupyter notebook's output: **one line, rewritten in place** (``\\r``) as
  trials finish and the best value improves (at most ten times a second: a change within a
  tenth of a second of the last redraw is drawn at Tune's next step), ended with a newline
  when the run ends;
- anything else (a log file, a pipe, a captured stream): **a line** when the first trial
  finishes, then at most one every ``PROGRESS_EVERY_S`` seconds, and the final count when the
  run ends, so a run of a thousand short trials logs a few lines, not a thousand.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from typing import Any, TextIO

__all__ = ["LIVE_EVERY_S", "PROGRESS_EVERY_S", "Progress", "is_live"]

PROGRESS_EVERY_S = 10.0
"""Seconds between two progress lines written to a log (not a terminal or notebook)."""

LIVE_EVERY_S = 0.1
"""Seconds between two redraws of the line in a terminal or notebook."""


def is_live(stream: Any) -> bool:
    """Whether ``stream`` shows a line rewritten in place: a terminal, or the output of a
    Jupyter (ipykernel) notebook cell, which both honour ``\\r``."""
    if type(stream).__module__.partition(".")[0] == "ipykernel":
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Counts of a run (trials done, failed, best metric value) and their display.

    Args:
        metric: The metric the run optimizes (shown with its best value).
        mode: ``"min"`` or ``"max"``: which value is best.
        total: Trials the run makes in all (a restored run's included).
    """

    def __init__(self, metric: str, mode: str, total: int) -> None:
        self.metric = metric
        self.mode = mode
        self.total = total
        self.done = 0
        self.failed = 0
        self.best: float | None = None
        self._forget_display()

    def _forget_display(self) -> None:
        """What was shown, and when (not kept with a run's saved state)."""
        self._shown_at: float | None = None
        self._shown_text = ""
        self._width = 0
        self._live_line = False
        self._held = False  # a change not shown yet (too soon after the last)

    def result(self, value: Any) -> bool:
        """Take one reported ``value`` of the metric (any real number: numpy's too); True if
        it is the best so far."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        value = float(value)
        if math.isnan(value):  # never the best
            return False
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best = value
            return True
        return False

    def trial_ended(self, failed: bool = False) -> None:
        """Count a trial that finished (``failed``: with an error)."""
        self.done += 1
        self.failed += int(failed)

    def text(self) -> str:
        """The progress line, e.g. ``tuning: 7 trial(s) done of 20; best rmse 0.41``."""
        best = "n/a" if self.best is None else f"{self.best:.6g}"
        failed = f" ({self.failed} failed)" if self.failed else ""
        return (
            f"tuning: {self.done} trial(s) done of {self.total}{failed}; best {self.metric} {best}"
        )

    def show(self, stream: TextIO | None = None, final: bool = False, held: bool = False) -> None:
        """Show the counts on ``stream`` (default: ``sys.stdout``) unless they are unchanged or
        were shown less than ``LIVE_EVERY_S`` (live) or ``PROGRESS_EVERY_S`` (a log) ago (the
        final count, all trials done, is shown at once).

        Args:
            stream: Where to show them.
            final: The run ended: show what changed since, whenever it was, and end the
                rewritten line.
            held: Only show a change an earlier call held back (as too soon), once it is due:
                nothing is shown before the first change was.
        """
        out = sys.stdout if stream is None else stream
        if out is None:  # no standard output (pythonw, a closed descriptor): nothing to show
            return
        if held and not self._held:
            return
        live = is_live(out)
        text = self.text()
        now = time.monotonic()
        every = LIVE_EVERY_S if live else PROGRESS_EVERY_S
        due = self._shown_at is None or now - self._shown_at >= every
        if text != self._shown_text:
            if due or final or self.done == self.total:
                if live:
                    out.write("\r" + text.ljust(self._width))
                    self._width = max(self._width, len(text))
                    self._live_line = True
                else:
                    out.write(text + "\n")
                out.flush()
                self._shown_at, self._shown_text, self._held = now, text, False
            else:
                self._held = True
        if final and self._live_line:
            out.write("\n")
            out.flush()
            self._live_line = False

    def get_state(self) -> dict[str, Any]:
        """The counts, as kept with the run's saved state."""
        return {"done": self.done, "failed": self.failed, "best": self.best}

    def set_state(self, state: dict[str, Any]) -> None:
        """Take the counts of a restored run (it counts on from them)."""
        self.done = int(state.get("done", 0))
        self.failed = int(state.get("failed", 0))
        best = state.get("best")
        self.best = None if best is None else float(best)
        self._forget_display()


def progress_callback(metric: str, mode: str, total: int) -> Any:
    """A Ray Tune callback that keeps a :class:`Progress` of the run and shows it on the
    driver's standard output.

    Args:
        metric: The metric the run optimizes.
        mode: ``"min"`` or ``"max"``.
        total: Trials the run makes in all.
    """
    from ray.tune import Callback

    class ProgressView(Callback):
        def __init__(self) -> None:
            self.progress = Progress(metric, mode, total)

        def on_trial_result(
            self, iteration: int, trials: Any, trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            value = result.get(metric)
            if value is None and "/" in metric:  # a nested metric ("eval/loss")
                from ray.tune.utils import flatten_dict

                value = flatten_dict(result).get(metric)
            # a live line shows a better value as it comes (ASHA's rounds, a trial's epochs)
            if self.progress.result(value) and is_live(sys.stdout):
                self.progress.show()

        def on_step_end(self, iteration: int, trials: Any, **info: Any) -> None:
            # Tune steps at least every 0.1 s: what was held back (a trial that ended just
            # after the line was drawn) is shown once it is due, not at the next trial's end
            self.progress.show(held=True)

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self.progress.trial_ended()
            self.progress.show()

        def on_trial_error(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self.progress.trial_ended(failed=True)
            self.progress.show()

        def on_experiment_end(self, trials: Any, **info: Any) -> None:
            self.progress.show(final=True)

        def get_state(self) -> dict[str, Any]:
            # kept in Tune's snapshots: a restored run counts on from where it stopped
            return self.progress.get_state()

        def set_state(self, state: dict[str, Any]) -> None:
            self.progress.set_state(state)

    return ProgressView()
