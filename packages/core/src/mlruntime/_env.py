"""Switches read from environment variables, parsed one way everywhere."""

from __future__ import annotations

import logging
import os

__all__ = ["env_flag"]

logger = logging.getLogger(__name__)

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


def env_flag(name: str, default: bool = False) -> bool:
    """Read the on/off switch ``name`` from the environment.

    ``1``, ``true``, ``yes`` and ``on`` turn it on; ``0``, ``false``, ``no`` and ``off`` turn it
    off (any case, surrounding spaces ignored). An unset or empty variable gives ``default``;
    any other value gives ``default`` too, with a warning naming the variable (switches are
    read inside workers, where an error would fail a job far from its cause).

    Args:
        name: The variable's name.
        default: The value when the variable is unset or unreadable.

    Returns:
        Whether the switch is on.
    """
    raw = os.environ.get(name)
    value = "" if raw is None else raw.strip().lower()
    if not value:
        return default
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    logger.warning(
        "%s=%r is not an on/off value (1/0, true/false, yes/no, on/off): using %s",
        name,
        raw,
        "on" if default else "off",
    )
    return default
