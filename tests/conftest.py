"""Shared fixtures: configs pointed at a temporary store, with tiny schedules."""
from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.config import compose


def tiny_overrides(tmp: Path, epochs: int = 2) -> list[str]:
    return [
        f"paths.results={tmp / 'results'}",
        f"paths.work={tmp / 'work'}",
        "engine.progress=false",
        f"schedule.epochs={epochs}",
        f"schedule.milestones=[{max(epochs - 1, 1)}]",
        f"teacher.schedule.epochs={epochs}",
        f"teacher.schedule.milestones=[{max(epochs - 1, 1)}]",
    ]


@pytest.fixture
def make_cfg(tmp_path: Path):
    """``make_cfg(*overrides, epochs=2)``: a resolved config writing under tmp_path."""

    def make(*overrides: str, epochs: int = 2):
        return compose([*tiny_overrides(tmp_path, epochs), *overrides])

    return make
