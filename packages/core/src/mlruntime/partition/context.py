"""What a partition function gets besides its data: its id, artifacts, the driver's session.

Artifacts are files under the run's folder on the storage (``partitions/<id>/<filename>``),
written by the worker itself; pickle is the default format (trusted input only).
"""

from __future__ import annotations

import os
import pickle
import posixpath
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from mlruntime.errors import ConfigError, MLRuntimeError
from mlruntime.partition.layout import RunFolder, encode_id, runs_root, serving

__all__ = ["ArtifactManager", "PartitionContext"]

SESSION_TIMEOUT_S = 600.0
"""How long ``with_session`` waits for the driver to run the function."""


def _check_name(filename: str) -> str:
    parts = [p for p in filename.replace("\\", "/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ConfigError(f"artifact name {filename!r} must be a relative file name")
    return "/".join(parts)


class ArtifactManager:
    """The artifacts of one partition (Snowflake's ``stage_artifacts_manager``).

    Args:
        folder: The run's folder.
        partition_id: The partition.
    """

    def __init__(self, folder: RunFolder, partition_id: str) -> None:
        self._folder = folder
        self.partition_id = partition_id
        self.path = folder.partition_dir(partition_id)

    def list(self) -> list[str]:
        """Names of the partition's artifacts (sub-folders as ``a/b``)."""
        import pyarrow.fs as pafs

        try:
            infos = self._folder.fs.get_file_info(
                pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
            )
        except OSError:
            return []
        return sorted(
            posixpath.relpath(i.path, self.path)
            for i in infos
            if i.type == pafs.FileType.File and ".tmp-" not in i.path
        )

    def exists(self, filename: str) -> bool:
        """Whether artifact ``filename`` exists."""
        import pyarrow.fs as pafs

        info = self._folder.fs.get_file_info(posixpath.join(self.path, _check_name(filename)))
        return bool(info.type == pafs.FileType.File)

    def put(
        self, obj: Any, filename: str, write_function: Callable[[Any, str], None] | None = None
    ) -> str:
        """Save ``obj`` as ``filename`` (pickled, or by ``write_function(obj, local_path)``);
        return its path on the storage's filesystem."""
        target = posixpath.join(self.path, _check_name(filename))
        fs = self._folder.fs
        fs.create_dir(posixpath.dirname(target), recursive=True)
        if write_function is None:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            rel = posixpath.relpath(target, self._folder.path)
            self._folder.write_bytes(rel, data)
            return target
        if self._folder.local:
            # the extension stays last: writers pick the format by it (xgboost's .json)
            name = posixpath.basename(target)
            tmp = posixpath.join(posixpath.dirname(target), f".tmp-{os.getpid()}-{name}")
            write_function(obj, tmp)
            os.replace(tmp, target)
            return target
        with tempfile.TemporaryDirectory(prefix="mlruntime-artifact-") as tmpdir:
            local = os.path.join(tmpdir, posixpath.basename(target))
            write_function(obj, local)
            with open(local, "rb") as src, fs.open_output_stream(target) as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
        return target

    def get(self, filename: str, read_function: Callable[[str], Any] | None = None) -> Any:
        """Load artifact ``filename`` (unpickled, or by ``read_function(local_path)``).

        Raises:
            FileNotFoundError: If the partition has no such artifact.
        """
        source = posixpath.join(self.path, _check_name(filename))
        if read_function is None:
            rel = posixpath.relpath(source, self._folder.path)
            data = self._folder.read_bytes(rel)
            if data is None:
                raise FileNotFoundError(self._missing(filename))
            return pickle.loads(data)
        if self._folder.local:
            if not os.path.isfile(source):
                raise FileNotFoundError(self._missing(filename))
            return read_function(source)
        with tempfile.TemporaryDirectory(prefix="mlruntime-artifact-") as tmpdir:
            return read_function(self.download(filename, tmpdir))

    def download(self, filename: str, local_dir: str | os.PathLike[str]) -> str:
        """Copy artifact ``filename`` into ``local_dir``; return the local path.

        Raises:
            FileNotFoundError: If the partition has no such artifact.
        """
        name = _check_name(filename)
        local = os.path.join(os.fspath(local_dir), *name.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        try:
            source = posixpath.join(self.path, name)
            with self._folder.fs.open_input_stream(source) as src, open(local, "wb") as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
        except (FileNotFoundError, OSError) as exc:
            raise FileNotFoundError(self._missing(filename)) from exc
        return local

    def _missing(self, filename: str) -> str:
        have = ", ".join(self.list()) or "none"
        return (
            f"partition {self.partition_id!r} has no artifact {filename!r} under "
            f"{self._folder.uri_of('partitions', encode_id(self.partition_id))} (it has: {have})"
        )


class PartitionContext:
    """Given to the partition function with its data: which partition, and its artifacts.

    Attributes:
        partition_id: The partition's value of the ``partition_by`` column as text (the file's
            path relative to the input folder for ``run_from_files``).
        run_id: The run's id.
        attempt: 0 on the first try, 1 on the first retry ...
    """

    def __init__(self, partition_id: str, run_id: str, folder: RunFolder, attempt: int = 0) -> None:
        self.partition_id = partition_id
        self.run_id = run_id
        self.attempt = attempt
        self._folder = folder
        self.artifacts = ArtifactManager(folder, partition_id)

    def upload(
        self, obj: Any, filename: str, write_function: Callable[[Any, str], None] | None = None
    ) -> None:
        """Save ``obj`` as this partition's artifact ``filename`` on the storage.

        Args:
            obj: What to save.
            filename: The artifact's name (``"model.pkl"``, ``"out/summary.json"``).
            write_function: ``write_function(obj, local_path)`` writes the file; default
                pickle.
        """
        self.artifacts.put(obj, filename, write_function)

    def download(
        self,
        filename: str,
        read_function: Callable[[str], Any] | None = None,
        *,
        run_id: str | None = None,
        partition_id: str | None = None,
        stage_path: str | None = None,
    ) -> Any:
        """Load an artifact of this partition, or of another run or partition.

        Args:
            filename: The artifact's name.
            read_function: ``read_function(local_path)`` loads it; default unpickle.
            run_id: Another run's artifact (same partition unless ``partition_id``).
            partition_id: Another partition's artifact.
            stage_path: Snowflake's form: a folder holding the file (``"@stage/run/part"``,
                a URI or a path).

        Raises:
            FileNotFoundError: If there is no such artifact.
        """
        if stage_path is not None:
            folder = RunFolder(runs_root(stage_path))
            manager = ArtifactManager(folder, "")
            manager.path = folder.path
            return manager.get(filename, read_function)
        folder = self._folder
        if run_id is not None:
            from mlruntime.partition.layout import find_run

            uri = find_run(run_id)
            if uri is None:
                raise FileNotFoundError(f"no partition run {run_id!r} on the storage")
            folder = RunFolder(uri)
        pid = self.partition_id if partition_id is None else partition_id
        return ArtifactManager(folder, pid).get(filename, read_function)

    # Snowflake's names
    def upload_to_stage(
        self, obj: Any, filename: str, write_function: Callable[[Any, str], None] | None = None
    ) -> None:
        """Snowflake's name of :meth:`upload`."""
        self.upload(obj, filename, write_function)

    def download_from_stage(
        self,
        filename: str,
        stage_path: str | None = None,
        read_function: Callable[[str], Any] | None = None,
    ) -> Any:
        """Snowflake's name of :meth:`download` (``stage_path``: another folder)."""
        return self.download(filename, read_function, stage_path=stage_path)

    def with_session(self, function: Callable[[Any], Any]) -> Any:
        """Run ``function(session)`` with the driver's warehouse session; return its result.

        The embedded DuckDB warehouse belongs to the driver process, so the function
        (cloudpickled: keep its closure small) is sent there through the run's folder and run
        one at a time. Called in the driver itself, it runs at once.

        Raises:
            MLRuntimeError: If the driver does not answer within 10 minutes (it is gone).
            Exception: Whatever ``function`` raised in the driver.
        """
        if serving(self._folder.uri):
            from mlruntime.store.session import get_active_session

            return function(get_active_session())
        import cloudpickle

        name = uuid.uuid4().hex
        self._folder.write_bytes(f"session/req-{name}.pkl", cloudpickle.dumps(function))
        deadline = time.monotonic() + SESSION_TIMEOUT_S
        delay = 0.01
        while time.monotonic() < deadline:
            data = self._folder.read_bytes(f"session/res-{name}.pkl")
            if data is not None:
                self._folder.remove(f"session/res-{name}.pkl")
                ok, value = pickle.loads(data)
                if ok:
                    return value
                raise value
            time.sleep(delay)
            delay = min(0.2, delay * 2)
        raise MLRuntimeError(
            f"with_session: the driver of run {self.run_id!r} did not answer in "
            f"{SESSION_TIMEOUT_S:.0f}s (is it still running?)"
        )
