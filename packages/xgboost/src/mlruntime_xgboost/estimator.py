"""XGBEstimator: data-parallel XGBoost on Ray, one actor per worker joined by xgboost.collective.

Each worker reads only its shard straight from storage into a streamed QuantileDMatrix; the
driver runs the rendezvous tracker and gets rank 0's booster back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from mlruntime.context import Checkpoint, Context, get_context
from mlruntime.distributor import Backend, Distributor
from mlruntime.errors import ConfigError, MLRuntimeError
from mlruntime.scaling import FailureConfig, ScalingConfig, WorkerResourceConfig
from mlruntime.training import (
    BatchPredictor,
    PeakMemory,
    as_connector,
    check_training_columns,
    feature_batches,
    score_to_sink,
)
from mlruntime.workers import WorkerGroup
from mlruntime_xgboost.adapter import build_dmatrix

__all__ = ["XGBEstimator", "XGBScalingConfig"]

PREDICT_BATCH_ROWS = 65_536
"""Rows scored at once on a worker."""


@dataclass(frozen=True)
class XGBScalingConfig:
    """Workers of an XGBoost job.

    Args:
        num_workers: Workers (``-1``: one per GPU, else one per node).
        num_cpu_per_worker: CPUs (threads) per worker (``-1``: auto).
        use_gpu: ``None``: GPUs if the cluster has any; ``True``: require them.
    """

    num_workers: int = -1
    num_cpu_per_worker: float = -1
    use_gpu: bool | None = None

    def to_scaling_config(self) -> ScalingConfig:
        """The core ScalingConfig this maps onto.

        Raises:
            ConfigError: For impossible values (0 workers, 0 CPUs ...).
        """
        gpus = None if self.use_gpu is None else (1.0 if self.use_gpu else 0.0)
        return ScalingConfig(
            num_workers=self.num_workers,
            resources_per_worker=WorkerResourceConfig(
                num_cpus=self.num_cpu_per_worker, num_gpus=gpus
            ),
            use_gpu=self.use_gpu,
        )


class _XGBBackend(Backend):
    """Runs XGBoost's rendezvous tracker on the driver for each attempt."""

    name = "xgboost"

    def __init__(self) -> None:
        self._tracker: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # the tracker stays on the driver

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._tracker = None

    def driver_setup(self, group: WorkerGroup) -> dict[str, Any]:
        import ray
        from xgboost.tracker import RabitTracker

        scaling = group.scaling
        host = ray.util.get_node_ip_address()
        self._tracker = RabitTracker(
            n_workers=scaling.num_workers, host_ip=host, sortby="task", timeout=0
        )
        self._tracker.start()
        return {
            "tracker_args": self._tracker.worker_args(),
            "use_gpu": scaling.use_gpu,
            "nthread": max(1, int(scaling.num_cpus)),
        }

    def driver_teardown(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            try:
                tracker.free()
            except Exception:
                pass


class _XGBDistributor(Distributor):
    name = "xgboost"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend = _XGBBackend()


class _RoundReporter(xgb.callback.TrainingCallback):
    """Rank 0: report each round's metrics, checkpoint every ``every`` rounds."""

    def __init__(self, ctx: Context, every: int, previous: dict[str, Any]) -> None:
        self.ctx = ctx
        self.every = every
        self.previous = previous

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        rounds = model.num_boosted_rounds()
        metrics: dict[str, Any] = {"round": rounds}
        for data_name, per_metric in evals_log.items():
            for metric, values in per_metric.items():
                metrics[f"{data_name}-{metric}"] = float(values[-1])
        checkpoint = None
        if self.every and rounds % self.every == 0:
            checkpoint = Checkpoint.from_dict(
                {
                    "model": bytes(model.save_raw("ubj")),
                    "rounds": rounds,
                    "evals_result": _merge_evals(self.previous, evals_log),
                }
            )
        self.ctx.report(metrics, checkpoint=checkpoint)
        return False


def _merge_evals(previous: dict[str, Any], current: Any) -> dict[str, dict[str, list[float]]]:
    merged: dict[str, dict[str, list[float]]] = {}
    for source in (previous, current):
        for data_name, per_metric in source.items():
            for metric, values in per_metric.items():
                merged.setdefault(data_name, {}).setdefault(metric, []).extend(
                    float(v) for v in values
                )
    return merged


def _train_on_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs on every rank: join the collective, build the shard's matrices, train."""
    ctx = get_context()
    memory = PeakMemory()
    info = ctx.backend_info
    params = dict(spec["params"])
    params.setdefault("nthread", info["nthread"])
    if info["use_gpu"] and "device" not in params:
        device = ctx.rank_info.local_device
        params["device"] = "cuda" if device is None else f"cuda:{device}"
    data = ctx.get_dataset_map()
    args = {**info["tracker_args"], "dmlc_task_id": str(ctx.get_rank())}
    with xgb.collective.CommunicatorContext(**args):
        ctx.phase("loading data")
        dtrain = build_dmatrix(
            data["train"],
            spec["features"],
            spec["label"],
            spec["weight"],
            max_bin=params.get("max_bin"),
            nthread=params["nthread"],
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
        ctx.phase("training")
        start_model, done, previous = None, 0, {}
        checkpoint = ctx.get_checkpoint()
        if checkpoint is not None:
            state = checkpoint.to_dict()
            start_model = xgb.Booster()
            start_model.load_model(bytearray(state["model"]))
            done, previous = state["rounds"], state["evals_result"]
        evals_result: dict[str, Any] = {}
        callbacks = [_RoundReporter(ctx, spec["checkpoint_every"], previous), *spec["callbacks"]]
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=spec["rounds"] - done,
            evals=evals,
            evals_result=evals_result,
            xgb_model=start_model,
            callbacks=callbacks,
            verbose_eval=False,
        )
    out: dict[str, Any] = {
        "device": params.get("device", "cpu"),
        "peak_memory_growth": memory.growth(),
    }
    if ctx.get_rank() == 0:
        out["model"] = bytes(booster.save_raw("ubj"))
        out["evals_result"] = _merge_evals(previous, evals_result)
    return out


class XGBEstimator:
    """Distributed XGBoost training and scoring.

    Args:
        n_estimators: Boosting rounds (``params["n_estimators"]`` overrides it).
        objective: XGBoost objective (``params["objective"]`` overrides it).
        params: Other XGBoost parameters (``max_depth``, ``eta``, ``tree_method`` ...).
        scaling_config: Workers and their resources (default: auto).
        callbacks: ``xgboost.callback.TrainingCallback`` objects, run on every worker.
        failure_config: Restarts from the last checkpoint when a worker dies.
        checkpoint_frequency: Rounds between checkpoints when restarts are allowed.
        verbose: Print phases, per-round metrics of rank 0 and a timing summary.

    Example:
        >>> est = XGBEstimator(n_estimators=20, params={"max_depth": 4})
        >>> booster = est.fit(DataConnector.from_dataframe(df), ["x1", "x2"], "y")
        >>> est.predict(df)[:3]
    """

    def __init__(
        self,
        n_estimators: int = 100,
        objective: str = "reg:squarederror",
        params: dict[str, Any] | None = None,
        scaling_config: XGBScalingConfig | None = None,
        callbacks: Sequence[Any] | None = None,
        failure_config: FailureConfig | None = None,
        *,
        checkpoint_frequency: int = 10,
        verbose: bool = True,
    ) -> None:
        params = dict(params or {})
        self.n_estimators = int(params.pop("n_estimators", n_estimators))
        self.objective = str(params.pop("objective", objective))
        if self.n_estimators <= 0:
            raise ConfigError(f"n_estimators must be positive, got {self.n_estimators}")
        if scaling_config is not None and not isinstance(scaling_config, XGBScalingConfig):
            raise ConfigError(
                f"scaling_config must be an XGBScalingConfig, got {type(scaling_config).__name__}"
            )
        self.params = params
        self.scaling_config = scaling_config or XGBScalingConfig()
        self.callbacks = list(callbacks or [])
        self.failure_config = failure_config or FailureConfig()
        self.checkpoint_frequency = int(checkpoint_frequency)
        self.verbose = verbose
        self._booster: Any = None
        self._evals_result: dict[str, Any] = {}
        self._features: list[str] | None = None
        self.last_result: Any = None

    def _train_params(self) -> dict[str, Any]:
        params = {"tree_method": "hist", **self.params, "objective": self.objective}
        _check_params(params)
        return params

    def _distributor(self) -> _XGBDistributor:
        return _XGBDistributor(
            self.scaling_config.to_scaling_config(), self.failure_config, verbose=self.verbose
        )

    def fit(
        self,
        dataset: Any,
        input_cols: Sequence[str] | None,
        label_col: str,
        eval_set: Any = None,
        verbose_eval: bool | int | None = None,
        weight_col: str | None = None,
    ) -> Any:
        """Train on every worker and return rank 0's ``xgboost.Booster``.

        Args:
            dataset: A DataConnector, pandas/polars/Arrow frame, DuckDB relation or source.
            input_cols: Feature columns (``None``: all but label and weight).
            label_col: The label column.
            eval_set: Data to evaluate on each round (same columns), reported as ``"eval"``.
            verbose_eval: Print rank 0's metrics each round (default: the estimator's
                ``verbose``).
            weight_col: Optional sample-weight column.

        Raises:
            ColumnError: Unknown or non-numeric columns, or a label missing from ``eval_set``.
            DataError: Null labels.
            ConfigError: Invalid XGBoost parameters (e.g. an unknown objective), or more
                workers than rows.
            ResourceError: A scaling request the cluster cannot meet.
            WorkerError: XGBoost failed on a worker (its own message is included).
        """
        train = as_connector(dataset, "dataset")
        features = check_training_columns(train, input_cols, label_col, weight_col)
        datasets = {"train": train}
        eval_weight = None
        if eval_set is not None:
            evals = as_connector(eval_set, "eval_set")
            eval_weight = weight_col if weight_col in evals.columns else None
            check_training_columns(evals, features, label_col, eval_weight, what="eval_set")
            datasets["eval"] = evals
        params = self._train_params()
        every = self.checkpoint_frequency if self.failure_config.max_failures != 0 else 0
        spec = {
            "params": params,
            "features": features,
            "label": label_col,
            "weight": weight_col,
            "eval_weight": eval_weight,
            "rounds": self.n_estimators,
            "callbacks": self.callbacks,
            "checkpoint_every": every,
        }
        distributor = self._distributor()
        if verbose_eval is not None:
            distributor.verbose = bool(verbose_eval)
        from functools import partial

        result = distributor.launch(partial(_train_on_worker, spec), dataset_map=datasets)
        out = result.return_values[0]
        booster = xgb.Booster()
        booster.load_model(bytearray(out["model"]))
        self._booster, self._evals_result = booster, out["evals_result"]
        self._features = features
        self.last_result = result
        return booster

    def get_booster(self) -> Any:
        """The trained ``xgboost.Booster``.

        Raises:
            MLRuntimeError: Before ``fit`` or ``load_model``.
        """
        if self._booster is None:
            raise MLRuntimeError("the estimator is not fitted; call fit() or load_model() first")
        return self._booster

    def get_eval_results(self) -> dict[str, dict[str, list[float]]]:
        """Per-round metrics: ``{"train": {metric: [...]}, "eval": {...}}``."""
        return self._evals_result

    def predict(
        self,
        dataset: Any,
        input_cols: Sequence[str] | None = None,
        *,
        sink: Any = None,
        key_cols: Sequence[str] = (),
        output_col: str = "prediction",
    ) -> Any:
        """Score data with the trained booster.

        Without ``sink``: in this process, streamed in batches, returning a numpy array.
        With a core Sink: on every worker in parallel, each scoring its shard; ``key_cols`` and
        the predictions are written all or nothing, and the sink's commit result returned.

        Raises:
            ColumnError: For missing feature or key columns.
        """
        booster = self.get_booster()
        data = as_connector(dataset, "dataset")
        features = (
            list(input_cols)
            if input_cols is not None
            else (self._features or list(booster.feature_names or []))
        )
        check_training_columns(data, features, None, what="dataset")
        if sink is None:
            parts = [booster.inplace_predict(x) for x, _, _ in feature_batches(data, features)]
            return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
        model = bytes(booster.save_raw("ubj"))
        return score_to_sink(
            self._distributor().launch,
            data,
            _Predictor(model, features),
            features,
            sink,
            key_cols=key_cols,
            output_col=output_col,
        )

    def save_model(self, path: str | os.PathLike[str]) -> None:
        """Save the booster in XGBoost's format, chosen by suffix (``.json`` or ``.ubj``)."""
        self.get_booster().save_model(os.fspath(path))

    def load_model(self, path: str | os.PathLike[str]) -> Any:
        """Load a booster saved by XGBoost (``.json`` / ``.ubj``) into this estimator.

        Raises:
            SourceError-like ``FileNotFoundError``: If the file does not exist.
        """
        if not Path(path).exists():
            raise FileNotFoundError(f"model file {os.fspath(path)!r} does not exist")
        booster = xgb.Booster()
        booster.load_model(os.fspath(path))
        self._booster = booster
        self._features = list(booster.feature_names or []) or None
        return booster


class _Predictor(BatchPredictor):
    """A picklable predict function over a serialized booster (loaded once per worker)."""

    def __init__(self, model: bytes, features: list[str]) -> None:
        super().__init__(features, batch_size=PREDICT_BATCH_ROWS)
        self.model_bytes = model

    def load(self) -> Any:
        booster = xgb.Booster()
        booster.load_model(bytearray(self.model_bytes))
        return booster

    def forward(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.inplace_predict(x))


def _check_params(params: dict[str, Any]) -> None:
    """Validate parameters with one round on four rows, before any worker starts."""
    x = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    y = np.array([0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    probe = {k: v for k, v in params.items() if k not in ("device", "nthread")}
    probe["nthread"] = 1
    try:
        xgb.train(probe, xgb.DMatrix(x, label=y), num_boost_round=1)
    except xgb.core.XGBoostError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ConfigError(f"invalid XGBoost parameters {params}: {first}") from exc
