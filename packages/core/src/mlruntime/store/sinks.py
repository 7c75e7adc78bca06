"""Sinks: where results go (Parquet folder, DuckDB table, dataset version), all or nothing.

Writers stage part files (possibly from many workers on many nodes, each calling
``write_part`` on a pickled copy of the transaction) and the driver commits once: until
``commit`` the target is untouched, and a failure or ``abort`` leaves the previous content
intact. Parts are staged on storage every writer reaches, never on the driver's disk alone:

- ``ParquetSink``: a hidden folder ``.mlruntime-staging-<txid>`` next to the target, on the
  target's own filesystem (local, NFS or an object store);
- ``DuckDBTableSink``: ``<storage>/staging/sinks/<txid>`` (see ``mlruntime.init(storage=...)``);
- ``DatasetSink``: where the dataset version is staged (see :class:`VersionWriter`).

Workers write there themselves; nothing is relayed through the driver.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlruntime.errors import ConfigError, DatasetExistsError, DatasetNotFoundError, SourceError
from mlruntime.store import storage
from mlruntime.store.publish import new_staging, publish_dir, remove_stale_staging
from mlruntime.store.session import Session, quote_identifier
from mlruntime.store.storage import WRITE_MODES

__all__ = ["DatasetSink", "DuckDBTableSink", "ParquetSink", "Sink", "SinkTransaction"]

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".mlruntime-staging-"
"""Name prefix of a ParquetSink's staging folder, next to its target."""

STALE_STAGING_SECONDS = 7 * 24 * 3600
"""A local staging folder untouched this long was left by a crashed driver and is removed by
the next write that stages in the same place (well above any job that may still fill one)."""


class SinkTransaction:
    """A staged write: picklable and small, so workers can add parts; the driver commits or
    aborts.

    Attributes:
        sink: The sink written to.
        staging: Folder (a local path or a storage URI) holding the staged part files.
        txid: Unique id of this write; part file names carry its first 8 characters.
    """

    _state: Any = None  # driver-only (e.g. a dataset's VersionWriter); never pickled
    _committed: bool = False

    def __init__(self, sink: Sink, staging: str, txid: str, state: Any = None) -> None:
        self.sink = sink
        self.staging = staging
        self.txid = txid
        self._state = state
        self._committed = False

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_state"}

    @property
    def _token(self) -> str:
        return self.txid[:8]

    def _part_name(self, part: int) -> str:
        return f"part-{part:05d}-{self._token}.parquet"

    def write_part(self, data: Any, part: int) -> str:
        """Stage ``data`` as part ``part``, writing straight to the staging folder's filesystem
        (local or an object store) from whichever process or node calls it.

        Args:
            data: An Arrow table or record batch, a pandas/polars frame, a dict of columns.
            part: The part number (parts are committed in this order); one per writer.

        Returns:
            The part file's path or URI.
        """
        table = _as_table(data)
        uri = storage.join(self.staging, self._part_name(part))
        fs, path = storage.resolve(uri)
        with storage.private_files(uri):
            pq.write_table(table, path, filesystem=fs)
        return uri

    def _part_paths(self) -> tuple[Any, list[str]]:
        """``(filesystem, paths in it)`` of this transaction's staged parts, in part order."""
        import pyarrow.fs as pafs

        fs, root = storage.resolve(self.staging)
        pattern = re.compile(rf"part-\d{{5,}}-{re.escape(self._token)}\.parquet")
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        names = sorted(
            i.base_name
            for i in infos
            if i.type == pafs.FileType.File and pattern.fullmatch(i.base_name)
        )
        return fs, [f"{root.rstrip('/')}/{name}" for name in names]

    def parts(self) -> list[str]:
        """This transaction's staged part files (paths or URIs), in part order."""
        _, paths = self._part_paths()
        return [storage.join(self.staging, posixpath.basename(p)) for p in paths]

    def commit(self) -> Any:
        """Publish every staged part at once; the staging is removed whatever happens.

        Returns:
            What the sink's commit returns (a folder, a table relation, a dataset version).
        """
        try:
            result = self.sink._commit(self)
            self._committed = True
            return result
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the staged parts (on any filesystem); the target keeps its previous content.

        After a successful :meth:`commit` it only removes what is left of the staging.
        """
        try:
            self.sink._discard(self)
        except OSError as exc:  # the write's outcome stands; only the clean-up failed
            logger.warning("could not remove the sink staging %s: %s", self.staging, exc)


def _as_table(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, dict):
        return pa.table(data)
    from mlruntime.data.connector import DataConnector

    return DataConnector.from_dataframe(data).to_arrow()


class Sink(ABC):
    """Base of sinks. ``write(data)`` for one process; ``begin()`` + parts + commit for many.

    Args:
        mode: ``"error"`` (target must not exist), ``"overwrite"`` or ``"append"``.

    Raises:
        ConfigError: For an unknown mode.
    """

    def __init__(self, mode: str = "error") -> None:
        if mode not in WRITE_MODES:
            raise ConfigError(f"mode must be one of {WRITE_MODES}, got {mode!r}")
        self.mode = mode

    def begin(self) -> SinkTransaction:
        """Check the target can be written in this mode, and start a staged write.

        Returns:
            The transaction; pickle it to workers, which call ``write_part``.

        Raises:
            DatasetExistsError: If the target exists and mode is ``"error"``.
        """
        self._check()
        txid = uuid.uuid4().hex
        staging, state = self._open(txid)
        return SinkTransaction(self, staging, txid, state)

    def write(self, data: Any) -> Any:
        """Write ``data`` in one transaction and commit it.

        Returns:
            What the sink's commit returns.
        """
        tx = self.begin()
        try:
            tx.write_part(data, 0)
        except BaseException:
            tx.abort()
            raise
        return tx.commit()

    def _open(self, txid: str) -> tuple[str, Any]:
        """Create the staging of transaction ``txid``: ``(its URI, driver-only state)``."""
        staging = self._staging_uri(txid)
        if storage.is_local(staging):
            storage.makedirs(staging)  # object stores need no folders (nor marker objects)
        return staging, None

    def _staging_uri(self, txid: str) -> str:
        """Where transaction ``txid`` stages its parts (sinks that do not override
        :meth:`_open` say)."""
        raise NotImplementedError

    def _discard(self, tx: SinkTransaction) -> None:
        """Remove the staging of ``tx`` (which holds nothing else than its parts)."""
        storage.remove(tx.staging)

    @abstractmethod
    def _check(self) -> None: ...

    @abstractmethod
    def _commit(self, tx: SinkTransaction) -> Any: ...


class ParquetSink(Sink):
    """A folder of Parquet files: a local path (or shared mount) or a URI (``s3://bucket/dir``).

    Parts are staged in a hidden folder next to the target, on its own filesystem, so every
    worker writes its part there directly.

    On a local filesystem the commit is atomic: ``error`` and ``overwrite`` publish the whole
    folder with one rename (``overwrite`` swaps the folders with two renames, restoring the old
    one if the second fails); ``append`` moves the new parts in, removing them again if any
    move fails.

    On an object store (no renames) each part is moved into the target server side, named
    with the transaction id so it cannot replace an existing file; ``overwrite`` deletes the
    old files only once every new one is in place, and a failed move removes the parts moved
    so far. This is not atomic: while the commit runs, a reader may see some of the new parts
    (with the old files, for ``overwrite``), and a driver that dies mid-commit can leave such
    a mix, plus the staging folder; and two concurrent writers in mode ``error`` can both
    pass the check and both land. Readers that need one consistent state should read a
    dataset version (:class:`DatasetSink`) instead.

    Args:
        path: The folder: a local path, or a pyarrow filesystem URI without query options
            (credentials and endpoints come from the environment, e.g. ``AWS_ENDPOINT_URL``).
        mode: ``"error"``, ``"overwrite"`` or ``"append"``.

    Attributes:
        uri: The folder as an absolute local path or a URI.
        path: The folder: a :class:`~pathlib.Path` when local, else the URI.

    Raises:
        ConfigError: For an unknown mode, a URI with ``?`` options or a bucket root.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "error") -> None:
        super().__init__(mode)
        raw = os.fspath(path)
        if storage.is_local(raw):
            local = Path(raw.removeprefix("file://")).expanduser().absolute()
            self.uri = str(local)
            self.path: Path | str = local
        else:
            if "?" in raw:
                raise ConfigError(
                    f"ParquetSink({raw!r}): give the folder's URI without '?' options; set the "
                    "filesystem's options in the environment (AWS_ENDPOINT_URL, AWS_REGION ...)"
                )
            self.uri = raw.rstrip("/")
            self.path = self.uri
            if "/" not in self.uri.split("://", 1)[1].strip("/"):
                raise ConfigError(
                    f"ParquetSink({raw!r}): write to a folder inside the bucket "
                    "(s3://bucket/folder), not to its root"
                )

    @property
    def local(self) -> bool:
        """Whether the folder is on this machine's filesystem (commits are atomic renames)."""
        return storage.is_local(self.uri)

    def __repr__(self) -> str:
        return f"ParquetSink({self.uri!r}, mode={self.mode!r})"

    def _parent(self) -> str:
        if self.local:
            return str(Path(self.uri).parent)
        return posixpath.dirname(self.uri)

    def _entries(self) -> list[Any]:
        """What the target folder holds (its direct entries; none if it does not exist)."""
        import pyarrow.fs as pafs

        fs, path = storage.resolve(self.uri)
        return list(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))

    def _check(self) -> None:
        import pyarrow.fs as pafs

        fs, path = storage.resolve(self.uri)
        if fs.get_file_info(path).type == pafs.FileType.File:
            raise SourceError(f"{self.uri} exists and is not a folder")
        if self.mode == "error" and self._entries():
            raise DatasetExistsError(
                f"{self.uri} already holds files; pass mode='overwrite' or mode='append'"
            )

    def _staging_uri(self, txid: str) -> str:
        parent = self._parent()
        if self.local:
            Path(parent).mkdir(parents=True, exist_ok=True)
            remove_stale_staging(parent, f"{STAGING_PREFIX}*", STALE_STAGING_SECONDS)
            remove_stale_staging(parent, ".staging-publish-*", STALE_STAGING_SECONDS)
        return storage.join(parent, f"{STAGING_PREFIX}{txid}")

    def _commit(self, tx: SinkTransaction) -> Path | str:
        self._check()
        fs, parts = tx._part_paths()
        if self.local:
            return self._commit_local(parts)
        return self._commit_object_store(fs, parts)

    def _commit_local(self, parts: list[str]) -> Path:
        target = Path(self.uri)
        if self.mode == "append" and target.exists():
            clash = [p for p in parts if (target / Path(p).name).exists()]
            if clash:
                raise FileExistsError(f"{target} already holds {Path(clash[0]).name}")
            moved: list[Path] = []
            try:
                for part in parts:
                    dest = target / Path(part).name
                    os.rename(part, dest)
                    moved.append(dest)
            except OSError:
                for dest in moved:
                    dest.unlink(missing_ok=True)
                raise
            return target
        staged = new_staging(target.parent, "publish")
        for part in parts:
            os.rename(part, staged / Path(part).name)
        return publish_dir(staged, target, replace=True)

    def _commit_object_store(self, fs: Any, parts: list[str]) -> str:
        import pyarrow.fs as pafs

        _, target = storage.resolve(self.uri)
        target = target.rstrip("/")
        old = self._entries()
        old_names = {info.base_name for info in old}
        clash = [p for p in parts if posixpath.basename(p) in old_names]
        if clash:  # part names carry the txid, so this is next to impossible
            raise FileExistsError(f"{self.uri} already holds {posixpath.basename(clash[0])}")
        moved: list[str] = []
        try:
            for part in parts:
                dest = f"{target}/{posixpath.basename(part)}"
                fs.move(part, dest)  # server side (a copy and a delete on S3)
                moved.append(dest)
        except BaseException:
            for dest in moved:
                try:
                    fs.delete_file(dest)
                except OSError:
                    logger.warning("could not remove %s after a failed commit", dest)
            raise
        if self.mode == "overwrite":  # only now that every new part is in place
            for info in old:
                if info.type == pafs.FileType.Directory:
                    fs.delete_dir(info.path)
                else:
                    fs.delete_file(info.path)
        return self.uri


class DuckDBTableSink(Sink):
    """A table of a warehouse session, replaced or appended to in one DuckDB transaction.

    Workers stage Parquet parts under ``<storage>/staging/sinks/<txid>`` (the storage every
    node reaches, see ``mlruntime.init(storage=...)``); the commit streams them from there into
    the driver's table, a batch at a time.

    Args:
        table: Table name.
        session: The session (default: ``get_active_session()``).
        mode: ``"error"``, ``"overwrite"`` or ``"append"``.

    Raises:
        ConfigError: For an unknown mode.
        QueryError: For an invalid table name.
    """

    def __init__(self, table: str, session: Session | None = None, mode: str = "error") -> None:
        super().__init__(mode)
        quote_identifier(table)
        self.table = table
        self._session = session

    @property
    def session(self) -> Session:
        """The session written to."""
        if self._session is None:
            from mlruntime.store.session import get_active_session

            self._session = get_active_session()
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None}  # connections stay on the driver

    def __repr__(self) -> str:
        return f"DuckDBTableSink({self.table!r}, mode={self.mode!r})"

    def _check(self) -> None:
        if self.mode == "error" and self.session.has_table(self.table):
            raise DatasetExistsError(
                f"table {self.table!r} already exists; pass mode='overwrite' or mode='append'"
            )

    def _staging_uri(self, txid: str) -> str:
        root = storage.join(storage.storage_uri(), "staging", "sinks")
        if storage.is_local(root):
            Path(root).mkdir(parents=True, exist_ok=True)
            remove_stale_staging(root, "*", STALE_STAGING_SECONDS)
        return storage.join(root, txid)

    def _commit(self, tx: SinkTransaction) -> Any:
        self._check()
        fs, parts = tx._part_paths()
        if not parts:
            raise ConfigError(f"nothing was written to {self!r}")
        import pyarrow.dataset as pads

        dataset = pads.dataset(parts, format="parquet", filesystem=fs)
        reader = dataset.scanner().to_reader()  # streamed, never all parts in memory
        return self.session.create_table(
            self.table, reader, mode="error" if self.mode == "error" else self.mode
        )


class DatasetSink(Sink):
    """A new version of a dataset (versions are immutable, so only mode ``"error"``).

    Workers write their parts straight where the version is staged (a hidden folder next to it
    on a local filesystem, the version's folder on an object store); the commit writes the
    manifest and publishes the version like every dataset version, without reading the data
    back through the driver.

    Args:
        name: Dataset name.
        version: The new version.
        mode: Only ``"error"``.

    Raises:
        ConfigError: For mode ``"overwrite"`` or ``"append"``, or an invalid name or version.
    """

    def __init__(self, name: str, version: str, mode: str = "error") -> None:
        super().__init__(mode)
        if mode != "error":
            raise ConfigError(
                f"dataset versions are immutable: mode {mode!r} is not allowed; write a new "
                "version instead"
            )
        from mlruntime.store.datasets import validate_name

        self.name = validate_name(name, "dataset name")
        self.version = validate_name(version, "dataset version")

    def __repr__(self) -> str:
        return f"DatasetSink({self.name!r}, {self.version!r})"

    def _check(self) -> None:
        from mlruntime.store.datasets import load_dataset

        try:
            load_dataset(self.name, self.version)
        except DatasetNotFoundError:
            return
        raise DatasetExistsError(f"dataset {self.name!r} version {self.version!r} already exists")

    def _open(self, txid: str) -> tuple[str, Any]:
        from mlruntime.store.datasets import VersionWriter

        writer = VersionWriter(self.name, self.version)
        return writer.staging, writer

    def _commit(self, tx: SinkTransaction) -> Any:
        writer = tx._state
        if writer is None:
            raise ConfigError(f"commit {self!r} in the process that called begin()")
        try:
            for part in tx.parts():
                writer.add_staged(posixpath.basename(part))
            return writer.commit(origin=f"sink write {tx.txid}")
        except BaseException:
            writer.abort()
            raise

    def _discard(self, tx: SinkTransaction) -> None:
        if storage.is_local(tx.staging):
            storage.remove(tx.staging)  # a private folder (gone once published)
        elif not tx._committed:
            # On an object store the staging is the version's own folder, which another
            # writer may share: remove only this transaction's parts.
            fs, paths = tx._part_paths()
            for path in paths:
                fs.delete_file(path)
