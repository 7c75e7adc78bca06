"""mlruntime's LightGBM plugin.

Importing this package does not import lightgbm; the framework is imported by the functions that
need it.
"""

from __future__ import annotations

from mlruntime_lightgbm.__about__ import __version__

__all__ = ["__version__"]
