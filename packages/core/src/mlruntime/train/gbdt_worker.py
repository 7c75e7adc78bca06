"""The worker half of GBDT training: what runs on every rank of an XGBoost or LightGBM job.

:func:`run_trainer` builds the rank's matrices inside the framework's collective, resumes from
the last checkpoint, boosts with a :class:`RoundReporter` (per-round metrics, a checkpoint every
N rounds, the evaluation history across restarts), and turns parameters the framework rejects
into a :class:`~mlruntime.errors.ConfigError`. A plugin subclasses :class:`GBDTTrainer`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from mlruntime._env import env_flag
from mlruntime.data.batching import ReadAhead
from mlruntime.data.connector import ShardedDataConnector
from mlruntime.errors import ConfigError
from mlruntime.runtime.context import Checkpoint, Context, get_context
from mlruntime.train.features import PeakMemory, count_nulls, null_label_error

__all__ = [
    "SKLEARN_ENV",
    "Deferred",
    "EvalHistory",
    "GBDTTrainer",
    "ResumeState",
    "RoundReporter",
    "check_labels",
    "defer_framework_values",
    "import_framework",
    "merge_evals",
    "run_trainer",
]

EvalHistory = dict[str, dict[str, list[float]]]
"""Per-round metrics: ``{"train": {"rmse": [...]}, "eval": {...}}``."""


def merge_evals(*histories: Any) -> EvalHistory:
    """Concatenate evaluation histories in order (before and after a restart)."""
    merged: EvalHistory = {}
    for history in histories:
        for data_name, per_metric in (history or {}).items():
            for metric, values in per_metric.items():
                merged.setdefault(data_name, {}).setdefault(metric, []).extend(
                    float(v) for v in values
                )
    return merged


REPORT_EVERY_S = 0.1
"""How often a GBDT job's rank 0 sends its rounds' metrics (a batch of the rounds since the
last send; the first round, a checkpoint's round and the last round go at once)."""


class RoundReporter:
    """Rank 0's view of boosting: each round's metrics to the driver, a checkpoint every
    ``every`` rounds, and the evaluation history so far (including rounds before a restart).

    A framework's training callback calls :meth:`round` once per round, and the job's end
    :meth:`flush`. Rounds are sent in batches, at most every ``REPORT_EVERY_S`` (the driver
    still gets every round, in order).

    Args:
        ctx: The worker's context.
        every: Rounds between checkpoints (0: none).
        previous: The history restored from the checkpoint resumed from.
    """

    def __init__(self, ctx: Context, every: int, previous: EvalHistory | None = None) -> None:
        self.ctx = ctx
        self.every = every
        self.previous = previous or {}
        self.current: EvalHistory = {}
        self.pending: list[dict[str, Any]] = []
        self.sent_at = 0.0  # (monotonic) the first round is sent at once

    def round(
        self, rounds: int, latest: dict[str, dict[str, float]], model_state: Callable[[], Any]
    ) -> None:
        """Record one round.

        Args:
            rounds: Rounds boosted so far (restored ones included).
            latest: This round's ``{data_name: {metric: value}}``.
            model_state: Returns the model serialized (called only when a checkpoint is due).
        """
        metrics: dict[str, Any] = {"round": rounds}
        for data_name, per_metric in latest.items():
            for metric, value in per_metric.items():
                metrics[f"{data_name}-{metric}"] = float(value)
                self.current.setdefault(data_name, {}).setdefault(metric, []).append(float(value))
        if self.every and rounds % self.every == 0:
            checkpoint = Checkpoint.from_dict(
                {"model": model_state(), "rounds": rounds, "evals_result": self.history()}
            )
            self.flush()  # the rounds before it first, in order
            self.ctx.report(metrics, checkpoint=checkpoint)
            return
        self.pending.append(metrics)
        if time.monotonic() - self.sent_at >= REPORT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Send the rounds not sent yet (the job's end calls it after the last round)."""
        if self.pending:
            self.ctx.report_batch(self.pending)
            self.pending = []
        self.sent_at = time.monotonic()

    def history(self) -> EvalHistory:
        """Every round's metrics so far, restored rounds first."""
        return merge_evals(self.previous, self.current)


@dataclass
class ResumeState:
    """Where training starts on a worker: a restored model, rounds done and their history."""

    model: Any = None
    rounds: int = 0
    history: EvalHistory | None = None


class GBDTTrainer:
    """The framework part of a GBDT job; runs on every worker. Instances must be picklable:
    define subclasses at module level, and import the framework inside the methods, not at the
    top of their module. Unpickling the job then imports no framework, and the worker reads its
    shard ahead (:meth:`read_ahead`) while the framework loads (1-2 s in a new process)."""

    framework = "gbdt"
    framework_module: str | None = None
    """The framework's module (``"xgboost"``): :func:`run_trainer` imports it first, while the
    shard is read ahead, without scikit-learn (:func:`import_framework`)."""

    def framework_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions the framework raises for parameters or data it rejects."""
        return ()

    def read_ahead(self, ctx: Context, spec: dict[str, Any]) -> ReadAhead[Any] | None:
        """Start reading this rank's training data before the framework is imported (called
        first; must not import it). What it returns is handed to :meth:`build`, and closed by
        the caller after the build."""
        return None

    def params(self, ctx: Context, spec: dict[str, Any]) -> dict[str, Any]:
        """The framework parameters for this rank (threads, device, network)."""
        return dict(spec["params"])

    def join(self, ctx: Context, params: dict[str, Any]) -> AbstractContextManager[Any]:
        """The framework's collective, held while the matrices are built and trained on (e.g.
        xgboost.collective, whose quantile sketches must be built together)."""
        return nullcontext()

    def build(
        self,
        ctx: Context,
        spec: dict[str, Any],
        params: dict[str, Any],
        ahead: ReadAhead[Any] | None = None,
    ) -> Any:
        """Read this rank's data into the framework's training (and eval) matrices; ``ahead``
        is what :meth:`read_ahead` started (``None`` if it started nothing)."""
        raise NotImplementedError

    def load(self, payload: Any) -> Any:
        """A model from its serialized form (checkpoints, the driver's copy)."""
        raise NotImplementedError

    def dump(self, model: Any) -> Any:
        """The model serialized (bytes or text), for checkpoints and the driver."""
        raise NotImplementedError

    def train(
        self,
        ctx: Context,
        spec: dict[str, Any],
        params: dict[str, Any],
        data: Any,
        resume: ResumeState,
        reporter: RoundReporter,
    ) -> Any:
        """Boost ``spec["rounds"] - resume.rounds`` more rounds; call ``reporter.round`` each
        round; return the model."""
        raise NotImplementedError

    def extra_result(self, model: Any, params: dict[str, Any]) -> dict[str, Any]:
        """More of rank 0's result for the driver (e.g. the best iteration)."""
        return {}

    def device(self, params: dict[str, Any]) -> str:
        """The device this rank trained on, as the framework names it."""
        return "cpu"


SKLEARN_ENV = "MLRUNTIME_GBDT_SKLEARN"
"""Set to ``1`` for GBDT workers that import their framework with its scikit-learn API."""


class _Hidden(importlib.abc.MetaPathFinder):
    """Makes ``modules`` (and their submodules) look not installed to the thread that made
    it, while it is on ``sys.meta_path`` (other threads, such as the shard's reader, import as
    usual)."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = tuple(modules)
        self.thread = threading.get_ident()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in self.modules and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def import_framework(module: str) -> None:
    """Import a GBDT framework into this worker without the scikit-learn API it would load.

    ``import xgboost`` and ``import lightgbm`` import scikit-learn (and with it SciPy's stats
    and pandas) for their scikit-learn wrappers, which a GBDT job's worker never uses: 0.5 s
    of a new worker's 0.7 s import, measured, paid by every first fit. Both frameworks treat
    a missing scikit-learn as optional, so it is hidden while the framework is imported, and
    importable again right after (a custom metric can still import ``sklearn.metrics``); only
    the framework's own scikit-learn classes (``xgboost.XGBRegressor`` ...) are left without
    it in this process. Nothing is hidden when scikit-learn is already imported, the framework
    is, or ``MLRUNTIME_GBDT_SKLEARN=1``.

    Args:
        module: The framework's module name (``"xgboost"``, ``"lightgbm"``).
    """
    if module in sys.modules:
        return
    if env_flag(SKLEARN_ENV) or "sklearn" in sys.modules:
        importlib.import_module(module)
        return
    hidden = _Hidden(["sklearn"])
    sys.meta_path.insert(0, hidden)
    try:
        importlib.import_module(module)
    finally:
        sys.meta_path.remove(hidden)


LABELLED = {"train": "dataset", "eval": "eval_set"}
"""The datasets of a GBDT job whose labels are checked, and what errors call them."""


def check_labels(ctx: Context, label: str) -> None:
    """Count null labels in this rank's data, add up every rank's counts, and raise the same
    error on every rank if there are any (before any rank joins the framework's collective).

    Raises:
        DataError: If the training or eval data has null labels.
    """
    data = ctx.get_dataset_map()
    local = {name: count_nulls(data[name], label) for name in LABELLED if name in data}
    counts = ctx.allgather(local)
    for name, what in LABELLED.items():
        if name not in data:
            continue
        if isinstance(data[name], ShardedDataConnector):
            nulls = sum(c[name] for c in counts)
        else:  # every rank read all of it
            nulls = counts[0][name]
        if nulls:
            raise null_label_error(what, label, nulls)


def _legacy_errors(trainer: GBDTTrainer) -> tuple[type[BaseException], ...]:
    """The ``framework_error`` class attribute trainers had before :meth:`framework_errors`."""
    return tuple(getattr(trainer, "framework_error", ()))


class Deferred:
    """A value pickled on the driver and unpickled in the worker only once its framework is
    imported (:func:`defer_framework_values`)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def load(self) -> Any:
        """The value, unpickled."""
        import ray.cloudpickle as cloudpickle

        return cloudpickle.loads(self.data)


def _mentions_module(data: bytes, module: str) -> bool:
    """Whether the pickle ``data`` names ``module`` or one of its submodules (a class, a
    function or a module of it, which unpickling imports)."""
    import pickletools

    prefix = module + "."
    for _op, arg, _pos in pickletools.genops(data):
        if isinstance(arg, str):
            name = arg.split(" ", 1)[0]  # GLOBAL's "module name"; otherwise the whole string
            if name == module or name.startswith(prefix):
                return True
    return False


def defer_framework_values(spec: dict[str, Any], module: str | None) -> dict[str, Any]:
    """``spec`` with every value whose unpickling would import ``module`` (XGBoost callbacks,
    a custom objective using ``xgboost``) replaced by a :class:`Deferred`.

    Ray unpickles a job's arguments before the job runs, so such a value imported the
    framework, with its scikit-learn API, before :func:`import_framework` could hide it (0.5 s
    of a new worker's first fit); :func:`run_trainer` loads them once the framework is in.

    Args:
        spec: The job's settings (values must pickle, as they are sent to the workers).
        module: The framework's module name (``None``: nothing deferred).
    """
    if not module:
        return spec
    import ray.cloudpickle as cloudpickle

    out = dict(spec)
    for key, value in spec.items():
        if value is None or isinstance(value, (str, int, float, bool)):
            continue
        try:
            data = cloudpickle.dumps(value)
        except Exception:  # sent as it is: the distributor names what cannot be sent
            continue
        if _mentions_module(data, module):
            out[key] = Deferred(data)
    return out


def run_trainer(trainer: GBDTTrainer, spec: dict[str, Any]) -> dict[str, Any]:
    """Runs on every rank: start reading the shard (while the framework loads), build the
    matrices, resume, boost; rank 0 returns the model.

    Parameters the framework rejects become a :class:`ConfigError` naming them.
    """
    ctx = get_context()
    memory = PeakMemory()
    ahead = trainer.read_ahead(ctx, spec)  # reads while the framework is imported below
    try:
        module = getattr(trainer, "framework_module", None)  # trainers written before it lack it
        if module:
            import_framework(module)
        # values that needed the framework to unpickle (callbacks ...), now it is imported
        spec = {k: v.load() if isinstance(v, Deferred) else v for k, v in spec.items()}
        check_labels(ctx, spec["label"])
        params = trainer.params(ctx, spec)
        # Joining the framework's collective is outside the "invalid parameters" translation:
        # a rendezvous that fails (a peer gone, a signal in the middle) is not the parameters.
        with trainer.join(ctx, params):
            try:
                ctx.phase("loading data")
                if ahead is None:  # trainers written before read_ahead take three arguments
                    data = trainer.build(ctx, spec, params)
                else:
                    data = trainer.build(ctx, spec, params, ahead)
                    ahead.close()  # read to the end by now, or left: free it before training
                    ahead = None
                ctx.phase("training")
                resume = ResumeState()
                checkpoint = ctx.get_checkpoint()
                if checkpoint is not None:
                    state = checkpoint.to_dict()
                    resume = ResumeState(
                        trainer.load(state["model"]), state["rounds"], state["evals_result"]
                    )
                reporter = RoundReporter(ctx, spec["checkpoint_every"], resume.history)
                model = trainer.train(ctx, spec, params, data, resume, reporter)
                reporter.flush()
            except (*trainer.framework_errors(), *_legacy_errors(trainer)) as exc:
                lines = str(exc).strip().splitlines()
                first = lines[0] if lines else repr(exc)
                raise ConfigError(
                    f"invalid {trainer.framework} parameters {spec['params']}: {first}"
                ) from exc
    finally:
        if ahead is not None:  # an error on the way: do not wait for the reader's current item
            ahead.close(wait=False)
    out: dict[str, Any] = {"device": trainer.device(params), "peak_memory_growth": memory.growth()}
    if ctx.get_rank() == 0:
        out["model"] = trainer.dump(model)
        out["evals_result"] = reporter.history()
        out.update(trainer.extra_result(model, params))
    return out
