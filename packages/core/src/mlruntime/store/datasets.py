"""Versioned datasets: a name and immutable versions, each a folder of Parquet files + manifest.

Layout: ``$MLRUNTIME_HOME/datasets/<name>/<version>/{part-*.parquet, manifest.json}``. A version
is written into a hidden staging folder and appears by one atomic rename, so a crash leaves no
visible version and two creators of one version cannot both succeed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlruntime.__about__ import __version__
from mlruntime.data.sources import ParquetSource
from mlruntime.errors import ConfigError, DataError, DatasetExistsError, DatasetNotFoundError
from mlruntime.store.publish import fsync_dir, new_staging, publish_dir
from mlruntime.store.storage import mlruntime_home

__all__ = [
    "Dataset",
    "create_from_dataframe",
    "delete_version",
    "list_datasets",
    "list_versions",
    "load_dataset",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST = "manifest.json"
ROWS_PER_FILE = 1_048_576
ROW_GROUP_ROWS = 131_072
STALE_STAGING_SECONDS = 6 * 3600


def datasets_root() -> Path:
    """``$MLRUNTIME_HOME/datasets``."""
    root = mlruntime_home() / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    return root


def validate_name(value: str, what: str) -> str:
    """Check a dataset name or version: letters, digits, ``.``, ``_``, ``-``; no path tricks.

    Raises:
        ConfigError: If the value could escape the datasets folder or is otherwise invalid.
    """
    if not isinstance(value, str) or not _NAME_RE.match(value) or value.strip(".") == "":
        raise ConfigError(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (no '/', no '..')"
        )
    return value


@dataclass(frozen=True)
class Dataset:
    """One immutable version of a dataset.

    Attributes:
        name: Dataset name.
        version: Version string.
        path: Its folder.
        manifest: The parsed manifest (schema, num_rows, files with checksums, origin,
            created_at, mlruntime version).
    """

    name: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def num_rows(self) -> int:
        """Rows in the version."""
        return int(self.manifest["num_rows"])

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema."""
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.manifest["schema"])))

    @property
    def files(self) -> list[Path]:
        """The Parquet files, in order."""
        return [self.path / f["name"] for f in self.manifest["files"]]

    def to_source(self) -> ParquetSource:
        """A source over the version's files."""
        return ParquetSource([str(f) for f in self.files])

    def verify(self) -> None:
        """Check every file's size and SHA-256 against the manifest.

        Raises:
            DataError: If a file is missing or changed.
        """
        for entry in self.manifest["files"]:
            path = self.path / entry["name"]
            if not path.exists():
                raise DataError(f"dataset {self.name}/{self.version}: {entry['name']} is missing")
            if _sha256(path) != entry["sha256"]:
                raise DataError(
                    f"dataset {self.name}/{self.version}: {entry['name']} does not match its "
                    "checksum (the version was modified after creation)"
                )

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, version={self.version!r}, rows={self.num_rows})"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class VersionWriter:
    """Stages one version's Parquet parts; :meth:`commit` publishes it with one rename."""

    def __init__(self, name: str, version: str) -> None:
        self.name = validate_name(name, "dataset name")
        self.version = validate_name(version, "dataset version")
        self.parent = datasets_root() / name
        self.parent.mkdir(parents=True, exist_ok=True)
        self.final = self.parent / version
        if self.final.exists():
            raise DatasetExistsError(
                f"dataset {name!r} version {version!r} already exists; versions are immutable, "
                "create a new version"
            )
        _remove_stale_staging(self.parent)
        self.staging = new_staging(self.parent, version)
        self.schema: pa.Schema | None = None

    def write_part(self, table: pa.Table, part: int) -> None:
        """Write one part file (parts are ordered by number)."""
        if self.schema is None:
            self.schema = table.schema
        elif not table.schema.equals(self.schema, check_metadata=False):
            raise DataError(f"part {part} has schema {table.schema}, expected {self.schema}")
        path = self.staging / f"part-{part:05d}.parquet"
        pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)

    def commit(self, origin: str) -> Dataset:
        """Write the manifest and rename the staging folder into place.

        Raises:
            DatasetExistsError: If another writer published the same version first.
        """
        files, rows = [], 0
        for path in sorted(self.staging.glob("part-*.parquet")):
            meta = pq.read_metadata(path)
            rows += meta.num_rows
            if self.schema is None:
                self.schema = meta.schema.to_arrow_schema()
            files.append(
                {
                    "name": path.name,
                    "rows": meta.num_rows,
                    "bytes": path.stat().st_size,
                    "sha256": _sha256(path),
                }
            )
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if self.schema is None:
            raise DataError("a dataset version needs a schema; no part was written")
        manifest = {
            "name": self.name,
            "version": self.version,
            "num_rows": rows,
            "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode(),
            "columns": {f.name: str(f.type) for f in self.schema},
            "files": files,
            "origin": origin,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "mlruntime_version": __version__,
        }
        with open(self.staging / MANIFEST, "w") as handle:
            json.dump(manifest, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(self.staging)
        try:
            publish_dir(self.staging, self.final, replace=False)
        except FileExistsError as exc:
            raise DatasetExistsError(
                f"dataset {self.name!r} version {self.version!r} was created by another writer"
            ) from exc
        return Dataset(self.name, self.version, self.final, manifest)

    def abort(self) -> None:
        """Remove the staged files."""
        shutil.rmtree(self.staging, ignore_errors=True)


def _remove_stale_staging(parent: Path) -> None:
    now = time.time()
    for entry in parent.glob(".staging-*"):
        try:
            if now - entry.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def create_from_dataframe(
    name: str, version: str, input_dataframe: Any, *, origin: str | None = None
) -> Dataset:
    """Create dataset version ``name``/``version`` from data, atomically.

    Args:
        name: Dataset name.
        version: Version string (immutable once created).
        input_dataframe: A DuckDB relation, pandas/polars/Arrow frame, DataConnector or source.
        origin: Free text recorded in the manifest (default: a description of the input).

    Returns:
        The new :class:`Dataset`.

    Raises:
        ConfigError: For an invalid name or version.
        DatasetExistsError: If the version exists (or another writer created it first).
    """
    from mlruntime.data.connector import DataConnector

    writer = VersionWriter(name, version)
    try:
        connector = DataConnector.from_dataframe(input_dataframe)
        tables = _chunks(connector)
        part = 0
        for part, table in enumerate(tables):
            writer.write_part(table, part)
        if writer.schema is None:
            writer.write_part(connector.schema.empty_table(), 0)
        description = origin or ", ".join(s.describe() for s in connector.sources)
        return writer.commit(origin=description)
    except BaseException:
        writer.abort()
        raise


def _chunks(connector: Any) -> Iterable[pa.Table]:
    """Re-chunk the connector's tables into parts of about ``ROWS_PER_FILE`` rows."""
    pending: list[pa.Table] = []
    rows = 0
    for table in connector._tables(connector.pieces()):
        pending.append(table)
        rows += table.num_rows
        if rows >= ROWS_PER_FILE:
            yield pa.concat_tables(pending)
            pending, rows = [], 0
    if pending:
        yield pa.concat_tables(pending)


def load_dataset(name: str, version: str | None = None) -> Dataset:
    """Open a dataset version (default: the most recently created).

    Raises:
        DatasetNotFoundError: If the dataset or version does not exist (lists what does).
    """
    validate_name(name, "dataset name")
    if version is None:
        versions = list_versions(name)
        if not versions:
            raise DatasetNotFoundError(
                f"dataset {name!r} does not exist; datasets: {list_datasets() or 'none'}"
            )
        version = versions[-1]
    validate_name(version, "dataset version")
    path = datasets_root() / name / version
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        if not (datasets_root() / name).exists():
            raise DatasetNotFoundError(
                f"dataset {name!r} does not exist; datasets: {list_datasets() or 'none'}"
            )
        raise DatasetNotFoundError(
            f"dataset {name!r} has no version {version!r}; versions: "
            f"{list_versions(name) or 'none'}"
        )
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    return Dataset(name, version, path, manifest)


def list_datasets() -> list[str]:
    """Names of datasets with at least one version."""
    root = datasets_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list_versions(p.name))


def list_versions(name: str) -> list[str]:
    """Versions of a dataset, oldest first (by creation time)."""
    validate_name(name, "dataset name")
    folder = datasets_root() / name
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        manifest = entry / MANIFEST
        if entry.name.startswith(".") or not manifest.exists():
            continue
        with open(manifest) as handle:
            found.append((json.load(handle).get("created_at", ""), entry.name))
    return [v for _, v in sorted(found)]


def delete_version(name: str, version: str) -> None:
    """Delete a version (it disappears at once, then its files are removed).

    Raises:
        DatasetNotFoundError: If it does not exist.
    """
    dataset = load_dataset(name, version)
    trash = dataset.path.parent / f".deleting-{version}-{uuid.uuid4().hex}"
    os.rename(dataset.path, trash)
    shutil.rmtree(trash, ignore_errors=True)
