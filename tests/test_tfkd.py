"""TF-KD: the virtual teacher and both losses by hand, and the self variant's teacher (the student's own
architecture, trained once as the vanilla student is, identified like any teacher)."""
from __future__ import annotations

import math

import pytest
import torch
from kdbench.methods.tfkd import virtual_teacher

from kdbench.data import Batch, DatasetInfo
from kdbench.experiment.identity import teacher_config
from kdbench.method import build_method
from kdbench.models import seeded_model
from kdbench.orchestration.config import compose
from kdbench.orchestration.runner import run, spec_of
from tests.helpers import approx_float32_kl, float32_kl_error


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _build(name: str):
    cfg = compose([f"method={name}", "method.alpha=0.3", "method.multiplier=7"])
    student = seeded_model("cnn_small", 10, 1, 0, "student-init")
    teacher = seeded_model("cnn_small", 10, 1, 1, "teacher-init") if name == "tf-kd-self" else None
    return build_method(cfg.method, student, DatasetInfo("tiny", 10, (1, 8, 8), 8), 0, teacher=teacher)


def test_virtual_teacher_softens_the_probabilities_themselves():
    q = virtual_teacher(torch.tensor([2]), 4, 0.9, 20.0)[0].tolist()
    assert q == pytest.approx(_softmax([0.1 / 3 / 20, 0.1 / 3 / 20, 0.9 / 20, 0.1 / 3 / 20]), rel=1e-6)


def _hand_kl_mean(log_q_rows, p_rows):
    """KL averaged over every (sample, class) element, as nn.KLDivLoss() (reduction 'mean') does."""
    terms = [p * (math.log(p) - lq) for lq_row, p_row in zip(log_q_rows, p_rows) for lq, p in zip(lq_row, p_row)]
    return sum(terms) / len(terms)


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["tf-kd-reg", "tf-kd-self"])
def test_losses_by_hand(name):  # float32 network against float64 by hand
    m = _build(name)
    m.eval()
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 3, 3, 9]), torch.arange(4))
    out = m.step(batch, 0)
    z = m.student(batch.images).logits.double().tolist()
    ce = -sum(math.log(_softmax(r)[y]) for r, y in zip(z, batch.labels.tolist())) / 4
    assert out.losses["ce"].item() == pytest.approx((1 - 0.3) * ce, rel=1e-4)  # a log of size 2.3: no cancellation
    # The KL terms: p and q are nearly equal (networks at initialisation, near-uniform targets), so float32's
    # rounding of the logs is held to its own bound (helpers.float32_kl_error), not to a relative 1e-4.
    if name == "tf-kd-reg":
        p = [virtual_teacher(torch.tensor([y]), 10, 0.99, 20.0)[0].double().tolist() for y in batch.labels.tolist()]
        log_q = [[math.log(v) for v in _softmax(r)] for r in z]
        factor = 0.3 * 7 / 40  # alpha * multiplier, mean over 4 x 10 elements
        bound = factor * float32_kl_error(torch.tensor(p), torch.tensor(log_q), torch.tensor(z), 1 / 20)
        assert out.losses["reg"].item() == approx_float32_kl(0.3 * 7 * _hand_kl_mean(log_q, p), bound)
    else:
        t = m.teacher(batch.images).logits.double().tolist()
        p = [_softmax([v / 6 for v in r]) for r in t]
        log_q = [[math.log(v) for v in _softmax([x / 6 for x in r])] for r in z]
        factor = 0.3 * 7 * 36 / 40  # alpha * multiplier * T^2, mean over 4 x 10 elements
        bound = factor * float32_kl_error(torch.tensor(p), torch.tensor(log_q), torch.tensor(z) / 6,
                                          torch.tensor(t) / 6)
        assert out.losses["kd"].item() == approx_float32_kl(0.3 * 7 * 36 * _hand_kl_mean(log_q, p), bound)


def test_self_teacher_is_the_students_architecture_on_the_students_schedule(make_cfg):
    cfg = make_cfg("method=tf-kd-self", "pair=cifar100/resnet32x4-shufflenetv2", "dataset=cifar100")
    t = teacher_config(cfg)
    assert (t.pair.teacher, float(t.teacher.schedule.lr)) == ("shufflenetv2", 0.01)  # the student's recipe
    assert (cfg.pair.teacher, float(cfg.teacher.schedule.lr)) == ("resnet32x4", 0.05)  # the run's cfg untouched
    assert spec_of(cfg)["teacher"]["schedule"]["lr"] == 0.01
    kd = make_cfg("method=kd", "pair=cifar100/resnet32x4-shufflenetv2", "dataset=cifar100")
    assert teacher_config(kd) is kd  # every other method: the pair's teacher, ids unchanged


def test_self_run_distils_from_a_trained_copy_of_the_student(make_cfg):
    rec = run(make_cfg("method=tf-kd-self"))
    assert rec["teacher"]["arch"] == "cnn_small" == rec["pair"]["student"]
    again = run(make_cfg("method=tf-kd-self", "seed=1"))
    assert again["teacher"]["weights_sha256"] == rec["teacher"]["weights_sha256"]  # trained once, shared
