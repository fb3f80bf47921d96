"""Checks for runtime settings that are counts (threads, cohort sizes)."""
from __future__ import annotations

from typing import Any

from kdbench.core.errors import KDBenchError


def positive_count(value: Any, key: str) -> int:
    """A runtime setting that is ``auto`` or a positive whole number, here the number (callers handle ``auto``)."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or (isinstance(value, float) and value != n):
        raise KDBenchError(f"{key}={value!r} is not one of: auto, a positive number")
    return n
