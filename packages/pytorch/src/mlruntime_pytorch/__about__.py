"""The ``mlruntime-pytorch`` version: the one place it is kept (hatchling reads it)."""

__version__ = "0.3.0"
