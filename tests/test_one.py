"""ONE: the trunk/tail split of every zoo family, branches, the gated ensemble and the loss by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdbench import KDBenchError
from kdbench.data import Batch, DatasetInfo
from kdbench.method import build_method
from kdbench.models import create_model
from kdbench.models.registry import MODELS
from kdbench.orchestration.config import compose
from tests.helpers import approx_float32_kl, by_cost, float32_kl_error

SPLITTABLE = [e.name for e in MODELS if not e.name.startswith("imagenet/")]


@pytest.mark.parametrize("arch", by_cost(SPLITTABLE))
def test_trunk_then_tail_is_the_model(arch):
    digits = arch.startswith("cnn")
    m = create_model(arch, num_classes=10, in_channels=1 if digits else 3).eval()
    x = torch.randn(2, 1, 8, 8) if digits else torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.forward_tail(m.forward_trunk(x)), m(x).logits, atol=1e-5)
        trunk = m.forward_trunk(x)
        spec = m.feature_spec(tuple(x.shape[1:]))
        assert trunk.shape[1:] == (spec.stages[-2].channels, spec.stages[-2].height, spec.stages[-2].width)
    tail = create_model(arch, num_classes=10, in_channels=1 if digits else 3).drop_trunk().eval()
    n_tail = sum(p.numel() for p in tail.parameters())
    assert 0 < n_tail < sum(p.numel() for p in m.parameters())
    with torch.no_grad():
        assert tail.forward_tail(trunk).shape == (2, 10)


def _one(arch="resnet8", classes=10, epochs=0, **hp):
    cfg = compose(["method=one", *(f"method.{k}={v}" for k, v in hp.items())], check=False)
    student = create_model(arch, num_classes=classes)
    return build_method(cfg.method, student, DatasetInfo("tiny", classes, (3, 32, 32), 8), 0, student_arch=arch,
                        epochs=epochs)


def test_a_student_that_does_not_split_is_refused():
    cfg = compose(["method=one"], check=False)
    student = create_model("imagenet/resnet18", num_classes=10)
    with pytest.raises(KDBenchError, match="shared trunk and a tail"):
        build_method(cfg.method, student, DatasetInfo("tiny", 10, (3, 32, 32), 8), 0, student_arch="imagenet/resnet18")


def test_rampup_follows_the_authors_sigmoid():
    from kdbench.methods.one import sigmoid_rampup

    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(80, 80) == sigmoid_rampup(200, 80) == 1.0 == sigmoid_rampup(0, 0)
    m = _one(epochs=300)
    assert m.rampup_epochs == pytest.approx(80)


@pytest.mark.numerics
def test_one_loss_by_hand():
    m = _one(epochs=30, branches=3, temperature=2.0)
    m.train()
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4])
    state = {k: v.clone() for k, v in m.state_dict().items()}
    out = m.step(Batch(x, y, torch.arange(5)), 4)
    m.load_state_dict(state)
    h = m.student.forward_trunk(x)
    z = [m.student.forward_tail(h).double(), *(b.forward_tail(h).double() for b in m.branches)]
    score = m.gate(h.mean((2, 3)))
    g = F.softmax(F.relu(m.gate_bn(score)), 1).double()
    ens = sum(g[:, k, None] * z[k] for k in range(3))
    q = F.softmax(ens / 2, 1)
    kl = sum((q * (q.log() - F.log_softmax(zk / 2, 1))).sum(1).mean() * 4 for zk in z)
    w = math.exp(-5 * (1 - 4 / 8) ** 2)  # rampup 80/300 of 30 epochs = 8
    # near-equal branches at initialisation: float32's KL against its own bound
    bound = w * 4 / 5 * sum(float32_kl_error(q, F.log_softmax(zk / 2, 1), ens / 2, *z) for zk in z)
    assert torch.allclose(out.losses["ce"].double(), sum(F.cross_entropy(zk, y) for zk in z), rtol=1e-5)
    assert torch.allclose(out.losses["ce_ensemble"].double(), F.cross_entropy(ens, y), rtol=1e-5)
    assert out.losses["kl"].item() == approx_float32_kl(w * kl.item(), bound)


def test_the_ensemble_teaches_without_being_taught():
    m = _one()
    m.train()
    out = m.step(Batch(torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4]), torch.arange(4)), 100)
    out.losses["kl"].backward()
    assert m.gate.weight.grad is None or not m.gate.weight.grad.any()
    assert m.branches[0].fc.weight.grad.abs().sum() > 0


def test_branches_start_apart_and_every_member_is_recorded(make_cfg):
    from kdbench.orchestration.runner import run

    m = _one("resnet8")
    assert not torch.equal(m.branches[0].fc.weight, m.student.fc.weight)
    rec = run(make_cfg("method=one"))
    last = rec["metrics"]["last"]
    assert {"student", "branch2", "branch3", "ensemble"} == {k for k in last if k != "epoch"}
    assert rec["params"]["extra_trainable"] > rec["params"]["student"]  # two more tails and the gate
