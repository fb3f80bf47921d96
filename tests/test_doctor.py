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
