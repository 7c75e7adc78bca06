"""XGBEstimator: data-parallel XGBoost on Ray, one actor per worker joined by xgboost.collective.

Each worker reads only its shard straight from storage into a streamed QuantileDMatrix; the
driver runs the rendezvous tracker and gets rank 0's booster back. Launch, reports,
checkpoints and restarts come from core's :class:`~mlruntime.train.gbdt.GBDTEstimator`; this
module holds only what is XGBoost's. It imports xgboost only inside functions: a worker
unpickling its job then starts reading its shard before xgboost loads (2 s in a new process,
most of it scikit-learn and SciPy, which xgboost imports).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlruntime.data.batching import ReadAhead
from mlruntime.data.connector import resolve_worker_shard
from mlruntime.errors import ConfigError
from mlruntime.runtime.context import Context
from mlruntime.runtime.distributor import Backend
from mlruntime.runtime.workers import WorkerGroup
from mlruntime.train.features import available_memory, read_ahead_features
from mlruntime.train.gbdt import GBDTBackend, GBDTEstimator, GBDTScalingConfig
from mlruntime.train.gbdt_worker import (
    GBDTTrainer,
    ResumeState,
    RoundReporter,
)
from mlruntime.train.inference import BatchPredictor
from mlruntime_xgboost._defaults import CACHE_FRACTION, DEFAULT_BATCH_ROWS

__all__ = ["XGBEstimator", "XGBScalingConfig"]

PREDICT_BATCH_ROWS = 65_536
"""Rows scored at once on a worker."""

_DEVICES = ("cpu", "cuda", "gpu")

TRAINED_DEVICE_ATTR = "mlruntime_trained_device"
"""Booster attribute naming the device that trained it (``"cpu"``, ``"cuda:0"`` ...)."""


def _config_device(model: Any) -> str:
    """The device in a booster's learner config (``"cpu"`` if the config does not say)."""
    import json

    import xgboost as xgb

    try:
        config = json.loads(model.save_config())
        return str(config["learner"]["generic_param"].get("device", "cpu"))
    except (KeyError, ValueError, xgb.core.XGBoostError):
        return "cpu"


@dataclass(frozen=True)
class XGBScalingConfig(GBDTScalingConfig):
    """Workers of an XGBoost job.

    Args:
        num_workers: Workers (``-1``: one per GPU, else one per node).
        num_cpu_per_worker: CPUs (threads) per worker (``-1``: auto).
        use_gpu: ``None``: GPUs if the cluster has any; ``True``: require them.
    """


class _XGBBackend(GBDTBackend):
    """Runs XGBoost's rendezvous tracker on the driver for each attempt."""

    name = "xgboost"
    binds_all_interfaces = True  # its listeners take no address: narrowed in local jobs
    module = "xgboost"

    def __init__(self) -> None:
        self._tracker: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # the tracker stays on the driver

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._tracker = None

    def driver_setup(self, group: WorkerGroup) -> dict[str, Any]:
        scaling = group.scaling
        info = {"use_gpu": scaling.use_gpu, "nthread": max(1, int(scaling.num_cpus))}
        if scaling.num_workers == 1:  # nothing to synchronise: no tracker, no collective
            return {"tracker_args": None, **info}  # (nor xgboost's import before the job)
        from xgboost.tracker import RabitTracker

        host = group.driver_host()  # 127.0.0.1 when every rank runs on the driver's machine
        self._tracker = RabitTracker(
            n_workers=scaling.num_workers, host_ip=host, sortby="task", timeout=0
        )
        self._tracker.start()
        return {"tracker_args": self._tracker.worker_args(), **info}

    def driver_teardown(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            try:
                tracker.free()
            except Exception:
                pass


@functools.cache
def _reporter_class() -> type:
    """The round callback's class (made once xgboost is imported; XGBoost wants its base)."""
    import xgboost as xgb

    class _Reporter(xgb.callback.TrainingCallback):
        """Hands each round's metrics to core's RoundReporter."""

        def __init__(self, reporter: RoundReporter) -> None:
            self.reporter = reporter

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            latest = {
                data_name: {metric: float(values[-1]) for metric, values in per_metric.items()}
                for data_name, per_metric in evals_log.items()
            }
            self.reporter.round(
                model.num_boosted_rounds(), latest, lambda: bytes(model.save_raw("ubj"))
            )
            return False

    return _Reporter


class _XGBTrainer(GBDTTrainer):
    """Joins the collective, builds the shard's QuantileDMatrix, boosts."""

    framework = "XGBoost"
    framework_module = "xgboost"
    cache_bytes: int | None = None
    """This worker's memory budget for decoded batches (set by :meth:`read_ahead`)."""

    def framework_errors(self) -> tuple[type[BaseException], ...]:
        import xgboost as xgb

        return (xgb.core.XGBoostError,)

    def read_ahead(self, ctx: Context, spec: dict[str, Any]) -> ReadAhead[Any] | None:
        # One budget for what is read ahead and what the matrix build keeps of it (the same
        # arrays), taken before either holds anything, and shared by this node's workers.
        available = available_memory() or 0
        self.cache_bytes = int(available * CACHE_FRACTION) // max(1, ctx.get_local_world_size())
        # this rank's shard resolved here, not in the reader thread
        train = resolve_worker_shard(ctx.get_dataset_map()["train"])
        return read_ahead_features(
            train,
            spec["features"],
            spec["label"],
            spec["weight"],
            batch_size=DEFAULT_BATCH_ROWS,
            max_bytes=self.cache_bytes,
        )

    def params(self, ctx: Context, spec: dict[str, Any]) -> dict[str, Any]:
        info = ctx.backend_info
        params = dict(spec["params"])
        params.setdefault("nthread", info["nthread"])
        if info["use_gpu"] and "device" not in params:
            device = ctx.rank_info.local_device
            params["device"] = "cuda" if device is None else f"cuda:{device}"
        return params

    def join(self, ctx: Context, params: dict[str, Any]) -> Any:
        if ctx.backend_info["tracker_args"] is None:  # a single worker
            return contextlib.nullcontext()
        import xgboost as xgb

        args = {**ctx.backend_info["tracker_args"], "dmlc_task_id": str(ctx.get_rank())}
        return xgb.collective.CommunicatorContext(**args)

    def build(
        self,
        ctx: Context,
        spec: dict[str, Any],
        params: dict[str, Any],
        ahead: ReadAhead[Any] | None = None,
    ) -> Any:
        from mlruntime_xgboost.adapter import build_dmatrix

        data = ctx.get_dataset_map()
        args = {"max_bin": params.get("max_bin"), "nthread": params["nthread"]}
        dtrain = build_dmatrix(
            data["train"],
            spec["features"],
            spec["label"],
            spec["weight"],
            first_pass=ahead,
            cache_bytes=self.cache_bytes,
            **args,
        )
        evals = [(dtrain, "train")]
        if "eval" in data:
            deval = build_dmatrix(
                data["eval"],
                spec["features"],
                spec["label"],
                spec["eval_weight"],
                ref=dtrain,
                nthread=params["nthread"],
            )
            evals.append((deval, "eval"))
        return evals

    def train(
        self,
        ctx: Context,
        spec: dict[str, Any],
        params: dict[str, Any],
        data: Any,
        resume: ResumeState,
        reporter: RoundReporter,
    ) -> Any:
        import xgboost as xgb

        return xgb.train(
            params,
            data[0][0],
            num_boost_round=spec["rounds"] - resume.rounds,
            evals=data,
            xgb_model=resume.model,
            callbacks=[_reporter_class()(reporter), *spec["callbacks"]],
            verbose_eval=False,
        )

    def load(self, payload: Any) -> Any:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(payload))
        trained_on = booster.attr(TRAINED_DEVICE_ATTR)
        if trained_on and trained_on != "cpu":
            # A model file keeps no device: give it back the one that trained it, so its
            # config says so (XGBoost itself falls back to the CPU, with a warning we
            # silence, where this process sees no GPU; the attribute still tells).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                booster.set_param({"device": trained_on})
        return booster

    def dump(self, model: Any) -> Any:
        model.set_attr(**{TRAINED_DEVICE_ATTR: _config_device(model)})
        return bytes(model.save_raw("ubj"))

    def device(self, params: dict[str, Any]) -> str:
        return str(params.get("device", "cpu"))


class XGBEstimator(GBDTEstimator):
    """Distributed XGBoost training and scoring (Snowflake's ``XGBEstimator``).

    Args:
        n_estimators: Boosting rounds (``params["n_estimators"]`` overrides it).
        objective: XGBoost objective (``params["objective"]`` overrides it).
        params: Other XGBoost parameters (``max_depth``, ``eta``, ``tree_method`` ...).
        scaling_config: Workers and their resources (default: auto).
        callbacks: ``xgboost.callback.TrainingCallback`` objects, run on every worker.
        failure_config: Restarts from the last checkpoint when a worker dies.
        checkpoint_frequency: Rounds between checkpoints when restarts are allowed.
        verbose: Show a progress bar of rounds with rank 0's metrics, and a summary line.

    Raises:
        ConfigError: For parameters that are wrong whatever the data (a non-positive round
            count, an objective that is not a string or callable, an unknown ``device``).

    Example:
        >>> est = XGBEstimator(n_estimators=20, params={"max_depth": 4})
        >>> booster = est.fit(DataConnector.from_dataframe(df), ["x1", "x2"], "y")
        >>> est.predict(df)[:3]
    """

    framework = "xgboost"
    default_objective = "reg:squarederror"
    scaling_config_type = XGBScalingConfig

    def _trainer(self) -> GBDTTrainer:
        return _XGBTrainer()

    def _backend(self) -> Backend:
        return _XGBBackend()

    def _train_params(self) -> dict[str, Any]:
        params = {"tree_method": "hist", **super()._train_params()}
        if not isinstance(params["objective"], str) or not params["objective"]:
            raise ConfigError(
                f"invalid XGBoost parameters: objective must be a name such as "
                f"'reg:squarederror', got {params['objective']!r}"
            )
        device = params.get("device")
        if device is not None and str(device).split(":")[0] not in _DEVICES:
            raise ConfigError(
                f"invalid XGBoost parameters: device must be 'cpu', 'cuda' or 'cuda:N', "
                f"got {device!r}"
            )
        return params

    def _predictor(self, booster: Any, features: list[str]) -> BatchPredictor:
        return _Predictor(bytes(booster.save_raw("ubj")), features)

    def _load_file(self, path: str) -> Any:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(path)
        return booster

    def _feature_names(self, booster: Any) -> list[str]:
        return list(booster.feature_names or [])


class _Predictor(BatchPredictor):
    """A picklable predict function over a serialized booster (loaded once per worker)."""

    def __init__(self, model: bytes, features: list[str]) -> None:
        super().__init__(features, batch_size=PREDICT_BATCH_ROWS)
        self.model_bytes = model

    def load(self) -> Any:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(self.model_bytes))
        return booster

    def forward(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.inplace_predict(x))
