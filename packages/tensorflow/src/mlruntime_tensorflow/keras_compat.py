"""Makes Keras 3's ``model.fit`` work under ``tf.distribute.MultiWorkerMirroredStrategy``.

Keras 3 (TensorFlow backend, 3.0 through at least 3.15) fails there in two places
(keras-team/keras#20585): ``_maybe_symbolic_build`` eagerly all-reduces a per-replica *data
batch* only to learn its shapes, which multi-worker collectives cannot do outside a
``tf.function``; and ``reduce_per_replica`` averages scalar metrics with ``axis=0``. The shim
takes the local replica's batch for the shapes and reduces scalars with ``axis=None``; nothing
else changes. It is applied on every worker of a ``TensorFlowDistributor`` job, once per process.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["patch_keras_multi_worker"]

_patched = False


def patch_keras_multi_worker() -> bool:
    """Apply the shim if Keras 3 with the TensorFlow backend is installed and has the bug.

    Returns:
        Whether the shim is in place (``False`` where Keras is absent, another backend is used
        or Keras' internals no longer look as expected — then nothing is touched).
    """
    global _patched
    if _patched:
        return True
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return False
    try:
        import tensorflow as tf
        from keras.src import tree
        from keras.src.backend.tensorflow import trainer
    except ImportError:
        return False
    cls = getattr(trainer, "TensorFlowTrainer", None)
    original_reduce = getattr(trainer, "reduce_per_replica", None)
    multi_worker = getattr(trainer, "_collective_all_reduce_multi_worker", None)
    if cls is None or original_reduce is None or multi_worker is None:
        return False
    if not hasattr(cls, "_maybe_symbolic_build") or not hasattr(cls, "_symbolic_build"):
        return False

    def local_value(value: Any, strategy: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if self._distribute_strategy is None:
            return
        strategy = self.distribute_strategy
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(lambda v: local_value(v, strategy), batch)
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and multi_worker(strategy):

            def mean(value: Any) -> Any:
                rank = len(local_value(value, strategy).shape)
                return strategy.reduce("MEAN", value, axis=0 if rank else None)

            return tree.map_structure(mean, values)
        return original_reduce(values, strategy, reduction)

    cls._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    _patched = True
    return True
