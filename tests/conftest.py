"""Shared fixtures: configs pointed at a temporary store, with tiny schedules."""
from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.orchestration.config import compose


def tiny_overrides(tmp: Path, epochs: int = 2) -> list[str]:
    return [
        f"paths.results={tmp / 'results'}",
        f"paths.work={tmp / 'work'}",
        "engine.progress=false",
        f"schedule.epochs={epochs}",
        f"schedule.milestones=[{max(epochs - 1, 1) / epochs}]",
        f"teacher.schedule.epochs={epochs}",
        f"teacher.schedule.milestones=[{max(epochs - 1, 1) / epochs}]",
    ]


@pytest.fixture
def make_cfg(tmp_path: Path):
    """``make_cfg(*overrides, epochs=2)``: a resolved config writing under tmp_path."""

    def make(*overrides: str, epochs: int = 2):
        return compose([*tiny_overrides(tmp_path, epochs), *overrides])

    return make


@pytest.fixture(scope="session")
def real_records(tmp_path_factory):
    """Records of real tiny runs (vanilla, kd, dml x seeds 0, 1, 2 on digits, 2 epochs), made once."""
    from kdbench.data import load_data
    from kdbench.experiment.results import load_records
    from kdbench.orchestration.runner import run

    tmp = tmp_path_factory.mktemp("records")
    data = None
    for seed in (0, 1, 2):
        for method in ("vanilla", "kd", "dml"):
            cfg = compose([*tiny_overrides(tmp), f"method={method}", f"seed={seed}"])
            data = data or load_data(cfg)
            run(cfg, data=data)
    return [s.record for s in load_records(tmp / "results")]


def write_records(root: Path, records) -> Path:
    """Store records as files under ``root/runs`` (a results store) and return ``root``; a repeated run id
    gets the store's ``__<n>`` suffix, as ``force=true`` would give it."""
    import json

    (root / "runs").mkdir(parents=True, exist_ok=True)
    for r in records:
        path = root / "runs" / f"{r['run_id']}.json"
        n = 0
        while path.exists():
            path = root / "runs" / f"{r['run_id']}__20990101T000000_0_{n}.json"
            n += 1
        path.write_text(json.dumps(r))
    return root
