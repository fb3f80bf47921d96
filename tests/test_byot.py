"""BYOT: heads from the feature spec, the loss by hand, and every classifier recorded."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdbench import KDBenchError
from kdbench.data import Batch, DatasetInfo
from kdbench.method import build_method
from kdbench.models import create_model
from kdbench.orchestration.config import compose
from tests.helpers import approx_float32_kl, float32_kl_error


def _byot(arch: str, classes: int = 100, shape=(3, 32, 32), **hp):
    cfg = compose(["method=byot", *(f"method.{k}={v}" for k, v in hp.items())], check=False)
    student = create_model(arch, num_classes=classes, in_channels=shape[0])
    return build_method(cfg.method, student, DatasetInfo("tiny", classes, shape, 8), 0, student_arch=arch)


@pytest.mark.parametrize("arch,heads,strides", [("resnet8x4", 2, [4, 2]), ("wrn_16_2", 2, [4, 2]),
                                                ("vgg8", 3, [4, 2, 1]), ("mobilenetv2", 3, [8, 4, 2]),
                                                ("resnet18", 3, [8, 4, 2])])
def test_a_head_on_every_stage_but_the_stem_and_the_deepest(arch, heads, strides):
    m = _byot(arch)
    assert len(m.heads) == heads
    assert [h.bottleneck[3].stride[0] for h in m.heads] == strides  # brings each stage to the deepest's size
    emb = m.ctx.student_spec.embedding_dim
    assert all(h.fc.in_features == emb for h in m.heads)


def test_a_student_with_too_few_stages_is_refused():
    from kdbench.models.digits import DigitsCNN

    student = DigitsCNN((8, 16), depth=1)
    cfg = compose(["method=byot"], check=False)
    with pytest.raises(KDBenchError, match="at least three stages"):
        build_method(cfg.method, student, DatasetInfo("tiny", 10, (1, 8, 8), 8), 0)


@pytest.mark.numerics
def test_byot_loss_by_hand():
    m = _byot("resnet8", 10, temperature=2.0, alpha=0.3, beta=0.01)
    m.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    state = {k: v.clone() for k, v in m.state_dict().items()}
    out = m.step(Batch(x, y, torch.arange(4)), 0)
    m.load_state_dict(state)
    o = m.student(x)
    deep, emb = o.logits.double(), o.embedding.double()
    ce_heads = kd = hint = bound = 0.0
    for i, h in zip(m.head_stages, m.heads):
        z, f = (t.double() for t in h(o.features[i]))
        ce_heads = ce_heads + F.cross_entropy(z, y)
        q = F.softmax(deep / 2, 1)
        kd = kd + (q * (q.log() - F.log_softmax(z / 2, 1))).sum(1).mean() * 4
        bound += 0.3 * 4 / 4 * float32_kl_error(q, F.log_softmax(z / 2, 1), deep / 2, z / 2)
        hint = hint + ((f - emb) ** 2).sum()
    assert torch.allclose(out.losses["ce"].double(), 0.7 * F.cross_entropy(deep, y), rtol=1e-5)
    assert torch.allclose(out.losses["ce_heads"].double(), 0.7 * ce_heads, rtol=1e-5)
    assert out.losses["kd"].item() == approx_float32_kl(0.3 * kd.item(), bound)  # near-equal heads at init
    assert torch.allclose(out.losses["hint"].double(), 0.01 * hint, rtol=1e-4)


def test_the_deepest_classifier_is_not_taught_by_the_heads():
    m = _byot("resnet8", 10)
    m.train()
    out = m.step(Batch(torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4]), torch.arange(4)), 0)
    (out.losses["kd"] + out.losses["hint"]).backward()
    assert m.student.fc.weight.grad is None or not m.student.fc.weight.grad.any()
    assert m.heads[0].fc.weight.grad.abs().sum() > 0


def test_every_classifier_and_the_ensemble_are_recorded(make_cfg):
    from kdbench.orchestration.runner import run

    rec = run(make_cfg("method=byot", "pair.student=cnn_wide"))
    last = rec["metrics"]["last"]
    assert {"student", "head1", "ensemble"} <= set(last)
    assert all(0 <= last[k]["test"]["top1"] <= 100 for k in ("student", "head1", "ensemble"))
    assert rec["history"][0]["train_loss"].keys() == {"ce", "ce_heads", "kd", "hint"}


def test_evaluating_a_head_leaves_the_students_batchnorm_alone():
    m = _byot("resnet8", 10)
    view = m.eval_models()["head1"]
    before = {k: v.clone() for k, v in m.student.state_dict().items()}
    view.eval()
    with torch.no_grad():
        view(torch.randn(4, 3, 32, 32))
    view.train()
    assert all(torch.equal(before[k], v) for k, v in m.student.state_dict().items())
    assert m.student.training  # back in train mode
