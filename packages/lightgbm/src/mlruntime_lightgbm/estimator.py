"""LightGBMEstimator: data-parallel LightGBM on Ray over LightGBM's own socket network.

Each worker builds its ``lightgbm.Dataset`` from only its shard (one decoded copy); workers join
through ``machines`` / ``local_listen_port`` with ports found free on each node; LightGBM syncs
the bin boundaries across machines, so binning is consistent. Rank 0's booster comes back.
Launch, reports, checkpoints and restarts come from core's
:class:`~mlruntime.train.gbdt.GBDTEstimator`; this module holds only what is LightGBM's. It
imports lightgbm only inside functions: a worker unpickling its job then starts reading its
shard before lightgbm loads (it imports scikit-learn and SciPy when they are installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mlruntime.data.batching import ReadAhead
from mlruntime.data.connector import DataConnector, resolve_worker_shard
from mlruntime.errors import ConfigError
from mlruntime.runtime.context import Context
from mlruntime.runtime.distributor import Backend
from mlruntime.runtime.workers import WorkerGroup
from mlruntime.train.features import is_categorical
from mlruntime.train.gbdt import GBDTBackend, GBDTEstimator, GBDTScalingConfig
from mlruntime.train.gbdt_worker import (
    GBDTTrainer,
    ResumeState,
    RoundReporter,
)
from mlruntime.train.inference import BatchPredictor
from mlruntime_lightgbm.adapter import categories_of, merge_categories, shard_matrix

__all__ = ["LightGBMEstimator", "LightGBMScalingConfig"]

PREDICT_BATCH_ROWS = 65_536
"""Rows scored at once."""

NETWORK_TIMEOUT_MINUTES = 10


@dataclass(frozen=True)
class LightGBMScalingConfig(GBDTScalingConfig):
    """Workers of a LightGBM job.

    Args:
        num_workers: Workers (``-1``: one per GPU, else one per node).
        num_cpu_per_worker: CPUs (threads) per worker (``-1``: auto).
        use_gpu: ``None``: GPUs if the cluster has any (and the LightGBM build supports them);
            ``True``: require them.
    """


class _LightGBMBackend(GBDTBackend):
    """Finds a free port on every worker's node and hands each rank the machine list."""

    name = "lightgbm"
    module = "lightgbm"

    def driver_setup(self, group: WorkerGroup) -> dict[str, Any]:
        ports = group.free_ports()  # on loopback when every rank runs on the driver's machine
        machines = ",".join(f"{r.node_ip}:{p}" for r, p in zip(group.ranks, ports, strict=True))
        return {
            "machines": machines,
            "ports": ports,
            "use_gpu": group.scaling.use_gpu,
            "nthread": max(1, int(group.scaling.num_cpus)),
        }


class _Reporter:
    """A LightGBM callback handing each round's metrics to core's RoundReporter."""

    order = 30

    def __init__(self, reporter: RoundReporter) -> None:
        self.reporter = reporter

    def __call__(self, env: Any) -> None:
        latest: dict[str, dict[str, float]] = {}
        for data_name, metric, value, _ in env.evaluation_result_list or []:
            latest.setdefault(data_name, {})[metric] = float(value)
        self.reporter.round(env.iteration + 1, latest, env.model.model_to_string)


class _LightGBMTrainer(GBDTTrainer):
    """Builds the shard's Dataset, joins the network, boosts."""

    framework = "LightGBM"
    framework_module = "lightgbm"

    def framework_errors(self) -> tuple[type[BaseException], ...]:
        import lightgbm as lgb

        return (lgb.basic.LightGBMError,)

    def read_ahead(self, ctx: Context, spec: dict[str, Any]) -> ReadAhead[Any] | None:
        if spec["categorical"]:  # their codes need every rank's categories first
            return None
        # this rank's shard resolved here, not in the reader thread
        train = resolve_worker_shard(ctx.get_dataset_map()["train"])
        features, label, weight = spec["features"], spec["label"], spec["weight"]
        matrix = (shard_matrix(train, features, label, weight) for _ in range(1))
        return ReadAhead(matrix, depth=1, name="mlruntime-read-ahead")

    def params(self, ctx: Context, spec: dict[str, Any]) -> dict[str, Any]:
        info, world = ctx.backend_info, ctx.get_world_size()
        params = {"num_threads": info["nthread"], "verbose": -1, **spec["params"]}
        if world > 1:
            params.update(
                machines=info["machines"],
                local_listen_port=info["ports"][ctx.get_rank()],
                num_machines=world,
                pre_partition=True,
                time_out=NETWORK_TIMEOUT_MINUTES,
            )
            params.setdefault("tree_learner", "data")
        if info["use_gpu"]:
            params.setdefault("device_type", "gpu")
        return params

    def build(
        self,
        ctx: Context,
        spec: dict[str, Any],
        params: dict[str, Any],
        ahead: ReadAhead[Any] | None = None,
    ) -> Any:
        import lightgbm as lgb

        features = spec["features"]
        data = ctx.get_dataset_map()
        train = data["train"]
        # Every rank lists its shard's categories; all ranks encode with their union.
        local = {f: categories_of(train, f) for f in spec["categorical"]}
        categories = merge_categories(ctx.allgather(local), spec["categorical"])
        self.categories = categories
        cat_idx = [i for i, f in enumerate(features) if f in categories]
        if ahead is not None:  # read while lightgbm was imported (no categorical features)
            x, y, w = next(ahead)
        else:
            x, y, w = shard_matrix(train, features, spec["label"], spec["weight"], categories)
        train_set = lgb.Dataset(
            x,
            label=y,
            weight=w,
            feature_name=list(features),
            categorical_feature=cat_idx or "auto",
            free_raw_data=True,
        )
        valid = [(train_set, "train")]
        if "eval" in data:  # the whole eval set on every rank: same metrics everywhere
            ex, ey, ew = shard_matrix(
                data["eval"], features, spec["label"], spec["eval_weight"], categories
            )
            valid.append((lgb.Dataset(ex, label=ey, weight=ew, reference=train_set), "eval"))
        return valid

    def train(
        self,
        ctx: Context,
        spec: dict[str, Any],
        params: dict[str, Any],
        data: Any,
        resume: ResumeState,
        reporter: RoundReporter,
    ) -> Any:
        import lightgbm as lgb

        try:
            return lgb.train(
                params,
                data[0][0],
                num_boost_round=spec["rounds"] - resume.rounds,
                valid_sets=[d for d, _ in data],
                valid_names=[n for _, n in data],
                init_model=resume.model,
                callbacks=[_Reporter(reporter), *spec["callbacks"]],
            )
        except lgb.basic.LightGBMError as exc:
            if ctx.get_world_size() > 1 and "machines" in params:
                raise lgb.basic.LightGBMError(
                    f"{exc} (network: machines={params['machines']}, rank {ctx.get_rank()} "
                    f"listens on port {params['local_listen_port']})"
                ) from exc
            raise

    def load(self, payload: Any) -> Any:
        import lightgbm as lgb

        return lgb.Booster(model_str=payload)

    def dump(self, model: Any) -> Any:
        return model.model_to_string()

    def extra_result(self, model: Any, params: dict[str, Any]) -> dict[str, Any]:
        return {"best_iteration": model.best_iteration, "categories": self.categories}

    def device(self, params: dict[str, Any]) -> str:
        return str(params.get("device_type", "cpu"))


class LightGBMEstimator(GBDTEstimator):
    """Distributed LightGBM training and scoring.

    String and dictionary columns are categorical features: every worker lists the categories
    of its own shard and all encode with their union, so the driver reads no data. The eval
    set is evaluated in full on every worker, so all ranks see the same metrics and early
    stopping stops them together.

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
        verbose: Show a progress bar of rounds with rank 0's metrics, and a summary line.
    """

    framework = "lightgbm"
    default_objective = "regression"
    scaling_config_type = LightGBMScalingConfig
    round_aliases = ("n_estimators", "num_iterations")
    allow_categorical = True
    shard_eval = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._categories: dict[str, pa.Array] = {}

    def _trainer(self) -> GBDTTrainer:
        return _LightGBMTrainer()

    def _backend(self) -> Backend:
        return _LightGBMBackend()

    def _prepare(self, train: DataConnector, features: list[str], scaling: Any) -> dict[str, Any]:
        if scaling.use_gpu:
            _check_gpu_support()
        schema = train.schema
        return {"categorical": [f for f in features if is_categorical(schema.field(f).type)]}

    def _finish_fit(self, booster: Any, out: dict[str, Any], spec: dict[str, Any]) -> None:
        categories = out["categories"]
        booster.best_iteration = out["best_iteration"]
        booster.pandas_categorical = [categories[f].to_pylist() for f in categories] or None
        self._categories = categories

    def _predictor(self, booster: Any, features: list[str]) -> BatchPredictor:
        return _Predictor(booster.model_to_string(), features, self._categories)

    def _load_file(self, path: str) -> Any:
        import lightgbm as lgb

        booster = lgb.Booster(model_file=path)
        cats = booster.pandas_categorical or []
        names = _categorical_features(booster)
        self._categories = {f: pa.array(c) for f, c in zip(names, cats, strict=False)}
        return booster

    def _feature_names(self, booster: Any) -> list[str]:
        return list(booster.feature_name())


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
        import lightgbm as lgb

        return lgb.Booster(model_str=self.model_text)

    def forward(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x))


def _check_gpu_support() -> None:
    """Whether this LightGBM build can train on a GPU (a build capability, not the user's
    parameters: one round on six rows with ``device_type="gpu"``)."""
    import lightgbm as lgb

    x = np.arange(6, dtype=np.float32).reshape(-1, 1)
    y = np.array([0.0, 1.0] * 3, dtype=np.float32)
    params = {"device_type": "gpu", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 1}
    try:
        lgb.train({**params, "min_data_in_bin": 1}, lgb.Dataset(x, label=y), num_boost_round=1)
    except lgb.basic.LightGBMError as exc:
        raise ConfigError(
            f"the cluster has GPUs but this LightGBM build cannot use them ({exc}); install a "
            "GPU-enabled LightGBM build, or pass LightGBMScalingConfig(use_gpu=False)"
        ) from exc
