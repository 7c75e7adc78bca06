"""Where mlruntime keeps its files: ``MLRUNTIME_HOME`` (default ``~/.mlruntime``) holds the
warehouse, datasets, run folders and sink staging."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME_ENV", "WRITE_MODES", "mlruntime_home"]

WRITE_MODES = ("error", "overwrite", "append")
"""How a write treats an existing target: fail, replace it, or add to it."""

HOME_ENV = "MLRUNTIME_HOME"
"""Environment variable of mlruntime's home folder (default ``~/.mlruntime``)."""


def mlruntime_home() -> Path:
    """The home folder (``$MLRUNTIME_HOME`` or ``~/.mlruntime``), created if missing."""
    home = Path(os.environ.get(HOME_ENV) or "~/.mlruntime").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
