"""One way to publish files atomically: stage a complete folder next to its target, then one
rename. Datasets, sinks and checkpoints all publish through here, so a crash at any point leaves
either the old content or the new, never half of it."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

__all__ = ["fsync_dir", "new_staging", "publish_dir", "remove_stale_staging"]


def new_staging(parent: str | os.PathLike[str], label: str) -> Path:
    """Create and return a hidden, uniquely named folder in ``parent`` (created if missing), on
    the same filesystem as the targets published from it, so the final rename is atomic."""
    folder = Path(parent)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".staging-{label}-{uuid.uuid4().hex}"
    staging.mkdir()
    return staging


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (new names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_dir(staging: Path, target: Path, *, replace: bool) -> Path:
    """Move the complete folder ``staging`` to ``target`` in one rename.

    Args:
        staging: A folder made by :func:`new_staging` in ``target``'s parent.
        target: Where the content appears.
        replace: Replace an existing ``target`` (the old one stays whole until the new one is
            in place, and is restored if the rename fails); otherwise an existing target is an
            error.

    Returns:
        ``target``.

    Raises:
        FileExistsError: If ``target`` exists (or appears meanwhile) and ``replace`` is false;
            ``staging`` is then removed.
    """
    if not replace:
        try:
            if target.exists():
                raise FileExistsError(f"{target} already exists")
            os.rename(staging, target)  # fails if another writer's non-empty target appeared
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise FileExistsError(f"{target} already exists") from exc
        fsync_dir(target.parent)
        return target
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def remove_stale_staging(parent: str | os.PathLike[str], pattern: str, max_age_s: float) -> None:
    """Remove what a crashed writer left behind: the entries of the local folder ``parent``
    matching ``pattern`` (a glob such as ``".staging-*"``) not modified for ``max_age_s``
    seconds. Errors are ignored (another process may be removing them too).

    Args:
        parent: The folder holding staging folders.
        pattern: Which of its entries are staging folders.
        max_age_s: Age above which one is considered abandoned; choose it well above the
            longest write that may still be filling one.
    """
    now = time.time()
    for entry in Path(parent).glob(pattern):
        try:
            if now - entry.stat().st_mtime > max_age_s:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass
