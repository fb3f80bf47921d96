"""NKD: parity with the authors' loss, a hand computation of both terms, the normalization's meaning,
and the step's terms and defaults."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kdbench.methods.kd import kd_loss
from kdbench.methods.nkd import nkd_loss, nkd_terms

from tests import parity
from tests.helpers import small_method

FIXTURE = parity.load("nkd")
FLOAT64_CASES = [c["name"] for c in FIXTURE["cases"] if c["inputs"]["z_s"].dtype == torch.float64]


@pytest.mark.numerics
@pytest.mark.parametrize("name", FLOAT64_CASES)
def test_loss_target_term_and_gradient_equal_the_authors_code(name):
    """float64 in and out, the same operations: agreement to rounding (rel 1e-10)."""
    c = parity.case(FIXTURE, name)
    p, z_t, y = c["params"], c["inputs"]["z_t"], c["inputs"]["labels"]
    z_s = c["inputs"]["z_s"].clone().requires_grad_(True)
    loss = nkd_loss(z_s, z_t, y, p["temperature"], p["gamma"])
    (grad,) = torch.autograd.grad(loss, z_s)
    target, _ = nkd_terms(z_s.detach(), z_t, y, p["temperature"])
    out = c["outputs"]
    assert math.isclose(loss.item(), out["loss"].item(), rel_tol=1e-10)
    assert math.isclose(target.item(), out["target_term"].item(), rel_tol=1e-10)
    assert torch.allclose(grad, out["grad_z_s"], rtol=1e-9, atol=1e-14 * out["grad_z_s"].abs().max().item())


@pytest.mark.numerics
def test_float32_loss_equals_the_authors_code_in_float32():
    """float32 as the authors train: softmaxes and sums over 99 classes in a possibly different order stay
    within a few ulps (~1e-7 relative); rel 1e-5 leaves margin and still catches any change of formula."""
    c = parity.case(FIXTURE, "cifar100_default_t3_g3.5_float32")
    p = c["params"]
    loss = nkd_loss(c["inputs"]["z_s"], c["inputs"]["z_t"], c["inputs"]["labels"], p["temperature"], p["gamma"])
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), c["outputs"]["loss"].item(), rel_tol=1e-5)


def _softmax(z, T=1.0):
    e = [math.exp(v / T) for v in z]
    return [x / sum(e) for x in e]


@pytest.mark.numerics
def test_terms_equal_a_hand_computation():
    """Renormalizing softmax(z / T) without the label equals a softmax over the other logits: compute it
    the paper's way, by renormalizing, in plain Python."""
    zs = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 2.0], [0.3, 0.1, -0.4, 1.2]], dtype=torch.float64)
    zt = torch.tensor([[2.0, 0.0, 1.0, 0.5], [1.0, 1.0, 1.5, -2.0], [-1.0, 2.5, 0.0, 0.7]], dtype=torch.float64)
    y = torch.tensor([1, 3, 1])
    for T in (1.0, 3.0):
        tgt = non = 0.0
        for i in range(3):
            s, t, k = zs[i].tolist(), zt[i].tolist(), int(y[i])
            tgt += -_softmax(t)[k] * math.log(_softmax(s)[k])
            ps, pt = _softmax(s, T), _softmax(t, T)
            qs = [v / (1 - ps[k]) for j, v in enumerate(ps) if j != k]
            qt = [v / (1 - pt[k]) for j, v in enumerate(pt) if j != k]
            non += -sum(a * math.log(b) for a, b in zip(qt, qs))
        target, non_target = nkd_terms(zs, zt, y, T)
        assert math.isclose(target.item(), tgt / 3, rel_tol=1e-12)
        assert math.isclose(non_target.item(), non / 3, rel_tol=1e-12)
        assert math.isclose(nkd_loss(zs, zt, y, T, 3.5).item(), (tgt + 3.5 * T * T * non) / 3, rel_tol=1e-12)


@pytest.mark.numerics
def test_the_non_target_term_is_kd_on_the_normalized_distributions_plus_the_teachers_entropy():
    """Its gradient is KD's on the non-target logits alone; the value adds the teacher's non-target entropy."""
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randn(6, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    T = 3.0
    _, non_target = nkd_terms(zs, zt, y, T)
    others = ~F.one_hot(y, 10).bool()
    zs_n, zt_n = zs[others].view(6, 9), zt[others].view(6, 9)
    q_t = F.softmax(zt_n / T, 1)
    entropy = -(q_t * q_t.log()).sum(1).mean()
    assert math.isclose(T * T * non_target.item(), kd_loss(zs_n, zt_n, T).item() + T * T * entropy.item(),
                        rel_tol=1e-10)
    # the label's own logits do not enter the non-target term
    zs2 = zs.clone()
    zs2[torch.arange(6), y] += 5.0
    assert math.isclose(nkd_terms(zs2, zt, y, T)[1].item(), non_target.item(), rel_tol=1e-12)


def _method(*overrides: str):
    return small_method("nkd", *overrides, cifar=True)


def test_the_step_returns_ce_and_both_nkd_terms():
    from kdbench.data import Batch

    m = _method("method.gamma=2.0", "method.temperature=2.0", "method.ce_weight=0.5").eval()
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 5, 5, 3]), torch.arange(4))
    out = m.step(batch, epoch=0)
    with torch.no_grad():
        zt, zs = m.teacher(batch.images).logits, m.student(batch.images).logits
    target, non_target = nkd_terms(zs, zt, batch.labels, 2.0)
    assert set(out.losses) == {"ce", "target", "non_target"}
    assert torch.allclose(out.losses["ce"], 0.5 * F.cross_entropy(zs, batch.labels))
    assert torch.allclose(out.losses["target"], target)
    assert torch.allclose(out.losses["non_target"], 2.0 * 4.0 * non_target)


def test_defaults_are_the_authors_cifar100_configuration():
    """res34_distill_res18_cifar.py: NKDLoss temp=3.0, gamma=3.5, beside the head's CE at weight 1."""
    from kdbench.orchestration.config import compose

    for pair in ("cifar100/resnet56-resnet20", "cifar100/vgg13-mobilenetv2"):
        cfg = compose(["method=nkd", f"pair={pair}", "dataset=cifar100"]).method
        assert (cfg.temperature, cfg.gamma, cfg.ce_weight) == (3.0, 3.5, 1.0)
