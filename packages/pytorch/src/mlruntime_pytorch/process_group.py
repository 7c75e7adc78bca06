"""A user's own ``dist.init_process_group()`` / ``destroy_process_group()`` in ``train_func``.

Snowflake's samples set up the default process group themselves, but the plugin already did:
while ``train_func`` runs, asking for that same group is a no-op, for another a clear error.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from mlruntime.errors import ConfigError

__all__ = ["install", "uninstall"]

logger = logging.getLogger(__name__)

_saved: list[tuple[Any, str, Callable[..., Any]]] = []
"""(module, name, original) of every function replaced while ``train_func`` runs."""

_original: dict[str, Callable[..., Any]] = {}


def install() -> None:
    """Replace ``init_process_group`` and ``destroy_process_group`` of ``torch.distributed``
    (and of ``torch.distributed.distributed_c10d``, where they live) in this process, once
    the default process group is set up. Undo with :func:`uninstall`."""
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    if _saved:  # already installed
        return
    _original["init_process_group"] = c10d.init_process_group
    _original["destroy_process_group"] = c10d.destroy_process_group
    replacements = {
        "init_process_group": init_process_group,
        "destroy_process_group": destroy_process_group,
    }
    for module in (dist, c10d):
        for name, replacement in replacements.items():
            _saved.append((module, name, getattr(module, name)))
            setattr(module, name, replacement)


def uninstall() -> None:
    """Put torch's own functions back (safe to call when nothing is installed)."""
    while _saved:
        module, name, original = _saved.pop()
        setattr(module, name, original)
    _original.clear()


def init_process_group(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``torch.distributed.init_process_group`` while ``train_func`` runs.

    The default process group of the job already exists. A request that matches it (the same
    backend or none, and ``rank`` / ``world_size`` left out or equal to this worker's) returns
    without doing anything; ``init_method``, ``timeout`` and ``store`` are not used, since the
    group has already met. Without a default group (nothing set one up) torch's own function runs.

    Raises:
        ConfigError: If the request contradicts the existing group: another ``world_size`` or
            ``rank``, or another backend (``"nccl"`` on a worker without a usable GPU).
        TypeError: For arguments torch's ``init_process_group`` does not take.
    """
    import torch.distributed as dist

    original = _original.get("init_process_group")
    if original is None:  # called after uninstall through a saved reference
        import torch.distributed.distributed_c10d as c10d

        original = c10d.init_process_group
    if not dist.is_initialized():
        original(*args, **kwargs)
        return
    asked = inspect.signature(original).bind(*args, **kwargs).arguments
    backend = str(dist.get_backend())
    world, rank = dist.get_world_size(), dist.get_rank()
    problems = []
    wanted_backend = asked.get("backend")
    if wanted_backend is not None and not _backends(wanted_backend) <= _backends(backend):
        problem = f"backend={str(wanted_backend)!r}"
        if "nccl" in _backends(wanted_backend) and "nccl" not in _backends(backend):
            problem += " needs a CUDA GPU, which this worker does not have"
        problems.append(problem)
    for name, have in (("world_size", world), ("rank", rank)):
        value = asked.get(name, -1)
        if value is not None and value != -1 and value != have:
            problems.append(f"{name}={value!r}")
    if problems:
        raise ConfigError(
            f"dist.init_process_group({', '.join(problems)}) inside train_func: mlruntime "
            f"already set up this job's default process group (backend={backend!r}, "
            f"world_size={world}, rank={rank}); call dist.init_process_group() with no "
            "arguments, or pass backend=get_context().get_default_backend(), "
            "world_size=get_context().get_world_size() and rank=get_context().get_rank()"
        )
    logger.debug("init_process_group(%s): the job's default process group is already set up", asked)


def destroy_process_group(group: Any = None) -> None:
    """Stands in for ``torch.distributed.destroy_process_group`` while ``train_func`` runs:
    the default group is left for mlruntime to destroy after ``train_func`` returns (the
    worker may serve the next job); any other group is destroyed as torch does."""
    import torch.distributed.distributed_c10d as c10d

    if group is None or group is c10d.GroupMember.WORLD:
        logger.debug("destroy_process_group(): mlruntime destroys the default group itself")
        return
    original = _original.get("destroy_process_group", c10d.destroy_process_group)
    original(group)


def _backends(spec: Any) -> set[str]:
    """``"nccl"`` -> {"nccl"}; ``"cpu:gloo,cuda:nccl"`` -> {"gloo", "nccl"}."""
    return {part.split(":")[-1].strip().lower() for part in str(spec).split(",") if part.strip()}
