"""TAKD: the assistant is a cached, identified teacher; chains; one assistant for every student seed."""
from __future__ import annotations

import pytest

from kdbench import KDBenchError
from kdbench.experiment.identity import assistant_training_config, teacher_config
from kdbench.orchestration.config import compose
from kdbench.orchestration.runner import run_identity, spec_of
from kdbench.orchestration.teacher_cache import recipe_key, teacher_recipe


def test_the_assistant_is_the_teacher_and_is_trained_by_kd_from_the_pairs_teacher():
    cfg = compose(["method=takd"])
    assert list(cfg.method.assistants) == ["cnn_mid"]  # declared by the digits pair
    t = teacher_config(cfg)
    assert t.pair.teacher == "cnn_mid" and t.teacher.schedule == cfg.schedule
    assert teacher_config(t) is t  # idempotent
    up = assistant_training_config(t)
    assert (up.pair.teacher, up.pair.student, up.method.name) == ("cnn_wide", "cnn_mid", "kd")
    assert up.seed == cfg.teacher.seed and up.teacher.schedule == cfg.teacher.schedule
    assert up.method.temperature == cfg.method.temperature
    assert teacher_recipe(cfg)["distilled"]["teacher"]["arch"] == "cnn_wide"


def test_a_two_assistant_chain_recurses():
    cfg = compose(["method=takd", "pair=cifar100/resnet110-resnet20", "method.assistants=[resnet56,resnet32]"])
    t = teacher_config(cfg)
    assert t.pair.teacher == "resnet32"
    up = assistant_training_config(t)
    assert (up.method.name, list(up.method.assistants), up.pair.student) == ("takd", ["resnet56"], "resnet32")
    top = assistant_training_config(teacher_config(up))
    assert (top.method.name, top.pair.teacher, top.pair.student) == ("kd", "resnet110", "resnet56")
    assert teacher_recipe(cfg)["distilled"]["teacher"]["distilled"]["teacher"]["arch"] == "resnet110"


def test_what_makes_the_assistant_is_part_of_the_students_identity():
    base = compose(["method=takd"])
    ids = {run_identity(base)}
    for change in (["method.assistants=[cnn_wide]"], ["teacher.seed=1"], ["method.temperature=2"],
                   ["teacher.schedule.lr=0.01"]):
        ids.add(run_identity(compose(["method=takd", *change])))
    assert len(ids) == 5
    # the pair's teacher schedule reaches the student's identity only through the assistant's
    spec = spec_of(compose(["method=takd", "teacher.schedule.lr=0.01"]))
    assert spec["teacher"]["distilled"]["teacher"]["schedule"]["lr"] == 0.01
    assert teacher_config(compose(["method=kd"])).pair.teacher == "cnn_wide"  # other methods unchanged


def test_a_pair_without_an_assistant_is_refused(make_cfg):
    from kdbench.orchestration.runner import run

    with pytest.raises(KDBenchError, match="teacher assistant"):
        run(make_cfg("method=takd", "method.assistants=[]"))


def test_a_suite_trains_the_assistant_once_for_every_student_seed(tmp_path, monkeypatch):
    import kdbench.orchestration.teacher as teacher_mod
    from kdbench.orchestration.bench import run_bench
    from tests.conftest import tiny_overrides

    trained = []
    real = teacher_mod.train_teacher
    monkeypatch.setattr(teacher_mod, "train_teacher", lambda cfg, data: trained.append(
        str(teacher_config(cfg).pair.teacher)) or real(cfg, data))
    res = run_bench([*tiny_overrides(tmp_path), "suite.methods=[kd,takd]", "suite.seeds=[0,1]"])
    assert sorted(trained) == ["cnn_mid", "cnn_wide"], trained  # the teacher once, the assistant once
    recs = {(r["method"]["name"], r["seed"]): r for r in res.records}
    assert all(r["status"] == "completed" for r in recs.values())
    assert recs[("takd", 0)]["teacher"]["arch"] == "cnn_mid" and recs[("kd", 0)]["teacher"]["arch"] == "cnn_wide"
    assert recs[("takd", 0)]["teacher"]["hash"] == recs[("takd", 1)]["teacher"]["hash"]
    assert recs[("takd", 0)]["teacher"]["source"] == "distilled"
    assert res.pairs[0].teacher_top1 == recs[("kd", 0)]["teacher"]["test_top1"]  # the table reports the pair's teacher
    assert recipe_key(compose([*tiny_overrides(tmp_path), "method=takd"])) == recs[("takd", 1)]["teacher"]["hash"]
    from kdbench.cli import main

    assert main(["teacher", "list", *tiny_overrides(tmp_path)]) == 0
