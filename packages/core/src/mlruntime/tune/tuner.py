"""``Tuner``: Snowflake's hyper-parameter tuning API on Ray Tune, with its limits removed.

Each trial runs ``train_func`` in a Ray Tune trial; ``get_tuner_context()`` gives it the trial's
hyper-parameters and the datasets, and ``report(metrics, model=None)`` reports (every call is
one Tune iteration, so schedulers such as ASHA can stop bad trials early). The datasets are
staged once for all trials (frames and DuckDB tables into the object store or Parquet on the
storage; files stay where they are). Results live under the storage (``<storage>/tune/``), so
``Tuner.restore(path)`` finishes a run whose driver died without re-running finished
trials.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import numbers
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mlruntime.errors import ConfigError, NotInWorkerError, ResourceError
from mlruntime.tune.progress import progress_callback
from mlruntime.tune.search import RandomSearch, SearchAlgorithm
from mlruntime.tune.space import check_space, finite_number, grid_size, to_tune_space

__all__ = [
    "ReportError",
    "Tuner",
    "TunerConfig",
    "TunerContext",
    "TunerResults",
    "get_tuner_context",
]

logger = logging.getLogger(__name__)

SETTINGS_FILE = "mlruntime_tuner.json"
"""The run's metric and mode, kept with Tune's state so ``Tuner.restore`` needs no config."""

TRAIN_FUNC_FILE = "mlruntime_train_func.pkl"
"""The run's ``train_func`` (cloudpickled), so ``Tuner.restore(path)`` needs no function."""

TRAIN_FUNC_MAX_BYTES = 16 * 1024 * 1024
"""A ``train_func`` pickle larger than this (it holds data the function captured) is not
stored with the run: ``Tuner.restore`` then needs the function passed."""


@dataclass
class TunerConfig:
    """How to tune.

    Args:
        metric: The reported metric to optimise.
        mode: ``"min"`` or ``"max"``.
        search_alg: ``RandomSearch()`` (default), ``GridSearch()`` or ``BayesOpt()``.
        num_trials: Trials to run (samples of the space; a grid runs each combination once).
        max_concurrent_trials: Trials at once (default: as many as the cluster fits).
        resource_per_trial: Resources of one trial, e.g. ``{"CPU": 1}``, ``{"CPU": 2,
            "GPU": 1}`` (default ``{"CPU": 1}``). With ``uses_snowflake_trainer``: what the
            trial's distributed estimator uses (default: the whole cluster, one trial at a time).
        uses_snowflake_trainer: Trials run a distributed estimator or distributor themselves
            (``XGBEstimator``, ``PyTorchDistributor`` ...): the trial reserves no CPU of its
            own, so its job's workers can be placed. ``None`` (the default): detected from
            ``train_func``'s code (it, or a function it calls, uses one;
            :func:`mlruntime.tune.jobs.starts_jobs`). With ``False`` (or when the detection
            misses one) a trial's job that could never be placed beside the trials'
            reservations fails at once with a ``ResourceError`` saying so.
        scheduler: Early stopping: ``"asha"`` or a Ray Tune scheduler (``None``: none). Trials
            must report once per round/epoch for it to act.
        max_rounds: With ``"asha"``: the most reports (rounds/epochs) a trial makes.
        name: The run's name under ``<storage>/tune/`` (default: a new one).
        verbose: Show a progress line (trials done, best so far).

    Raises:
        ConfigError: For a bad mode or metric name, a count that is not a positive integer
            (``num_trials``, ``max_concurrent_trials``, ``max_rounds``), resources other
            than ``CPU`` and ``GPU`` or below 0, a scheduler other than ``"asha"`` or a
            Ray Tune one, or a ``name`` with path separators.
    """

    metric: str
    mode: str
    search_alg: SearchAlgorithm = field(default_factory=RandomSearch)
    num_trials: int = 5
    max_concurrent_trials: int | None = None
    resource_per_trial: dict[str, float] | None = None
    uses_snowflake_trainer: bool | None = None
    scheduler: Any = None
    max_rounds: int = 100
    name: str | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(f"metric must be a metric name, got {self.metric!r}")
        self.num_trials = _positive_int(self.num_trials, "num_trials")
        if not isinstance(self.search_alg, SearchAlgorithm):
            raise ConfigError(
                "search_alg must be RandomSearch(), GridSearch() or BayesOpt(), got "
                f"{type(self.search_alg).__name__}"
            )
        if self.max_concurrent_trials is not None:
            self.max_concurrent_trials = _positive_int(
                self.max_concurrent_trials, "max_concurrent_trials"
            )
        if self.resource_per_trial is not None:
            self.resource_per_trial = _resources(self.resource_per_trial)
        if self.uses_snowflake_trainer is not None and not isinstance(
            self.uses_snowflake_trainer, bool
        ):
            raise ConfigError(
                f"uses_snowflake_trainer must be True, False or None, got "
                f"{self.uses_snowflake_trainer!r}"
            )
        if isinstance(self.scheduler, str):
            if self.scheduler.lower() != "asha":
                raise ConfigError(
                    "scheduler must be 'asha', a Ray Tune scheduler or None, got "
                    f"{self.scheduler!r}"
                )
            self.scheduler = "asha"
        elif self.scheduler is not None:
            # an object of Ray Tune's: its module is imported already if it is one
            schedulers = sys.modules.get("ray.tune.schedulers.trial_scheduler")
            if schedulers is None or not isinstance(self.scheduler, schedulers.TrialScheduler):
                raise ConfigError(
                    "scheduler must be 'asha', a Ray Tune scheduler (ray.tune.schedulers) or "
                    f"None, got {type(self.scheduler).__name__}"
                )
        self.max_rounds = _positive_int(self.max_rounds, "max_rounds")
        if self.name is not None and (
            not isinstance(self.name, str)
            or self.name in ("", ".", "..")
            or any(sep in self.name for sep in ("/", "\\"))
        ):
            raise ConfigError(f"name must be a folder name (no path separators), got {self.name!r}")


TRIAL_RESOURCES = ("CPU", "GPU")
"""The resources a trial asks for in ``resource_per_trial`` (keys in any case)."""


def _resources(asked: Any) -> dict[str, float]:
    """``resource_per_trial`` as ``{"CPU": float, "GPU": float}`` (keys in any case, values
    numpy's numbers too).

    Raises:
        ConfigError: For a non-dict, a key other than CPU or GPU (or one given twice in two
            cases), or a value that is not a finite number >= 0.
    """
    if not isinstance(asked, dict):
        raise ConfigError(
            "resource_per_trial must be a dict such as {'CPU': 1, 'GPU': 1}, got "
            f"{type(asked).__name__}"
        )
    resources: dict[str, float] = {}
    for key, value in asked.items():
        if not isinstance(key, str) or key.upper() not in TRIAL_RESOURCES:
            raise ConfigError(f"resource_per_trial: a trial asks for 'CPU' and 'GPU', got {key!r}")
        if key.upper() in resources:
            raise ConfigError(f"resource_per_trial names {key.upper()} twice")
        number = finite_number(value)
        if number is None or number < 0:
            raise ConfigError(f"resource_per_trial[{key!r}] must be >= 0, got {value!r}")
        resources[key.upper()] = number
    return resources


RUNNING_CHECK_S = 2.5
"""How long a restore watches a run saved in the last minute for another save: a driver still
running it saves its state every second (``TUNE_GLOBAL_CHECKPOINT_S``)."""


def _dataset_shapes(datasets: dict[str, Any], staged: dict[str, Any]) -> dict[str, Any]:
    """What a restore checks the datasets it is given against (:func:`_check_same_datasets`),
    for each DataConnector staged from the driver (a frame, an Arrow table, a DuckDB table
    or query): its columns (names and Arrow types, as :func:`_type_name` gives them) and its
    rows, as they were staged (known without reading anything). A dataset read from files
    is checked by name only: its columns and rows are in every file's footer, which the
    driver does not read."""
    from mlruntime.data.connector import DataConnector

    shapes: dict[str, Any] = {}
    for name, connector in datasets.items():
        moved = staged.get(name)
        if not isinstance(moved, DataConnector) or moved is connector:
            continue  # nothing staged: files (or a shard)
        try:
            columns = [[f.name, _type_name(f.type)] for f in moved.schema]
            rows = moved.num_rows
        except Exception:  # unreadable here: its trials say why
            logger.debug("no shape for dataset %r", name, exc_info=True)
            continue
        shapes[str(name)] = {"columns": columns, "rows": rows}
    return shapes


def _type_name(arrow_type: Any) -> str:
    """``arrow_type`` named without how its values are laid out: large and view strings,
    binaries and lists as the plain ones, dictionary-encoded columns as their values,
    timestamps without their unit (one table read by pandas and by polars gives both)."""
    value_type = getattr(arrow_type, "value_type", None)  # a dictionary's
    if value_type is not None and getattr(arrow_type, "index_type", None) is not None:
        arrow_type = value_type
    name = str(arrow_type)
    for layout, plain in (
        ("large_string", "string"),
        ("string_view", "string"),
        ("large_binary", "binary"),
        ("binary_view", "binary"),
        ("large_list", "list"),
        ("list_view", "list"),
    ):
        name = name.replace(layout, plain)
    name = re.sub(r"timestamp\[(?:s|ms|us|ns)\]", "timestamp", name)
    return re.sub(r"timestamp\[(?:s|ms|us|ns), ", "timestamp[", name)


def _check_same_datasets(saved: Any, shapes: dict[str, Any]) -> None:
    """Refuse datasets given to a restored run that differ from those it started with, in
    columns or in rows (:func:`_dataset_shapes`); runs stored before this was kept pass.

    Raises:
        ConfigError: Naming the dataset and what differs.
    """
    if not isinstance(saved, dict):
        return
    for name, was in sorted(saved.items()):
        now = shapes.get(name)
        if not isinstance(was, dict) or now is None:
            continue
        differs = ""
        before = {c: t for c, t in was.get("columns", [])}
        after = {c: t for c, t in now["columns"]}
        if before != after:
            gone = sorted(set(before) - set(after))
            new = sorted(set(after) - set(before))
            retyped = sorted(c for c in set(before) & set(after) if before[c] != after[c])
            parts = [f"columns {gone} missing"] if gone else []
            parts += [f"columns {new} new"] if new else []
            parts += [f"{c}: {before[c]} now {after[c]}" for c in retyped]
            differs = "; ".join(parts)
        elif was.get("rows") is not None and now["rows"] is not None and was["rows"] != now["rows"]:
            differs = f"{now['rows']} rows, against {was['rows']}"
        if differs:
            raise ConfigError(
                f"dataset {name!r} is not the one the restored run started with ({differs}): "
                "its finished trials read the other. Pass run() the same dataset_map, or "
                "start a new run"
            )


def _refuse_if_running(path: str) -> None:
    """Refuse to restore a run another driver still runs: the restore would remove the
    datasets that driver staged for its trials, and both would run the same trials into the
    same folder. A run whose state was saved in the last minute is watched for
    :data:`RUNNING_CHECK_S` s (the clocks of two machines are not compared: only whether the
    state is saved again).

    Raises:
        ConfigError: If the run's state is saved again meanwhile.
    """
    first = _last_state_save(path)
    if first is None or abs(time.time() - first[1]) > 60:
        return
    time.sleep(RUNNING_CHECK_S)
    second = _last_state_save(path)
    if second is not None and second != first:
        raise ConfigError(
            f"the run at {path!r} is still running (another driver saved its state "
            f"{RUNNING_CHECK_S:g} s ago): stop that driver first, then Tuner.restore(path)"
        )


def _last_state_save(path: str) -> tuple[str, float] | None:
    """The newest of Ray Tune's state files of the run at ``path`` (name, modified time)."""
    import pyarrow.fs as pafs

    from mlruntime.store import storage

    try:
        fs, folder = storage.resolve(path)
        found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return None
    states = [
        (info.base_name, info.mtime.timestamp())
        for info in found
        if info.base_name.startswith("experiment_state") and info.mtime is not None
    ]
    return max(states, key=lambda state: state[1]) if states else None


def _positive_int(value: Any, what: str) -> int:
    """``value`` as an int (numpy's integers too).

    Raises:
        ConfigError: Unless it is an integer >= 1 (not a bool).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class TunerContext:
    """What a trial's ``train_func`` asks for: its hyper-parameters, the datasets, and where
    to report. Get it with :func:`get_tuner_context`."""

    def __init__(
        self,
        hyper_params: dict[str, Any],
        dataset_map: dict[str, Any],
        metric: str | None = None,
        require_metric: bool = True,
        hold_reports: bool = False,
    ) -> None:
        self._hyper_params = hyper_params
        self._dataset_map = dataset_map
        self._metric = metric
        self._require_metric = require_metric
        self._hold_reports = hold_reports
        self._held: tuple[dict[str, Any], str | None] | None = None
        self._round_start = time.time()
        self._stopped = False  # Tune stopped the trial in one of its reports (SystemExit)
        self._warned_stopped = False  # that the code caught it and went on
        self.reports = 0

    def get_hyper_params(self) -> dict[str, Any]:
        """This trial's hyper-parameters (Python types kept)."""
        return dict(self._hyper_params)

    def get_dataset_map(self) -> dict[str, Any]:
        """The datasets given to ``Tuner.run`` (the same, staged once, for every trial)."""
        return self._dataset_map

    def report(self, metrics: dict[str, Any], model: Any = None) -> None:
        """Report metrics (one round/epoch) and optionally the model (kept for the best trial:
        ``TunerResults.best_model``). XGBoost and LightGBM boosters and XGBoost estimators
        are stored in their own format, Keras models as ``.keras``; other models (PyTorch
        modules, scikit-learn estimators) are pickled, so load only your own results.

        Every report must hold the run's metric (``TunerConfig.metric``) as a number: Tune
        compares trials and stops them early on it. A PyTorch tensor of one element, as any
        value, is taken as its number (Ray Tune refuses tensors).

        Without a scheduler (``TunerConfig.scheduler=None``) a report reaches Tune with the
        trial's next one, or when ``train_func`` returns: the last then ends the trial at once
        (Tune would otherwise wait for the function's end in one more exchange with the
        trial), unless it carries a model. Such a report carries its own round's time. With a
        scheduler every report goes at once, so it can stop the trial there.

        Raises:
            ConfigError: If ``metrics`` is not a dict, or lacks the run's metric or holds it as
                something other than a number, or holds a PyTorch tensor of several elements
                (the run stops: every trial would fail alike).
        """
        if self._stopped:  # Tune stopped the trial and its code caught that: nothing to save
            self._end_stopped()
        if not isinstance(metrics, dict):
            raise ConfigError(f"metrics must be a dict, got {type(metrics).__name__}")
        metrics = dict(metrics)
        if self._metric is not None:
            metrics = _checked_metrics(metrics, self._metric, self._require_metric)
        metrics = _without_tensors(metrics)
        self.reports += 1
        folder = None
        if model is not None:
            from mlruntime.store.model_files import save_model

            folder = tempfile.mkdtemp(prefix="mlruntime-report-")
            try:  # XGBoost / LightGBM / Keras in their own formats; other models pickled
                save_model(model, folder, torch_weights=False)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        if not self._hold_reports:
            self._send(metrics, folder)
            return
        try:  # as reported now, whatever the code changes in it before it is sent
            metrics = copy.deepcopy(metrics)
        except Exception:  # an object that cannot be copied goes as it is
            pass
        # Tune times a round from its call for the result to the report; a held report
        # carries its own round's time (Tune's keys, unless the code set them)
        now = time.time()
        metrics.setdefault("time_this_iter_s", now - self._round_start)
        metrics.setdefault("timestamp", int(now))
        held, self._held = self._held, (metrics, folder)
        if held is not None:
            self._send(*held)
        self._round_start = time.time()

    def _send(self, metrics: dict[str, Any], folder: str | None, done: bool = False) -> None:
        """Report to Tune (``done``: the trial's last report, which ends it); the model's
        folder, stored with the report, is removed."""
        from ray import tune

        if done:
            metrics = {**metrics, "done": True}
        try:
            if folder is None:
                tune.report(metrics)
            else:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        except SystemExit:
            self._stopped = True
            raise
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def _end_stopped(self) -> None:
        """End a trial Tune stopped whose code caught the stop (``SystemExit``, which Ray
        raises once) and went on: its next report, or Tune's own one as ``train_func``
        returns, would wait for ever for Tune, which has moved on, and its process could
        not be reused.

        Raises:
            SystemExit: Always, as Tune's stop does.
        """
        if not self._warned_stopped:
            self._warned_stopped = True
            logger.warning(
                "the trial's code caught Tune's stop of the trial (SystemExit) and went on: "
                "the trial ends here (catch Exception, not BaseException, around report())"
            )
        raise SystemExit(0)

    def _flush(self, done: bool) -> None:
        """Send the held report, if any: ``done`` when ``train_func`` returned (Tune stops the
        trial at it, raising ``SystemExit`` here as it does in a report it stops). A report
        carrying a model is sent without ``done``: its folder is removed when Tune lets the
        report return, which a trial Tune stopped, and whose process it may end at once,
        might not get to."""
        held, self._held = self._held, None
        if held is not None:
            self._send(*held, done=done and held[1] is None)

    def _discard(self) -> None:
        """Drop a held report that will not be sent (the trial was stopped or failed)."""
        held, self._held = self._held, None
        if held is not None and held[1] is not None:
            shutil.rmtree(held[1], ignore_errors=True)


class ReportError(ConfigError):
    """A trial reported metrics without the run's metric, or with it not a number."""


STRICT_METRIC_ENV = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
"""Ray Tune's switch for results without the run's metric; ``1`` lets reports leave it out
(its value is still checked when it is there)."""


def _checked_metrics(metrics: dict[str, Any], metric: str, required: bool = True) -> dict[str, Any]:
    """``metrics`` with the run's ``metric`` checked: a number as it is; anything else that
    converts to one (a 0-d array or tensor) as a float. A nested metric is named as Ray Tune
    flattens results (``"eval/loss"`` is ``{"eval": {"loss": ...}}``).

    Raises:
        ReportError: If it is missing (unless not ``required``) or not a number.
    """
    import numbers

    paths = _flat_paths(metrics)
    if metric not in paths:
        if not required:
            return metrics
        raise ReportError(
            f"report() got {sorted(paths)} without the run's metric {metric!r} "
            f"(TunerConfig(metric={metric!r})): report it every time, e.g. "
            f"get_tuner_context().report({{{metric!r}: value, ...}})"
        )
    path = paths[metric]
    value: Any = metrics
    for key in path:
        value = value[key]
    if isinstance(value, numbers.Real):
        return metrics
    if not isinstance(value, (str, bytes)):
        try:
            return _with_value(metrics, path, float(value))
        except (TypeError, ValueError):
            pass
    raise ReportError(
        f"report() got {metric!r} = {value!r:.80} ({type(value).__name__}); the run's metric "
        "must be a number"
    )


def _flat_paths(metrics: dict[Any, Any]) -> dict[str, tuple[Any, ...]]:
    """Each name Ray Tune gives a reported value when it flattens the result (nested keys
    joined with ``/``; a nested value wins over a flat key of the same name), and the keys
    that lead to it."""
    paths: dict[str, tuple[Any, ...]] = {}
    level: list[tuple[str, tuple[Any, ...], Any]] = [(str(k), (k,), v) for k, v in metrics.items()]
    while level:
        deeper: list[tuple[str, tuple[Any, ...], Any]] = []
        for name, path, value in level:
            if isinstance(value, dict):
                deeper.extend((f"{name}/{k}", (*path, k), v) for k, v in value.items())
            else:
                paths[name] = path
        level = deeper
    return paths


def _without_tensors(value: Any, where: str = "") -> Any:
    """``value`` (the reported metrics) with each PyTorch tensor of one element, at any depth
    of its dicts, lists and tuples, as a Python number: Ray Tune refuses tensors in metrics,
    and a held report (``TunerContext.report``) would only fail at the trial's next report or
    its end, its last report lost. A dict, list or tuple holding no tensor comes back as it is.

    Raises:
        ReportError: For a tensor of several elements (named by its key).
    """
    if isinstance(value, dict):
        converted = {k: _without_tensors(v, f"{where}{k}/") for k, v in value.items()}
        return value if all(converted[k] is v for k, v in value.items()) else converted
    if isinstance(value, (list, tuple)):
        items = [_without_tensors(v, f"{where}{i}/") for i, v in enumerate(value)]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    if _is_tensor(value):
        if value.numel() != 1:
            raise ReportError(
                f"report() got {where.rstrip('/')!r} as a PyTorch tensor of shape "
                f"{tuple(value.shape)}: report numbers (tensor.item()) or lists (.tolist())"
            )
        return value.item()
    return value


def _is_tensor(value: Any) -> bool:
    """A PyTorch tensor (told without importing torch)."""
    return type(value).__module__.partition(".")[0] == "torch" and hasattr(value, "numel")


def _with_value(metrics: dict[Any, Any], path: tuple[Any, ...], value: Any) -> dict[Any, Any]:
    """A copy of ``metrics`` with ``value`` at ``path`` (the dicts on the way copied too)."""
    out = dict(metrics)
    out[path[0]] = value if len(path) == 1 else _with_value(metrics[path[0]], path[1:], value)
    return out


_context: TunerContext | None = None


def get_tuner_context() -> TunerContext:
    """The context of the trial this code runs in.

    Raises:
        NotInWorkerError: Outside a trial of ``Tuner.run``.
    """
    if _context is None:
        raise NotInWorkerError("get_tuner_context() only works inside a Tuner's train_func")
    return _context


@dataclass
class _TrialJob:
    """What every trial of a run gets besides its hyper-parameters: one object in Ray's
    object store (``tune.with_parameters``), so a trial fetches it with one call, not one per
    argument."""

    train_func: Callable[[], Any]
    datasets: dict[str, Any]
    keep_groups: bool = False
    held: dict[str, float] | None = None
    metric: str | None = None
    require_metric: bool = True
    hold_reports: bool = False


def _trial(config: dict[str, Any], job: _TrialJob) -> None:
    """One trial, in its Tune worker: install the context, run ``job.train_func``, and release
    any warm worker group the trial's own jobs kept, unless ``job.keep_groups``.

    With trials one at a time (``keep_groups``), the next trial runs in this same process
    (Tune reuses its actor) and its estimator takes the one-worker group kept warm: no new
    processes, no framework import, per trial; Tune ends the process after the run, and the
    group, a plain actor it owns, ends with it. Released anyway: groups of several workers
    (their placement group would outlive the process), and every group of a trial that raised
    (Tune starts a new process for the next one). With several trials at once another trial's
    job may need those CPUs, and only this process can release its groups.

    ``held``: what the run reserves for its trials when they run no jobs of their own; a job
    the trial starts anyway that could never be placed beside them fails at once. ``metric``:
    the run's metric, checked in every report."""
    global _context
    # What Ray Tune would have put in the trial actor's runtime env (_on_idle_workers).
    for key, value in _TUNE_ACTOR_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("ray.train", "ray.tune"):  # "checkpoint created" lines for every report
        logging.getLogger(name).setLevel(logging.WARNING)
    context = _context = TunerContext(
        config, job.datasets, job.metric, job.require_metric, job.hold_reports
    )
    reused = False  # whether Tune runs its next trial in this process
    released = False
    hold: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if job.held:
        from mlruntime.runtime.scaling import resources_held_elsewhere

        hold = resources_held_elsewhere(job.held, _RESERVED_ADVICE)
    try:
        try:
            with hold:
                job.train_func()
        except BaseException:
            if not context._stopped:  # not Tune stopping it: the last report, recorded
                context._flush(done=False)
            raise
        if context._stopped:  # it caught Tune's stop: Tune's report at its end would wait
            context._end_stopped()
        # Released before Tune hears that the trial ended: Tune then reuses this process at
        # once, or ends it.
        _release_groups(keep=job.keep_groups)
        released = True
        context._flush(done=True)  # Tune stops the trial at it (SystemExit)
        reused = True
    except SystemExit:  # Tune stopping the trial (done, or a scheduler): the actor is reused
        reused = True
        raise
    finally:
        context._discard()
        _context = None
        if not released:
            _release_groups(keep=job.keep_groups and reused)


def _release_groups(keep: bool) -> None:
    """Release the warm worker groups this trial's jobs kept; with ``keep``, one-worker groups
    stay (they end with this process; a placement group would outlive it, until the driver
    exits). The driver tops the pool up after the run. Best effort: the next trial's job makes
    room itself."""
    # A trial that ran no job never imported the distributor (importing it here would cost
    # the trial's process 50 ms and 50 MB for nothing).
    distributor = sys.modules.get("mlruntime.runtime.distributor")
    if distributor is None:
        return
    try:
        distributor.release_idle_groups(top_up=False, placement_groups_only=keep)
    except Exception:
        logger.debug("releasing the trial's idle worker groups failed", exc_info=True)


@dataclass
class TunerResults:
    """What a tuning run produced.

    Attributes:
        results: One row per trial: its last reported metrics, ``config/<param>`` columns,
            ``trial_id``, ``status`` and ``training_iteration`` (reports made).
        best_result: The best trial's row (a one-row DataFrame).
        best_model: The model the best trial reported last (``None`` if it reported none).
        path: Where the run is stored (``Tuner.restore(path, ...)``).
    """

    results: Any
    best_result: Any
    best_model: Any
    path: str


class Tuner:
    """Tune ``train_func``'s hyper-parameters over ``search_space`` on the cluster.

    Args:
        train_func: A function of no arguments; it calls ``get_tuner_context()`` for its
            hyper-parameters and datasets and reports with ``report(metrics, model=None)``.
        search_space: Name -> sampling function (``uniform`` ...), list (a grid; a choice
            for ``BayesOpt``) or constant (a tuple included; a dict's sampling functions are
            drawn, :mod:`mlruntime.tune.space`).
        tuner_config: The metric, mode, search algorithm and limits.

    Raises:
        ConfigError: For a train_func that is not callable, a search space that is not a
            dict or holds an empty list, a ``range``, a set, an array or a name with ``/``
            (:func:`mlruntime.tune.space.check_space`), or a search algorithm whose package
            is missing (``BayesOpt`` without optuna).
    """

    def __init__(
        self,
        train_func: Callable[[], Any],
        search_space: dict[str, Any],
        tuner_config: TunerConfig,
    ) -> None:
        if not callable(train_func):
            raise ConfigError(f"train_func must be callable, got {type(train_func).__name__}")
        if not isinstance(tuner_config, TunerConfig):
            raise ConfigError(f"tuner_config must be a TunerConfig, got {type(tuner_config)}")
        check_space(search_space, tuner_config.search_alg.lists)
        tuner_config.search_alg.check()
        self.train_func = train_func
        self.search_space = search_space
        self.config = tuner_config
        self._restore_path: str | None = None
        self._saved: dict[str, Any] = {}  # a restored run's settings: what it was started with

    @classmethod
    def restore(
        cls,
        path: str,
        train_func: Callable[[], Any] | None = None,
        search_space: dict[str, Any] | None = None,
        tuner_config: TunerConfig | None = None,
    ) -> Tuner:
        """A tuner that finishes the run stored at ``path`` (``TunerResults.path``, printed
        when a run starts): finished trials are kept, unfinished ones run again, with the
        resources, concurrency and settings the run started with. Pass ``run`` the same
        ``dataset_map`` again (datasets are not stored with the run).

        Args:
            path: The run's folder.
            train_func: The trial function (default: the one the run stored, unpickled; a
                function from a module must be importable here).
            search_space: Unused by a restored run (Tune restores the search's state); kept
                for the ``Tuner`` constructor's order.
            tuner_config: Overrides the stored settings (default: as the run started).

        Raises:
            ConfigError: If nothing restorable is stored at ``path``, or the run stored no
                ``train_func`` and none is given.
        """
        import json

        import ray.cloudpickle as cloudpickle
        from ray import tune

        from mlruntime.store import storage

        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"no tuning run to restore at {path!r}")
        if train_func is None:
            try:
                pickled = storage.read_bytes(storage.join(path, TRAIN_FUNC_FILE))
            except FileNotFoundError as exc:
                raise ConfigError(
                    f"the run at {path!r} stored no train_func: pass it, "
                    "Tuner.restore(path, train_func)"
                ) from exc
            try:
                train_func = cloudpickle.loads(pickled)
            except Exception as exc:  # a module not importable here, another Python ...
                raise ConfigError(
                    f"the train_func stored with the run at {path!r} does not load here "
                    f"({type(exc).__name__}: {exc}): pass it, Tuner.restore(path, train_func)"
                ) from exc
        try:
            saved = json.loads(storage.read_bytes(storage.join(path, SETTINGS_FILE)))
        except FileNotFoundError as exc:
            if tuner_config is None:
                raise ConfigError(f"{path!r} was not written by mlruntime.tune") from exc
            saved = {}
        except Exception:  # unreadable: only needed without a config of the caller's
            if tuner_config is None:
                raise
            saved = {}
        if tuner_config is None:
            if "resource_per_trial" not in saved:
                logger.warning(
                    "the run at %s was written before runs stored their trials' resources: "
                    "the trials made after the restore reserve the default (1 CPU); pass "
                    "Tuner.restore(path, tuner_config=TunerConfig(..., resource_per_trial=...)) "
                    "to keep what the run used",
                    path,
                )
            resources = saved.get("resource_per_trial")
            if isinstance(resources, dict):  # as TunerConfig takes them (older runs: any)
                resources = {
                    k: v for k, v in resources.items() if str(k).upper() in TRIAL_RESOURCES
                }
            at_once = saved.get("max_concurrent_trials")
            if isinstance(at_once, float) and at_once.is_integer():
                at_once = int(at_once)
            tuner_config = TunerConfig(
                metric=saved["metric"],
                mode=saved["mode"],
                verbose=saved["verbose"],
                # each trial Tune makes after the restore takes the trainable's reservation
                resource_per_trial=resources,
                max_concurrent_trials=at_once,
            )
        assert train_func is not None  # loaded above when not given
        # the search space is Tune's, restored with the run: the one passed is not checked
        tuner = cls(train_func, {}, tuner_config)
        tuner.search_space = search_space or {}
        tuner._restore_path = path
        # what the run was started with (Tune restores its concurrency, whatever this says)
        tuner._saved = saved
        return tuner

    def run(self, dataset_map: dict[str, Any] | None = None) -> TunerResults:
        """Run the trials and collect the results.

        Args:
            dataset_map: Name -> DataConnector, staged once and shared by every trial.

        Returns:
            The :class:`TunerResults`.

        Raises:
            ConfigError: For a train_func that cannot be sent to workers, datasets that are
                not DataConnectors, or a restored run that another driver still runs or
                that is given datasets other than those it started with (missing, other
                columns or column types, or other rows where they were counted).
            ResourceError: If one trial's resources exceed every node (before any trial
                starts).
        """
        import json

        from ray import tune

        from mlruntime.runtime.cluster import get_nodes, init, started_locally
        from mlruntime.runtime.distributor import _check_callable, _check_dataset_map
        from mlruntime.runtime.staging import StagedInputs
        from mlruntime.runtime.warm import top_up_idle_workers
        from mlruntime.runtime.workers import release_orphaned_placement_groups
        from mlruntime.store import storage

        pickled_func = _check_callable(self.train_func)
        datasets = _check_dataset_map(dataset_map)
        saved = self._saved  # a restored run's settings: what it was started with
        missing = sorted(set(saved.get("datasets", ())) - {str(name) for name in datasets})
        if missing:
            raise ConfigError(
                f"the restored run read the dataset(s) {missing} from its dataset_map: pass "
                "run() the same dataset_map again (datasets are not stored with the run)"
            )
        if self._restore_path is not None:
            _refuse_if_running(self._restore_path)
        init()
        nodes = get_nodes()
        config = self.config
        if config.uses_snowflake_trainer is None:
            if "uses_snowflake_trainer" in saved:
                detected = bool(saved["uses_snowflake_trainer"])
            else:
                detected = _detect_jobs(self.train_func)
                if detected and config.verbose:
                    print(
                        "tuning: train_func starts distributed jobs, so trials reserve nothing "
                        "of their own (uses_snowflake_trainer=True)"
                    )
            config = dataclasses.replace(config, uses_snowflake_trainer=detected)
        resources, concurrency = _plan_resources(config, nodes)
        held: dict[str, float] | None = None
        if "held" in saved:  # Tune restores each trial's reservation as it was
            held = saved["held"]
        elif not config.uses_snowflake_trainer:  # what the trials hold at most, all at once
            at_once = min(concurrency, self._trial_count())
            held = {k: v * at_once for k, v in resources.items() if k in ("cpu", "gpu")}
        root = storage.join(storage.storage_uri(), "tune")
        name = config.name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        staging = storage.join(root, name, "inputs")
        if self._restore_path is not None:
            staging = storage.join(self._restore_path, "inputs")
            try:  # what the interrupted run staged as files, now unreadable (new objects)
                storage.remove(staging)
            except OSError:
                pass
        with _tune_environment(), StagedInputs(staging) as staged:
            restored = self._restore_path is not None
            one_at_a_time = (
                bool(saved.get("one_at_a_time", False)) if restored else concurrency == 1
            )
            # Without a scheduler nothing acts on a report before the next one: a trial's last
            # report can end it (TunerContext.report). A restored run keeps its choice (Tune
            # restores its scheduler, which this config does not name).
            hold_reports = (
                bool(saved.get("hold_reports", False)) if restored else config.scheduler is None
            )
            staged_map = staged.stage_map(datasets)
            shapes = _dataset_shapes(datasets, staged_map)
            if restored:  # before Tune restores anything: trials would mix two datasets
                _check_same_datasets(saved.get("dataset_shapes"), shapes)
            # with_parameters puts the staged map into the object store once; every trial
            # fetches it from there.
            job = _TrialJob(
                train_func=self.train_func,
                datasets=staged_map,
                keep_groups=one_at_a_time,
                held=held,
                metric=config.metric,
                # Ray Tune's own switch, read where the run starts (trials run elsewhere)
                require_metric=not _ray_env_flag(STRICT_METRIC_ENV),
                hold_reports=hold_reports,
            )
            trainable = tune.with_parameters(_trial, job=job)
            trainable = tune.with_resources(trainable, resources)
            if self._restore_path is not None:
                # Tune restores the run's callbacks and stopper (_StopOnBadReport), unpickled
                tuner = tune.Tuner.restore(self._restore_path, trainable=trainable)
                path = self._restore_path
            else:
                tuner, path = self._new_tuner(trainable, root, name, concurrency)
                settings = {
                    "metric": config.metric,
                    "mode": config.mode,
                    "verbose": config.verbose,
                    "one_at_a_time": one_at_a_time,
                    "hold_reports": hold_reports,
                    "uses_snowflake_trainer": config.uses_snowflake_trainer,
                    "held": held,
                    "resource_per_trial": config.resource_per_trial,
                    "max_concurrent_trials": config.max_concurrent_trials,
                    "datasets": sorted(str(name) for name in datasets),
                    "dataset_shapes": shapes,
                }
                with storage.private_files(path):  # the function's pickle holds what it captured
                    storage.write_bytes(
                        storage.join(path, SETTINGS_FILE), json.dumps(settings).encode()
                    )
                    if len(pickled_func) <= TRAIN_FUNC_MAX_BYTES:
                        storage.write_bytes(storage.join(path, TRAIN_FUNC_FILE), pickled_func)
                    else:
                        try:  # an earlier run's of the same name would be restored instead
                            storage.remove(storage.join(path, TRAIN_FUNC_FILE))
                        except OSError:
                            pass
                        logger.warning(
                            "train_func pickles to %d MB (data it captured): not stored with "
                            "the run, so Tuner.restore(path, train_func) needs it passed",
                            len(pickled_func) // 2**20,
                        )
            if config.verbose:
                print(f"tuning: results in {path} (Tuner.restore(path) resumes)")
            with (
                storage.private_files(root),
                _on_idle_workers(),
                _registry_reads_memoized(),
                _cheap_export_identifiers(),
            ):
                try:
                    grid = tuner.fit()
                finally:
                    # fit returns once the trials' actors, and the worker groups they kept,
                    # are gone: what a trial that died mid-job left reserved is freed, and
                    # the next job or run starts warm (not on a shared cluster)
                    release_orphaned_placement_groups()
                    if started_locally():
                        top_up_idle_workers()
        _raise_report_error(grid)
        return _results(grid, path, self.config)

    def _trial_count(self) -> int:
        """How many trials the run makes: each combination of the grid (lists, with a search
        algorithm that makes them grids) once, times ``num_trials`` samples unless the
        search is a grid search."""
        combinations = grid_size(self.search_space) if self.config.search_alg.lists == "grid" else 1
        return combinations * self._num_samples()

    def _num_samples(self) -> int:
        """Tune's ``num_samples``: one pass over the grid for a grid search, else
        ``num_trials`` samples (of the grid's every combination, if the space has lists)."""
        grid = type(self.config.search_alg).__name__ == "GridSearch"
        return 1 if grid else self.config.num_trials

    def _new_tuner(self, trainable: Any, root: str, name: str, concurrency: int) -> Any:
        from ray import tune

        config = self.config
        alg = config.search_alg
        space = to_tune_space(self.search_space, alg.lists)
        scheduler = config.scheduler
        if scheduler is None:
            from ray.tune.schedulers import FIFOScheduler

            scheduler = _pending_trials_in_order(FIFOScheduler)()
        elif scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = _pending_trials_in_order(ASHAScheduler)(
                time_attr="training_iteration", max_t=config.max_rounds, grace_period=1
            )
        elif isinstance(scheduler, str):
            raise ConfigError(
                f"scheduler must be 'asha' or a Ray Tune scheduler, got {scheduler!r}"
            )
        tune_config = tune.TuneConfig(
            metric=config.metric,
            mode=config.mode,
            search_alg=alg.searcher(config.metric, config.mode, concurrency),
            scheduler=scheduler,
            num_samples=self._num_samples(),
            reuse_actors=True,
        )
        from ray.tune.logger import JsonLoggerCallback

        # Tune's JSON results of each trial (every report: what Tune's analysis reads), not its
        # CSV copy of them nor its TensorBoard one (_tune_environment): each logger writes
        # in the driver, between one trial and the next
        stopper = _StopOnBadReport()  # a callback too: it sees the trials fail
        callbacks: list[Any] = [
            JsonLoggerCallback(),
            _ReleaseOrphans(),
            stopper,
        ]
        if config.verbose:
            callbacks.append(progress_callback(config.metric, config.mode, self._trial_count()))
        run_config = tune.RunConfig(
            name=name,
            storage_path=root,
            verbose=0,
            callbacks=callbacks,
            stop=stopper,
            # a trial's latest model only (best_model reads it): a model reported every round
            # was kept for every round
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        )
        tuner = tune.Tuner(
            trainable, param_space=space, tune_config=tune_config, run_config=run_config
        )
        from mlruntime.store import storage

        return tuner, storage.join(root, name)


_TUNE_ENV: dict[str, tuple[str, bool]] = {
    # Tune's own console tables and hints: ours is one progress line (verbose=True)
    "RAY_AIR_NEW_OUTPUT": ("0", False),
    # save the run's state every second (Tune's default: every 10 s or more), so a driver
    # killed mid-run loses at most the last second: Tuner.restore keeps every trial that
    # finished before that (and one that ran a second or more, as it ends: _StateSaves)
    "TUNE_GLOBAL_CHECKPOINT_S": ("1", False),
    # no TensorBoard logger added as fit starts: importing tensorboardX (which imports
    # torch) took 3 s of the driver's time, and its event files are written on every report
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": ("1", True),
}
"""Ray Tune's switches (it reads them from the environment) while a run's ``fit`` runs: name
-> (value, set even if the user set it)."""

_tune_env_lock = threading.Lock()
_tune_env_runs = 0
_tune_env_saved: dict[str, str | None] = {}


@contextlib.contextmanager
def _tune_environment() -> Iterator[None]:
    """Set :data:`_TUNE_ENV` while the block runs, and restore what was there after the last
    of the runs inside such a block ends (runs in several threads of one driver share the
    setting); a variable changed meanwhile by someone else is left as it is."""
    global _tune_env_runs
    with _tune_env_lock:
        if _tune_env_runs == 0:
            _tune_env_saved.clear()
            for key, (value, force) in _TUNE_ENV.items():
                old = os.environ.get(key)
                if force or old is None:
                    _tune_env_saved[key] = old
                    os.environ[key] = value
        _tune_env_runs += 1
    try:
        yield
    finally:
        with _tune_env_lock:
            _tune_env_runs -= 1
            if _tune_env_runs == 0:
                for key, old in _tune_env_saved.items():
                    if os.environ.get(key) != _TUNE_ENV[key][0]:
                        continue  # changed meanwhile: not ours to undo
                    if old is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = old
                _tune_env_saved.clear()


@contextlib.contextmanager
def _on_instance(owner: Any, replacements: dict[str, Callable[..., Any]]) -> Iterator[None]:
    """Set each of ``replacements`` as an attribute of ``owner`` itself (its class is left
    alone) while the block runs; after it, each is removed if it is still the one set here.
    Nothing is set if ``owner`` lacks one of the methods (another Ray layout) or has one set
    on itself already (replaced already)."""
    if not all(callable(getattr(owner, name, None)) for name in replacements) or any(
        name in vars(owner) for name in replacements
    ):
        yield  # pragma: no cover - another Ray layout, or replaced already
        return
    for name, function in replacements.items():
        setattr(owner, name, function)
    try:
        yield
    finally:
        for name, function in replacements.items():
            if vars(owner).get(name) is function:
                del vars(owner)[name]


@contextlib.contextmanager
def _registry_reads_memoized() -> Iterator[None]:
    """Memoize Ray Tune's reads of its registry while ``fit`` runs.

    Tune keeps the trainable in the cluster's key-value store and reads it back there (a
    lookup, a second one and an unpickle) three times for each trial it makes, in the driver,
    between one trial's end and the next one's start: 4 ms of an 18 ms hand-over on a loaded
    2-CPU machine (measured). Within a run the values read do not change; a registration
    while it runs forgets them. Ray's registry is as it was after the run. Another Ray layout
    (no ``_global_registry`` with these methods) runs unmemoized.
    """
    try:
        from ray.tune.registry import _global_registry as registry
    except ImportError:  # pragma: no cover - another Ray layout
        yield
        return
    names = ("get", "contains", "register", "unregister")
    original: dict[str, Any] = {name: getattr(registry, name, None) for name in names}
    values: dict[tuple[str, str], Any] = {}
    known: set[tuple[str, str]] = set()

    def memo_get(category: str, key: str) -> Any:
        if (category, key) not in values:
            values[(category, key)] = original["get"](category, key)
            known.add((category, key))
        return values[(category, key)]

    def memo_contains(category: str, key: str) -> bool:
        if (category, key) in known:
            return True
        found = bool(original["contains"](category, key))
        if found:
            known.add((category, key))
        return found

    def forgetting(write: Any) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            values.clear()
            known.clear()
            return write(*args, **kwargs)

        return call

    memoized = {
        "get": memo_get,
        "contains": memo_contains,
        "register": forgetting(original["register"]),
        "unregister": forgetting(original["unregister"]),
    }
    with _on_instance(registry, memoized):
        yield


@contextlib.contextmanager
def _cheap_export_identifiers() -> Iterator[None]:
    """Give the classes Ray exports from this driver while ``fit`` runs a cheap identifier.

    Ray exports an actor class at its first actor of the session, tagged with a "collision
    identifier": a hash of the class's disassembly (``dis``, two levels deep). It is only a
    hint for spotting a class exported again and again (nothing in Ray 2.60 reads it), but
    for Tune's trainable class, whose actor class holds some 40 methods, it took 12-17 ms of
    the first trial's start (measured: of 66 ms from ``fit`` to the first trial). Here it is a
    hash of the code itself (:func:`_export_identifier`): the same for the same code, as
    before. The driver's function manager is as it was after.
    """
    try:
        from ray._private.worker import global_worker

        manager = global_worker.function_actor_manager
    except (ImportError, AttributeError):  # pragma: no cover - another Ray layout
        yield
        return
    with _on_instance(manager, {"compute_collision_identifier": _export_identifier}):
        yield


def _export_identifier(function_or_class: Any) -> bytes:
    """A hash of a function's or class's name and code: its methods' for a class, and those of
    the classes it holds (Ray's actor class holds the user's class), two levels of nested
    code deep, as Ray's identifier reads them."""
    import hashlib
    import types

    digest = hashlib.sha256(str(getattr(function_or_class, "__name__", "")).encode())

    def add_code(code: types.CodeType, depth: int) -> None:
        digest.update(code.co_code)
        digest.update(repr(code.co_names).encode())
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                if depth > 0:
                    add_code(const, depth - 1)
            else:
                digest.update(repr(const).encode())

    def add(name: str, member: Any, depth: int) -> None:
        if isinstance(member, type):
            if depth > 0:
                digest.update(f"class {name}".encode())
                for key, value in sorted(vars(member).items(), key=lambda item: item[0]):
                    add(key, value, depth - 1)
            return
        member = getattr(member, "__func__", member)  # class and static methods
        code = getattr(member, "__code__", None)
        if isinstance(code, types.CodeType):
            digest.update(name.encode())
            add_code(code, 2)

    add("", function_or_class, 2)
    return digest.digest()


_RESERVED_ADVICE = (
    "The tuning run reserves resource_per_trial for each of its trials, and this trial "
    "starts a job of its own: pass TunerConfig(uses_snowflake_trainer=True) (trials then "
    "reserve nothing, and resource_per_trial describes each trial's job)."
)

_TUNE_ACTOR_ENV = {"PL_DISABLE_FORK": "1"}
"""Ray Tune's default trial environment (``ray.tune.execution.class_cache.DEFAULT_ENV_VARS``),
set by ``_trial`` itself instead."""


@contextlib.contextmanager
def _on_idle_workers() -> Iterator[None]:
    """Let Ray Tune's trial actors start on Ray's idle pre-started workers.

    Tune gives every trial actor a runtime env holding ``PL_DISABLE_FORK=1`` (for PyTorch
    Lightning), and Ray starts a fresh worker process for any actor whose runtime env differs
    from the job's: the idle workers Ray started with the cluster are never used, and every
    trial actor pays a process start and a runtime-env round trip (about 0.9 s here, the
    largest fixed cost of a small run). While ``fit`` runs, Tune's default is emptied (``_trial``
    sets the variable itself, before the user's code). Variables Tune propagates from the
    driver (AWS keys, Ray Train settings) still make a runtime env, as before. If a Ray
    version moves the default, nothing changes but the speed (test_core_tune.py checks that a
    trial has no runtime env of its own).
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # pragma: no cover - another Ray layout
        yield
        return
    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if not isinstance(defaults, dict) or defaults != _TUNE_ACTOR_ENV:
        yield
        return
    saved = dict(defaults)
    defaults.clear()
    try:
        yield
    finally:
        defaults.clear()
        defaults.update(saved)


def _detect_jobs(train_func: Callable[[], Any]) -> bool:
    """:func:`mlruntime.tune.jobs.starts_jobs`; ``False`` if reading the code fails (an
    unusual object: a job the check misses still fails at once if it cannot fit)."""
    from mlruntime.tune.jobs import starts_jobs

    try:
        return starts_jobs(train_func)
    except Exception:
        logger.debug("could not tell whether train_func starts jobs", exc_info=True)
        return False


def _plan_resources(config: TunerConfig, nodes: list[Any]) -> tuple[dict[str, float], int]:
    """Each trial's own reservation and how many trials run at once.

    Raises:
        ResourceError: If one trial needs more than the largest node has.
    """
    asked = {k.upper(): float(v) for k, v in (config.resource_per_trial or {}).items()}
    largest_cpu = max((n.num_cpus for n in nodes), default=0.0)
    largest_gpu = max((n.num_gpus for n in nodes), default=0.0)
    total_cpu = sum(n.num_cpus for n in nodes)
    total_gpu = sum(n.num_gpus for n in nodes)
    cpu = asked.get("CPU", total_cpu if config.uses_snowflake_trainer else 1.0)
    gpu = asked.get("GPU", 0.0)
    if not config.uses_snowflake_trainer and (cpu > largest_cpu or gpu > largest_gpu):
        raise ResourceError(
            f"a trial asks for {cpu:g} CPU(s) and {gpu:g} GPU(s), but the largest node has "
            f"{largest_cpu:g} CPU(s) and {largest_gpu:g} GPU(s); lower resource_per_trial"
        )
    if config.uses_snowflake_trainer and (cpu > total_cpu or gpu > total_gpu):
        raise ResourceError(
            f"each trial's job needs {cpu:g} CPU(s) and {gpu:g} GPU(s), but the cluster has "
            f"{total_cpu:g} CPU(s) and {total_gpu:g} GPU(s); lower resource_per_trial"
        )
    fits = [total_cpu // cpu] if cpu > 0 else []
    if gpu > 0:
        fits.append(total_gpu // gpu)
    concurrency = int(max(1, min(fits))) if fits else max(1, int(total_cpu))
    if config.max_concurrent_trials is not None:
        concurrency = min(concurrency, config.max_concurrent_trials)
    if config.uses_snowflake_trainer or (cpu == 0 and gpu == 0):
        # The trial process only drives its job (it reserves nothing the job's workers need),
        # or was asked to reserve nothing; Tune needs some reservation: one byte of memory.
        return {"cpu": 0.0, "memory": 1.0}, concurrency
    return {"cpu": cpu, "gpu": gpu}, concurrency


def _results_frame(grid: Any) -> Any:
    """Tune's last-result frame with every trial in it: a ``status`` column (``TERMINATED``,
    ``ERROR``), and a row (config and status only) for each trial that failed before it
    reported, in trial order."""
    import pandas as pd
    from ray.tune.utils import flatten_dict

    frame = grid.get_dataframe()
    analysis = getattr(grid, "_experiment_analysis", None)
    trials = list(getattr(analysis, "trials", None) or [])
    if not trials:  # pragma: no cover - another Ray layout: Tune's frame as it is
        return frame
    reported = set(frame["trial_id"]) if "trial_id" in frame.columns else set()
    missing = [
        # the config's columns named as Tune names them (config/<param>, nested: config/a/b)
        {"trial_id": t.trial_id, **flatten_dict({"config": t.config or {}})}
        for t in trials
        if t.trial_id not in reported
    ]
    if missing:
        frame = pd.concat([frame, pd.DataFrame(missing)], ignore_index=True)
        order = {t.trial_id: i for i, t in enumerate(trials)}  # ids are not always in order
        frame = frame.sort_values(
            "trial_id", key=lambda ids: ids.map(order), kind="stable", ignore_index=True
        )
    frame["status"] = frame["trial_id"].map({t.trial_id: str(t.status) for t in trials})
    return frame


def _results(grid: Any, path: str, config: TunerConfig) -> TunerResults:
    """The run's :class:`TunerResults`: every trial's last report, and the best trial by its
    last value of the metric (NaN and infinite values never best, as in Ray Tune's own
    ``get_best_result``) with the model that trial reported last.

    Raises:
        Exception: The error of the first trial, when every trial failed.
    """
    import numpy as np
    import pandas as pd

    frame = _results_frame(grid)
    errors = [r.error for r in grid if r.error is not None]
    if errors and len(errors) == len(grid):
        raise errors[0]
    best_model = None
    best_row = frame.iloc[0:0]
    metric = config.metric
    if metric not in frame.columns:  # Tune's frame has a column for each reported key
        logger.warning(
            "no trial reported the metric %r, so there is no best trial: train_func must call "
            "get_tuner_context().report({%r: value, ...})",
            metric,
            metric,
        )
        return TunerResults(results=frame, best_result=best_row, best_model=None, path=path)
    scores = pd.to_numeric(frame[metric], errors="coerce").replace([np.inf, -np.inf], np.nan)
    if not scores.notna().any():
        logger.warning(
            "no trial reported a finite value of the metric %r (every last value is NaN, "
            "infinite or missing), so there is no best trial",
            metric,
        )
        return TunerResults(results=frame, best_result=best_row, best_model=None, path=path)
    index = scores.idxmin() if config.mode == "min" else scores.idxmax()
    best_row = frame.loc[[index]]
    best_id = frame.at[index, "trial_id"] if "trial_id" in frame.columns else None
    best = next((r for r in grid if (r.metrics or {}).get("trial_id") == best_id), None)
    checkpoint = None if best is None else best.checkpoint
    if checkpoint is not None:
        from mlruntime.store.model_files import load_model

        with checkpoint.as_directory() as folder:
            best_model = load_model(folder)
    return TunerResults(results=frame, best_result=best_row, best_model=best_model, path=path)


FINISHED_SAVE_MIN_S = 1.0
"""A trial that ran at least this long (seconds of Tune's ``time_total_s``) is saved as
finished in the run's state when it ends (:class:`_StateSaves`); a shorter one with the
rest of the run's state, at Tune's next periodic save."""

SAVE_SHARE = 0.05
"""The most of a finished trial's time that saving the run's state for it may cost, per
trial running at once: a longer save is left to Tune's periodic one (see
:class:`_StateSaves`)."""


class _StateSaves:
    """Saves the run's state (Ray Tune's experiment state, what ``Tuner.restore`` reads) as
    soon as a trial that ran :data:`FINISHED_SAVE_MIN_S` or more has ended, finished or
    failed, so a driver killed right after does not run it again on restore; for
    mlruntime's schedulers. (A failed trial's time is that of its last report.)

    Ray Tune saves only once per period (``TUNE_GLOBAL_CHECKPOINT_S``, 1 s while a run runs:
    :data:`_TUNE_ENV`): a trial that ended within the period before the kill was still saved
    as running, and the restore ran it again from the start. Tune marks the trial finished
    after the scheduler's ``on_trial_complete`` returns, in the same event, and saves at the
    end of that step (``TuneController.step``) unless it saved within the period; this makes
    that save due. Each save is timed (through Tune's own hook for it); the save at a trial's
    end is skipped when it would cost over :data:`SAVE_SHARE` of the trial's time per
    running trial. Tune re-encodes only the trials changed since its last save: measured
    here, 30-50 ms at the end of a run of 1,000 trials, 0.1 s for 500 trials reporting 40
    metrics each. The time is that of writing the state next to the driver; Tune copies it
    to remote storage in the background, and a copy still running when the next save is
    due leaves that save to reach the storage with the one after.

    This works through Tune's state manager (``TuneController._checkpoint_manager``, read
    past the wrapper schedulers get the controller in); on a Ray Tune without it, the
    periodic save alone applies."""

    def __init__(self) -> None:
        self.cost = 0.0  # seconds the latest save took
        self.manager: Any = None  # the state manager watched (not pickled)

    def watch(self, controller: Any) -> Any:
        """Start timing the saves of ``controller``'s state manager, once; return the manager,
        or None when this Ray Tune has none this knows."""
        # schedulers get Tune's controller wrapped (TrialRunnerWrapper), which warns once
        # of any attribute of the controller's read through it that it does not list
        inner = vars(controller).get("_tune_controller", controller)
        manager: Any = getattr(inner, "_checkpoint_manager", None)
        if manager is self.manager:
            return manager
        update = getattr(manager, "_update_auto_checkpoint_time", None)
        if not (callable(update) and isinstance(getattr(manager, "_last_save_time", None), float)):
            logger.debug("Ray Tune's state manager unknown: its state saved periodically")
            return None

        def saved(time_taken: float) -> None:  # Tune calls it after each save, with its time
            update(time_taken)
            self.cost = time_taken

        manager._update_auto_checkpoint_time = saved
        self.manager = manager
        return manager

    def trial_added(self, controller: Any) -> None:
        """Watch ``controller``'s saves from its first trial on (see :meth:`watch`); never
        raises (Tune would fail the trial)."""
        try:
            self.watch(controller)
        except Exception:
            logger.debug("could not watch Ray Tune's saves", exc_info=True)

    def trial_ended(self, controller: Any, result: Any) -> None:
        """Make Tune save the run's state at the end of this step, if the trial whose last
        ``result`` this is ran long enough and the save is cheap enough (see the class).
        Never raises: Tune would mark the finished trial failed."""
        try:
            self._trial_ended(controller, result)
        except Exception:
            logger.debug("could not make Ray Tune save the run's state", exc_info=True)

    def _trial_ended(self, controller: Any, result: Any) -> None:
        manager = self.watch(controller)
        ran = result.get("time_total_s") if isinstance(result, dict) else None
        if manager is None or not isinstance(ran, numbers.Real):
            return
        if float(ran) < FINISHED_SAVE_MIN_S:
            return
        running = sum(1 for t in controller.get_trials() if t.status == "RUNNING")
        if self.cost * max(running, 1) > SAVE_SHARE * float(ran):
            return
        manager._last_save_time = float("-inf")  # Tune's own test of the period then passes


PENDING_WAIT_S = 10.0
"""A pending trial whose actor has not started this long after Tune added the trial is picked
as Tune's FIFO scheduler picks it: it takes the next actor another trial leaves free (its
own, still to be placed or started, is removed)."""


@functools.cache
def _pending_trials_in_order(scheduler: type) -> type:
    """A subclass of Ray Tune's ``scheduler`` (FIFO, what Tune runs without one, or ASHA,
    which picks trials as FIFO does) that leaves pending trials to Tune's own in-order pass
    over them for their first :data:`PENDING_WAIT_S` s; otherwise it picks as FIFO does.

    FIFO picks the first pending trial for Tune to start before any other. When Tune has
    already asked for that trial's actor, and another trial has just ended and left its actor
    free, Tune gives the picked trial the free actor and removes the one it asked for, which
    had often already taken an idle worker process: the process ends with it. With trials
    shorter than an actor's start (a few tens of ms here; trials ASHA stops at their first
    report) every trial could do that to the next one, until no idle worker was left: the
    run then waited for a new process to start (1.5 s with Ray Tune and xgboost preloaded)
    only to stop it (measured: 20 trials of no work, 2 at a time, took 1.8 s in 3 runs of 6,
    0.2 s in the others; with this, 0.15-0.3 s in 8 of 8, two actors each). Tune's pass over
    pending trials lets a trial wait for the actor asked for it and gives the free one to
    the next new trial instead. A trial whose actor cannot be placed or started for
    :data:`PENDING_WAIT_S` s (resources held elsewhere) is picked as FIFO picks it, so it is
    not left for the end of the run; so is a paused trial, when none is pending.
    """
    from ray.tune.experiment import Trial

    class PendingTrialsInOrder(scheduler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._added: dict[str, float] = {}  # trial id -> when Tune added it

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            super().on_trial_add(tune_controller, trial)
            self._added[trial.trial_id] = time.monotonic()
            self._saves.trial_added(tune_controller)

        def choose_trial_to_run(self, tune_controller: Any) -> Any:
            trials = tune_controller.get_trials()
            for trial in trials:  # the first pending one was added first
                if trial.status == Trial.PENDING:
                    added = self._added.get(trial.trial_id)
                    waited = added is None or time.monotonic() - added >= PENDING_WAIT_S
                    return trial if waited else None
            for trial in trials:
                if trial.status == Trial.PAUSED:
                    return trial
            return None

        def on_trial_complete(self, tune_controller: Any, trial: Any, result: Any) -> None:
            super().on_trial_complete(tune_controller, trial, result)
            self._saves.trial_ended(tune_controller, result)

        def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
            super().on_trial_error(tune_controller, trial)
            # a failed trial is not run again on restore, once saved as failed
            self._saves.trial_ended(tune_controller, getattr(trial, "last_result", None))

        @property
        def _saves(self) -> _StateSaves:
            saves = self.__dict__.get("_state_saves")
            if saves is None:  # made here: an unpickled scheduler has none
                saves = self.__dict__["_state_saves"] = _StateSaves()
            return saves

        def __reduce__(self) -> tuple[Any, ...]:
            # pickled (tuner.pkl) as Tune's class and this module's function, not by value;
            # without the state manager watched (this driver's): a restored run has its own
            state = {k: v for k, v in self.__dict__.items() if k != "_state_saves"}
            return _scheduler_in_order, (scheduler, state)

    # Tune names the run's scheduler by its class
    PendingTrialsInOrder.__name__ = PendingTrialsInOrder.__qualname__ = scheduler.__name__
    return PendingTrialsInOrder


def _scheduler_in_order(scheduler: type, state: dict[str, Any]) -> Any:
    """A pickled :func:`_pending_trials_in_order` scheduler, rebuilt."""
    cls = _pending_trials_in_order(scheduler)
    instance: Any = object.__new__(cls)
    instance.__dict__.update(state)
    return instance


class _ReleaseOrphans:
    """Frees what a trial whose process died in the middle of a several-worker job left
    reserved (Ray keeps the job's placement group until the driver exits), as soon as Tune
    sees the trial fail, so the next trials, and Tune's own reservations for them, get the
    resources (:func:`~mlruntime.runtime.workers.release_orphaned_placement_groups`; the next
    job that does not fit, and the end of the run, free anything this finds still alive)."""

    def __new__(cls) -> Any:
        from ray.tune import Callback

        from mlruntime.runtime.workers import release_orphaned_placement_groups

        class ReleaseOrphans(Callback):
            def on_trial_error(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
                release_orphaned_placement_groups()

        return ReleaseOrphans()


class _StopOnBadReport:
    """Ends the run at the first trial that fails with a :class:`ReportError` (its report
    lacks the metric, or holds it as something other than a number): every trial would fail
    the same way, each with a traceback. Both a Tune callback (it sees the failure) and the
    run's stopper (it ends the run); ``Tuner.run`` then raises the error from the results
    (:func:`_raise_report_error`, which a restored run, whose stopper Tune unpickles, also
    gets). The flag is not saved with the run: a restored run starts without it."""

    def __new__(cls) -> Any:
        from ray.tune import Callback
        from ray.tune.stopper import Stopper

        class StopOnBadReport(Callback, Stopper):
            def __init__(self) -> None:
                self.stopped = False

            def __getstate__(self) -> dict[str, Any]:
                return {**self.__dict__, "stopped": False}

            def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
                return False

            def stop_all(self) -> bool:
                return self.stopped

            def on_trial_error(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
                if self.stopped:
                    return
                try:  # Tune has just written it next to the trial (not yet to the storage)
                    from ray import cloudpickle

                    with open(trial.pickled_error_file, "rb") as file:
                        error = cloudpickle.load(file)
                except Exception:  # unreadable: the trial's failure stays as Tune saw it
                    logger.debug("could not read trial %s's error", trial, exc_info=True)
                    return
                self.stopped = _report_error(error) is not None

        return StopOnBadReport()


def _report_error(error: object) -> ReportError | None:
    """The :class:`ReportError` behind a trial's failure: Ray's ``RayTaskError`` holds the
    trial's exception as ``cause``; the trial's code may have raised another from it (or
    while handling it, unless ``from None``)."""
    todo, seen = [error], set()
    while todo:
        error = todo.pop()
        # Tune holds some failures as their text (an actor it could not reuse, for one)
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        cause = getattr(error, "cause", None)  # RayTaskError(ReportError) is one too
        wrapped = cause if isinstance(cause, BaseException) else None
        if isinstance(error, ReportError) and wrapped is None:
            return error
        context = None if error.__suppress_context__ else error.__context__
        todo.extend([context, error.__cause__, wrapped])  # the wrapped one looked at first
    return None


def _ray_env_flag(name: str) -> bool:
    """Whether Ray Tune's environment variable ``name`` is ``1``, read as Ray Tune reads its
    own (not :func:`mlruntime._env.env_flag`: Tune takes ``true`` as off)."""
    try:
        return int(os.environ.get(name, "0")) == 1
    except ValueError:
        return False


def _raise_report_error(grid: Any) -> None:
    """Raise the first :class:`ReportError` a trial of the run failed with, if any.

    Raises:
        ReportError: The trial's, with its message (the trial's failure chained).
    """
    for result in grid:
        found = _report_error(result.error)
        if found is not None:
            raise ReportError(str(found)) from result.error
