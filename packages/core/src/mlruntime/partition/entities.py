"""The vocabulary of partition runs: run and partition statuses, and how a run executes.

Names and values follow Snowflake's ``distributed_partition_function.entities``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from mlruntime.errors import ConfigError

__all__ = ["ON_EXISTING", "ExecutionOptions", "PartitionStatus", "RunStatus"]

ON_EXISTING = ("error", "overwrite", "resume")
"""What ``run`` does when the run id already has a folder: fail, start again, or finish it."""


class RunStatus(str, Enum):
    """The outcome of a whole run (compares equal to its name: ``status == "SUCCESS"``)."""

    SUCCESS = "SUCCESS"
    """Every partition finished."""
    PARTIAL_FAILURE = "PARTIAL_FAILURE"
    """Some partitions finished, at least one did not."""
    FAILURE = "FAILURE"
    """No partition finished."""
    CANCELLED = "CANCELLED"
    """The run was cancelled (by ``cancel()`` or ``fail_fast``)."""
    IN_PROGRESS = "IN_PROGRESS"
    """Some partitions are still pending or running."""

    def __str__(self) -> str:
        return f"RunStatus.{self.name}"


class PartitionStatus(str, Enum):
    """The state of one partition (compares equal to its name: ``status == "DONE"``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    """The function raised on every attempt; the record keeps the last traceback."""
    CANCELLED = "CANCELLED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    """The worker process died (out of memory, a crash in native code) or mlruntime failed."""

    def __str__(self) -> str:
        return f"PartitionStatus.{self.name}"


FINAL = frozenset(
    {
        PartitionStatus.DONE,
        PartitionStatus.FAILED,
        PartitionStatus.CANCELLED,
        PartitionStatus.INTERNAL_ERROR,
    }
)
"""Statuses a partition does not leave within one run."""


@dataclass
class ExecutionOptions:
    """How a partition run executes.

    Args:
        use_head_node: Run partitions on the head node too. ``False`` keeps them on the other
            nodes (a cluster of one node then fails with :class:`~mlruntime.errors.ConfigError`).
        num_cpus_per_worker: CPUs each task reserves (default 1: one task per CPU).
        num_gpus_per_worker: GPUs each task reserves (default 0).
        fail_fast: Cancel the run as soon as one partition fails for good.
        max_retries: Times a partition whose function raised is tried again (default 1).
        retry_delay_s: Wait before the first retry, doubled for each next one (default 0).
        max_partitions_per_task: Most partitions one Ray task processes (``None``: mlruntime
            batches small partitions so that a task holds enough work; ``1``: one task each).

    Raises:
        ConfigError: For negative resources or retries.
    """

    use_head_node: bool = True
    num_cpus_per_worker: float | None = None
    num_gpus_per_worker: float | None = None
    fail_fast: bool = False
    max_retries: int = 1
    retry_delay_s: float = 0.0
    max_partitions_per_task: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_cpus_per_worker", "num_gpus_per_worker"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 0):
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ConfigError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if self.retry_delay_s < 0:
            raise ConfigError(f"retry_delay_s must be >= 0, got {self.retry_delay_s!r}")
        if self.max_partitions_per_task is not None and self.max_partitions_per_task < 1:
            raise ConfigError(
                "max_partitions_per_task must be >= 1 or None, got "
                f"{self.max_partitions_per_task!r}"
            )

    @property
    def cpus(self) -> float:
        """CPUs per task (1 unless set)."""
        return 1.0 if self.num_cpus_per_worker is None else float(self.num_cpus_per_worker)

    @property
    def gpus(self) -> float:
        """GPUs per task (0 unless set)."""
        return 0.0 if self.num_gpus_per_worker is None else float(self.num_gpus_per_worker)

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-serialisable dict."""
        return asdict(self)
