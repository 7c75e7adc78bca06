"""Imported by the embedded Ray's idle worker processes when they preload Ray Tune
(``mlruntime.init(preload=["ray.tune", ...])``): what a tuning trial's first moments import
besides Ray Tune itself, so a run's first trials start on a warm process.

- ``pydantic.v1.fields``: Ray imports it for its serializers the first time the process
  deserializes an object reference (the trial's parameters);
- the trial's side of ``mlruntime.tune`` and of the staged datasets it reads;

and, in a Ray worker process, builds the process's Ray serialization context, which Ray
otherwise builds when the process first deserializes an object reference: Tune's trial actor
class holds one (its parameters), so that was 3 ms of loading the class, at the start of a
run's first trials (measured: 7-9 ms -> 4-5 ms). Nothing else runs at import.
"""

from __future__ import annotations

import contextlib

with contextlib.suppress(ImportError):  # Ray registers serializers for it when installed
    import pydantic.v1.fields  # noqa: F401

import mlruntime.runtime.scaling  # resources_held_elsewhere, in every trial
import mlruntime.runtime.staging  # the staged datasets' fragments
import mlruntime.tune.tuner  # noqa: F401  (the three bind one name, mlruntime)


def _build_serialization_context() -> None:
    """Build this worker process's Ray serialization context (not in a driver; nothing if
    Ray is not connected or is laid out otherwise)."""
    try:
        from ray._private import worker

        process = worker.global_worker
        if process.mode == worker.WORKER_MODE and process.connected:
            process.get_serialization_context()
    except Exception:  # pragma: no cover - best effort: the first trial builds it instead
        pass


_build_serialization_context()
