"""The GBDT estimator base: what distributed XGBoost and LightGBM share, on the driver.

:class:`GBDTEstimator` owns the user-facing shape (Snowflake's ``fit`` / ``predict`` /
``save_model`` / ``load_model``), input checks before any worker starts, the launch, per-round
reports to the progress bar, a checkpoint every N rounds and resuming from it after a restart,
and the merge of the evaluation history across restarts (the worker half is
:mod:`mlruntime.train.gbdt_worker`). A framework plugin supplies a :class:`GBDTTrainer` (how
its workers join, build their matrices and boost), a backend and a few class attributes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mlruntime.data.connector import DataConnector, ShardedDataConnector
from mlruntime.errors import ConfigError, DataError, MLRuntimeError, WorkerError
from mlruntime.runtime.distributor import Backend, Distributor, Result
from mlruntime.runtime.scaling import FailureConfig, ScalingConfig, WorkerResourceConfig
from mlruntime.train.features import as_connector, check_training_columns
from mlruntime.train.gbdt_worker import (
    EvalHistory,
    GBDTTrainer,
    defer_framework_values,
    run_trainer,
)
from mlruntime.train.inference import BatchPredictor, score_to_sink

__all__ = ["GBDTBackend", "GBDTEstimator", "GBDTScalingConfig"]


class GBDTBackend(Backend):
    """Base of the GBDT frameworks' backends. They are one worker family (``"gbdt"``): each job
    joins its framework's collective or network and leaves it when it ends, so XGBoost and
    LightGBM jobs run on each other's warm worker groups. The driver imports ``module`` while
    the job runs: it loads the booster once the job is done."""

    worker_family = "gbdt"
    module: ClassVar[str] = ""
    """The framework's import name (``"xgboost"``)."""

    def driver_warm_up(self) -> None:
        if self.module:
            importlib.import_module(self.module)


@dataclass(frozen=True)
class GBDTScalingConfig:
    """Workers of a GBDT job (Snowflake's ``XGBScalingConfig`` shape).

    Args:
        num_workers: Workers (``-1``: one per GPU when GPUs are used, else one per node).
        num_cpu_per_worker: CPUs (threads) per worker (``-1``: the node's CPUs).
        use_gpu: ``None``: GPUs if the cluster has any; ``True``: require them;
            ``False``: CPUs only.
    """

    num_workers: int = -1
    num_cpu_per_worker: float = -1
    use_gpu: bool | None = None

    def to_scaling_config(self) -> ScalingConfig:
        """The core :class:`ScalingConfig` every job shape maps onto."""
        gpus = None if self.use_gpu is None else (1.0 if self.use_gpu else 0.0)
        return ScalingConfig(
            num_workers=self.num_workers,
            resources_per_worker=WorkerResourceConfig(
                num_cpus=self.num_cpu_per_worker, num_gpus=gpus
            ),
            use_gpu=self.use_gpu,
        )


class GBDTEstimator:
    """Distributed gradient-boosted trees: the base of ``XGBEstimator`` and ``LightGBMEstimator``.

    Args:
        n_estimators: Boosting rounds (``params["n_estimators"]`` or a framework alias in
            ``params`` overrides it).
        objective: The framework's objective (``params["objective"]`` overrides it; default:
            the framework's regression objective).
        params: Other framework parameters.
        scaling_config: Workers and their resources (default: auto), of the plugin's
            ``scaling_config_type``.
        callbacks: Framework callbacks, run on every worker.
        failure_config: Restarts from the last checkpoint when a worker dies.
        checkpoint_frequency: Rounds between checkpoints when restarts are allowed.
        verbose: Show a progress bar of rounds with rank 0's metrics, and a summary line.

    Raises:
        ConfigError: For a non-positive round count, parameters that are not a dict of
            names, or a scaling config of the wrong type.
    """

    framework: ClassVar[str] = "gbdt"
    default_objective: ClassVar[str] = ""
    scaling_config_type: ClassVar[type[GBDTScalingConfig]] = GBDTScalingConfig
    round_aliases: ClassVar[tuple[str, ...]] = ("n_estimators",)
    allow_categorical: ClassVar[bool] = False
    shard_eval: ClassVar[bool] = True
    """Whether each rank evaluates only its shard of ``eval_set`` (the framework combines the
    metrics), or the whole of it."""

    def __init__(
        self,
        n_estimators: int = 100,
        objective: str | None = None,
        params: dict[str, Any] | None = None,
        scaling_config: GBDTScalingConfig | None = None,
        callbacks: Sequence[Any] | None = None,
        failure_config: FailureConfig | None = None,
        *,
        checkpoint_frequency: int = 10,
        verbose: bool = True,
    ) -> None:
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"params must be a dict, got {type(params).__name__}")
        params = dict(params or {})
        bad = [k for k in params if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"parameter names must be strings, got {bad}")
        rounds: Any = n_estimators
        for alias in self.round_aliases:
            if alias in params:
                rounds = params.pop(alias)
        if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds <= 0:
            raise ConfigError(f"n_estimators must be a positive integer, got {rounds!r}")
        self.n_estimators = int(rounds)
        self.objective = params.pop("objective", objective or self.default_objective)
        wanted = self.scaling_config_type
        if scaling_config is not None and not isinstance(scaling_config, wanted):
            raise ConfigError(
                f"scaling_config must be an {wanted.__name__}, got {type(scaling_config).__name__}"
            )
        if failure_config is not None and not isinstance(failure_config, FailureConfig):
            raise ConfigError(
                f"failure_config must be a FailureConfig, got {type(failure_config).__name__}"
            )
        if isinstance(checkpoint_frequency, bool) or int(checkpoint_frequency) < 0:
            raise ConfigError(f"checkpoint_frequency must be >= 0, got {checkpoint_frequency!r}")
        self.params = params
        self.scaling_config = scaling_config or wanted()
        self.callbacks = list(callbacks or [])
        self.failure_config = failure_config or FailureConfig()
        self.checkpoint_frequency = int(checkpoint_frequency)
        self.verbose = verbose
        self._booster: Any = None
        self._evals_result: EvalHistory = {}
        self._features: list[str] | None = None
        self.last_result: Result | None = None

    # -- what a plugin provides -------------------------------------------------------------

    def _trainer(self) -> GBDTTrainer:
        """The picklable worker part."""
        raise NotImplementedError

    def _backend(self) -> Backend:
        """How the workers join (a rendezvous tracker, a machine list)."""
        return Backend()

    def _train_params(self) -> dict[str, Any]:
        """The parameters sent to the workers, checked statically (no probe training)."""
        return {**self.params, "objective": self.objective}

    def _prepare(self, train: DataConnector, features: list[str], scaling: Any) -> dict[str, Any]:
        """Driver-side work before launch (e.g. category dictionaries); merged into the spec."""
        return {}

    def _finish_fit(self, booster: Any, out: dict[str, Any], spec: dict[str, Any]) -> None:
        """Driver-side work on the returned booster (e.g. restoring categories)."""

    def _predictor(self, booster: Any, features: list[str]) -> BatchPredictor:
        """A picklable batch predictor over the trained model."""
        raise NotImplementedError

    def _load_file(self, path: str) -> Any:
        """A booster read from a model file the framework wrote."""
        raise NotImplementedError

    def _save_file(self, booster: Any, path: str) -> None:
        """Write the booster in the framework's own format."""
        booster.save_model(path)

    def _feature_names(self, booster: Any) -> list[str]:
        """The booster's feature names, for ``predict`` after ``load_model``."""
        return []

    # -- the shared shape -------------------------------------------------------------------

    def _distributor(self, verbose: bool | None = None) -> Distributor:
        distributor = Distributor(
            self.scaling_config.to_scaling_config(),
            self.failure_config,
            verbose=self.verbose if verbose is None else bool(verbose),
        )
        distributor.name = self.framework
        distributor.backend = self._backend()
        return distributor

    def fit(
        self,
        dataset: Any,
        input_cols: Sequence[str] | None,
        label_col: str,
        eval_set: Any = None,
        verbose_eval: bool | None = None,
        weight_col: str | None = None,
    ) -> Any:
        """Train on every worker and return rank 0's booster (the framework's own object).

        Args:
            dataset: A DataConnector, pandas/polars/Arrow frame, DuckDB relation or source.
            input_cols: Feature columns (``None``: all but label and weight).
            label_col: The label column.
            eval_set: Data to evaluate on each round (same columns), reported as ``"eval"``.
            verbose_eval: Show the rounds' progress (default: the estimator's ``verbose``).
            weight_col: Optional sample-weight column.

        Raises:
            ColumnError: Unknown or non-numeric columns, or a label missing from ``eval_set``.
            DataError: Null labels.
            ConfigError: Parameters the framework rejects (reported by rank 0), or more
                workers than rows.
            ResourceError: A scaling request the cluster cannot meet.
            WorkerError: The framework failed on a worker (its own message is included).
        """
        train = as_connector(dataset, "dataset")
        categorical = self.allow_categorical
        # Null labels are counted here only where that reads nothing (in-memory frames); the
        # workers count them in their own shards before training (run_trainer).
        features = check_training_columns(
            train,
            input_cols,
            label_col,
            weight_col,
            allow_categorical=categorical,
            check_null_labels="known",
        )
        datasets: dict[str, DataConnector] = {"train": ShardedDataConnector(train, equal=False)}
        evals, eval_weight = None, None
        if eval_set is not None:
            evals = as_connector(eval_set, "eval_set")
            eval_weight = weight_col if weight_col in evals.columns else None
            check_training_columns(
                evals,
                features,
                label_col,
                eval_weight,
                what="eval_set",
                allow_categorical=categorical,
                check_null_labels="known",
            )
        params = self._train_params()
        distributor = self._distributor(verbose_eval)
        spec: dict[str, Any] = {
            "params": params,
            "features": features,
            "label": label_col,
            "weight": weight_col,
            "eval_weight": eval_weight,
            "rounds": self.n_estimators,
            "callbacks": self.callbacks,
            "checkpoint_every": (
                self.checkpoint_frequency if self.failure_config.max_failures != 0 else 0
            ),
        }
        spec.update(self._prepare(train, features, distributor.resolve()))
        if evals is not None:  # sharded, or whole on every rank (a plain connector)
            datasets["eval"] = (
                ShardedDataConnector(evals, equal=False) if self.shard_eval else evals
            )
        trainer = self._trainer()
        sent = defer_framework_values(spec, getattr(trainer, "framework_module", None))
        result = self._run(distributor, partial(run_trainer, trainer, sent), datasets)
        out = result.return_values[0]
        booster = trainer.load(out["model"])
        self._finish_fit(booster, out, spec)
        self._booster, self._evals_result = booster, out["evals_result"]
        self._features = features
        self.last_result = result
        return booster

    def _run(
        self, distributor: Distributor, fn: Callable[[], Any], datasets: dict[str, Any]
    ) -> Result:
        try:
            return distributor.run(fn, dataset_map=datasets, progress_total=self.n_estimators)
        except WorkerError as err:
            rejected = [
                f.exception
                for f in err.failures
                if isinstance(f.exception, (ConfigError, DataError))
            ]
            if rejected:  # the framework refused the parameters, or the data has null labels:
                raise rejected[0] from err  # say so, not "a worker failed"
            raise

    def get_booster(self) -> Any:
        """The trained booster.

        Raises:
            MLRuntimeError: Before ``fit`` or ``load_model``.
        """
        if self._booster is None:
            raise MLRuntimeError("the estimator is not fitted; call fit() or load_model() first")
        return self._booster

    def get_eval_results(self) -> EvalHistory:
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
            MLRuntimeError: Before ``fit`` or ``load_model``.
        """
        booster = self.get_booster()
        data = as_connector(dataset, "dataset")
        if input_cols is not None:
            features = list(input_cols)
        else:
            features = self._features or self._feature_names(booster)
        check_training_columns(
            data, features, None, what="dataset", allow_categorical=self.allow_categorical
        )
        predictor = self._predictor(booster, features)
        if sink is None:
            parts = [predictor(t) for t in data.iter_tables(columns=features)]
            return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
        return score_to_sink(
            self._distributor().run,
            data,
            predictor,
            features,
            sink,
            key_cols=key_cols,
            output_col=output_col,
        )

    def save_model(self, path: str | os.PathLike[str]) -> None:
        """Save the booster in the framework's own (non-executable) model format.

        Raises:
            MLRuntimeError: Before ``fit`` or ``load_model``.
        """
        self._save_file(self.get_booster(), os.fspath(path))

    def load_model(self, path: str | os.PathLike[str]) -> Any:
        """Load a booster saved by the framework into this estimator and return it.

        Raises:
            FileNotFoundError: If the file does not exist.
        """
        if not Path(path).exists():
            raise FileNotFoundError(f"model file {os.fspath(path)!r} does not exist")
        booster = self._load_file(os.fspath(path))
        self._booster = booster
        self._features = self._feature_names(booster) or None
        return booster
