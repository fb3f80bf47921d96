"""The teacher cache: trained once, reused, verified."""
from __future__ import annotations

import pytest

from kdbench import KDBenchError
from kdbench.data import load_data
from kdbench.orchestration import teacher as teacher_mod
from kdbench.orchestration.runner import run
from kdbench.orchestration.teacher import ensure_teacher
from kdbench.orchestration.teacher_cache import find_teacher, get_teacher, list_teachers, load_teacher, recipe_key


def test_teacher_is_trained_once_and_reused(make_cfg, monkeypatch):
    cfg = make_cfg("method=kd")
    data = load_data(cfg)
    entry = ensure_teacher(cfg, data)
    assert entry.meta["weights"]["sha256"] and entry.meta["source"] == "trained"
    assert entry.meta["spec"]["arch"] == "cnn_wide" and entry.meta["metrics"]["test_top1"] > 20

    def no_training(*a, **k):
        raise AssertionError("the cached teacher was trained again")

    monkeypatch.setattr(teacher_mod, "train_teacher", no_training)
    for seed in (0, 1):
        rec = run(make_cfg("method=kd", f"seed={seed}"), data=data)
        assert rec["teacher"]["hash"] == entry.hash
    assert len(list_teachers(cfg.paths.teachers)) == 1


def test_teacher_hash_covers_dataset_arch_schedule_seed_not_paths(make_cfg):
    base = recipe_key(make_cfg())
    assert recipe_key(make_cfg("paths.results=/elsewhere")) == base
    assert recipe_key(make_cfg("schedule.epochs=7")) == base  # the student's schedule
    for changed in ("teacher.seed=1", "teacher.schedule.lr=0.1", "data.val_fraction=0.2", "pair.teacher=cnn_small"):
        assert recipe_key(make_cfg(changed)) != base, changed


def test_corrupted_teacher_weights_fail_their_checksum(make_cfg):
    cfg = make_cfg("method=kd")
    entry = ensure_teacher(cfg, load_data(cfg))
    with open(entry.path / "model.pt", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(KDBenchError, match="checksum"):
        load_teacher(entry, __import__("torch").device("cpu"))


def test_get_teacher_by_prefix_and_unknown_prefix(make_cfg):
    cfg = make_cfg("method=kd")
    entry = ensure_teacher(cfg, load_data(cfg))
    assert get_teacher(cfg.paths.teachers, entry.hash[:6]).hash == entry.hash
    with pytest.raises(KDBenchError, match=entry.hash):
        get_teacher(cfg.paths.teachers, "zzzz")
    assert find_teacher(cfg).hash == entry.hash


def test_a_record_from_other_teacher_weights_is_not_done_for_this_teacher(make_cfg):
    """Same cache key, other weights (a teacher re-trained elsewhere): the student runs again."""
    import json
    import shutil
    from pathlib import Path

    from kdbench.experiment.results import records_of_run
    from kdbench.orchestration.suite import run_state

    cfg = make_cfg("method=kd", epochs=1)
    first = run(cfg)
    assert run_state(cfg)[0] == "done"
    path = Path(cfg.paths.results) / "runs" / f"{first['run_id']}.json"
    other = json.loads(path.read_text())
    other["teacher"]["weights_sha256"] = "f" * 64
    path.write_text(json.dumps(other))  # still valid: the weights are not part of the run id
    assert run_state(cfg)[0] == "other-teacher"
    again = run(cfg)
    assert again["teacher"]["weights_sha256"] == first["teacher"]["weights_sha256"]
    assert len(records_of_run(cfg.paths.results, first["run_id"])) == 2
    assert run_state(cfg)[0] == "done" and run(cfg)["created"] == again["created"]  # now skipped
    shutil.rmtree(cfg.paths.teachers)
    assert run_state(cfg)[0] == "teacher-unknown"


def test_vanilla_runs_never_wait_on_a_teacher(make_cfg):
    from kdbench.orchestration.suite import run_state

    cfg = make_cfg("method=vanilla", epochs=1)
    rec = run(cfg)
    assert rec["teacher"] is None and run_state(cfg)[0] == "done"
