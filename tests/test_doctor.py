"""`kdbench doctor`: what kills left behind, named; `--clean` removes only what is provably unused."""
from __future__ import annotations

import os
import time

import pytest

from kdbench.cli import main
from kdbench.orchestration.runner import run, run_identity


@pytest.mark.usefixtures("teacher_cache")
def test_doctor_names_every_leftover_and_cleans_only_the_dead_ones(make_cfg, tmp_path, capsys):
    cfg = make_cfg("method=vanilla", epochs=1)
    rec = run(cfg)
    results, runs = tmp_path / "results", tmp_path / "work" / "runs"
    teachers = tmp_path / "work" / "teachers"
    dead = {
        runs / rec["run_id"]: "finished run's folder",  # killed after its record was written
        results / "runs" / f".{rec['run_id']}.json.x1y2.tmp": "temp file",
        teachers / "0123456789abcdef.k3j4.partial": "stage of a teacher import",
        teachers / "fedcba9876543210": "without teacher.json",
    }
    kept = {
        runs / run_identity(make_cfg("method=vanilla", "seed=5", epochs=1)): "interrupted run",
        results / "runs" / "broken.json": "not a valid record",
        results / "models" / "vanilla__nobody__s0__0000000000.pt": "kept model of no stored run",
        teachers / "0123456789abcdef.partial": "interrupted teacher training",
        tmp_path / "work" / ".teacher.json.a1b2.tmp": "write under way, or killed less than an hour ago",
    }
    for path in [*dead, *kept]:
        if path.suffix in (".tmp", ".json", ".pt"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}" if path.suffix == ".json" else "x")
        else:
            path.mkdir(parents=True, exist_ok=True)
    for d in (runs / rec["run_id"], *(p for p in kept if p.parent == runs)):
        (d / "checkpoint.pt").write_text("x")
    (teachers / "fedcba9876543210" / "model.pt").write_text("x")
    old = time.time() - 7200
    os.utime(results / "runs" / f".{rec['run_id']}.json.x1y2.tmp", (old, old))
    ov = [f"paths.results={results}", f"paths.work={tmp_path / 'work'}"]

    assert main(["doctor", *ov]) == 0
    out = capsys.readouterr().out
    for path, what in {**dead, **kept}.items():
        assert str(path) in out and what in out, (path, out)
    assert out.count("[--clean removes it]") == len(dead)
    assert main(["doctor", "--clean", *ov]) == 0
    assert not any(p.exists() for p in dead) and all(p.exists() for p in kept)
    assert (results / "runs" / f"{rec['run_id']}.json").exists()  # records are never touched
    capsys.readouterr()
    assert main(["doctor", *ov]) == 0
    assert "[--clean removes it]" not in capsys.readouterr().out


def test_a_clean_store_has_nothing_left_over(tmp_path, capsys):
    assert main(["doctor", f"paths.results={tmp_path / 'r'}", f"paths.work={tmp_path / 'w'}"]) == 0
    assert "nothing left over" in capsys.readouterr().out


@pytest.mark.usefixtures("teacher_cache")
def test_a_finished_runs_leftover_folder_goes_when_the_run_is_next_asked_for(make_cfg, tmp_path):
    cfg = make_cfg("method=vanilla", epochs=1)
    rec = run(cfg)
    folder = tmp_path / "work" / "runs" / rec["run_id"]
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_text("left by a kill after the record was written")
    assert run(cfg)["created"] == rec["created"]  # done: not trained again
    assert not folder.exists()
    kept = make_cfg("method=vanilla", "engine.keep_checkpoint=true", epochs=1)
    folder.mkdir(parents=True)
    run(kept)
    assert folder.exists()  # asked to keep it


@pytest.mark.usefixtures("teacher_cache")
def test_a_kill_between_model_and_record_never_loses_the_kept_model(make_cfg, tmp_path, monkeypatch, capsys):
    """Hostile round 2: a kill after the record and before the kept model lost the model for good, silently. The
    model is now written first and the record names its digest; doctor names a missing or replaced model."""
    import torch

    from kdbench.orchestration import runner
    from kdbench.orchestration.artifacts import eval_target, model_facts, save_model

    cfg = make_cfg("method=vanilla", epochs=1)
    run_id = run_identity(cfg)
    model = tmp_path / "results" / "models" / f"{run_id}.pt"
    real_add = runner.add_record

    def killed(*a, **k):
        raise KeyboardInterrupt  # stands for a kill after the model, before the record

    monkeypatch.setattr(runner, "add_record", killed)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert model.exists() and not (tmp_path / "results" / "runs" / f"{run_id}.json").exists()  # not done: re-runs
    monkeypatch.setattr(runner, "add_record", real_add)
    rec = run(make_cfg("method=vanilla", "resume=true", epochs=1))  # as a bench resumes it
    assert rec["kept_model"]["weights_sha256"] == model_facts(model)["weights_sha256"]

    ov = [f"paths.results={tmp_path / 'results'}", f"paths.work={tmp_path / 'work'}"]
    from kdbench.models import create_model

    other = create_model("cnn_small", num_classes=10, in_channels=1)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    save_model(cfg, run_id, other, 10, 1)  # a later force=true training, stopped before its record
    assert main(["doctor", *ov]) == 0
    assert f"not the model run {run_id}'s newest record kept" in capsys.readouterr().out
    with pytest.raises(Exception, match="not the student that run"):
        eval_target(run_id, ov)
    model.unlink()
    assert main(["doctor", *ov]) == 0
    assert f"missing: run {run_id}'s record names this kept model" in capsys.readouterr().out


def test_a_run_folder_stopped_before_its_first_checkpoint_is_named_and_cleaned(tmp_path, capsys):
    """Hostile round 2: a run folder holding only config.yaml (killed before its first checkpoint) was not listed."""
    runs = tmp_path / "work" / "runs"
    dead = runs / "kd__cifar100_resnet32x4-resnet8x4__s0__0123456789"
    foreign = runs / "my-notes"
    for d in (dead, foreign):
        d.mkdir(parents=True)
        (d / "config.yaml").write_text("x: 1\n")
    ov = [f"paths.results={tmp_path / 'results'}", f"paths.work={tmp_path / 'work'}"]
    assert main(["doctor", *ov]) == 0
    out = capsys.readouterr().out
    assert str(dead) in out and "before its first checkpoint" in out and str(foreign) not in out
    assert main(["doctor", "--clean", *ov]) == 0
    assert not dead.exists() and foreign.exists()
