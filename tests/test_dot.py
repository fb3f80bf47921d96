"""DOT (``method.optimizer=dot``; kdbench.training.dot) against the authors' optimizer: the update of
parameters reached by both losses, by one and by neither, both momentum buffers, a checkpoint taken
mid-way, KD trained through its real ``train_step``; then identity, the engine, resumption and cohorts.
How the fixture was made: its ``source.how`` and the module's docstring."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch
from omegaconf import OmegaConf

from kdbench import KDBenchError
from kdbench.training.dot import DistillationOrientedSGD, dot_step, split_losses
from tests import parity

FIXTURE = parity.load("dot")
TOY = [c for c in FIXTURE["cases"] if c["name"].startswith("toy")]
ORDER = ["A", "b", "C", "H", "U"]


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    # float64 in and out, the same operations in the same order: equal to rounding (observed: bit-equal)
    return torch.allclose(got, want, rtol=1e-12, atol=1e-15)


def _toy_losses(ps: dict, x: dict, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.tanh(x["x"][k] @ ps["A"].T + ps["b"])
    return ((h @ ps["C"].T - x["y"][k]) ** 2).mean(), ((h @ ps["H"].T - x["t"][k]) ** 2).mean()


def _toy(case) -> tuple[dict, DistillationOrientedSGD]:
    x, p = case["inputs"], case["params"]
    ps = {k: torch.nn.Parameter(x["params"][k].clone()) for k in ORDER}
    opt = DistillationOrientedSGD([ps[k] for k in ORDER], lr=float(x["lr"][0]), momentum=p["momentum"],
                                  delta=p["delta"], weight_decay=p["weight_decay"])
    return ps, opt


def _toy_step(ps, opt, case, k) -> tuple[torch.Tensor, torch.Tensor]:
    for g in opt.param_groups:
        g["lr"] = float(case["inputs"]["lr"][k])
    task, distill = _toy_losses(ps, case["inputs"], k)
    dot_step(opt, task, distill)
    return task, distill


@pytest.mark.numerics
@pytest.mark.parametrize("case", TOY, ids=lambda c: c["name"])
def test_parameters_and_both_buffers_equal_the_authors_optimizer_after_every_step(case):
    ps, opt = _toy(case)
    want = case["outputs"]
    for k in range(len(case["inputs"]["lr"])):
        task, distill = _toy_step(ps, opt, case, k)
        assert _close(task.detach(), want["task_loss"][k]) and _close(distill.detach(), want["distill_loss"][k])
        for name in ORDER:
            assert _close(ps[name].detach(), want["params"][k][name]), (k, name)
        for ours, theirs in (("task_momentum", "task_momentum"), ("distill_momentum", "distill_momentum")):
            have = {n for n in ORDER if ours in opt.state[ps[n]]}
            assert have == set(want[theirs][k]), (k, ours)  # C: task only, H: distillation only, U: none
            for n in have:
                assert _close(opt.state[ps[n]][ours], want[theirs][k][n]), (k, n, ours)
    assert torch.equal(ps["U"].detach(), case["inputs"]["params"]["U"])  # no gradient: untouched


@pytest.mark.numerics
def test_a_checkpoint_taken_mid_way_resumes_to_the_uninterrupted_numbers():
    case = TOY[0]
    ps, opt = _toy(case)
    for k in range(2):
        _toy_step(ps, opt, case, k)
    buf = io.BytesIO()
    torch.save({"params": {n: p.detach() for n, p in ps.items()}, "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    ps2 = {n: torch.nn.Parameter(saved["params"][n].clone()) for n in ORDER}
    opt2 = DistillationOrientedSGD([ps2[n] for n in ORDER], lr=1.0, momentum=0.0, delta=0.0)
    opt2.load_state_dict(saved["opt"])  # the hyper-parameters and both buffers come back
    for k in range(2, len(case["inputs"]["lr"])):
        _toy_step(ps2, opt2, case, k)
    for n in ORDER:
        assert _close(ps2[n].detach(), case["outputs"]["params"][-1][n]), n


def _kd_method(case, *overrides: str):
    from kdbench.data import DatasetInfo
    from kdbench.method import build_method
    from kdbench.models import seeded_model
    from kdbench.orchestration.config import compose

    cfg = compose(["method=kd", "method.optimizer=dot", *overrides])
    info = DatasetInfo("x", 10, (1, 8, 8), 16)
    s, t = seeded_model("cnn_small", 10, 1, 0), seeded_model("cnn_small", 10, 1, 0, "teacher-init")
    method = build_method(cfg.method, s, info, 0, teacher=t, student_arch="cnn_small", teacher_arch="cnn_small")
    method.double()
    method.student.load_state_dict(case["inputs"]["student"])
    method.teacher.model.load_state_dict(case["inputs"]["teacher"])
    return method


@pytest.mark.numerics
def test_kd_with_dot_through_its_train_step_equals_the_authors_optimizer_on_its_terms():
    """The engine's optimizer (build_optimizer, from a schedule) and KD's train_step: 'ce' is the task loss,
    'kd' the distillation loss, and beta -/+ delta are the momenta, as their trainer builds them."""
    from kdbench.data import Batch
    from kdbench.training.fastpath import build_optimizer

    case = parity.case(FIXTURE, "kd_cnn_small")
    p, x = case["params"], case["inputs"]
    method = _kd_method(case)
    sched = OmegaConf.create({"optimizer": "sgd", "lr": p["lr"], "momentum": p["momentum"], "nesterov": False,
                              "weight_decay": p["weight_decay"]})
    assert method.dot_delta == p["delta"]
    opt = build_optimizer(method.trainable_parameters(), sched, "foreach", method.dot_delta)
    assert isinstance(opt, DistillationOrientedSGD)
    method.train()
    for k in range(x["images"].shape[0]):
        out = method.train_step(Batch(x["images"][k], x["labels"][k], torch.arange(8) + 8 * k), 0, opt,
                                contextlib.nullcontext)
        got = torch.stack([out.losses["ce"].detach(), out.losses["kd"].detach()])
        assert _close(got, case["outputs"]["losses"][k]), k
    final = method.student.state_dict()
    for name, want in case["outputs"]["student"].items():
        assert torch.allclose(final[name].double(), want.double(), rtol=1e-11, atol=1e-14), name


@pytest.mark.numerics
def test_without_a_momentum_gap_and_decay_dot_is_sgd_on_the_summed_loss():
    """delta = 0: both buffers at beta, their sum is SGD's buffer (one-loss parameters included)."""
    case = TOY[1]
    ps, opt = _toy(case)
    for g in opt.param_groups:
        g["delta"], g["weight_decay"] = 0.0, 0.0
    ref = {k: torch.nn.Parameter(v.detach().clone()) for k, v in ps.items()}
    sgd = torch.optim.SGD([ref[k] for k in ORDER], lr=1.0, momentum=case["params"]["momentum"])
    for k in range(len(case["inputs"]["lr"])):
        _toy_step(ps, opt, case, k)
        for g in sgd.param_groups:
            g["lr"] = float(case["inputs"]["lr"][k])
        sgd.zero_grad()
        sum(_toy_losses(ref, case["inputs"], k)).backward()
        sgd.step()
    for n in ORDER:
        assert torch.allclose(ps[n].detach(), ref[n].detach(), rtol=1e-12, atol=1e-14), n
    # and the gap matters: the fixture's own run (delta = 0.2) ends elsewhere
    assert not torch.allclose(ps["A"].detach(), case["outputs"]["params"][-1]["A"], rtol=1e-6)


def test_the_split_names_the_task_terms_and_refuses_a_method_without_both_kinds():
    one = torch.tensor(1.0)
    task, distill = split_losses({"ce": one, "kd": 2 * one, "crd": 3 * one}, ("ce",))
    assert task.item() == 1.0 and distill.item() == 5.0
    with pytest.raises(KDBenchError, match="DOT needs"):
        split_losses({"ce": one}, ("ce",))
    with pytest.raises(KDBenchError, match="DOT needs"):
        split_losses({"kd": one}, ("ce",))


def test_the_options_are_modifiers_and_refused_where_they_mean_nothing():
    from kdbench.experiment.identity import experiment_spec, run_identity
    from kdbench.orchestration.config import compose
    from kdbench.training.fastpath import build_optimizer

    plain, dot = compose(["method=kd"]), compose(["method=kd", "method.optimizer=dot"])
    assert run_identity(plain, "fp32") == run_identity(compose(["method=kd", "method.optimizer=sgd"]), "fp32")
    assert "optimizer" not in experiment_spec(plain, "fp32")["method"]
    assert experiment_spec(dot, "fp32")["method"]["optimizer"] == "dot"
    assert "dot_delta" not in experiment_spec(dot, "fp32")["method"]
    other = compose(["method=kd", "method.optimizer=dot", "method.dot_delta=0.09"])
    assert experiment_spec(other, "fp32")["method"]["dot_delta"] == 0.09
    assert run_identity(other, "fp32") != run_identity(dot, "fp32") != run_identity(plain, "fp32")
    for name in ("crd", "crd+kd"):
        assert experiment_spec(compose([f"method={name}", "method.optimizer=dot"]), "fp32")["method"]["optimizer"] \
            == "dot"
    with pytest.raises(KDBenchError, match="dot_delta"):
        compose(["method=kd", "method.dot_delta=1.5"])
    case = parity.case(FIXTURE, "kd_cnn_small")
    with pytest.raises(KDBenchError, match="optimizer=dot only"):
        _kd_method(case, "method.optimizer=sgd", "method.dot_delta=0.09")
    nesterov = OmegaConf.create({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                                 "weight_decay": 0.0})
    with pytest.raises(KDBenchError, match="Nesterov"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], nesterov, "foreach", 0.075)
    low = OmegaConf.merge(nesterov, {"nesterov": False, "momentum": 0.05})
    with pytest.raises(KDBenchError, match="must lie in"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], low, "foreach", 0.075)


def test_crd_heads_keep_a_distillation_buffer_and_its_classifier_a_task_buffer():
    """Under CRD the embedding heads are reached by the CRD term only and the student's classifier by CE
    only: each keeps one buffer; the student's other layers have both."""
    from kdbench.data import Batch, DatasetInfo
    from kdbench.method import build_method
    from kdbench.models import seeded_model
    from kdbench.orchestration.config import compose
    from kdbench.training.fastpath import build_optimizer

    cfg = compose(["method=crd", "method.optimizer=dot", "method.nce_k=8"])
    info = DatasetInfo("x", 10, (1, 8, 8), 32)
    labels = torch.arange(32) % 10
    s, t = seeded_model("cnn_small", 10, 1, 0), seeded_model("cnn_small", 10, 1, 0, "teacher-init")
    method = build_method(cfg.method, s, info, 0, teacher=t, student_arch="cnn_small", teacher_arch="cnn_small",
                          train_labels=labels)
    sched = OmegaConf.create({"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False,
                              "weight_decay": 5e-4})
    opt = build_optimizer(method.trainable_parameters(), sched, "foreach", method.dot_delta)
    g = torch.Generator().manual_seed(0)
    method.train()
    for k in range(2):
        idx = torch.arange(8) + 8 * k
        method.train_step(Batch(torch.randn(8, 1, 8, 8, generator=g), labels[idx], idx), 0, opt,
                          contextlib.nullcontext)
    kinds = {n: tuple(sorted(opt.state[p])) for n, p in method.named_parameters() if p.requires_grad}
    assert all(v == ("distill_momentum",) for n, v in kinds.items() if n.startswith(("embed_s", "embed_t")))
    assert kinds["student.fc.weight"] == kinds["student.fc.bias"] == ("task_momentum",)
    assert kinds["student.stages.0.body.0.weight"] == ("distill_momentum", "task_momentum")


@pytest.mark.usefixtures("teacher_cache")
def test_the_engine_trains_with_dot_and_a_killed_run_resumes_exactly(make_cfg, tmp_path):
    from kdbench.orchestration.runner import RunPaths, run

    class Killed(BaseException):
        pass

    dot = ("method=kd", "method.optimizer=dot")
    full = run(make_cfg(*dot, epochs=2))
    sgd = run(make_cfg("method=kd", epochs=2))
    assert full["run_id"] != sgd["run_id"] and full["history"][0]["train_loss"] != sgd["history"][0]["train_loss"]
    assert full["config"]["method"]["optimizer"] == "dot"

    def kill(epoch, step):
        if epoch == 1 and step == 3:
            raise Killed

    other = f"paths.results={tmp_path / 'other'}"
    with pytest.raises(Killed):
        run(make_cfg(*dot, other, epochs=2), on_step=kill)
    assert not RunPaths.of(make_cfg(*dot, other, epochs=2)).record.exists()
    resumed = run(make_cfg(*dot, other, "resume=true", epochs=2))
    assert resumed["timing"]["resumed_from_epoch"] == 1
    assert resumed["metrics"] == full["metrics"]
    drop = ("time_s", "images_per_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])


def test_dot_runs_in_a_cohort_record_what_they_record_alone(tmp_path, teacher_cache):
    from kdbench.data import load_data
    from kdbench.orchestration.cohort import run_cohort
    from kdbench.orchestration.config import compose
    from kdbench.orchestration.runner import run
    from tests.conftest import tiny_overrides

    members = [["method=kd", "method.optimizer=dot"], ["method=crd", "method.optimizer=dot"], ["method=kd"]]

    def cfgs(root):
        return [compose([*tiny_overrides(root, epochs=1, teachers=teacher_cache), *m, "seed=1"]) for m in members]

    solo_cfgs = cfgs(tmp_path / "solo")
    data = load_data(solo_cfgs[0])
    solo = [run(c, data=data) for c in solo_cfgs]
    cohort = run_cohort(cfgs(tmp_path / "cohort"), data)
    drop = ("time_s", "images_per_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    for a, b in zip(cohort, solo):
        assert a["run_id"] == b["run_id"] and a["status"] == b["status"] == "completed"
        assert a["metrics"] == b["metrics"] and strip(a["history"]) == strip(b["history"])
