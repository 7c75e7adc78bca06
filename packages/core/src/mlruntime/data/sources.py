"""Sources: lazily described tables that split into small, picklable fragments.

A :class:`Source` knows its schema, its row count when that is cheap, and its :class:`Fragment` s:
units of parallel reading (a Parquet row group, a CSV file, a slice of an in-memory table, a Ray
block) that read themselves as Arrow record batches in whatever process they are sent to.
"""

from __future__ import annotations

import glob as _glob
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mlruntime.errors import DataError, SourceError

__all__ = [
    "ArrowFragment",
    "ArrowSource",
    "CSVFragment",
    "CSVSource",
    "Fragment",
    "ParquetFragment",
    "ParquetSource",
    "Source",
    "check_same_schema",
    "from_ipc",
    "resolve_filesystem",
    "to_ipc",
]

DEFAULT_ROWS_PER_FRAGMENT = 131_072
"""In-memory tables are cut into fragments of this many rows."""


class Fragment(ABC):
    """A picklable unit of reading. ``num_rows`` is ``None`` when unknown without reading."""

    num_rows: int | None

    @abstractmethod
    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Read the fragment (only ``columns`` when given) as an Arrow table."""

    def count_rows(self) -> int:
        """The number of rows, reading the fragment if it is not known yet."""
        if self.num_rows is None:
            self.num_rows = self.read().num_rows
        return self.num_rows

    @abstractmethod
    def describe(self) -> str:
        """Short human description, for errors and reprs."""

    def narrow(self, start: int, stop: int) -> Fragment | None:
        """A fragment of only rows ``[start, stop)`` if one is cheap to make, else ``None``."""
        return None


class Source(ABC):
    """A table described lazily: schema, cheap row count, and fragments."""

    @property
    @abstractmethod
    def schema(self) -> pa.Schema:
        """The Arrow schema of the rows."""

    @property
    def num_rows(self) -> int | None:
        """Row count if known cheaply (from metadata), else ``None``."""
        fragments = self.fragments()
        if any(f.num_rows is None for f in fragments):
            return None
        return sum(f.num_rows or 0 for f in fragments)

    @abstractmethod
    def fragments(self) -> list[Fragment]:
        """The fragments, in a stable order."""

    @abstractmethod
    def describe(self) -> str:
        """Short human description, for reprs."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


# -- filesystems --------------------------------------------------------------------------------


def resolve_filesystem(
    location: str | os.PathLike[str], filesystem: Any = None
) -> tuple[pafs.FileSystem, str]:
    """Return a pyarrow filesystem and the path on it for a local path or a URI.

    Args:
        location: A local path, or a URI such as ``s3://bucket/key`` or ``memory://folder``.
        filesystem: A ``pyarrow.fs.FileSystem`` or an fsspec filesystem to use instead of
            inferring one from the URI.

    Raises:
        SourceError: If no filesystem can handle the URI.
    """
    location = os.fspath(location)
    if filesystem is not None:
        if not isinstance(filesystem, pafs.FileSystem):  # an fsspec filesystem
            filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
        path = location.split("://", 1)[1] if "://" in location else location
        return filesystem, path
    if "://" not in location:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    try:
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        arrow_error = exc
    try:
        import fsspec

        fs_spec, path = fsspec.core.url_to_fs(location)
    except Exception as exc:
        raise SourceError(
            f"no filesystem can open {location!r}: pyarrow says {arrow_error}; fsspec says {exc}"
        ) from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs_spec)), path


def _is_hidden(path: str) -> bool:
    return any(part.startswith((".", "_")) for part in path.replace("\\", "/").split("/")[-1:])


def _expand_paths(
    locations: Sequence[str | os.PathLike[str]], filesystem: Any, suffixes: tuple[str, ...]
) -> tuple[pafs.FileSystem, list[str]]:
    """Resolve files, folders (recursively, skipping hidden and ``_`` files) and globs."""
    if not locations:
        raise SourceError("no paths given")
    resolved_fs: pafs.FileSystem | None = None
    files: list[str] = []
    for location in locations:
        fs, path = resolve_filesystem(location, filesystem)
        resolved_fs = resolved_fs or fs
        if any(ch in path for ch in "*?["):
            matches = _glob_files(fs, path)
            if not matches:
                raise SourceError(f"no files match {os.fspath(location)!r}")
            files.extend(matches)
            continue
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise SourceError(f"path {os.fspath(location)!r} does not exist")
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=True)
            found = sorted(
                f.path
                for f in fs.get_file_info(selector)
                if f.type == pafs.FileType.File
                and not _is_hidden(f.path)
                and (not suffixes or f.path.lower().endswith(suffixes))
            )
            if not found:
                raise SourceError(
                    f"folder {os.fspath(location)!r} holds no {'/'.join(suffixes)} files"
                )
            files.extend(found)
        else:
            files.append(path)
    assert resolved_fs is not None
    return resolved_fs, files


def _glob_files(fs: pafs.FileSystem, pattern: str) -> list[str]:
    if isinstance(fs, pafs.LocalFileSystem):
        return sorted(p for p in _glob.glob(pattern, recursive=True) if os.path.isfile(p))
    import fnmatch

    base = pattern
    while any(ch in base for ch in "*?["):
        base = base.rsplit("/", 1)[0] if "/" in base else ""
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    infos = fs.get_file_info(selector)
    return sorted(
        f.path for f in infos if f.type == pafs.FileType.File and fnmatch.fnmatch(f.path, pattern)
    )


def check_same_schema(schemas: Sequence[tuple[str, pa.Schema]]) -> pa.Schema:
    """Return the common schema, or raise naming the first part whose schema differs.

    Raises:
        DataError: If two parts have different field names or types.
    """
    first_name, first = schemas[0]
    for name, schema in schemas[1:]:
        if schema.equals(first, check_metadata=False):
            continue
        a, b = set(first.names), set(schema.names)
        if a != b:
            detail = f"columns {sorted(a ^ b)} are in only one of them"
        else:
            diffs = [
                f"{n}: {first.field(n).type} vs {schema.field(n).type}"
                for n in first.names
                if first.field(n).type != schema.field(n).type
            ]
            detail = "; ".join(diffs) or "column order differs"
        raise DataError(
            f"mixed schemas: {name!r} differs from {first_name!r} ({detail}); make the inputs "
            "share one schema (cast, or read them as separate sources)"
        )
    return first


# -- Parquet ------------------------------------------------------------------------------------


@dataclass
class ParquetFragment(Fragment):
    """One row group of one Parquet file."""

    path: str
    row_group: int
    num_rows: int | None
    filesystem: pafs.FileSystem = field(repr=False)

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        return read_row_groups(self.filesystem, self.path, [self.row_group], columns)

    def describe(self) -> str:
        return f"{self.path}[row group {self.row_group}]"


def read_row_groups(
    fs: pafs.FileSystem, path: str, row_groups: list[int], columns: Sequence[str] | None
) -> pa.Table:
    """Read row groups of one Parquet file (columns decoded in parallel).

    Raises:
        SourceError: If the file cannot be read.
    """
    try:
        with fs.open_input_file(path) as handle:
            reader = pq.ParquetFile(handle)
            return reader.read_row_groups(
                row_groups, columns=list(columns) if columns is not None else None
            )
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"cannot read Parquet file {path!r}: {exc}") from exc


class ParquetSource(Source):
    """Parquet files, folders (read recursively) and globs, local or on any filesystem.

    Args:
        paths: One location or several: files, folders, globs, or URIs (``s3://...``).
        filesystem: A pyarrow or fsspec filesystem to read with (default: from the URI).

    Raises:
        SourceError: (on first use) for a missing path, an empty folder or an unreadable file.
        DataError: (on first use) when files have different schemas.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        filesystem: Any = None,
    ) -> None:
        self._locations = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self._filesystem_arg = filesystem
        self._resolved: tuple[pa.Schema, list[Fragment]] | None = None

    def _resolve(self) -> tuple[pa.Schema, list[Fragment]]:
        if self._resolved is None:
            fs, files = _expand_paths(self._locations, self._filesystem_arg, (".parquet", ".pq"))
            with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
                metas = list(pool.map(lambda p: _read_footer(fs, p), files))
            schema = check_same_schema([(p, m.schema.to_arrow_schema()) for p, m in metas])
            fragments: list[Fragment] = [
                ParquetFragment(path, i, meta.row_group(i).num_rows, fs)
                for path, meta in metas
                for i in range(meta.num_row_groups)
            ]
            self._resolved = (schema, fragments)
        return self._resolved

    @property
    def schema(self) -> pa.Schema:
        return self._resolve()[0]

    def fragments(self) -> list[Fragment]:
        return self._resolve()[1]

    @property
    def files(self) -> list[str]:
        """The resolved file paths, in reading order."""
        return sorted({f.path for f in self.fragments()})  # type: ignore[attr-defined]

    def describe(self) -> str:
        shown = ", ".join(os.fspath(p) for p in self._locations[:3])
        more = f" (+{len(self._locations) - 3})" if len(self._locations) > 3 else ""
        return f"parquet {shown}{more}"


def _read_footer(fs: pafs.FileSystem, path: str) -> tuple[str, pq.FileMetaData]:
    try:
        with fs.open_input_file(path) as handle:
            return path, pq.read_metadata(handle)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{path!r} is not a readable Parquet file: {exc}") from exc


# -- CSV ----------------------------------------------------------------------------------------


CSV_RANGE_BYTES = 64 * 1024 * 1024
"""CSV files are read in byte ranges of at most this size (one fragment each)."""

CSV_MIN_RANGE_BYTES = 1024 * 1024
"""Files are cut into up to 16 ranges, but none smaller than this."""


@dataclass
class CSVFragment(Fragment):
    """Bytes ``[start, stop)`` of one CSV file, parsed with fixed column types so every
    fragment agrees. ``stop=None``: to the end.

    A range holds the records whose first byte lies in it: it starts after the first newline
    at or after ``start - 1`` and ends with the record that crosses ``stop``. Finding those
    two newlines reads a few bytes around each cut; nothing else of the file is parsed until
    the fragment is read (on a worker). Cutting by bytes assumes no quoted field holds a
    newline; pass ``CSVSource(..., split=False)`` for such files.
    """

    path: str
    filesystem: pafs.FileSystem = field(repr=False)
    column_types: dict[str, pa.DataType] = field(repr=False)
    delimiter: str = ","
    num_rows: int | None = None
    start: int = 0
    stop: int | None = None
    nbytes: int | None = None

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        names = list(self.column_types)
        convert = pcsv.ConvertOptions(
            column_types=self.column_types,
            include_columns=list(columns) if columns is not None else None,
        )
        parse = pcsv.ParseOptions(delimiter=self.delimiter)
        try:
            if self.start == 0 and self.stop is None:
                with self.filesystem.open_input_stream(self.path) as stream:
                    table = pcsv.read_csv(stream, parse_options=parse, convert_options=convert)
            else:
                data = self._range_bytes()
                read = pcsv.ReadOptions(column_names=names, skip_rows=1 if self.start == 0 else 0)
                if not data or (self.start == 0 and _one_line(data)):  # no records
                    table = pa.schema(list(self.column_types.items())).empty_table()
                    if columns is not None:
                        table = table.select(list(columns))
                else:
                    table = pcsv.read_csv(
                        pa.BufferReader(data),
                        read_options=read,
                        parse_options=parse,
                        convert_options=convert,
                    )
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"cannot read CSV file {self.path!r}: {exc}") from exc
        self.num_rows = table.num_rows
        return table

    def _range_bytes(self) -> bytes:
        with self.filesystem.open_input_file(self.path) as handle:
            size = handle.size()
            begin = 0 if self.start == 0 else _line_start_at(handle, self.start, size)
            end = size if self.stop is None else _line_start_at(handle, self.stop, size)
            if end <= begin:
                return b""
            return bytes(handle.read_at(end - begin, begin))

    def describe(self) -> str:
        if self.start == 0 and self.stop is None:
            return self.path
        return f"{self.path}[bytes {self.start}:{self.stop if self.stop is not None else ''}]"


def _one_line(data: bytes) -> bool:
    """Whether ``data`` is at most one line (a header without records)."""
    return not data.rstrip(b"\r\n").count(b"\n")


def _line_start_at(handle: Any, position: int, size: int) -> int:
    """The first record start at or after ``position``: just past the first newline at or
    after ``position - 1`` (so a record starting exactly at ``position`` counts)."""
    offset = position - 1
    while offset < size:
        block = bytes(handle.read_at(min(65536, size - offset), offset))
        found = block.find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += len(block)
    return size


class CSVSource(Source):
    """CSV files, folders and globs. Column types are inferred from the first file's first
    block and then fixed for every file.

    Uncompressed files are cut into byte ranges (up to 64 MiB, up to 16 per file, at least
    1 MiB), so several workers can read one large file and the driver never parses rows:
    row counts are learned when the ranges are read.

    Args:
        paths: Files, folders, globs or URIs.
        filesystem: A pyarrow or fsspec filesystem.
        delimiter: Field delimiter.
        column_types: Types to force for some columns (the rest are inferred).
        split: Cut files into byte ranges (``False`` for files whose quoted fields hold
            newlines: each file is then read whole).
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        filesystem: Any = None,
        delimiter: str = ",",
        column_types: dict[str, pa.DataType] | None = None,
        split: bool = True,
    ) -> None:
        self._locations = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self._filesystem_arg = filesystem
        self._delimiter = delimiter
        self._column_types = dict(column_types or {})
        self._split = split
        self._resolved: tuple[pa.Schema, list[Fragment]] | None = None

    def _resolve(self) -> tuple[pa.Schema, list[Fragment]]:
        if self._resolved is None:
            fs, files = _expand_paths(self._locations, self._filesystem_arg, (".csv", ".csv.gz"))
            try:
                with fs.open_input_stream(files[0]) as stream:
                    reader = pcsv.open_csv(
                        stream,
                        parse_options=pcsv.ParseOptions(delimiter=self._delimiter),
                        convert_options=pcsv.ConvertOptions(column_types=self._column_types),
                    )
                    schema = reader.schema
            except (OSError, pa.ArrowException) as exc:
                raise SourceError(f"cannot read CSV file {files[0]!r}: {exc}") from exc
            types = {f.name: f.type for f in schema}
            fragments: list[Fragment] = []
            sizes = [info.size for info in fs.get_file_info(files)]
            for path, size in zip(files, sizes, strict=True):
                fragments.extend(self._ranges(fs, path, types, size))
            self._resolved = (schema, fragments)
        return self._resolved

    def _ranges(
        self, fs: pafs.FileSystem, path: str, types: dict[str, pa.DataType], size: int | None
    ) -> list[Fragment]:
        whole = CSVFragment(path, fs, types, self._delimiter, nbytes=size)
        if not self._split or size is None or path.lower().endswith(".gz"):
            return [whole]
        step = max(CSV_MIN_RANGE_BYTES, min(CSV_RANGE_BYTES, -(-size // 16)))
        if size <= step:
            return [whole]
        return [
            CSVFragment(
                path,
                fs,
                types,
                self._delimiter,
                start=begin,
                stop=min(begin + step, size) if begin + step < size else None,
                nbytes=min(step, size - begin),
            )
            for begin in range(0, size, step)
        ]

    @property
    def schema(self) -> pa.Schema:
        return self._resolve()[0]

    def fragments(self) -> list[Fragment]:
        return self._resolve()[1]

    def describe(self) -> str:
        return f"csv {', '.join(os.fspath(p) for p in self._locations[:3])}"


# -- in-memory Arrow ----------------------------------------------------------------------------


class ArrowFragment(Fragment):
    """A slice of an in-memory Arrow table. Pickles only its own rows (Arrow IPC)."""

    def __init__(self, table: pa.Table, label: str = "arrow") -> None:
        self.table = table
        self.num_rows = table.num_rows
        self.label = label

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        return self.table if columns is None else self.table.select(list(columns))

    def describe(self) -> str:
        return f"{self.label}[{self.num_rows} rows]"

    def narrow(self, start: int, stop: int) -> ArrowFragment:
        return ArrowFragment(self.table.slice(start, stop - start), self.label)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_arrow_fragment_from_ipc, (to_ipc(self.table), self.label))


def _arrow_fragment_from_ipc(data: Any, label: str) -> ArrowFragment:
    return ArrowFragment(from_ipc(data), label)


def to_ipc(rows: pa.Table | pa.RecordBatch) -> pa.Buffer:
    """The rows as one Arrow IPC stream: only these rows (a slice pickled or put as is would
    carry its parent's whole buffers)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        if isinstance(rows, pa.RecordBatch):
            writer.write_batch(rows)
        else:
            writer.write_table(rows)
    return sink.getvalue()


def from_ipc(data: Any) -> pa.Table:
    """The table in an Arrow IPC stream (bytes or a buffer; zero-copy over a buffer)."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class ArrowSource(Source):
    """An in-memory Arrow table (pandas and polars frames are converted to one once).

    Args:
        table: The table.
        label: What to call it in reprs (``"pandas.DataFrame"`` ...).
        rows_per_fragment: Size of the fragments it is cut into.
    """

    def __init__(
        self,
        table: pa.Table,
        label: str = "arrow",
        rows_per_fragment: int = DEFAULT_ROWS_PER_FRAGMENT,
    ) -> None:
        self.table = table
        self.label = label
        self._rows_per_fragment = max(1, rows_per_fragment)

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def fragments(self) -> list[Fragment]:
        n, step = self.table.num_rows, self._rows_per_fragment
        return [ArrowFragment(self.table.slice(i, step), self.label) for i in range(0, n, step)]

    def describe(self) -> str:
        return f"{self.label} ({self.table.num_rows} rows)"
