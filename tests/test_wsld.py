"""WSLD: parity with the authors' loss on stored float64 cases, the weight by hand, and its limits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kdbench.methods.wsld import wsld_loss, wsld_weights

from tests import parity

FIXTURE = parity.load("wsld")
CASES = [c["name"] for c in FIXTURE["cases"]]


@pytest.mark.numerics
@pytest.mark.parametrize("name", CASES)
def test_loss_and_gradient_equal_the_authors_code(name):
    """float64 in and out, the same operations in a different order (the label's log-probability is
    picked instead of summed against a one-hot; CE from log-softmax as theirs): a few eps64 (2.2e-16)
    per reduction over at most 100 classes and 8 samples, so rel 1e-10 has four orders of margin."""
    case = parity.case(FIXTURE, name)
    x, want = case["inputs"], case["outputs"]
    T, alpha = case["params"]["temperature"], case["params"]["alpha"]
    for key, a, with_ce in (("wsld", 1.0, False), ("loss", alpha, True)):
        z_s = x["z_s"].clone().requires_grad_()
        loss = a * wsld_loss(z_s, x["z_t"], x["labels"], T)
        if with_ce:
            loss = loss + F.cross_entropy(z_s, x["labels"])
        loss.backward()
        assert loss.dtype == torch.float64
        torch.testing.assert_close(loss.detach(), want[key], rtol=1e-10, atol=0)
        grad = want["grad_z_s" if with_ce else "grad_wsld_z_s"]
        torch.testing.assert_close(z_s.grad, grad, rtol=1e-10, atol=1e-14 * float(grad.abs().max()))


def _hand(zs, zt, y, T):
    """The soft term of one sample from its definition, in plain floats."""
    def log_softmax(z, t):
        m = max(v / t for v in z)
        lse = m + math.log(sum(math.exp(v / t - m) for v in z))
        return [v / t - lse for v in z]

    ce_s, ce_t = -log_softmax(zs, 1)[y], -log_softmax(zt, 1)[y]
    w = 1 - math.exp(-ce_s / (ce_t + 1e-7))
    soft = -sum(math.exp(p) * q for p, q in zip(log_softmax(zt, T), log_softmax(zs, T)))
    return w, T * T * w * soft


@pytest.mark.numerics
def test_weights_and_loss_equal_a_hand_computation():
    zs = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 2.0], [2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    zt = torch.tensor([[2.0, 0.0, 1.0, 0.5], [1.0, 1.0, 1.5, -2.0], [5.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 3, 0])
    for T in (1.0, 4.0):
        hand = [_hand(zs[i].tolist(), zt[i].tolist(), int(y[i]), T) for i in range(3)]
        w = wsld_weights(zs, zt, y)
        for i in range(3):
            assert math.isclose(w[i].item(), hand[i][0], rel_tol=1e-12)
        assert math.isclose(wsld_loss(zs, zt, y, T).item(), sum(h[1] for h in hand) / 3, rel_tol=1e-12)


@pytest.mark.numerics
def test_weight_limits_and_no_gradient_through_the_weights():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 10, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 9])
    # a student as good as its teacher: 1 - 1/e (up to the 1e-7 in the denominator, relative ~1e-7)
    torch.testing.assert_close(wsld_weights(z, z, y), torch.full((4,), 1 - math.exp(-1), dtype=torch.float64),
                               rtol=1e-6, atol=0)
    sure = torch.zeros(1, 10, dtype=torch.float64)
    sure[0, 0] = 30.0  # CE ~ 1e-12: far ahead of a uniform guess (CE = log 10)
    uniform = torch.zeros(1, 10, dtype=torch.float64)
    assert wsld_weights(uniform, sure, torch.tensor([0])).item() == pytest.approx(1.0, abs=1e-12)  # far behind
    assert wsld_weights(sure, uniform, torch.tensor([0])).item() < 1e-9  # ahead of the teacher: no soft label
    # the weight is a constant: the gradient is the weighted KD gradient, T * w_i * (q_i - p_i) / B
    zs = z.clone().requires_grad_()
    zt = torch.randn(4, 10, generator=g, dtype=torch.float64)
    T = 4.0
    wsld_loss(zs, zt, y, T).backward()
    w = wsld_weights(z, zt, y)
    expected = T * w[:, None] * (torch.softmax(z / T, 1) - torch.softmax(zt / T, 1)) / 4
    torch.testing.assert_close(zs.grad, expected, rtol=1e-10, atol=1e-15)


def test_step_returns_ce_and_the_alpha_weighted_term():
    from kdbench.data import Batch, DatasetInfo
    from kdbench.method import build_method, method_defaults
    from kdbench.models import seeded_model

    hp = method_defaults("wsld")
    assert (hp["temperature"], hp["alpha"], hp["ce_weight"]) == (4.0, 2.25, 1.0)  # the authors' CIFAR-100 values
    s, t = seeded_model("cnn_small", 10, 1, 0), seeded_model("cnn_wide", 10, 1, 0, "teacher-init")
    m = build_method({"name": "wsld", **hp, "alpha": 0.5}, s, DatasetInfo("x", 10, (1, 8, 8), 16), 0,
                     teacher=t).eval()
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 5, 5, 3]), torch.arange(4))
    out = m.step(batch, epoch=0)
    z_s, z_t = m.student(batch.images).logits, m.teacher_forward(batch.images).logits
    assert set(out.losses) == {"ce", "wsld"}
    torch.testing.assert_close(out.losses["wsld"], 0.5 * wsld_loss(z_s, z_t, batch.labels, 4.0))
    torch.testing.assert_close(out.losses["ce"], F.cross_entropy(z_s, batch.labels))
