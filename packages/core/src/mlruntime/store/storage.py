"""Where mlruntime keeps its files.

``MLRUNTIME_HOME`` (default ``~/.mlruntime``) is this machine's folder (the warehouse file).
The **storage** is where everything the nodes of a job share lives (run folders, model dirs,
checkpoints): ``mlruntime.init(storage=URI)`` or ``MLRUNTIME_STORAGE``, any pyarrow filesystem
URI (``s3://bucket/prefix``, ``gs://...``, a path on NFS); by default ``MLRUNTIME_HOME``, which
is enough on one machine. Workers read and write it themselves: nothing is relayed through the
driver. These helpers take URIs or local paths alike.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_HOME",
    "HOME_ENV",
    "HOME_MODE",
    "PRIVATE_UMASK",
    "STORAGE_ENV",
    "WRITE_MODES",
    "is_local",
    "is_private",
    "join",
    "makedirs",
    "mlruntime_home",
    "private_files",
    "read_bytes",
    "remove",
    "resolve",
    "set_storage",
    "storage_uri",
    "write_bytes",
]

STORAGE_ENV = "MLRUNTIME_STORAGE"
"""Environment variable naming the storage URI that every node of a job can reach."""

_storage: str | None = None

WRITE_MODES = ("error", "overwrite", "append")
"""How a write treats an existing target: fail, replace it, or add to it."""

HOME_ENV = "MLRUNTIME_HOME"
"""Environment variable of mlruntime's home folder (default ``~/.mlruntime``)."""


DEFAULT_HOME = "~/.mlruntime"
"""The home folder when ``MLRUNTIME_HOME`` is not set."""

HOME_MODE = 0o700
"""The home folder is the user's only: the warehouse, datasets, runs, checkpoints and the
embedded Ray's token inside it are out of other users' reach."""

PRIVATE_UMASK = 0o077
"""Bits taken away from what mlruntime creates in private places: files 0600, folders 0700."""

_checked_homes: set[Path] = set()
_umask_lock = threading.Lock()
_umask_depth = 0
_umask_saved = 0


def mlruntime_home() -> Path:
    """The home folder (``$MLRUNTIME_HOME`` or ``~/.mlruntime``), created if missing.

    A home this creates is readable by the user only (mode 0700), so everything jobs write
    under it is too; the default ``~/.mlruntime`` is also narrowed to 0700 when an older
    version made it wider. A folder the user names in ``MLRUNTIME_HOME`` that already exists
    keeps the mode they gave it.

    Returns:
        The home folder.
    """
    named = os.environ.get(HOME_ENV)
    home = Path(named or DEFAULT_HOME).expanduser()
    if home in _checked_homes and home.is_dir():
        return home
    if not home.is_dir():
        home.mkdir(mode=HOME_MODE, parents=True, exist_ok=True)
    elif not named and sys.platform != "win32":
        info = home.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            home.chmod(HOME_MODE)
    _checked_homes.add(home)
    return home


def set_storage(uri: str | os.PathLike[str] | None) -> None:
    """Use ``uri`` as the storage of this process (``None``: back to ``MLRUNTIME_STORAGE`` or
    ``MLRUNTIME_HOME``). ``mlruntime.init(storage=...)`` calls this."""
    global _storage
    _storage = None if uri is None else os.fspath(uri)


def storage_uri() -> str:
    """The storage: ``init(storage=...)``, else ``MLRUNTIME_STORAGE``, else ``MLRUNTIME_HOME``."""
    return _storage or os.environ.get(STORAGE_ENV) or str(mlruntime_home())


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a path of this machine's filesystem (``file://`` or no scheme)."""
    return "://" not in uri or uri.startswith("file://")


def is_private(uri: str) -> bool:
    """Whether ``uri`` lies inside mlruntime's home on this machine (then what mlruntime
    writes there is the user's only; a storage the user chose elsewhere keeps their umask)."""
    if sys.platform == "win32" or not is_local(uri):
        return False
    path = os.path.realpath(os.path.expanduser(uri.removeprefix("file://")))
    home = os.path.realpath(mlruntime_home())  # also through a symlink (macOS's /tmp)
    return path == home or path.startswith(home + os.sep)


@contextlib.contextmanager
def private_files(uri: str | None = None) -> Iterator[None]:
    """While inside, files this process creates get mode 0600 and folders 0700 (the umask
    gains :data:`PRIVATE_UMASK`), when ``uri`` is inside mlruntime's home (``None``: always).

    The umask belongs to the process, so files other threads create meanwhile are private
    too (never wider). Blocks nest and may overlap across threads: the user's umask comes back
    when the last one leaves. Processes started inside (Ray's raylet and workers) keep it.

    Args:
        uri: Where the block writes; outside the home nothing changes.
    """
    global _umask_depth, _umask_saved
    if sys.platform == "win32" or (uri is not None and not is_private(uri)):
        yield
        return
    with _umask_lock:
        if _umask_depth == 0:
            _umask_saved = os.umask(PRIVATE_UMASK)
            os.umask(_umask_saved | PRIVATE_UMASK)
        _umask_depth += 1
    try:
        yield
    finally:
        with _umask_lock:
            _umask_depth -= 1
            if _umask_depth == 0:
                os.umask(_umask_saved)


def resolve(uri: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path inside it)`` for a URI or a local path."""
    import pyarrow.fs as pafs

    if is_local(uri):
        path = uri.removeprefix("file://")
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended (``/``-separated whatever the scheme)."""
    if is_local(uri):
        return os.path.join(uri, *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def makedirs(uri: str) -> None:
    """Create the folder ``uri`` and its parents (a no-op on object stores that have none);
    inside mlruntime's home it is the user's only (0700)."""
    fs, path = resolve(uri)
    with private_files(uri):
        fs.create_dir(path, recursive=True)


def write_bytes(uri: str, data: bytes) -> None:
    """Write one file (inside mlruntime's home: mode 0600, new folders 0700)."""
    fs, path = resolve(uri)
    parent = posixpath.dirname(path)
    with private_files(uri):
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(path) as out:
            out.write(data)


def read_bytes(uri: str) -> bytes:
    """Read one file.

    Raises:
        FileNotFoundError: If it does not exist.
    """
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as handle:
            return bytes(handle.read())
    except FileNotFoundError:
        raise
    except OSError as exc:
        if "not" in str(exc).lower() and "found" in str(exc).lower():
            raise FileNotFoundError(uri) from exc
        raise


def remove(uri: str) -> None:
    """Delete a folder (recursively) or a file; missing is fine."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)
