"""Imported by the embedded Ray's idle worker processes when they preload Ray Tune
(``mlruntime.init(preload=["ray.tune", ...])``): what a tuning trial's first moments import
besides Ray Tune itself, so a run's first trials start on a warm process.

- ``pydantic.v1.fields``: Ray imports it for its serializers the first time the process
  deserializes an object reference (the trial's parameters);
- the trial's side of ``mlruntime.tune`` and of the staged datasets it reads.

Nothing here runs at import beyond those imports.
"""

from __future__ import annotations

import contextlib

with contextlib.suppress(ImportError):  # Ray registers serializers for it when installed
    import pydantic.v1.fields  # noqa: F401

import mlruntime.runtime.scaling  # resources_held_elsewhere, in every trial
import mlruntime.runtime.staging  # the staged datasets' fragments
import mlruntime.tune.tuner  # noqa: F401  (the three bind one name, mlruntime)
