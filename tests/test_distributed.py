"""Data-parallel runs under torchrun with 2 CPU processes (gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not found next to the Python interpreter")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _records(root: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((root / "runs").glob("*.json"))]


def test_two_process_run_writes_one_record_and_matches_one_process(tmp_path):
    ov = [*tiny_overrides(tmp_path / "ddp", epochs=5), "method=kd"]
    _torchrun("-m", "kdbench", "-q", "run", *ov)
    (ddp,) = _records(tmp_path / "ddp" / "results")
    assert ddp["environment"]["processes"] == 2 and ddp["status"] == "completed"
    from kdbench.cli import main

    assert main(["-q", "run", *tiny_overrides(tmp_path / "one", epochs=5), "method=kd"]) == 0
    (one,) = _records(tmp_path / "one" / "results")
    assert one["run_id"] == ddp["run_id"]  # the same experiment, on more processes
    a, b = (r["metrics"]["last"]["student"]["test"]["top1"] for r in (ddp, one))
    assert a > 60 and abs(a - b) < 6, (a, b)  # within noise of 359 test images at 5 epochs
    assert not list((tmp_path / "ddp" / "work" / "teachers").glob("*.partial"))


def test_crd_memory_and_parameters_stay_identical_across_processes(tmp_path):
    out = tmp_path / "out.json"
    _torchrun(str(Path(__file__).with_name("ddp_worker.py")), str(out))
    per_rank = json.loads(out.read_text())["per_rank"]
    assert per_rank[0] == pytest.approx(per_rank[1], rel=1e-6, abs=1e-6)


def test_dml_cohort_trains_under_two_processes(tmp_path):
    _torchrun("-m", "kdbench", "-q", "run", *tiny_overrides(tmp_path, epochs=1), "method=dml")
    (rec,) = _records(tmp_path / "results")
    assert rec["status"] == "completed" and "peer1" in rec["metrics"]["last"]
