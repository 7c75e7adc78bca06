"""Exceptions raised by mlruntime.

Every error derives from :class:`MLRuntimeError` and from the builtin it refines, so callers can
catch either ``mlruntime.errors.ConfigError`` or a plain ``ValueError``.
"""

from __future__ import annotations

__all__ = [
    "ColumnError",
    "ConfigError",
    "DataError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "MLRuntimeError",
    "NotInWorkerError",
    "PluginError",
    "PluginNotFoundError",
    "PluginWarning",
    "QueryError",
    "ResourceError",
    "RunExistsError",
    "RunNotFoundError",
    "SourceError",
    "TableNotFoundError",
    "WorkerError",
]


class MLRuntimeError(Exception):
    """Base class of every error mlruntime raises on purpose."""


class ConfigError(MLRuntimeError, ValueError):
    """An argument or configuration value is invalid (bad batch size, bad scaling request, ...)."""


class ColumnError(ConfigError, KeyError):
    """A column named by the user is not in the data, or has a type the operation cannot use."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class DataError(MLRuntimeError, ValueError):
    """The data itself is unusable: empty source, mixed schemas, nulls where none are allowed."""


class SourceError(MLRuntimeError, OSError):
    """A source cannot be found or read (missing path, corrupt Parquet, unreachable filesystem)."""


class DatasetNotFoundError(MLRuntimeError, LookupError):
    """A dataset name or version does not exist."""


class DatasetExistsError(MLRuntimeError, FileExistsError):
    """A dataset version (or sink target) already exists and the mode forbids replacing it."""


class TableNotFoundError(MLRuntimeError, LookupError):
    """A warehouse table does not exist."""


class QueryError(MLRuntimeError, ValueError):
    """A SQL query is invalid or failed in the warehouse."""


class RunExistsError(MLRuntimeError, FileExistsError):
    """A partition run id already has results and ``on_existing_artifacts="error"``."""


class RunNotFoundError(MLRuntimeError, LookupError):
    """No partition run of that id is on the storage."""


class ResourceError(ConfigError):
    """A scaling request cannot be met by the cluster (more GPUs than exist, zero workers, ...)."""


class PluginError(MLRuntimeError, RuntimeError):
    """A plugin is malformed or failed while being loaded or called."""


class PluginNotFoundError(PluginError, LookupError):
    """No installed plugin provides the requested adapter, distributor, source, sink or command."""


class PluginWarning(UserWarning):
    """A plugin was skipped (failed to import, incompatible API, raised in a hook) or conflicts."""


class WorkerError(MLRuntimeError, RuntimeError):
    """One or more distributed workers failed; carries every failed rank's error.

    Attributes:
        failures: One record per failed rank (rank, error type, message, traceback).
        attempts: With restarts, what happened in each attempt.
    """

    def __init__(self, message: str, failures: object = (), attempts: object = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)  # type: ignore[call-overload]
        self.attempts = list(attempts)  # type: ignore[call-overload]


class NotInWorkerError(MLRuntimeError, RuntimeError):
    """A worker-only API (such as ``get_context()``) was called outside a distributed worker."""
