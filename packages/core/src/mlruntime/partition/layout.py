"""Where a partition run keeps its state on the storage, and how it is read back.

A run is a folder ``<root>/<run id>/`` on mlruntime's storage (any pyarrow URI), written by the
workers themselves and read by any process, so status survives the driver::

    run.json                   what ran, its generation (1 + resumes), state, driver heartbeat
    plans/g001.json            the partitions of each generation, in batches, with their rows
    started/g001-b000003       a batch's task has started
    results/g001-b000003-00000.json   finished partitions of a batch (status, logs, traceback)
    partitions/<id>/<file>     artifacts uploaded by the function (models ...)
    input/                     the run's data staged as Parquet (removed when the run ends)
    session/                   requests of ``PartitionContext.with_session`` to the driver

Partition and run ids may hold any character: folder names are percent-encoded (a long one
is shortened with a hash); the records keep the original.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time
import urllib.parse
from typing import Any

from mlruntime.errors import ConfigError
from mlruntime.store import storage

__all__ = [
    "DEFAULT_FOLDER",
    "RunFolder",
    "encode_id",
    "find_run",
    "merge_records",
    "register_run",
    "run_index",
    "runs_root",
    "serving",
]

DEFAULT_FOLDER = "partition"
"""Runs without a storage prefix live under ``<storage>/partition/``."""

STAGES_FOLDER = "stages"
"""A Snowflake-style stage name ``NAME`` (or ``@NAME``) is the folder ``<storage>/stages/NAME``."""

INDEX_FOLDER = ".index"
"""``<storage>/partition/.index/<run id>.json`` says where each run lives, whatever its prefix."""

MAX_NAME = 180
"""Encoded names longer than this are shortened (filesystems allow 255 bytes per name)."""


_serving: dict[str, Any] = {}
"""Run folders whose driver is this process (folder URI -> its monitor)."""


def serving(folder_uri: str) -> bool:
    """Whether this process is the driver of the run in ``folder_uri``."""
    return folder_uri in _serving


def encode_id(value: str) -> str:
    """A folder name for ``value`` that is safe on every filesystem and object store.

    Everything but letters, digits and ``_-~`` is percent-encoded (``/`` -> ``%2F``, ``.``
    -> ``%2E``), so names never nest, hide or climb; an empty id is ``%``; names past
    :data:`MAX_NAME` characters keep a prefix and a hash.
    """
    if value == "":
        return "%"
    encoded = urllib.parse.quote(value, safe="_-~").replace(".", "%2E")
    if len(encoded) > MAX_NAME:
        digest = hashlib.sha1(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        encoded = encoded[: MAX_NAME - 17].rstrip("%0123456789ABCDEF") + "~" + digest
    return encoded


def runs_root(prefix: str | os.PathLike[str] | None) -> str:
    """The folder holding the runs of ``prefix``.

    ``None``: ``<storage>/partition``; a URI (``s3://...``) or an absolute path: itself; a name
    such as Snowflake's stage ``"MY_DB.MY_SCHEMA.MODELS"`` or ``"@models/sub"``:
    ``<storage>/stages/<name>``.

    Raises:
        ConfigError: For an empty prefix or one that climbs out (``..``).
    """
    if prefix is None:
        return storage.join(storage.storage_uri(), DEFAULT_FOLDER)
    text = os.fspath(prefix).strip()
    if "://" in text or os.path.isabs(text) or text.startswith("~"):
        return os.path.expanduser(text) if "://" not in text else text
    name = text.removeprefix("@").strip("/")
    parts = [p for p in name.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ConfigError(
            f"storage prefix {prefix!r} must be a stage-like name ('models', '@stage/sub'), "
            "an absolute path or a URI"
        )
    return storage.join(storage.storage_uri(), STAGES_FOLDER, *parts)


def _index_uri(run_id: str) -> str:
    return storage.join(
        storage.storage_uri(), DEFAULT_FOLDER, INDEX_FOLDER, encode_id(run_id) + ".json"
    )


def register_run(run_id: str, folder_uri: str, kind: str) -> None:
    """Record where run ``run_id`` lives, so ``restore(run_id)`` and the CLI find it."""
    entry = {"run_id": run_id, "folder": folder_uri, "kind": kind, "registered_at": time.time()}
    storage.write_bytes(_index_uri(run_id), json.dumps(entry).encode())


def find_run(run_id: str, prefix: str | os.PathLike[str] | None = None) -> str | None:
    """The folder of run ``run_id``: under ``prefix`` when given, else from the index, else
    under the default root; ``None`` when it has none."""
    candidates = []
    if prefix is not None:
        candidates.append(storage.join(runs_root(prefix), encode_id(run_id)))
    else:
        try:
            entry = json.loads(storage.read_bytes(_index_uri(run_id)))
            candidates.append(entry["folder"])
        except (OSError, ValueError, KeyError):
            pass
        candidates.append(storage.join(runs_root(None), encode_id(run_id)))
    for uri in candidates:
        if RunFolder(uri).read_json("run.json") is not None:
            return uri
    return None


def run_index() -> list[dict[str, Any]]:
    """Every registered run (``run_id``, ``folder``, ``kind``), newest first."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(storage.join(storage.storage_uri(), DEFAULT_FOLDER, INDEX_FOLDER))
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    entries = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".json"):
            continue
        try:
            with fs.open_input_stream(info.path) as handle:
                entries.append(json.loads(handle.read()))
        except (OSError, ValueError):
            continue
    return sorted(entries, key=lambda e: -float(e.get("registered_at", 0)))


class RunFolder:
    """One run's folder: small JSON files and artifacts, read and written through pyarrow.

    Args:
        uri: The folder (a storage URI or a local path).
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.path = storage.resolve(uri)
        import pyarrow.fs as pafs

        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunFolder, (self.uri,))

    def file(self, *parts: str) -> str:
        """A path inside the folder, on :attr:`fs`."""
        return posixpath.join(self.path, *parts)

    def uri_of(self, *parts: str) -> str:
        """A path inside the folder as a URI other processes can open."""
        return storage.join(self.uri, *parts)

    def partition_dir(self, partition_id: str) -> str:
        """Where partition ``partition_id`` keeps its artifacts (a path on :attr:`fs`)."""
        return self.file("partitions", encode_id(partition_id))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write one file; readers never see it half-written (rename on local disks, and
        object stores publish on close)."""
        path = self.file(rel)
        with storage.private_files(self.uri):
            self.fs.create_dir(posixpath.dirname(path), recursive=True)
            if self.local:
                tmp = f"{path}.tmp-{os.getpid()}"
                with self.fs.open_output_stream(tmp) as out:
                    out.write(data)
                os.replace(tmp, path)
            else:
                with self.fs.open_output_stream(path) as out:
                    out.write(data)

    def read_bytes(self, rel: str) -> bytes | None:
        """One file's bytes, or ``None`` when it is missing."""
        try:
            with self.fs.open_input_stream(self.file(rel)) as handle:
                return bytes(handle.read())
        except (FileNotFoundError, OSError):
            return None

    def write_json(self, rel: str, value: Any) -> None:
        """Write ``value`` as JSON to ``rel``."""
        self.write_bytes(rel, json.dumps(value, default=str).encode())

    def read_json(self, rel: str) -> Any:
        """The JSON in ``rel``, or ``None`` when it is missing or unreadable."""
        data = self.read_bytes(rel)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None

    def list(self, rel: str) -> list[str]:
        """Names of the finished files in the sub-folder ``rel`` (none when it is missing)."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.file(rel), allow_not_found=True))
        except OSError:
            return []
        return sorted(
            posixpath.basename(i.path)
            for i in infos
            if i.type == pafs.FileType.File and ".tmp-" not in posixpath.basename(i.path)
        )

    def remove(self, rel: str | None = None) -> None:
        """Delete the folder (or its sub-path ``rel``); missing is fine."""
        try:
            storage.remove(self.uri if rel is None else self.uri_of(rel))
        except OSError:
            pass


def record_rank(record: dict[str, Any]) -> tuple[bool, int, float]:
    """Which record of a partition wins: a DONE one, else the latest generation, else the
    latest time (so a worker's result beats the driver's CANCELLED written before it)."""
    return (record.get("status") == "DONE", int(record.get("gen", 0)), float(record.get("t", 0)))


def merge_records(
    into: dict[str, dict[str, Any]], records: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Merge partition records into ``into`` (partition id -> winning record)."""
    for record in records:
        pid = record["id"]
        old = into.get(pid)
        if old is None or record_rank(record) >= record_rank(old):
            into[pid] = record
    return into
