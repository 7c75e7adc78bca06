"""LightGBMEstimator: data-parallel LightGBM on Ray over LightGBM's own socket network.

Each worker builds its ``lightgbm.Dataset`` from only its shard (one decoded copy); workers join
through ``machines`` / ``local_listen_port`` with ports found free on each node; LightGBM syncs
the bin boundaries across machines, so binning is consistent. Rank 0's booster comes back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa

from mlruntime.connector import DataConnector
from mlruntime.context import Checkpoint, Context, get_context
from mlruntime.distributor import Backend, Distributor
from mlruntime.errors import ConfigError, MLRuntimeError
from mlruntime.scaling import FailureConfig, ScalingConfig, WorkerResourceConfig
from mlruntime.training import (
    BatchPredictor,
    PeakMemory,
    as_connector,
    check_training_columns,
    is_categorical,
    score_to_sink,
    table_to_matrix,
)
from mlruntime.workers import WorkerGroup

__all__ = ["LightGBMEstimator", "LightGBMScalingConfig", "shard_matrix"]

PREDICT_BATCH_ROWS = 65_536
"""Rows scored at once."""

NETWORK_TIMEOUT_MINUTES = 10


@dataclass(frozen=True)
class LightGBMScalingConfig:
    """Workers of a LightGBM job.

    Args:
        num_workers: Workers (``-1``: one per GPU, else one per node).
        num_cpu_per_worker: CPUs (threads) per worker (``-1``: auto).
        use_gpu: ``None``: GPUs if the cluster has any (and the LightGBM build supports them);
            ``True``: require them.
    """

    num_workers: int = -1
    num_cpu_per_worker: float = -1
    use_gpu: bool | None = None

    def to_scaling_config(self) -> ScalingConfig:
        """The core ScalingConfig this maps onto."""
        gpus = None if self.use_gpu is None else (1.0 if self.use_gpu else 0.0)
        return ScalingConfig(
            num_workers=self.num_workers,
            resources_per_worker=WorkerResourceConfig(
                num_cpus=self.num_cpu_per_worker, num_gpus=gpus
            ),
            use_gpu=self.use_gpu,
        )


class _LightGBMBackend(Backend):
    """Finds a free port on every worker's node and hands each rank the machine list."""

    name = "lightgbm"

    def driver_setup(self, group: WorkerGroup) -> dict[str, Any]:
        import ray

        ports = ray.get([actor.free_port.remote() for actor in group.actors])
        machines = ",".join(f"{r.node_ip}:{p}" for r, p in zip(group.ranks, ports, strict=True))
        return {
            "machines": machines,
            "ports": ports,
            "use_gpu": group.scaling.use_gpu,
            "nthread": max(1, int(group.scaling.num_cpus)),
        }


class _LightGBMDistributor(Distributor):
    name = "lightgbm"
    backend = _LightGBMBackend()


def shard_matrix(
    connector: DataConnector,
    features: Sequence[str],
    label_col: str | None,
    weight_col: str | None = None,
    categories: dict[str, pa.Array] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read ``connector`` into one float32 matrix (preallocated, filled table by table), and
    the label and weight vectors. Categorical columns become codes of ``categories``."""
    n = connector.count_rows()
    x = np.empty((n, len(features)), dtype=np.float32)
    y = np.empty(n, dtype=np.float32) if label_col else None
    w = np.empty(n, dtype=np.float32) if weight_col else None
    extra = [c for c in (label_col, weight_col) if c]
    pos = 0
    for table in connector.iter_tables(columns=list(dict.fromkeys([*features, *extra]))):
        rows = table.num_rows
        x[pos : pos + rows] = table_to_matrix(table, features, categories=categories)
        if y is not None:
            y[pos : pos + rows] = table_to_matrix(table, [label_col])[:, 0]  # type: ignore[list-item]
        if w is not None:
            w[pos : pos + rows] = table_to_matrix(table, [weight_col])[:, 0]  # type: ignore[list-item]
        pos += rows
    return x, y, w


class _RoundReporter:
    """A LightGBM callback on rank 0: report each round, checkpoint every ``every`` rounds."""

    order = 30

    def __init__(self, ctx: Context, every: int, done: int, previous: dict[str, Any]) -> None:
        self.ctx, self.every, self.done, self.previous = ctx, every, done, previous
        self.history: dict[str, dict[str, list[float]]] = {}

    def __call__(self, env: Any) -> None:
        rounds = env.iteration + 1
        metrics: dict[str, Any] = {"round": rounds}
        for data_name, metric, value, _ in env.evaluation_result_list or []:
            metrics[f"{data_name}-{metric}"] = float(value)
            self.history.setdefault(data_name, {}).setdefault(metric, []).append(float(value))
        checkpoint = None
        if self.every and rounds % self.every == 0:
            checkpoint = Checkpoint.from_dict(
                {
                    "model": env.model.model_to_string(),
                    "rounds": rounds,
                    "evals_result": self.merged(),
                }
            )
        self.ctx.report(metrics, checkpoint=checkpoint)

    def merged(self) -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {}
        for source in (self.previous, self.history):
            for data_name, per_metric in source.items():
                for metric, values in per_metric.items():
                    out.setdefault(data_name, {}).setdefault(metric, []).extend(values)
        return out


def _train_on_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs on every rank: build the shard's Dataset, join the network, train."""
    ctx = get_context()
    memory = PeakMemory()
    info = ctx.backend_info
    world, rank = ctx.get_world_size(), ctx.get_rank()
    params = {"num_threads": info["nthread"], "verbose": -1, **spec["params"]}
    if world > 1:
        params.update(
            machines=info["machines"],
            local_listen_port=info["ports"][rank],
            num_machines=world,
            pre_partition=True,
            time_out=NETWORK_TIMEOUT_MINUTES,
        )
        params.setdefault("tree_learner", "data")
    if info["use_gpu"]:
        params.setdefault("device_type", "gpu")
    ctx.phase("loading data")
    categories = spec["categories"]
    features = spec["features"]
    cat_idx = [i for i, f in enumerate(features) if f in categories]
    x, y, w = shard_matrix(
        ctx.get_dataset_map()["train"], features, spec["label"], spec["weight"], categories
    )
    train_set = lgb.Dataset(
        x,
        label=y,
        weight=w,
        feature_name=list(features),
        categorical_feature=cat_idx or "auto",
        free_raw_data=True,
    )
    valid_sets, valid_names = [train_set], ["train"]
    if spec["eval"] is not None:  # the whole eval set on every rank: same metrics everywhere
        ex, ey, ew = shard_matrix(
            spec["eval"], features, spec["label"], spec["eval_weight"], categories
        )
        valid_sets.append(lgb.Dataset(ex, label=ey, weight=ew, reference=train_set))
        valid_names.append("eval")
    ctx.phase("training")
    init_model, done, previous = None, 0, {}
    checkpoint = ctx.get_checkpoint()
    if checkpoint is not None:
        state = checkpoint.to_dict()
        init_model = lgb.Booster(model_str=state["model"])
        done, previous = state["rounds"], state["evals_result"]
    reporter = _RoundReporter(ctx, spec["checkpoint_every"], done, previous)
    try:
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=spec["rounds"] - done,
            valid_sets=valid_sets,
            valid_names=valid_names,
            init_model=init_model,
            callbacks=[reporter, *spec["callbacks"]],
        )
    except lgb.basic.LightGBMError as exc:
        if world > 1:
            raise lgb.basic.LightGBMError(
                f"{exc} (network: machines={info['machines']}, rank {rank} listens on port "
                f"{info['ports'][rank]})"
            ) from exc
        raise
    out: dict[str, Any] = {
        "peak_memory_growth": memory.growth(),
        "device": params.get("device_type", "cpu"),
    }
    if rank == 0:
        out["model"] = booster.model_to_string()
        out["evals_result"] = reporter.merged()
        out["best_iteration"] = booster.best_iteration
    return out


class LightGBMEstimator:
    """Distributed LightGBM training and scoring.

    Args:
        n_estimators: Boosting rounds (``params["n_estimators"]`` / ``num_iterations``
            override it).
        objective: LightGBM objective (``params["objective"]`` overrides it).
        params: Other LightGBM parameters (``num_leaves``, ``learning_rate``,
            ``tree_learner`` = ``"data"`` or ``"voting"``, ``early_stopping_round`` ...).
        scaling_config: Workers and their resources (default: auto).
        callbacks: LightGBM callbacks run on every worker (e.g. ``lightgbm.early_stopping``).
        failure_config: Restarts from the last checkpoint when a worker dies.
        checkpoint_frequency: Rounds between checkpoints when restarts are allowed.
        verbose: Print phases, per-round metrics of rank 0 and a timing summary.
    """

    def __init__(
        self,
        n_estimators: int = 100,
        objective: str = "regression",
        params: dict[str, Any] | None = None,
        scaling_config: LightGBMScalingConfig | None = None,
        callbacks: Sequence[Any] | None = None,
        failure_config: FailureConfig | None = None,
        *,
        checkpoint_frequency: int = 10,
        verbose: bool = True,
    ) -> None:
        params = dict(params or {})
        rounds = params.pop("n_estimators", params.pop("num_iterations", n_estimators))
        self.n_estimators = int(rounds)
        self.objective = str(params.pop("objective", objective))
        if self.n_estimators <= 0:
            raise ConfigError(f"n_estimators must be positive, got {self.n_estimators}")
        if scaling_config is not None and not isinstance(scaling_config, LightGBMScalingConfig):
            raise ConfigError(
                "scaling_config must be a LightGBMScalingConfig, got "
                f"{type(scaling_config).__name__}"
            )
        self.params = params
        self.scaling_config = scaling_config or LightGBMScalingConfig()
        self.callbacks = list(callbacks or [])
        self.failure_config = failure_config or FailureConfig()
        self.checkpoint_frequency = int(checkpoint_frequency)
        self.verbose = verbose
        self._booster: Any = None
        self._evals_result: dict[str, Any] = {}
        self._features: list[str] | None = None
        self._categories: dict[str, pa.Array] = {}
        self.last_result: Any = None

    def _distributor(self) -> _LightGBMDistributor:
        return _LightGBMDistributor(
            self.scaling_config.to_scaling_config(), self.failure_config, verbose=self.verbose
        )

    def fit(
        self,
        dataset: Any,
        input_cols: Sequence[str] | None,
        label_col: str,
        eval_set: Any = None,
        verbose_eval: bool | None = None,
        weight_col: str | None = None,
    ) -> Any:
        """Train on every worker and return rank 0's ``lightgbm.Booster``.

        String and dictionary columns are categorical features: their categories are collected
        on the driver so every worker encodes them alike. The eval set is evaluated in full on
        every worker, so all ranks see the same metrics and early stopping stops them together.

        Raises:
            ColumnError: Unknown or non-numeric columns, a label missing from ``eval_set``.
            DataError: Null labels.
            ConfigError: Invalid LightGBM parameters, more workers than rows, or GPUs asked of
                a LightGBM build without GPU support.
            ResourceError: A scaling request the cluster cannot meet.
            WorkerError: LightGBM failed on a worker (its message and the network included).
        """
        train = as_connector(dataset, "dataset")
        features = check_training_columns(
            train, input_cols, label_col, weight_col, allow_categorical=True
        )
        schema = train.schema
        categories = {
            f: _categories(train, f) for f in features if is_categorical(schema.field(f).type)
        }
        evals, eval_weight = None, None
        if eval_set is not None:
            evals = as_connector(eval_set, "eval_set")
            eval_weight = weight_col if weight_col in evals.columns else None
            check_training_columns(
                evals, features, label_col, eval_weight, what="eval_set", allow_categorical=True
            )
        params = {**self.params, "objective": self.objective}
        _check_params(params)
        distributor = self._distributor()
        if verbose_eval is not None:
            distributor.verbose = bool(verbose_eval)
        if distributor.resolve().use_gpu:
            _check_gpu_support()
        spec = {
            "params": params,
            "features": features,
            "label": label_col,
            "weight": weight_col,
            "eval": evals,
            "eval_weight": eval_weight,
            "categories": categories,
            "rounds": self.n_estimators,
            "callbacks": self.callbacks,
            "checkpoint_every": (
                self.checkpoint_frequency if self.failure_config.max_failures != 0 else 0
            ),
        }
        from functools import partial

        result = distributor.launch(partial(_train_on_worker, spec), dataset_map={"train": train})
        out = result.return_values[0]
        self._booster = lgb.Booster(model_str=out["model"])
        self._booster.best_iteration = out["best_iteration"]
        self._booster.pandas_categorical = [categories[f].to_pylist() for f in categories] or None
        self._evals_result = out["evals_result"]
        self._features, self._categories = features, categories
        self.last_result = result
        return self._booster

    def get_booster(self) -> Any:
        """The trained ``lightgbm.Booster``.

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
        """Score data: a numpy array in this process, or with a Sink on every worker (all or
        nothing, with ``key_cols``).

        Raises:
            ColumnError: For missing feature or key columns.
        """
        booster = self.get_booster()
        data = as_connector(dataset, "dataset")
        features = (
            list(input_cols)
            if input_cols is not None
            else (self._features or booster.feature_name())
        )
        check_training_columns(data, features, None, what="dataset", allow_categorical=True)
        predictor = _Predictor(booster.model_to_string(), features, self._categories)
        if sink is None:
            parts = [predictor(t) for t in data.iter_tables(columns=features)]
            return np.concatenate(parts) if parts else np.empty(0)
        return score_to_sink(
            self._distributor().launch,
            data,
            predictor,
            features,
            sink,
            key_cols=key_cols,
            output_col=output_col,
        )

    def save_model(self, path: str | os.PathLike[str]) -> None:
        """Save the booster in LightGBM's text format (categories included)."""
        self.get_booster().save_model(os.fspath(path))

    def load_model(self, path: str | os.PathLike[str]) -> Any:
        """Load a LightGBM text model into this estimator.

        Raises:
            FileNotFoundError: If the file does not exist.
        """
        if not Path(path).exists():
            raise FileNotFoundError(f"model file {os.fspath(path)!r} does not exist")
        booster = lgb.Booster(model_file=os.fspath(path))
        self._booster = booster
        self._features = booster.feature_name()
        cats = booster.pandas_categorical or []
        categorical = _categorical_features(booster)
        self._categories = {f: pa.array(c) for f, c in zip(categorical, cats, strict=False)}
        return booster


def _categorical_features(booster: Any) -> list[str]:
    """Names of the booster's categorical features, in order (their feature info lists the
    category codes seen; numeric features list none)."""
    infos = booster.dump_model(num_iteration=0).get("feature_infos", {})
    return [name for name in booster.feature_name() if infos.get(name, {}).get("values")]


class _Predictor(BatchPredictor):
    """A picklable predict function over a LightGBM model string (loaded once per worker)."""

    def __init__(self, model: str, features: list[str], categories: dict[str, pa.Array]):
        super().__init__(features, batch_size=PREDICT_BATCH_ROWS, categories=categories)
        self.model_text = model

    def load(self) -> Any:
        return lgb.Booster(model_str=self.model_text)

    def forward(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x))


def _categories(connector: DataConnector, column: str) -> pa.Array:
    import pyarrow.compute as pc

    values = connector.select([column]).to_arrow().column(0)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    unique = pc.unique(values.combine_chunks()).drop_null()
    return unique.take(pc.array_sort_indices(unique))


def _tiny_train(params: dict[str, Any]) -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]], dtype=np.float32)
    y = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    probe = {k: v for k, v in params.items() if k not in ("num_threads", "machines")}
    lgb.train(
        {**probe, "verbose": -1, "num_threads": 1, "min_data_in_leaf": 1, "min_data_in_bin": 1},
        lgb.Dataset(x, label=y),
        num_boost_round=1,
    )


def _check_params(params: dict[str, Any]) -> None:
    """Validate parameters with one round on six rows, before any worker starts."""
    try:
        _tiny_train(params)
    except lgb.basic.LightGBMError as exc:
        raise ConfigError(f"invalid LightGBM parameters {params}: {exc}") from exc


def _check_gpu_support() -> None:
    try:
        _tiny_train({"objective": "regression", "device_type": "gpu"})
    except lgb.basic.LightGBMError as exc:
        raise ConfigError(
            f"the cluster has GPUs but this LightGBM build cannot use them ({exc}); install a "
            "GPU-enabled LightGBM build, or pass LightGBMScalingConfig(use_gpu=False)"
        ) from exc
