"""IRG: parity with Knowledge-Distillation-Zoo's loss and gradient, the graphs by hand, properties, the method."""
from __future__ import annotations

import pytest
import torch
from kdbench.methods.irg import edge_matrix, irg_terms, match_channels, pool_channels, transformation

from kdbench.data import Batch, DatasetInfo
from kdbench.method import build_method, method_defaults
from kdbench.models import seeded_model
from tests import parity

FIXTURE = parity.load("irg")


def _weighted(case, s):
    p = case["params"]
    vertex, edge, tran = irg_terms(s, case["inputs"]["teacher"])
    return vertex, edge, tran, p["w_vert"] * vertex + p["w_edge"] * edge + p["w_tran"] * tran


@pytest.mark.numerics
@pytest.mark.parametrize("name", [c["name"] for c in FIXTURE["cases"]])
def test_loss_terms_and_gradient_equal_the_zoos(name):
    # float64 in and out with the Zoo's own arithmetic (Gram-form distances, the same max): only the order of
    # a few sums could differ, far below 1e-12 relative (observed: equal to the last bit).
    case = parity.case(FIXTURE, name)
    s = [x.clone().requires_grad_(True) for x in case["inputs"]["student"]]
    vertex, edge, tran, loss = _weighted(case, s)
    out = case["outputs"]
    for ours, key in ((vertex, "vertex"), (edge, "edge"), (tran, "transformation"), (loss, "loss")):
        assert ours.item() == pytest.approx(out[key].item(), rel=1e-12, abs=1e-300), key
    for g, ref in zip(torch.autograd.grad(loss, s), out["grad_student"]):
        assert torch.allclose(g, ref, rtol=1e-10, atol=1e-12 * ref.abs().max().item())


@pytest.mark.numerics
def test_edge_and_transformation_by_hand():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # squared distances 9 (0-1), 1 (0-2), 10 (1-2); the largest is 10
    expected = torch.tensor([[0, 9, 1], [9, 0, 10], [1, 10, 0]], dtype=torch.float64) / 10
    assert torch.allclose(edge_matrix(x), expected, rtol=1e-15, atol=0)
    f1 = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64).view(3, 1, 1, 1)
    f2 = torch.tensor([[1.0, 1.0], [2.0, 4.0], [0.0, 0.0]], dtype=torch.float64).view(3, 2, 1, 1)
    # f2 has twice f1's channels: its pairs are averaged to (1, 3, 0); squared distances 0 (floored), 1, 16
    assert torch.allclose(transformation(f1, f2), torch.tensor([1e-12, 1.0, 16.0], dtype=torch.float64) / 16)


@pytest.mark.numerics
def test_channel_pooling_generalises_the_zoos_pairwise_mean():
    f = torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(pool_channels(f, 4), (f[:, 0::2] + f[:, 1::2]) / 2, rtol=1e-15, atol=1e-15)
    g = f[:, :5]  # 5 -> 2 channels (MobileNetV2-like ratios): windows {0, 1, 2} and {2, 3, 4}
    small = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    a, b = match_channels(small, g)
    assert a is small and torch.allclose(b, torch.stack([g[:, 0:3].mean(1), g[:, 2:5].mean(1)], 1))
    assert match_channels(g, small)[0].shape == (2, 2, 3, 3)  # the earlier map may be the wider one


@pytest.mark.numerics
def test_graphs_ignore_the_features_scale_and_vanish_when_student_equals_teacher():
    case = parity.case(FIXTURE, "pooled_and_halved")
    t = case["inputs"]["teacher"]
    assert all(x.item() == 0.0 for x in irg_terms([x.clone() for x in t], t))
    s = case["inputs"]["student"]
    _, edge, tran = irg_terms(s, t)
    _, edge3, tran3 = irg_terms([s[0] * 3, s[1] * 3, s[2] * 3, s[3]], t)  # distances over their max: scale-free
    assert edge3.item() == pytest.approx(edge.item(), rel=1e-12) and tran3.item() == pytest.approx(tran.item(),
                                                                                                   rel=1e-12)


def test_the_method_weights_the_zoos_terms():
    d = method_defaults("irg")
    assert (d["w_vert"], d["w_edge"], d["w_tran"], d["ce_weight"]) == (0.1, 5.0, 5.0, 1.0)
    info = DatasetInfo("tiny", 10, (1, 8, 8), 8)
    s, t = seeded_model("cnn_small", 10, 1, 0), seeded_model("cnn_wide", 10, 1, 0, "teacher-init")
    m = build_method({**d, "name": "irg"}, s, info, 0, teacher=t, student_arch="cnn_small", teacher_arch="cnn_wide")
    m.eval()
    batch = Batch(torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 1, 2]),
                  torch.arange(4))
    losses = m.step(batch, 0).losses
    so, to = m.student(batch.images), m.teacher(batch.images)
    vertex, edge, tran = irg_terms(*([o.features[-2], o.features[-1], o.embedding, o.logits] for o in (so, to)))
    assert set(losses) == {"ce", "vertex", "edge", "transformation"}
    assert torch.allclose(losses["vertex"], 0.1 * vertex) and torch.allclose(losses["edge"], 5 * edge)
    assert torch.allclose(losses["transformation"], 5 * tran)
