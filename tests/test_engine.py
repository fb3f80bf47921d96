"""End-to-end runs: every method trains, records are complete, resume is exact, runs are fair."""
from __future__ import annotations

import json

import pytest
import torch

from kdbench import KDBenchError
from kdbench.method import METHODS
from kdbench.orchestration.config import compose
from kdbench.orchestration.runner import RunPaths, run
from kdbench.training.engine import lr_at

pytestmark = pytest.mark.usefixtures("teacher_cache")  # every test here reads its teacher: one per recipe, shared


@pytest.mark.parametrize("method", METHODS.names())
def test_tiny_full_run_per_method(make_cfg, method):
    # FSP and KDSVD need equal channel counts on both models (the digits pair's differ): a cnn_small teacher;
    # the methods with an initialisation stage run one epoch of it (the digits pair's AB and FT take 3)
    extra = {"fsp": ["pair.teacher=cnn_small"], "kdsvd": ["pair.teacher=cnn_small"]}.get(method, [])
    cfg = make_cfg(f"method={method}", *extra, *(["method.init_epochs=1"] if method in ("ab", "ft", "fsp") else []))
    rec = run(cfg)
    path = RunPaths.of(cfg).record
    assert path.exists() and json.loads(path.read_text())["run_id"] == rec["run_id"]
    assert rec["status"] == "completed" and rec["method"]["name"] == method
    last = rec["metrics"]["last"]["student"]
    assert 0 <= last["test"]["top1"] <= 100 and last["test"]["top5"] >= last["test"]["top1"]
    assert last["test"]["top1"] > 20  # 10 classes: chance is 10 %
    assert rec["metrics"]["selected"]["epoch"] in (1, 2)
    assert len(rec["history"]) == 2
    assert [s["name"] for s in rec["schedule"]["init_stages"]] == {"ab": ["ab"], "ft": ["paraphraser"],
                                                                  "fsp": ["fsp"]}.get(method, [])
    assert len(rec["init_history"]) == sum(s["epochs"] for s in rec["schedule"]["init_stages"])
    assert rec["config"]["method"]["name"] == method  # resolved config saved with the run
    assert rec["params"]["student"] > 0 and rec["timing"]["images_per_s"] > 0
    assert rec["environment"]["packages"]["torch"]
    if METHODS.get(method).obj.uses_teacher:
        assert rec["teacher"]["test_top1"] > 20
    else:
        assert rec["teacher"] is None
    # the checkpoint is cleaned up once the record is whole
    assert not (cfg.paths.runs and (__import__("pathlib").Path(cfg.paths.runs) / rec["run_id"]).exists())


def test_same_seed_same_student_init_and_data_order_across_methods(make_cfg):
    a = run(make_cfg("method=vanilla", "seed=1"))
    b = run(make_cfg("method=kd", "seed=1"))
    c = run(make_cfg("method=kd", "seed=2"))
    assert a["fairness"] == b["fairness"]
    assert a["fairness"]["student_init_sha256"] != c["fairness"]["student_init_sha256"]
    assert a["fairness"]["data_order_sha256"] != c["fairness"]["data_order_sha256"]


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (BaseException skips `except Exception`)."""


def test_resume_after_a_kill_equals_the_uninterrupted_run(make_cfg, tmp_path):
    full = run(make_cfg("method=kd", epochs=4))

    killed_cfg = make_cfg("method=kd", f"paths.results={tmp_path / 'other'}", epochs=4)

    def kill(epoch, step):
        if epoch == 2 and step == 3:  # mid-way through the third epoch
            raise _Killed

    with pytest.raises(_Killed):
        run(killed_cfg, on_step=kill)
    assert not RunPaths.of(killed_cfg).record.exists(), "an interrupted run must leave no record"

    # a plain re-run refuses to silently discard the checkpoint
    with pytest.raises(KDBenchError, match="resume=true"):
        run(killed_cfg)
    resumed = run(make_cfg("method=kd", f"paths.results={tmp_path / 'other'}", "resume=true", epochs=4))
    assert resumed["timing"]["resumed_from_epoch"] == 2
    assert resumed["metrics"]["last"] == full["metrics"]["last"]
    assert resumed["metrics"]["selected"] == full["metrics"]["selected"]
    drop = ("time_s", "images_per_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])


def test_completed_runs_are_skipped_and_force_keeps_the_old_record(make_cfg):
    cfg = make_cfg("method=vanilla")
    first = run(cfg)
    again = run(cfg)
    assert again == first
    run(make_cfg("method=vanilla", "force=true"))
    records = list(RunPaths.of(cfg).record.parent.glob("*.json"))
    assert len(records) == 2


def test_lr_schedules():
    s = compose(["schedule=crd"]).schedule
    assert lr_at(0, s) == pytest.approx(0.05) and lr_at(149, s) == pytest.approx(0.05)
    assert lr_at(150, s) == pytest.approx(0.005) and lr_at(239, s) == pytest.approx(0.05e-3)
    c = compose(["schedule=cosine"]).schedule
    assert lr_at(0, c) == pytest.approx(0.05) and lr_at(120, c) == pytest.approx(0.025)


def test_bf16_precision_runs_and_is_part_of_the_experiment(make_cfg):
    rec = run(make_cfg("method=kd", "protocol.precision=bf16", "engine.channels_last=true", epochs=1))
    assert rec["status"] == "completed" and rec["engine"]["amp"] == "bf16"
    assert rec["experiment"]["spec"]["protocol"]["precision"] == "bf16"
    fp32 = make_cfg("method=kd", epochs=1)
    from kdbench.orchestration.runner import run_identity

    assert rec["run_id"] != run_identity(fp32)  # another precision is another experiment


def test_bad_precision_is_a_clear_error(make_cfg):
    with pytest.raises(KDBenchError, match="protocol.precision"):
        make_cfg("method=vanilla", "protocol.precision=fp8", epochs=1)
    with pytest.raises(KDBenchError, match="protocol.precision"):
        make_cfg("method=vanilla", "engine.amp=bf16", epochs=1)  # the old spelling says where it went


def test_teacher_parameters_do_not_change(make_cfg):
    from kdbench.data import load_data
    from kdbench.orchestration.teacher import ensure_teacher
    from kdbench.orchestration.teacher_cache import load_teacher

    cfg = make_cfg("method=kd")
    data = load_data(cfg)
    entry = ensure_teacher(cfg, data)
    before = {k: v.clone() for k, v in load_teacher(entry, torch.device("cpu")).state_dict().items()}
    run(cfg, data=data)
    after = load_teacher(entry, torch.device("cpu")).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.usefixtures("default_signals")  # installs the handlers it relies on, restores them
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])  # Ctrl-C; a scheduler's pre-emption
def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(make_cfg, tmp_path, signame):
    import os
    import signal

    full = run(make_cfg("method=kd", epochs=3))
    cfg = make_cfg("method=kd", f"paths.results={tmp_path / 'other'}", epochs=3)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def ctrl_c(epoch, step):
        if epoch == 1 and step == 4:
            os.kill(os.getpid(), getattr(signal, signame))

    with pytest.raises(KeyboardInterrupt, match="epoch 2, step 5"):
        run(cfg, on_step=ctrl_c)
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    state = torch.load(next((tmp_path / "work" / "runs").glob("*/checkpoint.pt")), weights_only=True)
    assert state["epoch"] == 1 and state["partial"]["step"] == 5
    resumed = run(make_cfg("method=kd", f"paths.results={tmp_path / 'other'}", "resume=true", epochs=3))
    assert resumed["metrics"]["last"] == full["metrics"]["last"]
    drop = ("time_s", "images_per_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])


@pytest.mark.usefixtures("default_signals")  # installs the handlers it relies on, restores them
def test_mid_epoch_checkpoint_must_resume_with_as_many_processes(make_cfg, tmp_path):
    import os
    import signal

    cfg = make_cfg("method=vanilla", epochs=2)

    def ctrl_c(epoch, step):
        if epoch == 0 and step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_step=ctrl_c)
    (ckpt,) = (tmp_path / "work" / "runs").glob("*/checkpoint.pt")
    state = torch.load(ckpt, weights_only=True)
    state["partial"]["ranks"] *= 2  # as if written by a 2-process torchrun
    torch.save(state, ckpt)
    with pytest.raises(KDBenchError, match="2 process.*nproc_per_node=2"):
        run(make_cfg("method=vanilla", "resume=true", epochs=2))


def test_compile_context_freezes_weights_only_when_the_teacher_alone_is_compiled():
    import torch._inductor.config as inductor_config

    from kdbench.training.fastpath import compile_context, resolve_fast_path

    def fast(setting):
        return resolve_fast_path(compose([f"engine.compile={setting}"]).engine, torch.device("cpu"))

    assert not inductor_config.freezing
    with compile_context(fast("teacher")):
        assert inductor_config.freezing
    assert not inductor_config.freezing  # restored
    for setting in ("true", "false"):  # students change every step: never frozen
        with compile_context(fast(setting)):
            assert not inductor_config.freezing


@pytest.mark.slow  # inductor compiles the teacher
def test_a_run_with_the_teacher_compiled_matches_the_eager_run(make_cfg):
    eager = run(make_cfg("method=kd", epochs=1))
    compiled = run(make_cfg("method=kd", "engine.compile=teacher", "force=true", epochs=1))
    assert compiled["engine"]["compile"] == "teacher" and compiled["run_id"] == eager["run_id"]
    # Rounding differences only: the first epoch's mean losses agree to 1 %, the test accuracy to 1 point.
    for term, value in eager["history"][0]["train_loss"].items():
        assert compiled["history"][0]["train_loss"][term] == pytest.approx(value, rel=1e-2), term
    a, b = (r["metrics"]["last"]["student"]["test"]["top1"] for r in (eager, compiled))
    assert abs(a - b) <= 1.0


def test_the_teachers_parameter_count_is_the_unfolded_models(make_cfg):
    """The engine folds the teacher's BatchNorms in place; the record counts the model as trained."""
    from kdbench.models import count_parameters, create_model

    rec = run(make_cfg("method=kd", epochs=1))
    assert rec["engine"]["fold_teacher_bn"] is True
    assert rec["params"]["teacher"] == count_parameters(create_model("cnn_wide", 10, 1))


@pytest.mark.usefixtures("default_signals")  # installs the handlers it relies on, restores them
def test_a_refused_resume_leaves_the_ctrl_c_handler_as_it_was(make_cfg):
    """A run refused before training (its checkpoint exists, resume not asked) once left kdbench's SIGINT
    handler installed, and a later Ctrl-C in the same process only set a flag nobody read."""
    import signal

    from kdbench import KDBenchError

    class Killed(BaseException):
        pass

    def kill(n, step):
        if (n, step) == (1, 0):
            raise Killed

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Killed):
        run(make_cfg("method=vanilla"), on_step=kill)  # leaves the epoch-1 checkpoint
    with pytest.raises(KDBenchError, match="resume=true"):
        run(make_cfg("method=vanilla"))
    assert signal.getsignal(signal.SIGINT) is before
