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


@pytest.mark.slow
def test_two_process_run_writes_one_record_and_matches_one_process(tmp_path, teacher_cache):
    ov = [*tiny_overrides(tmp_path / "ddp", epochs=5, teachers=teacher_cache), "method=kd"]
    _torchrun("-m", "kdbench", "-q", "run", *ov)
    (ddp,) = _records(tmp_path / "ddp" / "results")
    assert ddp["environment"]["processes"] == 2 and ddp["status"] == "completed"
    from kdbench.cli import main

    assert main(["-q", "run", *tiny_overrides(tmp_path / "one", epochs=5, teachers=teacher_cache), "method=kd"]) == 0
    (one,) = _records(tmp_path / "one" / "results")
    assert one["run_id"] == ddp["run_id"]  # the same experiment, on more processes
    a, b = (r["metrics"]["last"]["student"]["test"]["top1"] for r in (ddp, one))
    assert a > 60 and abs(a - b) < 6, (a, b)  # within noise of 359 test images at 5 epochs
    assert one["teacher"] == ddp["teacher"]  # the teacher the two processes trained, read by the one
    assert not list(teacher_cache.glob("*.partial"))


@pytest.mark.slow
def test_crd_memory_and_parameters_stay_identical_across_processes(tmp_path):
    out = tmp_path / "out.json"
    _torchrun(str(Path(__file__).with_name("ddp_worker.py")), str(out))
    result = json.loads(out.read_text())
    per_rank = result["per_rank"]
    assert per_rank[0] == pytest.approx(per_rank[1], rel=1e-6, abs=1e-6)
    assert result["same_negatives"] is False  # independent negatives per process


@pytest.mark.slow
def test_dml_cohort_trains_under_two_processes(tmp_path):
    _torchrun("-m", "kdbench", "-q", "run", *tiny_overrides(tmp_path, epochs=1), "method=dml")
    (rec,) = _records(tmp_path / "results")
    assert rec["status"] == "completed" and "peer1" in rec["metrics"]["last"]


@pytest.mark.slow
@pytest.mark.usefixtures("default_signals")  # installs the handlers it relies on, restores them
def test_interrupted_two_process_run_checkpoints_one_step_and_resumes_exactly(tmp_path, teacher_cache):
    """Ctrl-C to torchrun: it forwards the signal, the processes agree on a step, rank 0
    checkpoints every process's share of the epoch, and the resumed run ends where an
    uninterrupted one does."""
    import signal
    import time

    import torch

    # 20 short epochs: the signal (sent after the first epoch's checkpoint, then forwarded by the
    # launcher, which may itself wait for a CPU) must land well before training ends: 19 epochs, some
    # 10 s, of margin, where forwarding takes well under one (the run stops within a step of it).
    base = [*tiny_overrides(tmp_path, epochs=20, teachers=teacher_cache), "teacher.schedule.epochs=1",
            "teacher.schedule.milestones=[1.0]", "method=kd", "engine.log_every=1"]  # the teacher only needs to exist
    full = [*base, f"paths.results={tmp_path / 'full'}"]
    _torchrun("-m", "kdbench", "-q", "run", *full)  # also trains the teacher (unless the session has it)
    (done,) = _records(tmp_path / "full")

    cut = [*base, f"paths.results={tmp_path / 'cut'}"]
    ckpt = tmp_path / "work" / "runs" / done["run_id"] / "checkpoint.pt"
    p = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "kdbench", "-q", "run", *cut],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=120)[0]
    assert p.returncode != 0, out[-2000:]
    assert not _records(tmp_path / "cut"), "an interrupted run must leave no record"
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] < 20 and len(state["partial"]["ranks"]) == 2, out[-2000:]
    assert "stopping after this step" in out

    _torchrun("-m", "kdbench", "-q", "run", *cut, "resume=true")
    (resumed,) = _records(tmp_path / "cut")
    assert resumed["metrics"]["last"] == done["metrics"]["last"]
    assert resumed["history"][-1]["train_loss"] == done["history"][-1]["train_loss"]


def test_grad_sync_sets_the_learning_rate_of_a_resumed_optimizer():
    """load_state_dict gives the optimizer new param_groups; the wrapper must follow them
    (a copy taken at construction left resumed DDP runs at the checkpoint's learning rate)."""
    import torch

    from kdbench.compute.distributed import GradSync

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.05, momentum=0.9)
    wrapped = GradSync(opt)
    wrapped.load_state_dict(opt.state_dict())
    for group in wrapped.param_groups:
        group["lr"] = 0.005
    assert opt.param_groups[0]["lr"] == 0.005


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_pipeline_is_sharded_across_two_processes(tmp_path, workers, teacher_cache):
    """The DataLoader path (per-image transforms, ImageNet's) under torchrun: each process
    loads its share of the epoch's order, and together they see the training set once."""
    from tests.helpers import write_image_tree

    write_image_tree(tmp_path / "tree", per_class=20, size=16, classes=("a", "b", "c"))
    _torchrun("-m", "kdbench", "-q", "run", *tiny_overrides(tmp_path, epochs=1, teachers=teacher_cache), "method=kd",
              "dataset=imagefolder", "pair.datasets=[imagefolder]", f"data.source.root={tmp_path / 'tree'}",
              "data.image_size=16", "data.pipeline=dataloader", f"data.source.workers={workers}")
    (rec,) = _records(tmp_path / "results")
    assert rec["status"] == "completed" and rec["environment"]["processes"] == 2
    n = rec["dataset"]["num_train"]
    assert n == 54
    t = rec["timing"]
    assert round(t["images_per_s"] * t["train_time_s"]) == n  # each image once in the epoch, over both processes


@pytest.mark.slow
def test_a_cohort_under_two_processes_records_what_the_runs_record_one_after_another(tmp_path, teacher_cache):
    """Members take turns in the same order on every process, so their collectives line up."""
    ov = [*tiny_overrides(tmp_path, epochs=1, teachers=teacher_cache), "suite.methods=[kd,crd]", "suite.seeds=[0]"]
    _torchrun("-m", "kdbench", "-q", "bench", *ov, f"paths.results={tmp_path / 'cohort'}", "bench.cohort=true")
    _torchrun("-m", "kdbench", "-q", "bench", *ov, f"paths.results={tmp_path / 'solo'}", "bench.cohort=false")
    cohort, solo = _records(tmp_path / "cohort"), _records(tmp_path / "solo")
    assert len(cohort) == len(solo) == 2
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in h]  # noqa: E731
    for a, b in zip(cohort, solo):
        assert a["run_id"] == b["run_id"] and a["environment"]["processes"] == 2
        assert a["engine"]["cohort"] == {"members": 2} and "cohort" not in b["engine"]
        assert a["metrics"] == b["metrics"] and strip(a["history"]) == strip(b["history"])
