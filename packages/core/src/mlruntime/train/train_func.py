"""Distributors of a user's ``train_func``: the shape the PyTorch and TensorFlow plugins share.

A framework plugin subclasses :class:`TrainFuncDistributor`, sets its ``backend`` (how the
framework's processes join) and its scaling-config type; core does the rest.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from mlruntime.errors import ConfigError
from mlruntime.runtime.context import get_context
from mlruntime.runtime.distributor import Distributor, Result
from mlruntime.runtime.scaling import FailureConfig, NodeScalingConfig

__all__ = ["TrainFuncDistributor"]


class TrainFuncDistributor(Distributor):
    """Runs ``train_func`` on every worker of a Ray cluster and returns rank 0's report.

    Inside ``train_func``, ``get_context()`` answers ranks, this rank's datasets,
    hyper-parameters, the model folder and the checkpoint to resume from.

    Args:
        train_func: A function of no arguments, or of one: the hyper-parameters dict.
        scaling_config: Nodes, workers per node and their resources (default: auto), of the
            subclass's ``scaling_config_type``.
        failure_config: Restarts from the last checkpoint when a worker dies.
        verbose: Print phases, rank 0's metrics and a timing summary.

    Raises:
        ConfigError: If ``train_func`` is not callable or a config has the wrong type.
    """

    scaling_config_type: ClassVar[type[NodeScalingConfig]] = NodeScalingConfig

    def __init__(
        self,
        train_func: Callable[..., Any],
        scaling_config: NodeScalingConfig | None = None,
        failure_config: FailureConfig | None = None,
        *,
        verbose: bool = True,
    ) -> None:
        if not callable(train_func):
            raise ConfigError(f"train_func must be callable, got {type(train_func).__name__}")
        wanted = self.scaling_config_type
        if scaling_config is not None and not isinstance(scaling_config, wanted):
            raise ConfigError(
                f"scaling_config must be a {wanted.__name__}, got {type(scaling_config).__name__}"
            )
        super().__init__(scaling_config or wanted(), failure_config, verbose=verbose)
        self.train_func = train_func

    def run(
        self,
        train_func: Callable[..., Any] | None = None,
        *,
        dataset_map: dict[str, Any] | None = None,
        hyper_params: dict[str, Any] | None = None,
        artifact_location: str | os.PathLike[str] | None = None,
        artifact_stage_location: str | os.PathLike[str] | None = None,
        equal_shards: bool = True,
        on_metrics: Callable[[dict[str, Any]], None] | None = None,
        progress_total: int | None = None,
        pip: Sequence[str] | None = None,
    ) -> Result:
        """Run ``train_func`` on every worker and return rank 0's report.

        Args:
            train_func: Run this instead of the function given to the constructor.
            dataset_map: Name -> DataConnector; each rank gets its own shard (equal-sized by
                default so ranks take the same number of steps), read straight from storage on
                the worker. A ShardedDataConnector is passed as is.
            hyper_params: Values ``get_context().get_hyper_params()`` returns, types kept.
            artifact_location: Folder for the run's model dir and checkpoints, a path or any
                storage URI such as ``s3://bucket/runs/x`` (default: a new folder under the
                storage's ``runs/``). Multi-node jobs need storage every node reaches.
            artifact_stage_location: Snowflake's name for ``artifact_location``; give one
                or the other.
            equal_shards: Give every rank the same number of rows (the remainder is dropped).
            on_metrics: Also called with every metrics dict rank 0 reports.
            progress_total: Reports expected (e.g. epochs), for the progress bar.
            pip: Extra requirements installed on this job's workers (on top of
                ``mlruntime.init(pip=...)``); see docs/environments.md.

        Returns:
            A Result: ``get_metrics()`` (rank 0's last report), ``get_metrics_history()``,
            ``get_model_dir()``, ``get_checkpoint_location()``, ``get_checkpoint()``, and
            ``return_values`` (what ``train_func`` returned on each rank).

        Raises:
            ConfigError: ``train_func`` not picklable, ``dataset_map`` values that are not
                DataConnectors, both ``artifact_location`` and ``artifact_stage_location``
                — before any worker starts.
            ResourceError: A scaling request the cluster cannot meet.
            WorkerError: Ranks failed (every rank's error and traceback), after the allowed
                restarts.
        """
        return super().run(
            _CallTrainFunc(train_func or self.train_func),
            dataset_map=dataset_map,
            hyper_params=dict(hyper_params or {}),
            artifact_location=artifact_location,
            artifact_stage_location=artifact_stage_location,
            equal_shards=equal_shards,
            on_metrics=on_metrics,
            progress_total=progress_total,
            pip=pip,
        )


class _CallTrainFunc:
    """Calls the user's function, with the hyper-parameters when it takes an argument."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "train_func")
        try:
            self.wants_config = bool(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            self.wants_config = False

    def __call__(self) -> Any:
        if self.wants_config:
            return self.fn(get_context().get_hyper_params())
        return self.fn()
