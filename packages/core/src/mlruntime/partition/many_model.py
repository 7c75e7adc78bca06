"""Many-model training and inference: one model per partition, on :class:`DPF`.

``ManyModelTraining(train_func).run(...)`` saves what ``train_func`` returns as each
partition's model (through a :class:`~mlruntime.partition.serde.ModelSerde`, pickle by
default); ``run.get_model(partition_id)`` loads one. ``ManyModelInference(func,
training_run_id=...)`` hands each partition's model to ``func(data, model, context)``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

from mlruntime.errors import ConfigError, RunNotFoundError
from mlruntime.partition.context import ArtifactManager, PartitionContext
from mlruntime.partition.dpf import DPF
from mlruntime.partition.layout import RunFolder, find_run
from mlruntime.partition.run import DPFRun, _Monitor
from mlruntime.partition.serde import ModelSerde, PickleSerde

__all__ = ["ManyModelInference", "ManyModelRun", "ManyModelTraining"]

SERDE_FILE = "serde.pkl"
"""The training run's serde, kept in its folder so restored runs and inference load models."""


class _TrainAndSave:
    """Calls the user's training function and saves its model (picklable for Ray)."""

    def __init__(self, train_func: Callable[[Any, Any], Any], serde: ModelSerde) -> None:
        self.train_func = train_func
        self.serde = serde

    def __call__(self, data_connector: Any, context: PartitionContext) -> None:
        model = self.train_func(data_connector, context)
        if model is None:
            raise ConfigError(
                f"the training function returned no model for partition {context.partition_id!r}"
            )
        context.upload(model, self.serde.filename, write_function=self.serde.write)


def _load_serde(folder: RunFolder) -> ModelSerde:
    import cloudpickle  # noqa: F401  (serdes defined in notebooks were saved by cloudpickle)

    data = folder.read_bytes(SERDE_FILE)
    return PickleSerde() if data is None else pickle.loads(data)


class ManyModelRun(DPFRun):
    """A many-model training run: a :class:`DPFRun` that also loads the models."""

    def get_model(self, partition_id: Any) -> Any:
        """The model trained on partition ``partition_id``.

        Raises:
            FileNotFoundError: If that partition has no model (it failed, or does not exist).
        """
        serde = _load_serde(self._folder)
        return ArtifactManager(self._folder, str(partition_id)).get(
            serde.filename, read_function=serde.read
        )


class ManyModelTraining(DPF):
    """Train one model per partition: ``train_func(data_connector, context)`` returns it.

    Args:
        train_func: Trains and returns a model for one partition.
        storage_prefix: Where runs are kept (see :class:`DPF`); Snowflake's stage name.
        serde: How models are saved (default :class:`PickleSerde`).
        stage_name: Snowflake's name of ``storage_prefix``.
        model_serde: Another name of ``serde``.

    Example:
        >>> def train(data_connector, context):
        ...     import xgboost as xgb
        ...     df = data_connector.to_pandas()
        ...     return xgb.XGBRegressor(n_estimators=10).fit(df[["X1", "X2"]], df["Y"])
        >>> run = ManyModelTraining(train).run("STORE", table, run_id="v1")  # doctest: +SKIP
        >>> run.wait(); run.get_model("42")  # doctest: +SKIP
    """

    kind = "many_model_training"

    def __init__(
        self,
        train_func: Callable[[Any, Any], Any],
        storage_prefix: str | os.PathLike[str] | None = None,
        serde: ModelSerde | None = None,
        *,
        stage_name: str | None = None,
        model_serde: ModelSerde | None = None,
    ) -> None:
        super().__init__(train_func, storage_prefix, stage_name=stage_name)
        if serde is not None and model_serde is not None:
            raise ConfigError("give serde or model_serde, not both")
        chosen = serde if serde is not None else model_serde
        if chosen is not None and not isinstance(chosen, ModelSerde):
            raise ConfigError(f"serde must be a ModelSerde, got {type(chosen).__name__}")
        self.serde: ModelSerde = chosen or PickleSerde()

    def _task_func(self) -> Callable[[Any, Any], Any]:
        return _TrainAndSave(self.func, self.serde)

    def _on_prepared(self, folder: RunFolder) -> None:
        import cloudpickle

        folder.write_bytes(SERDE_FILE, cloudpickle.dumps(self.serde))

    def _make_run(self, folder: RunFolder, monitor: _Monitor | None) -> DPFRun:
        return ManyModelRun(folder, monitor)

    @staticmethod
    def restore_from(run_id: str, stage_name: str | None = None) -> ManyModelRun:
        """A training run read back from the storage (Snowflake's name).

        Raises:
            RunNotFoundError: If there is no such run.
        """
        run = ManyModelRun.restore(run_id, stage_name)
        assert isinstance(run, ManyModelRun)
        return run


class _LoadAndInfer:
    """Loads the partition's model from the training run and calls the user's function."""

    def __init__(self, func: Callable[..., Any], training: RunFolder, serde: ModelSerde) -> None:
        self.func = func
        self.training = training
        self.serde = serde

    def __call__(self, data_connector: Any, context: PartitionContext) -> Any:
        models = ArtifactManager(self.training, context.partition_id)
        try:
            model = models.get(self.serde.filename, read_function=self.serde.read)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"training run at {self.training.uri} has no model for partition "
                f"{context.partition_id!r}"
            ) from exc
        return self.func(data_connector, model, context)


class ManyModelInference(DPF):
    """Run ``inference_func(data_connector, model, context)`` on every partition with the model
    a :class:`ManyModelTraining` run trained on the same partition.

    Args:
        inference_func: Scores one partition (upload results with ``context.upload`` or write
            them with ``context.with_session``).
        storage_prefix: Where inference runs are kept (see :class:`DPF`).
        training_run_id: The training run whose models to use.
        serde: How the models were saved (default: the training run's).
        stage_name: Snowflake's name of ``storage_prefix``.
        training_storage_prefix: Where the training run is (default: found by its id).

    Raises:
        RunNotFoundError: If the training run is not on the storage.
    """

    kind = "many_model_inference"

    def __init__(
        self,
        inference_func: Callable[[Any, Any, Any], Any],
        storage_prefix: str | os.PathLike[str] | None = None,
        training_run_id: str | None = None,
        serde: ModelSerde | None = None,
        *,
        stage_name: str | None = None,
        training_storage_prefix: str | os.PathLike[str] | None = None,
    ) -> None:
        if not callable(inference_func):
            raise ConfigError(f"inference_func must be callable, got {inference_func!r}")
        super().__init__(inference_func, storage_prefix, stage_name=stage_name)
        if not isinstance(training_run_id, str) or not training_run_id:
            raise ConfigError("ManyModelInference needs training_run_id (a training run's id)")
        prefix = training_storage_prefix if training_storage_prefix is not None else None
        uri = find_run(training_run_id, prefix)
        if uri is None and prefix is None and self.storage_prefix is not None:
            uri = find_run(training_run_id, self.storage_prefix)
        if uri is None:
            raise RunNotFoundError(f"no training run {training_run_id!r} on the storage")
        self.training = RunFolder(uri)
        self.serde = serde if serde is not None else _load_serde(self.training)

    def _task_func(self) -> Callable[[Any, Any], Any]:
        return _LoadAndInfer(self.func, self.training, self.serde)
