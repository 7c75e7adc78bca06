"""Versioned datasets: a name and immutable versions, each a folder of Parquet files + manifest.

Layout: ``<storage>/datasets/<name>/<version>/{part-*.parquet, manifest.json}`` under the job
storage (``mlruntime.init(storage=...)``; by default ``MLRUNTIME_HOME``), so every node of a
cluster reads the same versions. A version is visible only once its manifest exists. On a local
filesystem it is written into a hidden staging folder and appears by one atomic rename, so a
crash leaves no visible version and two creators of one version cannot both succeed; on an
object store its parts are written in place (named per writer) and the manifest, written last,
publishes it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlruntime.__about__ import __version__
from mlruntime.data.connector import DataConnector
from mlruntime.data.sources import ParquetSource
from mlruntime.errors import ConfigError, DataError, DatasetExistsError, DatasetNotFoundError
from mlruntime.store import storage
from mlruntime.store.publish import fsync_dir, new_staging, publish_dir, remove_stale_staging

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


def datasets_root() -> str:
    """``<storage>/datasets`` (a local path or a URI), created if missing."""
    root = storage.join(storage.storage_uri(), "datasets")
    storage.makedirs(root)
    return root


def _manifest(path: str) -> dict[str, Any] | None:
    """The manifest of the version folder ``path``, or ``None`` if it has none (yet)."""
    try:
        return dict(json.loads(storage.read_bytes(storage.join(path, MANIFEST))))
    except FileNotFoundError:
        return None


def _subfolders(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return [e.base_name for e in entries if e.type == pafs.FileType.Directory]


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
        path: Its folder (a local path or a URI in the storage).
        manifest: The parsed manifest (schema, num_rows, files with checksums, origin,
            created_at, mlruntime version).
    """

    name: str
    version: str
    path: str
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
    def files(self) -> list[str]:
        """The Parquet files (local paths or URIs), in order."""
        return [storage.join(self.path, f["name"]) for f in self.manifest["files"]]

    def to_source(self) -> ParquetSource:
        """A source over the version's files (each worker reads its part from storage)."""
        return ParquetSource(self.files)

    @property
    def read(self) -> DatasetReader:
        """A DataConnector over this version (Snowflake's ``Dataset.read``): ``to_pandas``,
        ``to_torch_dataset``, ``to_tf_dataset`` ..., plus ``files()``."""
        return DatasetReader([self.to_source()], dataset=self)

    # -- Snowflake's Dataset shape: a dataset with a selected version ----------------------

    @property
    def fully_qualified_name(self) -> str:
        """The dataset's name (Snowflake's ``fully_qualified_name``)."""
        return self.name

    @property
    def selected_version(self) -> DatasetVersion:
        """The version this object reads (Snowflake's ``Dataset.selected_version``)."""
        return DatasetVersion(self)

    def list_versions(self) -> list[str]:
        """Every version of this dataset, oldest name first."""
        return list_versions(self.name)

    def select_version(self, version: str) -> Dataset:
        """The same dataset with ``version`` selected (a new object; this one is unchanged).

        Raises:
            DatasetNotFoundError: If the version does not exist.
        """
        return _load(self.name, version)

    def create_version(self, version: str, input_dataframe: Any, **version_kwargs: Any) -> Dataset:
        """Create ``version`` of this dataset from data and return it selected (this object
        keeps its own version), as Snowflake's ``Dataset.create_version``.

        Raises:
            DatasetExistsError: If the version exists.
        """
        return create_from_dataframe(self.name, version, input_dataframe, **version_kwargs)

    def verify(self) -> None:
        """Check every file's size and SHA-256 against the manifest.

        Raises:
            DataError: If a file is missing or changed.
        """
        for entry in self.manifest["files"]:
            path = storage.join(self.path, entry["name"])
            try:
                digest = _sha256(path)
            except FileNotFoundError:
                raise DataError(
                    f"dataset {self.name}/{self.version}: {entry['name']} is missing"
                ) from None
            if digest != entry["sha256"]:
                raise DataError(
                    f"dataset {self.name}/{self.version}: {entry['name']} does not match its "
                    "checksum (the version was modified after creation)"
                )

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, version={self.version!r}, rows={self.num_rows})"


class DatasetVersion:
    """One version of a dataset as Snowflake describes it: ``name``, ``created_on``,
    ``label_cols``, ``exclude_cols``, ``comment``."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset

    @property
    def name(self) -> str:
        """The version string."""
        return self._dataset.version

    @property
    def created_on(self) -> _dt.datetime:
        """When the version was published."""
        return _dt.datetime.fromisoformat(self._dataset.manifest["created_at"])

    @property
    def label_cols(self) -> list[str]:
        """Label columns given at creation (recorded, not removed from reads)."""
        return list(self._dataset.manifest.get("properties", {}).get("label_cols", []))

    @property
    def exclude_cols(self) -> list[str]:
        """Columns to exclude given at creation (recorded, not removed from reads)."""
        return list(self._dataset.manifest.get("properties", {}).get("exclude_cols", []))

    @property
    def comment(self) -> str | None:
        """Free text: the manifest's origin."""
        return self._dataset.manifest.get("origin")

    def url(self) -> str:
        """Where the version's files are (a local path or a storage URI)."""
        return self._dataset.path

    def __repr__(self) -> str:
        return f"DatasetVersion(dataset={self._dataset.name!r}, version={self.name!r})"


class DatasetReader(DataConnector):
    """What ``Dataset.read`` returns: a DataConnector over one dataset version.

    Args:
        sources: The version's source.
        dataset: The version.
    """

    def __init__(self, sources: Any, *, dataset: Dataset) -> None:
        super().__init__(sources)
        self.dataset = dataset

    def files(self) -> list[str]:
        """The version's Parquet files (paths on :meth:`filesystem`), in order."""
        fs_path = storage.resolve(self.dataset.path)[1]
        return [f"{fs_path}/{f['name']}" for f in self.dataset.manifest["files"]]

    def filesystem(self) -> Any:
        """The pyarrow filesystem :meth:`files` are on (``pq.ParquetDataset(reader.files(),
        filesystem=reader.filesystem())``)."""
        return storage.resolve(self.dataset.path)[0]

    def to_snowpark_dataframe(self, only_feature_cols: bool = False) -> Any:
        """The version as a warehouse DataFrame (lazy, read from its files by DuckDB).

        Args:
            only_feature_cols: Leave out the version's label and exclude columns.
        """
        import pyarrow.dataset as pads

        from mlruntime.store.session import get_active_session

        data = pads.dataset(self.files(), filesystem=self.filesystem(), format="parquet")
        from mlruntime.store.dataframe import DataFrame

        session = get_active_session()
        frame = DataFrame(session.connection.from_arrow(data), session)
        if only_feature_cols:
            version = self.dataset.selected_version
            drop = [*version.label_cols, *version.exclude_cols]
            if drop:
                frame = frame.drop(drop)
        return frame

    def to_torch_datapipe(self, *, batch_size: int, shuffle: bool = False, **kwargs: Any) -> Any:
        """Deprecated in Snowflake: the same as ``to_torch_dataset``."""
        return self.to_torch_dataset(batch_size=batch_size, shuffle=shuffle, **kwargs)


def _sha256(path: str) -> str:
    import pyarrow.fs as pafs

    fs, inner = storage.resolve(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        raise FileNotFoundError(path)
    digest = hashlib.sha256()
    with fs.open_input_stream(inner) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class VersionWriter:
    """Stages one version's Parquet parts; :meth:`commit` publishes it (one rename on a local
    filesystem, the manifest written last on an object store).

    Attributes:
        staging: Where the parts are written (a local path or a URI): a hidden folder next to
            the version on a local filesystem, the version's own folder on an object store.
    """

    def __init__(self, name: str, version: str) -> None:
        self.name = validate_name(name, "dataset name")
        self.version = validate_name(version, "dataset version")
        root = datasets_root()
        self.final = storage.join(root, name, version)
        self.local = storage.is_local(root)
        if _manifest(self.final) is not None:
            raise DatasetExistsError(
                f"dataset {name!r} version {version!r} already exists; versions are immutable, "
                "create a new version"
            )
        self.tag = uuid.uuid4().hex[:8]
        with storage.private_files(self.final):  # inside mlruntime's home: 0700 / 0600
            if self.local:
                parent = Path(root) / name
                parent.mkdir(parents=True, exist_ok=True)
                remove_stale_staging(parent, ".staging-*", STALE_STAGING_SECONDS)
                self.staging = str(new_staging(parent, version))
            else:
                self.staging = self.final  # parts in place; invisible until the manifest exists
            self.fs, self._staging_path = storage.resolve(self.staging)
            self.fs.create_dir(self._staging_path, recursive=True)
        self.schema: pa.Schema | None = None
        self._parts: list[str] = []

    def _part_name(self, part: int) -> str:
        return f"part-{part:05d}.parquet" if self.local else f"part-{part:05d}-{self.tag}.parquet"

    def write_part(self, table: pa.Table, part: int) -> None:
        """Write one part file (parts are ordered by number)."""
        if self.schema is None:
            self.schema = table.schema
        elif not table.schema.equals(self.schema, check_metadata=False):
            raise DataError(f"part {part} has schema {table.schema}, expected {self.schema}")
        name = self._part_name(part)
        path = f"{self._staging_path}/{name}"
        with storage.private_files(self.final):
            pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS, filesystem=self.fs)
        self._parts.append(name)

    def add_staged(self, name: str) -> None:
        """Adopt a part file another process (a sink's worker) wrote straight into
        :attr:`staging` as ``name``: only its Parquet footer is read, its data is neither read
        nor copied. Parts are ordered by name.

        Args:
            name: The file's name inside :attr:`staging`.

        Raises:
            FileNotFoundError: If there is no such file.
            DataError: If its schema differs from the parts' before it.
        """
        path = f"{self._staging_path}/{name}"
        schema = pq.read_schema(path, filesystem=self.fs)
        if self.schema is None:
            self.schema = schema
        elif not schema.equals(self.schema, check_metadata=False):
            raise DataError(f"part {name} has schema {schema}, expected {self.schema}")
        self._parts.append(name)

    def add_file(self, path: str | os.PathLike[str], part: int) -> None:
        """Add an already written Parquet file as part ``part`` (moved when on this machine)."""
        if self.local:
            name = self._part_name(part)
            os.rename(path, os.path.join(self.staging, name))
            self._parts.append(name)
        else:
            self.write_part(pq.read_table(path), part)

    def commit(self, origin: str, properties: dict[str, Any] | None = None) -> Dataset:
        """Write the manifest (with JSON-able ``properties``) and publish the version.

        Raises:
            DatasetExistsError: If another writer published the same version first.
        """
        files, rows = [], 0
        for name in sorted(self._parts):
            path = f"{self._staging_path}/{name}"
            meta = pq.read_metadata(path, filesystem=self.fs)
            rows += meta.num_rows
            if self.schema is None:
                self.schema = meta.schema.to_arrow_schema()
            files.append(
                {
                    "name": name,
                    "rows": meta.num_rows,
                    "bytes": self.fs.get_file_info(path).size,
                    "sha256": _sha256(storage.join(self.staging, name)),
                }
            )
            if self.local:
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
            "properties": dict(properties or {}),
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "mlruntime_version": __version__,
        }
        payload = json.dumps(manifest, indent=2).encode()
        if self.local:
            with (
                storage.private_files(self.final),
                open(os.path.join(self.staging, MANIFEST), "wb") as handle,
            ):
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            fsync_dir(self.staging)
            try:
                publish_dir(Path(self.staging), Path(self.final), replace=False)
            except FileExistsError as exc:
                raise DatasetExistsError(
                    f"dataset {self.name!r} version {self.version!r} was created by another writer"
                ) from exc
        else:
            if _manifest(self.final) is not None:
                self.abort()
                raise DatasetExistsError(
                    f"dataset {self.name!r} version {self.version!r} was created by another writer"
                )
            storage.write_bytes(storage.join(self.final, MANIFEST), payload)
        return Dataset(self.name, self.version, self.final, manifest)

    def abort(self) -> None:
        """Remove the staged files (on an object store: this writer's parts)."""
        if self.local:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        for name in self._parts:
            try:
                self.fs.delete_file(f"{self._staging_path}/{name}")
            except OSError:
                pass


def create_from_dataframe(*args: Any, origin: str | None = None, **kwargs: Any) -> Dataset:
    """Create dataset version ``name``/``version`` from data, atomically.

    Called as ``create_from_dataframe(name, version, input_dataframe)`` or, as in Snowflake,
    ``create_from_dataframe(session, name, version, input_dataframe, **version_kwargs)`` (the
    session is accepted and unused: datasets live on mlruntime's storage; Snowflake's
    ``shuffle``, ``exclude_cols``, ``label_cols``, ``comment`` ... are recorded in the
    manifest's origin text, not applied).

    Args:
        name: Dataset name.
        version: Version string (immutable once created).
        input_dataframe: A DuckDB relation or DataFrame, pandas/polars/Arrow frame,
            DataConnector or source.
        origin: Free text recorded in the manifest (default: a description of the input).

    Returns:
        The new :class:`Dataset`.

    Raises:
        ConfigError: For an invalid name or version.
        DatasetExistsError: If the version exists (or another writer created it first).
    """
    args = _without_session(args)
    names = ("name", "version", "input_dataframe")
    values = dict(zip(names, args, strict=False))
    for key in names[len(args) :]:
        if key not in kwargs:
            raise ConfigError(f"create_from_dataframe() needs {key}")
        values[key] = kwargs.pop(key)
    if len(args) > len(names):
        raise ConfigError("create_from_dataframe() takes (session,) name, version, input_dataframe")
    name, version, input_dataframe = values["name"], values["version"], values["input_dataframe"]
    properties: dict[str, Any] = {
        k: list(kwargs[k] or []) for k in ("label_cols", "exclude_cols") if k in kwargs
    }
    if kwargs and origin is None:
        origin = "version_kwargs " + ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
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
        return writer.commit(origin=description, properties=properties)
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


def load_dataset(*args: Any, **kwargs: Any) -> Dataset:
    """Open a dataset version: ``load_dataset(name, version=None)`` (default: the most recently
    created) or, as in Snowflake, ``load_dataset(session, name, version)``.

    Raises:
        DatasetNotFoundError: If the dataset or version does not exist (lists what does).
        ConfigError: For missing or extra arguments.
    """
    args = _without_session(args)
    if not args and "name" not in kwargs:
        raise ConfigError("load_dataset() needs the dataset name")
    if len(args) > 2:
        raise ConfigError("load_dataset() takes (session,) name, version")
    name = args[0] if args else kwargs.pop("name")
    version = args[1] if len(args) > 1 else kwargs.pop("version", None)
    if kwargs:
        raise ConfigError(f"load_dataset() got unexpected arguments {sorted(kwargs)}")
    return _load(name, version)


def _without_session(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` without a leading warehouse session (Snowflake's session-first signatures)."""
    if args and not isinstance(args[0], (str, bytes)) and hasattr(args[0], "sql"):
        return args[1:]
    return args


def _load(name: str, version: str | None) -> Dataset:
    validate_name(name, "dataset name")
    if version is None:
        versions = list_versions(name)
        if not versions:
            raise DatasetNotFoundError(
                f"dataset {name!r} does not exist; datasets: {list_datasets() or 'none'}"
            )
        version = versions[-1]
    validate_name(version, "dataset version")
    path = storage.join(datasets_root(), name, version)
    manifest = _manifest(path)
    if manifest is None:
        if not list_versions(name):
            raise DatasetNotFoundError(
                f"dataset {name!r} does not exist; datasets: {list_datasets() or 'none'}"
            )
        raise DatasetNotFoundError(
            f"dataset {name!r} has no version {version!r}; versions: "
            f"{list_versions(name) or 'none'}"
        )
    return Dataset(name, version, path, manifest)


def list_datasets() -> list[str]:
    """Names of datasets with at least one version."""
    names = [n for n in _subfolders(datasets_root()) if not n.startswith(".")]
    return sorted(n for n in names if _NAME_RE.match(n) and list_versions(n))


def list_versions(name: str) -> list[str]:
    """Versions of a dataset, oldest first (by creation time)."""
    validate_name(name, "dataset name")
    folder = storage.join(datasets_root(), name)
    found = []
    for entry in _subfolders(folder):
        if entry.startswith("."):
            continue
        manifest = _manifest(storage.join(folder, entry))
        if manifest is not None:
            found.append((manifest.get("created_at", ""), entry))
    return [v for _, v in sorted(found)]


def delete_version(name: str, version: str) -> None:
    """Delete a version (it disappears at once, then its files are removed).

    Raises:
        DatasetNotFoundError: If it does not exist.
    """
    dataset = load_dataset(name, version)
    if storage.is_local(dataset.path):
        trash = Path(dataset.path).parent / f".deleting-{version}-{uuid.uuid4().hex}"
        os.rename(dataset.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return
    storage.remove(storage.join(dataset.path, MANIFEST))  # invisible from here on
    storage.remove(dataset.path)
