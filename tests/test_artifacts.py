"""Kept students and `kdbench eval`: a run's stored model reproduces its record's test metrics."""
from __future__ import annotations

import json

import pytest
import torch

from kdbench import KDBenchError
from kdbench.cli import main
from kdbench.orchestration.artifacts import eval_target, load_model
from kdbench.orchestration.runner import run


@pytest.fixture(scope="module")
def kept(tmp_path_factory, teacher_cache):
    from kdbench.orchestration.config import compose
    from tests.conftest import tiny_overrides

    tmp = tmp_path_factory.mktemp("kept")
    rec = run(compose([*tiny_overrides(tmp, teachers=teacher_cache), "method=kd"]))
    return tmp, rec


def test_eval_of_a_runs_kept_student_reproduces_its_record_exactly(kept, capsys):
    tmp, rec = kept
    out = eval_target(rec["run_id"][:12], [f"paths.results={tmp / 'results'}", f"paths.work={tmp / 'work'}"])
    assert out["run_id"] == rec["run_id"] and out["teacher"]["weights_sha256"] == rec["teacher"]["weights_sha256"]
    assert out["metrics"] == rec["metrics"]["last"]["student"]["test"]  # every number, bit for bit
    assert out["record"] == rec["metrics"]["last"]["student"]["test"]
    target = tmp / "eval.json"
    assert main(["eval", rec["run_id"], f"paths.results={tmp / 'results'}", f"paths.work={tmp / 'work'}",
                 "--out", str(target)]) == 0
    assert "(the same)" in capsys.readouterr().out
    assert json.loads(target.read_text())["metrics"]["top1"] == rec["metrics"]["last"]["student"]["test"]["top1"]


def test_a_kept_model_of_another_run_is_refused(kept, tmp_path):
    """Another run's kept student, copied into this run's place, was evaluated and reported as this run's."""
    import shutil

    from kdbench.experiment.results import add_record
    from tests.helpers import relabel

    tmp, rec = kept
    store = tmp_path / "results"
    shutil.copytree(tmp / "results", store)
    other = relabel(rec, seed=7)
    add_record(store, other)
    shutil.copy(store / "models" / f"{rec['run_id']}.pt", store / "models" / f"{other['run_id']}.pt")
    with pytest.raises(KDBenchError, match=f"kept student of {rec['run_id']}, not of run {other['run_id']}"):
        eval_target(other["run_id"], [f"paths.results={store}", f"paths.models={store / 'models'}",
                                      f"paths.work={tmp / 'work'}"])


def test_a_moved_store_evaluates_its_own_kept_model(kept, tmp_path):
    """Hostile round 2: eval followed the absolute models path stored in the record, so a copied store's run was
    evaluated from the original store (or refused once that was moved away)."""
    import shutil

    tmp, rec = kept
    store = tmp_path / "moved" / "results"
    shutil.copytree(tmp / "results", store)
    (store / "models" / f"{rec['run_id']}.pt").rename(store / "models" / "elsewhere.pt")
    with pytest.raises(KDBenchError, match=str(store / "models")):  # looked for in the copy, not the original
        eval_target(rec["run_id"], [f"paths.results={store}", f"paths.work={tmp / 'work'}"])


def test_a_plain_state_dict_is_evaluated_with_its_architecture(kept, tmp_path):
    tmp, rec = kept
    model, facts = load_model(tmp / "results" / "models" / f"{rec['run_id']}.pt")
    assert facts["arch"] == "cnn_small" and facts["run_id"] == rec["run_id"]
    plain = tmp_path / "student.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(KDBenchError, match="--arch"):
        load_model(plain)
    out = eval_target(str(plain), ["dataset=digits", f"paths.work={tmp / 'work'}", "method=vanilla"], arch="cnn_small")
    assert out["metrics"]["top1"] == rec["metrics"]["last"]["student"]["test"]["top1"]
    assert out["record"] is None and out["teacher"] is None  # vanilla: no teacher to agree with


def test_a_damaged_or_missing_model_is_named(kept, tmp_path):
    tmp, rec = kept
    src = tmp / "results" / "models" / f"{rec['run_id']}.pt"
    blob = torch.load(src, weights_only=True)
    blob["state_dict"]["fc.bias"] += 1
    bad = tmp_path / "bad.pt"
    torch.save(blob, bad)
    with pytest.raises(KDBenchError, match="checksum"):
        load_model(bad)
    with pytest.raises(KDBenchError, match="no completed run"):
        eval_target("nosuchrun", [f"paths.results={tmp / 'results'}"])
    with pytest.raises(KDBenchError, match="no model file"):
        load_model(tmp_path / "absent.pt")


def test_keep_model_false_keeps_nothing_and_eval_says_so(make_cfg, tmp_path):
    rec = run(make_cfg("method=vanilla", "engine.keep_model=false"))
    assert not (tmp_path / "results" / "models").exists()
    with pytest.raises(KDBenchError, match="kept no model"):
        eval_target(rec["run_id"], [f"paths.results={tmp_path / 'results'}"])
