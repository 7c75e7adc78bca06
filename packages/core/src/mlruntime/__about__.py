"""The version of the ``mlruntime`` distribution (read by hatchling; the one place it is kept)."""

__version__ = "0.2.0"
