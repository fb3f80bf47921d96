"""Hydra override strings (``+key=value``, ``~key``, ``group=option``), read the one way every command needs."""
from __future__ import annotations

from typing import Iterable


def override_key(override: str) -> str:
    """The key or group an override sets, without its ``+``/``++``/``~`` prefix: ``+suite.x=1`` -> ``suite.x``."""
    return override.lstrip("+~").split("=", 1)[0]


def override_value(override: str) -> str:
    """What an override sets its key to (empty for a deletion without a value)."""
    return override.split("=", 1)[1] if "=" in override else ""


def given_keys(overrides: Iterable[str]) -> set[str]:
    """Every key or group the command line sets: what a per-pair or per-suite setting must not override."""
    return {override_key(o) for o in overrides}
