"""What a job shows while it runs: a progress bar with rank 0's latest metrics, one summary line.

Messages (phases, reuse of warm workers, restarts) go to the ``mlruntime`` loggers, whose
handlers are the application's to set. The bar (tqdm; a widget in notebooks) updates in place
per round, epoch or step; at the end one line says how long each phase took and the last
metrics. ``verbose=False`` or ``MLRUNTIME_QUIET=1`` show neither bar nor summary.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from mlruntime._env import env_flag

__all__ = ["QUIET_ENV", "Progress", "quiet"]

logger = logging.getLogger(__name__)

QUIET_ENV = "MLRUNTIME_QUIET"
"""Set to ``1`` (or ``true``/``yes``/``on``) to silence every progress bar and summary."""

STEP_KEYS = ("round", "epoch", "step", "batch", "iteration", "trial")
"""Metric names that count progress; the first one present moves the bar."""


def quiet() -> bool:
    """Whether ``MLRUNTIME_QUIET`` asks for no progress output."""
    return env_flag(QUIET_ENV)


class Progress:
    """The progress of one job: phase timings, a bar of rank 0's reports, a summary line.

    Args:
        name: The job's label (``xgboost``, ``pytorch`` ...).
        enabled: Show the bar and the summary line (never under ``MLRUNTIME_QUIET``).
        total: Steps expected (rounds, epochs), when known: the bar then shows a percentage.
    """

    def __init__(self, name: str, enabled: bool = True, total: int | None = None) -> None:
        self.name = name
        self.enabled = enabled and not quiet()
        self.total = total
        self.timings: dict[str, float] = {}
        self.last_metrics: dict[str, Any] = {}
        self.reports = 0
        self._bar: Any = None
        self._phase: str | None = None
        self._started = time.perf_counter()
        self._phase_started = self._started

    def say(self, message: str) -> None:
        """Log one message of this job (INFO on ``mlruntime.runtime.progress``)."""
        logger.info("%s: %s", self.name, message)

    def phase(self, name: str, message: str | None = None, at: float | None = None) -> None:
        """Close the current phase (recording its time) and start ``name``.

        Args:
            name: The new phase.
            message: A message to log.
            at: When it started (``time.time()``, e.g. on a worker); default now.
        """
        now = time.perf_counter()
        if at is not None:
            now = max(self._phase_started, now - max(0.0, time.time() - at))
        if self._phase is not None:
            self.timings[self._phase] = self.timings.get(self._phase, 0.0) + (
                now - self._phase_started
            )
        self._phase, self._phase_started = name, now
        if message:
            self.say(message)
        if self._bar is not None:
            self._bar.set_description_str(f"{self.name} {name}", refresh=False)

    def metrics(self, metrics: dict[str, Any]) -> None:
        """Show one report of rank 0: move the bar and put the metrics beside it."""
        self.reports += 1
        self.last_metrics = dict(metrics)
        logger.debug("%s: %s", self.name, format_metrics(metrics))
        if not self.enabled:
            return
        first = self._bar is None
        bar = self._open_bar() if first else self._bar
        step = next((metrics[k] for k in STEP_KEYS if isinstance(metrics.get(k), int)), None)
        bar.set_postfix_str(format_metrics(metrics, skip=STEP_KEYS), refresh=False)
        bar.update((step - bar.n) if step is not None and step >= bar.n else 1)
        if first:  # show the first report at once; later ones at most every mininterval
            bar.refresh()

    def _open_bar(self) -> Any:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=self.total,
            desc=f"{self.name} {self._phase or ''}".strip(),
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.25,
            leave=False,
        )
        return self._bar

    def close(self) -> None:
        """Remove the bar (also on failure); idempotent."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()

    def finish(self) -> dict[str, float]:
        """Close the last phase and the bar, print the summary line, return the timings."""
        self.phase("done")
        self.close()
        total = time.perf_counter() - self._started
        self.timings["total"] = total
        parts = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items() if k != "total")
        line = f"{self.name} finished in {total:.2f}s ({parts})"
        if self.last_metrics:
            line += f"; last report: {format_metrics(self.last_metrics)}"
        logger.info(line)
        if self.enabled:
            print(f"[mlruntime] {line}", file=sys.stdout, flush=True)
        return self.timings


def format_metrics(metrics: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """``"k=v, ..."`` with floats to 5 significant digits."""
    return ", ".join(
        f"{k}={f'{v:.5g}' if isinstance(v, float) else v}"
        for k, v in metrics.items()
        if k not in skip
    )
