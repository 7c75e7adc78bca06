"""What a worker knows inside a distributed job: ranks, data, hyper-parameters, reporting.

``get_context()`` works inside a function a distributor runs (``train_func``); elsewhere it
raises :class:`~mlruntime.errors.NotInWorkerError`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlruntime.data.worker import set_allgather, set_current_rank
from mlruntime.errors import ConfigError, NotInWorkerError, WorkerError

__all__ = [
    "Checkpoint",
    "Context",
    "MetricsReporter",
    "RankInfo",
    "get_context",
    "prune_checkpoints",
    "stored_checkpoints",
]


class Checkpoint:
    """A snapshot to resume from: a directory or a dict of (picklable) state.

    Rank 0 writes a reported checkpoint into the job's storage itself (:meth:`publish`); the
    driver and a restarted worker on any node read it from there (:meth:`from_uri`).

    Example:
        >>> ckpt = Checkpoint.from_dict({"round": 3})
        >>> ckpt.to_dict()["round"]
        3
    """

    _kind = "dict"
    _stored_files: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        data: dict[str, Any] | None = None,
        archive: bytes | None = None,
        uri: str | None = None,
    ):
        self._data = data
        self._archive = archive
        self._uri = uri
        self.path: str | None = uri  # where it is stored in the job's storage, once stored

    @classmethod
    def from_uri(cls, uri: str) -> Checkpoint:
        """A checkpoint stored at ``uri`` (a folder :meth:`publish` wrote), read on first use,
        on whichever node asks: only the location travels.

        A dict checkpoint is stored with pickle (``state.pkl``), which runs code when read:
        load only checkpoints from storage you trust (your own jobs' run folders).

        Raises:
            ConfigError: If no complete checkpoint is stored there.
        """
        from mlruntime.store.storage import join, read_bytes

        try:
            meta = json.loads(read_bytes(join(uri, MARKER)))
        except FileNotFoundError as exc:
            raise ConfigError(f"no complete checkpoint at {uri}") from exc
        checkpoint = cls(uri=uri)
        checkpoint._kind = meta.get("kind", "dict")
        checkpoint._stored_files = tuple(meta.get("files", ()))
        return checkpoint

    def _files(self) -> dict[str, bytes]:
        """The stored form: ``state.pkl`` for a dict, else the directory's own files."""
        if self._archive is None:
            return {"state.pkl": pickle.dumps(self._data)}
        files = {}
        with tarfile.open(fileobj=io.BytesIO(self._archive), mode="r") as tar:
            for member in tar.getmembers():
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None:
                    files[member.name] = handle.read()
        return files

    def _load(self) -> None:
        """Read a stored checkpoint's content (once)."""
        if self._uri is None or self._data is not None or self._archive is not None:
            return
        from mlruntime.store.storage import join, read_bytes

        if self._kind == "dict":
            self._data = pickle.loads(read_bytes(join(self._uri, "state.pkl")))
            return
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in self._stored_files:
                payload = read_bytes(join(self._uri, name))
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        self._archive = buffer.getvalue()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        """A checkpoint holding ``data``.

        Raises:
            ConfigError: If ``data`` is not a dict.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"Checkpoint.from_dict needs a dict, got {type(data).__name__}")
        return cls(data=dict(data))

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """A checkpoint holding a copy of the files under ``path``.

        Raises:
            ConfigError: If ``path`` is not a directory.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise ConfigError(f"checkpoint directory {folder} does not exist")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for item in sorted(folder.iterdir()):
                tar.add(item, arcname=item.name)
        return cls(archive=buffer.getvalue())

    @property
    def is_directory(self) -> bool:
        """Whether it was made from a directory."""
        if self._uri is not None and self._data is None and self._archive is None:
            return self._kind == "directory"
        return self._archive is not None

    def to_dict(self) -> dict[str, Any]:
        """The state of a dict checkpoint.

        Raises:
            ConfigError: For a directory checkpoint.
        """
        self._load()
        if self._data is None:
            raise ConfigError("this checkpoint holds a directory; use to_directory()")
        return self._data

    def to_directory(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the checkpoint's files to ``path`` (default: a new temporary folder).

        A dict checkpoint is written as ``state.pkl``.
        """
        self._load()
        target = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="ckpt-"))
        target.mkdir(parents=True, exist_ok=True)
        if self._archive is not None:
            with tarfile.open(fileobj=io.BytesIO(self._archive), mode="r") as tar:
                tar.extractall(target, filter="data")
        else:
            with open(target / "state.pkl", "wb") as handle:
                pickle.dump(self._data, handle)
        return target

    def publish(self, folder: str, index: int, keep: int = 0, protect: str | None = None) -> str:
        """Store as ``folder/checkpoint_<index>`` in the job's storage (any URI), from the
        process that made it; then drop all but the last ``keep`` checkpoints (0: keep all),
        never ``protect`` (the one the running attempt resumed from: other ranks may still be
        reading it).

        The checkpoint appears whole or not at all: on a local filesystem it is staged and
        renamed into place; on an object store its marker file is written last and only
        checkpoints with a marker are ever read. The previous one stays until this one is
        complete.

        Returns:
            Its location.
        """
        from mlruntime.store import storage

        self._load()
        location = storage.join(folder, f"checkpoint_{index:06d}")
        kind = "directory" if self._archive is not None else "dict"
        files = self._files()
        marker = json.dumps({"kind": kind, "index": index, "files": sorted(files)}).encode()
        if storage.is_local(folder):
            from mlruntime.store.publish import new_staging, publish_dir

            staging = new_staging(folder, "checkpoint")
            for name, payload in files.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(payload)
            (staging / MARKER).write_bytes(marker)
            publish_dir(staging, Path(location), replace=True)
        else:
            storage.remove(location)  # a half-written one from a crashed attempt
            for name, payload in files.items():
                storage.write_bytes(storage.join(location, name), payload)
            storage.write_bytes(storage.join(location, MARKER), marker)
        self._uri = self.path = location
        self._kind, self._stored_files = kind, tuple(sorted(files))
        prune_checkpoints(folder, keep, protect)
        return location

    def __repr__(self) -> str:
        kind = "directory" if self.is_directory else "dict"
        where = f", path={self.path!r}" if self.path else ""
        return f"Checkpoint({kind}{where})"


MARKER = ".checkpoint.json"
"""Written last into a stored checkpoint: its presence means the checkpoint is complete."""


def stored_checkpoints(folder: str) -> list[str]:
    """Locations of the complete checkpoints under ``folder``, oldest first."""
    import pyarrow.fs as pafs

    from mlruntime.store import storage

    fs, path = storage.resolve(folder)
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    names = sorted(
        e.base_name
        for e in entries
        if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")
    )
    complete = []
    for name in names:
        marker = fs.get_file_info(f"{path.rstrip('/')}/{name}/{MARKER}")
        if marker.type == pafs.FileType.File:
            complete.append(storage.join(folder, name))
    return complete


def prune_checkpoints(folder: str, keep: int, protect: str | None = None) -> None:
    """Remove all but the newest ``keep`` complete checkpoints under ``folder`` (0: keep
    all), never ``protect``."""
    if keep <= 0:
        return
    from mlruntime.store import storage

    for old in stored_checkpoints(folder)[:-keep]:
        if old != protect:
            storage.remove(old)


@dataclass(frozen=True)
class RankInfo:
    """Where one worker sits in the group."""

    world_rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    node_ip: str
    node_id: str
    gpu_ids: tuple[str, ...] = ()
    local_device: int | None = None


@dataclass
class Context:
    """Everything a worker of a distributed job can ask for. Get it with :func:`get_context`."""

    rank_info: RankInfo
    master_addr: str
    master_port: int
    dataset_map: dict[str, Any] = field(default_factory=dict)
    hyper_params: dict[str, Any] = field(default_factory=dict)
    model_dir: str = ""
    checkpoint: Checkpoint | None = None
    attempt: int = 0
    checkpoint_dir: str = ""
    checkpoint_index: int = 0
    checkpoints_to_keep: int = 0
    reporter: Any = None
    backend_info: dict[str, Any] = field(default_factory=dict)
    collective_backends: tuple[str, ...] = ()
    """``torch.distributed`` backends this worker can use, its default first; set on the worker
    by a framework backend that sets up a process group (the PyTorch plugin's)."""
    _gathers: int = 0
    _logged_metrics: dict[str, Any] = field(default_factory=dict)
    """Everything ``get_metrics_reporter().log_metrics`` logged so far (latest value per name)."""
    _unconfirmed: Any = field(default=None, repr=False)
    """The last metrics report sent without waiting (see :meth:`report`)."""

    def get_world_size(self) -> int:
        """Number of workers in the job."""
        return self.rank_info.world_size

    def get_rank(self) -> int:
        """This worker's global rank (0 .. world size - 1)."""
        return self.rank_info.world_rank

    def get_world_rank(self) -> int:
        """This worker's global rank: the same as :meth:`get_rank` (Snowflake's samples use
        both names)."""
        return self.rank_info.world_rank

    def get_local_rank(self) -> int:
        """This worker's rank among the workers of its node."""
        return self.rank_info.local_rank

    def get_local_world_size(self) -> int:
        """Number of workers on this worker's node."""
        return self.rank_info.local_world_size

    def get_node_rank(self) -> int:
        """Index of this worker's node among the job's nodes."""
        return self.rank_info.node_rank

    def get_master_addr(self) -> str:
        """Address of rank 0's node, for framework rendezvous."""
        return self.master_addr

    def get_master_port(self) -> int:
        """A free port on rank 0's node, for framework rendezvous."""
        return self.master_port

    def get_dataset_map(self) -> dict[str, Any]:
        """The job's datasets: DataConnectors already sharded for this rank, or
        ShardedDataConnectors to call ``get_shard()`` on."""
        return self.dataset_map

    def get_hyper_params(self) -> dict[str, Any]:
        """The hyper-parameters passed to ``run``, with their Python types."""
        return self.hyper_params

    def get_model_dir(self) -> str:
        """A folder for this job's outputs (shared by the ranks of one node)."""
        return self.model_dir

    def get_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint reported before a restart, or ``None`` on a fresh start."""
        return self.checkpoint

    def get_attempt(self) -> int:
        """0 for the first attempt, then 1, 2 ... after each restart."""
        return self.attempt

    def get_supported_backends(self) -> list[str]:
        """The ``torch.distributed`` backends this worker can use, its default first:
        ``["nccl", "gloo"]`` when it has GPUs, else ``["gloo"]``.

        In a PyTorch job this is what the plugin found on the worker (a GPU that CUDA can
        use); in other jobs it follows the GPUs Ray gave the worker.
        """
        if self.collective_backends:
            return list(self.collective_backends)
        return ["nccl", "gloo"] if self.rank_info.gpu_ids else ["gloo"]

    def get_default_backend(self) -> str:
        """The ``torch.distributed`` backend of this job: ``"nccl"`` on GPU workers, ``"gloo"``
        on CPU workers.

        In a PyTorch job it is the backend of the process group the plugin already set up, so
        ``dist.init_process_group(backend=get_context().get_default_backend())`` runs the same
        code on CPU and GPU workers. In other jobs it is the backend a process group of the
        worker's devices would use.

        Example:
            >>> get_context().get_default_backend()
            'gloo'
        """
        return self.get_supported_backends()[0]

    def get_metrics_reporter(self) -> MetricsReporter:
        """An object whose ``log_metrics(metrics)`` sends metrics to the driver, like
        :meth:`report` without a checkpoint (Snowflake's name for reporting).

        Example:
            >>> get_context().get_metrics_reporter().log_metrics({"loss": 0.1}, step=3)
        """
        return MetricsReporter(self)

    def phase(self, name: str) -> None:
        """Tell the driver's progress output that rank 0 entered a phase (``"loading data"``,
        ``"training"``); the summary then times it."""
        if self.reporter is not None and self.get_rank() == 0:
            import time

            self.reporter.phase.remote((str(name), time.time()))

    def allgather(self, value: Any, timeout: float = 600.0) -> list[Any]:
        """Every rank's ``value``, by rank, once all ranks have called ``allgather`` (the
        n-th call of each rank is matched with the n-th call of the others). For small values
        (counts, category lists); a job's bulk data goes through storage.

        Raises:
            WorkerError: If the other ranks do not all arrive within ``timeout`` seconds.
        """
        import time

        import ray

        if self.reporter is None or self.get_world_size() == 1:
            return [value]
        key = f"{self.attempt}:{self._gathers}"
        self._gathers += 1
        ray.get(self.reporter.gather.remote(key, self.get_rank(), value))
        deadline, wait = time.monotonic() + timeout, 0.001
        while True:
            values = ray.get(self.reporter.gathered.remote(key, self.get_world_size()))
            if values is not None:
                return list(values)
            if time.monotonic() > deadline:
                raise WorkerError(
                    f"rank {self.get_rank()}: the other ranks did not reach allgather #{key} "
                    f"within {timeout:.0f} s"
                )
            time.sleep(wait)
            wait = min(0.05, wait * 2)

    def report(self, metrics: dict[str, Any], checkpoint: Checkpoint | None = None) -> None:
        """Report metrics (rank 0's are kept as the job's) and optionally a checkpoint.

        Rank 0 stores the checkpoint in the job's storage itself before this returns, so a
        restart after it resumes from it (on any node). Only rank 0's checkpoints are kept.

        Raises:
            ConfigError: If ``metrics`` is not a dict or ``checkpoint`` is not a Checkpoint.
        """
        if not isinstance(metrics, dict):
            raise ConfigError(f"metrics must be a dict, got {type(metrics).__name__}")
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise ConfigError(
                "checkpoint must be a mlruntime Checkpoint (Checkpoint.from_dict / "
                f"from_directory), got {type(checkpoint).__name__}"
            )
        if self.reporter is None or self.get_rank() != 0:
            return
        import ray

        location = None
        if checkpoint is not None and self.checkpoint_dir:
            # Written by this worker straight into the job's storage; only the location travels.
            resumed = self.checkpoint.path if self.checkpoint is not None else None
            location = checkpoint.publish(
                self.checkpoint_dir, self.checkpoint_index, self.checkpoints_to_keep, resumed
            )
            self.checkpoint_index += 1
        sent = self.reporter.report.remote(dict(metrics), location)
        if location is None:
            # Metrics alone need no answer: waiting for one on every round stalled a training
            # loop that holds every CPU until the job-state actor got one (py-spy: 2 % of a
            # 50-round XGBoost fit on 2 cores). Reports from one worker arrive in order; the
            # job's end waits for the last (flush_reports).
            self._unconfirmed = sent
        else:  # a checkpoint's location is known to the job before this returns
            self._unconfirmed = None
            ray.get(sent)

    def report_batch(self, batch: Sequence[dict[str, Any]]) -> None:
        """Report several rounds' metrics at once, in order, as if :meth:`report` had been
        called for each (no checkpoints): one message to the driver's side instead of one
        per round (about 0.8 ms of a round on 2 cores, a third of a small fit's boosting).

        Raises:
            ConfigError: If an item of ``batch`` is not a dict.
        """
        for metrics in batch:
            if not isinstance(metrics, dict):
                raise ConfigError(f"metrics must be a dict, got {type(metrics).__name__}")
        if self.reporter is None or self.get_rank() != 0 or not batch:
            return
        self._unconfirmed = self.reporter.report_batch.remote([dict(m) for m in batch])

    def flush_reports(self) -> None:
        """Wait until the job state has every report of this worker (the job's end calls it).

        Raises:
            ray.exceptions.RayError: If the job-state actor is gone.
        """
        sent, self._unconfirmed = self._unconfirmed, None
        if sent is not None:
            import ray

            ray.get(sent)


class MetricsReporter:
    """Sends metrics from a ``train_func`` to the driver. Calls accumulate: rank 0's
    ``get_metrics()`` is every name logged so far with its latest value (a training time
    logged first and test scores logged later both end up there), and
    ``get_metrics_history()`` holds that union after each call, in order; other ranks' are
    checked and dropped. Get it with ``get_context().get_metrics_reporter()``."""

    def __init__(self, context: Context) -> None:
        self._context = context

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Report ``metrics`` (a dict of name -> value) merged into what was logged before, as
        ``get_context().report(all_logged_so_far)``.

        Args:
            metrics: Names and values (numbers, lists ...), kept as given.
            step: Recorded as ``metrics["step"]`` when given (the progress bar follows it).

        Raises:
            ConfigError: If ``metrics`` is not a dict, ``step`` is not an integer, or
                ``metrics`` already holds a different ``"step"``.
        """
        if not isinstance(metrics, dict):
            raise ConfigError(
                f"log_metrics needs a dict of name -> value, got {type(metrics).__name__}"
            )
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, int):
                raise ConfigError(f"step must be an integer, got {step!r}")
            if "step" in metrics and metrics["step"] != step:
                raise ConfigError(
                    f"log_metrics(step={step}) contradicts metrics['step']={metrics['step']!r}"
                )
            metrics = {**metrics, "step": step}
        self._context._logged_metrics.update(metrics)
        self._context.report(dict(self._context._logged_metrics))


_current: Context | None = None


def get_context() -> Context:
    """The context of the distributed job this code runs in.

    Raises:
        NotInWorkerError: Outside a worker of a distributed job.
    """
    if _current is None:
        raise NotInWorkerError(
            "get_context() only works inside a function run by a distributor (e.g. the "
            "train_func given to PyTorchDistributor.run); this process is not such a worker"
        )
    return _current


def _current_context() -> Context | None:
    """The job context of this process, or ``None`` outside a distributed worker."""
    return _current


def _set_context(context: Context | None) -> None:
    global _current
    _current = context
    if context is None:
        set_current_rank(None)
        set_allgather(None)
    else:
        set_current_rank(context.get_rank(), context.get_world_size())
        set_allgather(context.allgather)
