"""Sinks: where results go (Parquet folder, DuckDB table, dataset version), all or nothing.

Writers stage part files (possibly from many workers, each calling ``write_part`` on a pickled
copy of the transaction) and the driver commits once: until ``commit`` the target is untouched,
and a failure or ``abort`` leaves the previous content intact.
"""

from __future__ import annotations

import os
import shutil
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlruntime.errors import ConfigError, DatasetExistsError, DatasetNotFoundError, SourceError
from mlruntime.store.publish import new_staging, publish_dir
from mlruntime.store.session import Session, quote_identifier
from mlruntime.store.storage import WRITE_MODES, mlruntime_home

__all__ = ["DatasetSink", "DuckDBTableSink", "ParquetSink", "Sink", "SinkTransaction"]


class SinkTransaction:
    """A staged write: picklable, so workers can add parts; the driver commits or aborts.

    Attributes:
        staging: Folder holding the staged part files.
        txid: Unique id of this write.
    """

    def __init__(self, sink: Sink, staging: Path, txid: str) -> None:
        self.sink = sink
        self.staging = staging
        self.txid = txid

    def write_part(self, data: Any, part: int) -> Path:
        """Stage ``data`` (Arrow table, pandas/polars frame, dict of columns) as part ``part``."""
        table = _as_table(data)
        path = self.staging / f"part-{part:05d}-{self.txid[:8]}.parquet"
        pq.write_table(table, path)
        return path

    def parts(self) -> list[Path]:
        """Staged part files in part order."""
        return sorted(self.staging.glob("part-*.parquet"))

    def commit(self) -> Any:
        """Publish every staged part at once; returns what the sink's ``commit`` returns."""
        try:
            return self.sink._commit(self)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the staged parts; the target keeps its previous content."""
        shutil.rmtree(self.staging, ignore_errors=True)


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

        Raises:
            DatasetExistsError: If the target exists and mode is ``"error"``.
        """
        self._check()
        txid = uuid.uuid4().hex
        staging = self._staging_root() / f".mlruntime-staging-{txid}"
        staging.mkdir(parents=True)
        return SinkTransaction(self, staging, txid)

    def write(self, data: Any) -> Any:
        """Write ``data`` in one transaction and commit it."""
        tx = self.begin()
        try:
            tx.write_part(data, 0)
        except BaseException:
            tx.abort()
            raise
        return tx.commit()

    def _staging_root(self) -> Path:
        root = mlruntime_home() / "staging"
        root.mkdir(parents=True, exist_ok=True)
        return root

    @abstractmethod
    def _check(self) -> None: ...

    @abstractmethod
    def _commit(self, tx: SinkTransaction) -> Any: ...


class ParquetSink(Sink):
    """A local folder of Parquet files.

    ``overwrite`` swaps the folder with two renames (the old one is restored if the second
    fails); ``append`` moves the new parts in, removing them again if any move fails.

    Args:
        path: The folder.
        mode: ``"error"``, ``"overwrite"`` or ``"append"``.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "error") -> None:
        super().__init__(mode)
        self.path = Path(path).expanduser().absolute()

    def __repr__(self) -> str:
        return f"ParquetSink({str(self.path)!r}, mode={self.mode!r})"

    def _exists(self) -> bool:
        return self.path.exists() and any(self.path.iterdir())

    def _check(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise SourceError(f"{self.path} exists and is not a folder")
        if self.mode == "error" and self._exists():
            raise DatasetExistsError(
                f"{self.path} already holds files; pass mode='overwrite' or mode='append'"
            )

    def _staging_root(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.parent  # same filesystem as the target, so renames are atomic

    def _commit(self, tx: SinkTransaction) -> Path:
        self._check()
        parts = tx.parts()
        if self.mode == "append" and self.path.exists():
            moved: list[Path] = []
            try:
                for part in parts:
                    target = self.path / part.name
                    os.rename(part, target)
                    moved.append(target)
            except OSError:
                for target in moved:
                    target.unlink(missing_ok=True)
                raise
            return self.path
        staged = new_staging(self.path.parent, "publish")
        for part in parts:
            os.rename(part, staged / part.name)
        return publish_dir(staged, self.path, replace=True)


class DuckDBTableSink(Sink):
    """A table of a warehouse session, replaced or appended to in one DuckDB transaction.

    Args:
        table: Table name.
        session: The session (default: ``get_active_session()``).
        mode: ``"error"``, ``"overwrite"`` or ``"append"``.
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

    def _commit(self, tx: SinkTransaction) -> Any:
        self._check()
        parts = tx.parts()
        if not parts:
            raise ConfigError(f"nothing was written to {self!r}")
        import pyarrow.dataset as pads

        reader = pads.dataset([str(p) for p in parts], format="parquet").scanner().to_reader()
        return self.session.create_table(
            self.table, reader, mode="error" if self.mode == "error" else self.mode
        )


class DatasetSink(Sink):
    """A new version of a dataset (versions are immutable, so only mode ``"error"``).

    Raises:
        ConfigError: For mode ``"overwrite"`` or ``"append"``.
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

    def _commit(self, tx: SinkTransaction) -> Any:
        from mlruntime.store.datasets import VersionWriter

        writer = VersionWriter(self.name, self.version)
        try:
            for i, part in enumerate(tx.parts()):
                writer.add_file(part, i)
            return writer.commit(origin=f"sink write {tx.txid}")
        except BaseException:
            writer.abort()
            raise
