"""KD's loss against a hand computation on small tensors."""
from __future__ import annotations

import math

import torch
from kdbench.methods.kd import kd_loss


def _hand_kd(s, t, T):
    total = 0.0
    for zs, zt in zip(s.tolist(), t.tolist()):
        es = [math.exp(v / T) for v in zs]
        et = [math.exp(v / T) for v in zt]
        ps = [e / sum(es) for e in es]
        pt = [e / sum(et) for e in et]
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    return total / len(s) * T * T


def test_kd_loss_equals_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.5]], dtype=torch.float64)
    for T in (1.0, 4.0):
        assert math.isclose(kd_loss(s, t, T).item(), _hand_kd(s, t, T), rel_tol=1e-10)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(4, 10)
    assert kd_loss(z, z, 4.0).abs().item() < 1e-6
    assert kd_loss(z, z.flip(1), 4.0).item() > 0


def test_kd_loss_gradient_scales_like_one_over_T():
    # Hinton et al., Sec. 2.1: for large T the gradient of T^2 * KL tends to
    # (z_s - z_t) / (C N) for zero-mean logits -- independent of T, the point of the T^2 factor.
    torch.manual_seed(0)
    s0, t = torch.randn(2, 5) * 0.1, torch.randn(2, 5) * 0.1
    grads = []
    for T in (20.0, 40.0):
        s = s0.clone().requires_grad_(True)
        kd_loss(s, t, T).backward()
        grads.append(s.grad)
    assert torch.allclose(grads[0], grads[1], rtol=0.05, atol=1e-5)
