"""Cohort training: every registered method's record in a lockstep cohort equals its solo record."""
from __future__ import annotations

import pytest
import torch

from kdbench.data import load_data
from kdbench.method import METHODS
from kdbench.orchestration.cohort import run_cohort
from kdbench.orchestration.config import compose
from kdbench.orchestration.runner import run
from tests.conftest import tiny_overrides

# FSP needs equal channel counts, which the digits pair does not have (its declared refusal)
# FSP and KDSVD need equal channel counts (the digits pair has none); methods that read the teacher's BatchNorms
# (OFD) make the cohort keep its teacher unfolded, so they are checked against solo runs that do the same
READS_TEACHER_BN = [m for m in METHODS.names() if getattr(METHODS.get(m).obj, "reads_teacher_batchnorm", False)]
METHODS_ON_DIGITS = [m for m in METHODS.names() if m not in ("fsp", "kdsvd", *READS_TEACHER_BN)]
TIMING = ("time_s", "images_per_s")


def _strip(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def _same(a, b) -> None:
    assert a["run_id"] == b["run_id"] and a["status"] == b["status"] == "completed", (a["run_id"], b["status"])
    assert a["metrics"] == b["metrics"], a["run_id"]
    assert _strip(a["history"]) == _strip(b["history"]) and _strip(a["init_history"]) == _strip(b["init_history"])
    assert a["params"] == b["params"] and a["fairness"] == b["fairness"] and a["teacher"] == b["teacher"]


def _cfgs(root, methods, *extra, epochs: int = 2, teachers=None):
    return [compose([*tiny_overrides(root, epochs=epochs, teachers=teachers), f"method={m}", "seed=1", *extra])
            for m in methods]


@pytest.mark.slow
def test_every_method_in_a_cohort_records_exactly_what_it_records_alone(tmp_path, teacher_cache):
    """CRD (its negatives from the global random stream), DML (no teacher), CS-KD (paired batches), AB and FT
    (initialisation stages), TF-KD self and TAKD (their own teachers) included."""
    solo_cfgs = _cfgs(tmp_path / "solo", METHODS_ON_DIGITS, epochs=1, teachers=teacher_cache)
    data = load_data(solo_cfgs[0])
    solo = [run(c, data=data) for c in solo_cfgs]
    cohort = run_cohort(_cfgs(tmp_path / "cohort", METHODS_ON_DIGITS, epochs=1, teachers=teacher_cache), data)
    for a, b in zip(cohort, solo):
        _same(a, b)
        assert a["engine"]["cohort"] == {"members": len(METHODS_ON_DIGITS)} and "cohort" not in b["engine"]


@pytest.mark.slow
def test_a_cohort_with_a_method_that_reads_the_teachers_batchnorms_keeps_the_teacher_unfolded(tmp_path, teacher_cache):
    members = ["kd", *READS_TEACHER_BN]  # KD first: it would fold the shared teacher before OFD is built
    solo_cfgs = _cfgs(tmp_path / "solo", members, "engine.fold_teacher_bn=false", epochs=1, teachers=teacher_cache)
    data = load_data(solo_cfgs[0])
    solo = [run(c, data=data) for c in solo_cfgs]
    for a, b in zip(run_cohort(_cfgs(tmp_path / "cohort", members, epochs=1, teachers=teacher_cache), data), solo):
        _same(a, b)


def test_a_member_that_diverges_is_recorded_and_the_others_go_on(tmp_path, teacher_cache):
    cfgs = _cfgs(tmp_path, ["kd", "vanilla", "crd"], teachers=teacher_cache)
    cfgs[0] = compose([*tiny_overrides(tmp_path, epochs=2, teachers=teacher_cache), "method=kd", "seed=1",
                       "method.kd_weight=1e39"])
    recs = run_cohort(cfgs, load_data(cfgs[0]))
    assert [r["status"] for r in recs] == ["diverged", "completed", "completed"]


@pytest.mark.usefixtures("default_signals")  # installs the handlers it relies on, restores them
@pytest.mark.parametrize("signame,methods", [("SIGINT", ["kd", "crd", "dml"]), ("SIGTERM", ["kd", "vanilla"])])
@pytest.mark.slow
def test_an_interrupted_cohort_resumes_to_the_solo_records(tmp_path, monkeypatch, signame, methods, teacher_cache):
    """Ctrl-C, or a scheduler's SIGTERM: every member checkpoints after its next step."""
    import _thread
    import signal

    import kdbench.training.engine as engine

    data = load_data(_cfgs(tmp_path / "solo", methods, teachers=teacher_cache)[0])
    solo = [run(c, data=data) for c in _cfgs(tmp_path / "solo", methods, teachers=teacher_cache)]
    real, steps = engine.train_one_step, []

    def counting(*a, **k):
        steps.append(1)
        if len(steps) == 40:  # Ctrl-C in the middle of the first epoch
            _thread.interrupt_main(getattr(signal, signame))
        return real(*a, **k)

    monkeypatch.setattr(engine, "train_one_step", counting)
    with pytest.raises(KeyboardInterrupt):
        run_cohort(_cfgs(tmp_path / "cohort", methods, teachers=teacher_cache), data)
    monkeypatch.setattr(engine, "train_one_step", real)
    assert not list((tmp_path / "cohort" / "results").glob("runs/*.json"))  # nothing finished, all checkpointed
    resumed = run_cohort(_cfgs(tmp_path / "cohort", methods, "resume=true", teachers=teacher_cache), data)
    for a, b in zip(resumed, solo):
        assert a["timing"]["resumed_from_epoch"] == 0
        _same(a, b)


@pytest.mark.slow
def test_bench_decides_on_cohorts_and_can_be_told(tmp_path, monkeypatch, teacher_cache):
    import kdbench.orchestration.cohort as cohort_mod
    from kdbench.orchestration.bench import run_bench

    calls = []
    real = cohort_mod.run_cohort
    monkeypatch.setattr(cohort_mod, "run_cohort", lambda cfgs, data, w: calls.append(len(cfgs)) or real(cfgs, data, w))
    over = [*tiny_overrides(tmp_path, epochs=1, teachers=teacher_cache), "suite.methods=[vanilla,kd]",
            "suite.seeds=[0,1]"]
    res = run_bench(over)  # auto: the digits teacher's 5-MFLOP forward is too small to be worth sharing
    assert calls == [] and all(r["status"] == "completed" for r in res.records)
    run_bench([*over, "bench.cohort=true", f"paths.results={tmp_path / 'forced'}"])
    assert calls == [2, 2]
    from kdbench.orchestration.bench import use_cohort

    assert use_cohort(compose(["pair=cifar100/resnet56-resnet20"]), torch.device("cpu"))
    calls.clear()
    run_bench([*tiny_overrides(tmp_path / "b", epochs=1, teachers=teacher_cache), "suite.methods=[vanilla,kd]",
               "suite.seeds=[0]", "bench.cohort=false"])
    assert calls == []
    res = run_bench([*tiny_overrides(tmp_path / "c", epochs=1, teachers=teacher_cache), "suite.methods=[vanilla,kd,at]",
                     "suite.seeds=[0]", "bench.cohort=true", "bench.cohort_max=2"])  # a cohort of 2, then one alone
    assert calls == [2] and [r["method"]["name"] for r in res.records] == ["vanilla", "kd", "at"]
    from kdbench import KDBenchError
    from kdbench.orchestration.bench import cohort_size
    with pytest.raises(KDBenchError, match="cohort_max"):
        cohort_size(compose(["bench.cohort_max=0"]), torch.device("cpu"))
    assert cohort_size(compose([]), torch.device("cpu")) >= 23  # on CPU: every run of a (pair, seed)
