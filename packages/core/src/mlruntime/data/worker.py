"""Which part of the data this process reads: its rank among the workers of a job.

The runtime layer sets it when it installs a worker's context; the data layer reads it (to pick
a shard) without importing the runtime. Outside a job it falls back to torchrun-style
``RANK`` / ``WORLD_SIZE`` environment variables.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["allgather", "current_rank", "set_allgather", "set_current_rank"]

_rank: tuple[int, int] | None = None
_allgather: Callable[[Any], list[Any]] | None = None


def set_current_rank(rank: int | None, world_size: int | None = None) -> None:
    """Record this process's ``rank`` of ``world_size`` (``None`` when it leaves a job)."""
    global _rank
    _rank = None if rank is None or world_size is None else (int(rank), int(world_size))


def current_rank(use_env: bool = True) -> tuple[int, int] | None:
    """``(rank, world_size)`` of this process in a job, or ``None`` outside one.

    Args:
        use_env: Also accept ``RANK`` and ``WORLD_SIZE`` from the environment.
    """
    if _rank is not None:
        return _rank
    if use_env and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def set_allgather(fn: Callable[[Any], list[Any]] | None) -> None:
    """Install the job's all-gather (the runtime's ``Context.allgather``), or remove it."""
    global _allgather
    _allgather = fn


def allgather(value: Any) -> list[Any]:
    """Every rank's ``value``, by rank, through the job this process is a worker of.

    Raises:
        NotInWorkerError: Outside a distributed job.
    """
    if _allgather is None:
        from mlruntime.errors import NotInWorkerError

        raise NotInWorkerError("allgather() needs a distributed job; this process is not in one")
    return _allgather(value)
