"""mlruntime's PyTorch plugin.

Importing this package does not import torch; the framework is imported by the functions that
need it.
"""

from __future__ import annotations

from mlruntime_pytorch.__about__ import __version__

__all__ = ["__version__"]
