"""TensorFlowDistributor: run a ``train_func`` on every worker with ``TF_CONFIG`` set, so
``tf.distribute.MultiWorkerMirroredStrategy`` forms one cluster of the job's workers.

Core owns launch, sharding, restarts and the context; this module only says how TensorFlow
joins: a free port on every worker's node, the cluster spec in ``TF_CONFIG``, and thread limits.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mlruntime.runtime.context import Context, RankInfo
from mlruntime.runtime.distributor import Backend
from mlruntime.runtime.scaling import NodeScalingConfig, WorkerResourceConfig
from mlruntime.runtime.workers import WorkerGroup
from mlruntime.train.train_func import TrainFuncDistributor

__all__ = ["TFScalingConfig", "TensorFlowBackend", "TensorFlowDistributor", "WorkerResourceConfig"]


class TFScalingConfig(NodeScalingConfig):
    """The shape of a TensorFlow job: ``num_nodes``, ``num_workers_per_node`` and
    ``resource_requirements_per_worker``, each ``-1``/``None`` for auto (one worker per GPU,
    else one per node). Fields, auto rules and errors: :class:`mlruntime.NodeScalingConfig`.
    """


class TensorFlowBackend(Backend):
    """``TF_CONFIG`` with a free port per worker; TensorFlow's thread pools sized to the CPUs."""

    name = "tensorflow"
    binds_all_interfaces = True  # its listeners take no address: narrowed in local jobs
    reuse_workers = False  # a process cannot configure TF's collectives for a second cluster

    def driver_setup(self, group: WorkerGroup) -> dict[str, Any]:
        """Ask every worker for a free port on its node (loopback when the job runs on one
        machine); the list is the cluster spec."""
        ports = group.free_ports()
        hosts = [f"{r.node_ip}:{p}" for r, p in zip(group.ranks, ports, strict=True)]
        return {"workers": hosts}

    def worker_env(self, rank: RankInfo, master_addr: str, master_port: int) -> dict[str, str]:
        """Thread pools of TensorFlow sized to the worker's CPUs (set before TF is imported)."""
        threads = os.environ.get("OMP_NUM_THREADS", "1")
        return {
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": "2",
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }

    def setup(self, context: Context) -> None:
        """Set ``TF_CONFIG`` for this rank (every worker's address and this task's index) and
        make Keras 3's ``fit`` work across workers (:mod:`mlruntime_tensorflow.keras_compat`)."""
        from mlruntime_tensorflow.keras_compat import patch_keras_multi_worker

        spec = {
            "cluster": {"worker": list(context.backend_info["workers"])},
            "task": {"type": "worker", "index": context.get_rank()},
        }
        os.environ["TF_CONFIG"] = json.dumps(spec)
        patch_keras_multi_worker()

    def teardown(self, context: Context) -> None:
        """Remove ``TF_CONFIG``."""
        os.environ.pop("TF_CONFIG", None)


class TensorFlowDistributor(TrainFuncDistributor):
    """Run a TensorFlow/Keras ``train_func`` on every worker of a Ray cluster.

    On every rank ``TF_CONFIG`` names all workers and this one, so a
    ``tf.distribute.MultiWorkerMirroredStrategy()`` created in ``train_func`` forms the job's
    cluster; ``get_context()`` answers ranks, this rank's datasets (use
    ``to_tf_dataset``), hyper-parameters, the model folder and the checkpoint to resume from.
    ``run(dataset_map=..., hyper_params=..., artifact_location=...)`` (or Snowflake's
    ``artifact_stage_location=``) returns a Result (see
    :meth:`mlruntime.train_func.TrainFuncDistributor.run`). Each job starts fresh worker
    processes: TensorFlow's collectives cannot be configured twice in one process.

    Args:
        train_func: A function of no arguments (or of one: the hyper-parameters dict).
        scaling_config: Nodes, workers per node and their resources (default: auto).
        failure_config: Restarts from the last checkpoint when a worker dies.
        verbose: Print phases, rank 0's metrics and a timing summary.

    Raises:
        ConfigError: If ``train_func`` is not callable or the configs have the wrong type.

    Example:
        >>> def train_func():
        ...     strategy = tf.distribute.MultiWorkerMirroredStrategy()
        ...     data = get_context().get_dataset_map()["train"]
        ...     ds = data.to_tf_dataset(batch_size=64, label_cols="y")
        ...     with strategy.scope():
        ...         model = make_model()
        ...     model.fit(ds, epochs=3)
        >>> TensorFlowDistributor(train_func).run(dataset_map={"train": dc})
    """

    name = "tensorflow"
    backend = TensorFlowBackend()
    scaling_config_type = TFScalingConfig
