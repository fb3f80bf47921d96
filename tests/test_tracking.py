"""Live trackers: TensorBoard event files and the hook other trackers use; never part of a run's identity."""
from __future__ import annotations

import pytest

from kdbench import KDBenchError
from kdbench.orchestration.runner import run
from kdbench.training.tracking import TRACKERS, register_tracker, scalars


def test_scalars_flatten_a_row_and_drop_what_is_not_a_finite_number():
    row = {"epoch": 1, "lr": 0.1, "images_per_s": 50.0, "train_loss": {"ce": 1.5, "kd": float("nan")},
           "train_top1": None, "student": {"val": None, "test": {"top1": 40.0, "teacher_agreement": None}}}
    assert scalars("main", row) == {"loss/ce": 1.5, "lr": 0.1, "images_per_s": 50.0, "student/test/top1": 40.0}
    assert set(scalars("hint", row)) == {"hint/loss/ce", "hint/lr", "hint/images_per_s", "hint/student/test/top1"}


@pytest.mark.usefixtures("teacher_cache")
def test_tensorboard_gets_every_epoch_and_the_run_id_does_not_change(make_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain = run(make_cfg("method=kd"))
    tracked = run(make_cfg("method=kd", "engine.track=[tensorboard]", f"paths.results={tmp_path / 'other'}"))
    assert tracked["run_id"] == plain["run_id"]
    assert tracked["metrics"] == plain["metrics"]  # trackers only read
    events = EventAccumulator(str(tmp_path / "work" / "tensorboard" / plain["run_id"]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/ce", "loss/kd", "lr", "images_per_s", "train/top1", "student/test/top1", "student/val/top1"} <= tags
    acc = events.Scalars("student/test/top1")
    assert [e.step for e in acc] == [1, 2]
    assert [round(e.value, 4) for e in acc] == [round(h["student"]["test"]["top1"], 4) for h in plain["history"]]


@pytest.mark.usefixtures("teacher_cache")
def test_a_plug_in_tracker_gets_each_epoch_and_one_that_fails_costs_nothing(make_cfg, tmp_path):
    calls = []

    class Recorder:
        def __init__(self, run_id, cfg):
            self.run_id = run_id

        def log_epoch(self, step, stage, row):
            calls.append((self.run_id, step, stage, row["epoch"]))

        def close(self):
            calls.append("closed")

    class Broken(Recorder):
        def log_epoch(self, step, stage, row):
            raise RuntimeError("disk full")

    register_tracker("test-recorder")(Recorder)
    register_tracker("test-broken")(Broken)
    try:
        rec = run(make_cfg("method=fitnet", "method.stages=2", "method.init_epochs=1",
                           "engine.track=[test-recorder,test-broken]"))
    finally:
        for name in ("test-recorder", "test-broken"):
            TRACKERS._entries.pop(name, None)
    assert rec["status"] == "completed"
    assert calls == [(rec["run_id"], 1, "hint", 1), (rec["run_id"], 2, "main", 1), (rec["run_id"], 3, "main", 2),
                     "closed"]


def test_an_unknown_tracker_is_named_before_training(make_cfg):
    with pytest.raises(KDBenchError, match="tensorboard"):  # the message lists the valid trackers
        run(make_cfg("method=vanilla", "engine.track=[nosuch]"))
