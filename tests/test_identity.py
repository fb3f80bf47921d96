"""Run identity by structure: what changes a run's id, what never does, and typed values."""
from __future__ import annotations

import pytest

from kdbench import KDBenchError
from kdbench.experiment.identity import EXPERIMENT, RUNTIME, milestone_epochs
from kdbench.orchestration.config import compose
from kdbench.orchestration.runner import run_identity, spec_of

METHODS = ("vanilla", "kd", "fitnet", "at", "rkd", "crd", "crd+kd", "dml")


def _ids(*extra: str) -> dict[str, str]:
    return {m: run_identity(compose([f"method={m}", *extra])) for m in METHODS}


def test_another_methods_override_on_the_pair_changes_no_other_run():
    before = _ids()
    after = _ids("+pair.method_overrides.kd.temperature=2")
    assert after["kd"] != before["kd"]
    assert {m: i for m, i in after.items() if m != "kd"} == {m: i for m, i in before.items() if m != "kd"}


def test_runtime_settings_never_change_identity():
    base = run_identity(compose([]))
    for extra in (["engine.compile=teacher"], ["engine.fold_teacher_bn=false"], ["engine.channels_last=false"],
                  ["paths.results=/elsewhere"], ["note=hello"], ["+data.source.cache_dir=/tmp/x"],
                  ["suite=digits-all"], ["force=true"], ["speed.steps=3"]):
        assert run_identity(compose(extra)) == base, extra
    # A switch added to the engine later needs no list to be kept out of the identity.
    from omegaconf import open_dict

    cfg = compose([])
    with open_dict(cfg):
        cfg.engine.a_switch_added_later = True
        cfg.paths.somewhere_new = "/x"
    assert run_identity(cfg) == base


def test_every_top_level_key_is_experiment_or_runtime():
    cfg = compose([])
    assert set(cfg.keys()) <= set(EXPERIMENT) | set(RUNTIME)
    with pytest.raises(KDBenchError, match="not a config key"):
        compose(["+sched=1"])
    from omegaconf import open_dict

    from kdbench.experiment.identity import check_partition

    cfg = compose([])
    with open_dict(cfg):
        cfg.sched = 1  # a top-level key that a config file might add by mistake
    with pytest.raises(KDBenchError, match="unknown config key"):
        check_partition(cfg)


def test_seeds_and_numbers_are_typed_before_hashing():
    assert run_identity(compose(["seed='1'"])) == run_identity(compose(["seed=1"]))
    assert run_identity(compose(["method.temperature=4"])) == run_identity(compose(["method.temperature=4.0"]))
    assert compose(["method.temperature='4'"]).method.temperature == 4.0
    for bad in (["seed=abc"], ["seed=[1,2]"], ["seed=-1"], ["seed=1.5"], ["method.temperature=abc"],
                ["schedule.lr=abc"], ["schedule.epochs=0"], ["schedule.batch_size=0"], ["schedule.epochs=abc"]):
        with pytest.raises(KDBenchError):
            compose(bad)


def test_teacher_settings_do_not_touch_runs_without_a_teacher():
    a, b = compose(["method=vanilla"]), compose(["method=vanilla", "teacher.schedule.epochs=3"])
    assert run_identity(a) == run_identity(b)
    assert run_identity(compose(["method=kd"])) != run_identity(compose(["method=kd", "teacher.schedule.epochs=3"]))
    assert spec_of(a)["teacher"] is None


def test_a_teacher_pinned_for_one_pair_changes_only_that_pairs_runs():
    pin = "0123456789abcdef"
    p1 = ["pair=cifar10/resnet56-resnet20", "dataset=cifar10"]
    p2 = ["pair=cifar10/resnet110-resnet20", "dataset=cifar10"]
    suite = f"+suite.teachers={{cifar10/resnet56-resnet20: {pin}}}"
    assert compose([*p1, suite]).teacher.hash == pin
    assert run_identity(compose([*p1, suite])) != run_identity(compose(p1))
    assert run_identity(compose([*p2, suite])) == run_identity(compose(p2))
    with pytest.raises(KDBenchError, match="16-digit"):
        compose(["teacher.hash=abc"])


def test_milestones_follow_the_schedule_length():
    assert milestone_epochs(compose([]).schedule) == [15, 18, 21]  # digits: 24 epochs
    assert milestone_epochs(compose(["schedule=crd"]).schedule) == [150, 180, 210]
    assert milestone_epochs(compose(["schedule=crd", "schedule.epochs=10"]).schedule) == [6, 8, 9]
    assert milestone_epochs(compose(["schedule=crd", "schedule.epochs=5"]).schedule) == [3, 4, 4]
    with pytest.raises(KDBenchError, match="fractions"):
        compose(["schedule.milestones=[150,180]"])
    # Fractions that round to the same epochs are the same schedule, hence the same run.
    assert run_identity(compose(["schedule.milestones=[0.625,0.75,0.875]"])) == \
        run_identity(compose(["schedule.milestones=[0.63,0.75,0.875]"]))


def test_paper_protocol_is_its_own_experiment():
    paper = compose(["protocol=paper"])
    assert paper.data.val_fraction == 0.0 and paper.protocol.precision == "fp32"
    assert run_identity(paper) != run_identity(compose([]))
    assert spec_of(paper)["protocol"] == {"name": "paper", "precision": "fp32"}
    with pytest.raises(KDBenchError, match="protocol=paper"):
        compose(["protocol=paper", "data.val_fraction=0.2"])
    with pytest.raises(KDBenchError, match="protocol=paper"):
        compose(["protocol=paper", "protocol.precision=bf16"])


def test_auto_precision_is_resolved_in_the_identity():
    # On this CPU, auto means fp32: the same experiment as asking for fp32.
    assert spec_of(compose([]))["protocol"]["precision"] == "fp32"
    assert run_identity(compose([])) == run_identity(compose(["protocol.precision=fp32"]))
    assert run_identity(compose([])) != run_identity(compose(["protocol.precision=bf16"]))


def test_moved_keys_name_their_new_place():
    with pytest.raises(KDBenchError, match="data.source.archive"):
        compose(["dataset=cifar10-jpg", "data.archive=/x.tar.gz"])


@pytest.mark.slow
def test_plan_shows_unchanged_run_ids_when_one_method_gets_an_override(tmp_path):
    from kdbench.orchestration.plan import plan_rows

    store = f"paths.results={tmp_path}"
    suite = ["suite=digits-all", "suite.seeds=[0,1]", store]  # every method; two seeds are enough to show it
    before = {(r["method"], r["seed"]): r["run_id"] for r in plan_rows(suite)}
    after = {(r["method"], r["seed"]): r["run_id"] for r in plan_rows([*suite, "pair.method_overrides.at.beta=5"])}
    changed = {k for k in before if before[k] != after[k]}
    methods = list(compose(["suite=digits-all"], check=False).suite.methods)
    assert len(before) == 2 * len(methods) and changed == {("at", s) for s in (0, 1)}


def test_every_committed_record_hashes_to_its_id_today():
    """A new hyper-parameter (a modifier at its default), a new config key or a refactor must never move a
    stored run to another id: each committed record's own config, with whatever hyper-parameters its method
    has gained since at today's defaults (as composing the same command today gives), hashes to its run id."""
    import json
    from pathlib import Path

    from omegaconf import OmegaConf

    from kdbench.experiment.catalog import method_defaults
    from kdbench.experiment.identity import run_identity as identity_of
    from kdbench.experiment.identity import type_config

    store = Path(__file__).parents[1] / "results" / "runs"
    records = [json.loads(p.read_text()) for p in sorted(store.glob("*.json"))]
    assert len(records) >= 100
    moved = []
    for r in records:
        cfg = OmegaConf.create(r["config"])
        cfg.method = {**method_defaults(str(cfg.method.name)), **OmegaConf.to_container(cfg.method)}
        type_config(cfg)
        if identity_of(cfg, r["experiment"]["spec"]["protocol"]["precision"]) != r["run_id"]:
            moved.append(r["run_id"])
    assert not moved, moved[:5]
