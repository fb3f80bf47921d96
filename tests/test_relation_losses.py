"""SP, PKT, NST and CC losses against hand computations (plain Python loops, float64) on small tensors."""
from __future__ import annotations

import math

import pytest
import torch
from kdbench.methods.cc import cc_loss
from kdbench.methods.nst import nst_loss
from kdbench.methods.pkt import pkt_loss
from kdbench.methods.sp import sp_loss


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _hand_sp(fs, ft):
    def sim(f):
        rows = [r.flatten().tolist() for r in f]
        g = [[_dot(a, b) for b in rows] for a in rows]
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in g]

    gs, gt = sim(fs), sim(ft)
    b = len(gs)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / (b * b)


def _hand_pkt(es, et, eps=1e-7):
    def probs(e):
        rows = [r.tolist() for r in e]
        n = [[x / (math.sqrt(sum(v * v for v in r)) + eps) for x in r] for r in rows]
        sim = [[(_dot(a, b) + 1) / 2 for b in n] for a in n]
        return [[v / sum(row) for v in row] for row in sim]

    ps, pt = probs(es), probs(et)
    b = len(ps)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(b) for j in range(b)) / b**2


def _hand_nst(fs, ft):
    """Squared MMD with k(x, y) = (x . y)^2 between channel vectors, per sample, averaged."""
    def channels(f):
        out = []
        for sample in f:
            vecs = [c.flatten().tolist() for c in sample]
            out.append([[x / math.sqrt(sum(v * v for v in vec)) for x in vec] for vec in vecs])
        return out

    s, t = channels(fs), channels(ft)
    def k_mean(a, b):
        return sum(_dot(x, y) ** 2 for x in a for y in b) / (len(a) * len(b))
    return sum(k_mean(tt, tt) + k_mean(ss, ss) - 2 * k_mean(ss, tt) for ss, tt in zip(s, t)) / len(s)


def _hand_cc(vs, vt):
    d = [[abs(a - b) for a, b in zip(r, q)] for r, q in zip(vs.tolist(), vt.tolist())]
    return sum(_dot(d[i], d[i + 1]) for i in range(len(d) - 1)) / (len(d) - 1)


@pytest.mark.numerics
def test_sp_equals_hand_computation():
    fs, ft = _rand(4, 3, 2, 2, seed=1), _rand(4, 5, 3, 3, seed=2)  # other channels and sizes: B x B only
    assert math.isclose(sp_loss(fs, ft).item(), _hand_sp(fs, ft), rel_tol=1e-10)
    assert sp_loss(fs, fs).item() == 0.0


@pytest.mark.numerics
def test_pkt_equals_hand_computation():
    es, et = _rand(5, 4, seed=3), _rand(5, 6, seed=4)
    assert math.isclose(pkt_loss(es, et).item(), _hand_pkt(es, et), rel_tol=1e-9)
    assert abs(pkt_loss(es, es).item()) < 1e-12
    zero = torch.zeros(5, 4, dtype=torch.float64)  # an all-zero embedding gives finite numbers
    assert math.isfinite(pkt_loss(zero, et).item())


@pytest.mark.numerics
def test_nst_equals_hand_computation_and_pools_the_larger_map():
    fs, ft = _rand(2, 3, 2, 2, seed=5), _rand(2, 4, 2, 2, seed=6)
    assert math.isclose(nst_loss(fs, ft).item(), _hand_nst(fs, ft), rel_tol=1e-10)
    big = _rand(2, 4, 4, 4, seed=7)
    pooled = torch.nn.functional.adaptive_avg_pool2d(big, (2, 2))
    assert math.isclose(nst_loss(fs, big).item(), _hand_nst(fs, pooled), rel_tol=1e-10)
    assert abs(nst_loss(fs, fs).item()) < 1e-12


@pytest.mark.numerics
def test_nst_teacher_term_carries_no_gradient():
    fs = _rand(2, 3, 2, 2, seed=8).requires_grad_(True)
    ft = _rand(2, 3, 2, 2, seed=9).requires_grad_(True)
    nst_loss(fs, ft).backward()
    t_only = ft.grad.clone()
    ft.grad = None
    # The teacher's gradient comes from the cross term only: -2 mean k(s, t).
    import torch.nn.functional as F
    from kdbench.methods.nst import _poly_mmd_term

    s = F.normalize(fs.detach().flatten(2), dim=2)
    t = F.normalize(ft.flatten(2), dim=2)
    (-2 * _poly_mmd_term(s, t)).backward()
    torch.testing.assert_close(t_only, ft.grad)


@pytest.mark.numerics
def test_cc_equals_hand_computation():
    vs, vt = _rand(6, 4, seed=10), _rand(6, 4, seed=11)
    assert math.isclose(cc_loss(vs, vt).item(), _hand_cc(vs, vt), rel_tol=1e-12)


@pytest.mark.parametrize("name,extra", [("sp", 0), ("pkt", 0), ("nst", 0), ("cc", 2 * (64 + 1) * 128)])
def test_new_methods_build_on_a_cifar_pair_with_their_benchmark_defaults(name, extra):
    from kdbench.data import DatasetInfo
    from kdbench.method import build_method
    from kdbench.models import seeded_model
    from kdbench.orchestration.config import compose

    cfg = compose([f"method={name}", "pair=cifar100/resnet56-resnet20", "dataset=cifar100"])
    info = DatasetInfo("x", 100, (3, 32, 32), 64)
    s, t = seeded_model("resnet20", 100, 3, 0), seeded_model("resnet56", 100, 3, 0, "teacher-init")
    m = build_method(cfg.method, s, info, 0, teacher=t, student_arch="resnet20", teacher_arch="resnet56",
                     train_labels=torch.arange(64) % 100)
    assert m.extra_trainable_parameters() == extra
    beta = {"sp": 3000.0, "pkt": 30000.0, "nst": 50.0, "cc": 0.02}[name]
    assert cfg.method.beta == beta and cfg.method.ce_weight == 1.0
