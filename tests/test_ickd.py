"""ICKD: parity with the authors' CIFAR loss and connector on stored float64 cases, a hand computation,
and the correlation's invariances."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kdbench.methods.ickd import ChannelEmbed, channel_correlation, ickd_loss

from tests import parity

FIXTURE = parity.load("ickd")
CASES = [c["name"] for c in FIXTURE["cases"]]


@pytest.mark.numerics
@pytest.mark.parametrize("name", CASES)
def test_loss_connector_and_gradients_equal_the_authors_code(name):
    """float64 throughout, the same operations (a 1x1 conv, BatchNorm in train mode, B x C x C Gram
    matrices over at most 16 positions, row norms, a sum of at most 4 x 16 x 16 squares): rounding of a
    few eps64 (2.2e-16) per reduction, so rel 1e-10 leaves four orders of margin."""
    case = parity.case(FIXTURE, name)
    x, want = case["inputs"], case["outputs"]
    embed = ChannelEmbed(case["params"]["student_channels"], case["params"]["teacher_channels"]).double().train()
    with torch.no_grad():
        embed.conv.weight.copy_(x["conv_weight"])
        embed.bn.weight.copy_(x["bn_weight"])
        embed.bn.bias.copy_(x["bn_bias"])
    f_s = x["f_s"].clone().requires_grad_()
    loss = ickd_loss(embed(f_s), x["f_t"])
    loss.backward()
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss.detach(), want["loss"], rtol=1e-10, atol=0)
    for got, key in ((f_s.grad, "grad_f_s"), (embed.conv.weight.grad, "grad_conv_weight"),
                     (embed.bn.weight.grad, "grad_bn_weight"), (embed.bn.bias.grad, "grad_bn_bias"),
                     (embed.bn.running_mean, "bn_running_mean"), (embed.bn.running_var, "bn_running_var")):
        torch.testing.assert_close(got, want[key], rtol=1e-10, atol=1e-13 * float(want[key].abs().max()))


@pytest.mark.numerics
def test_loss_equals_a_hand_computation():
    # one sample, two channels on a grid of two positions: Gram rows [a.a, a.b], [b.a, b.b], each unit-normed
    f_s = torch.tensor([[[[1.0, 2.0]], [[0.0, 3.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    f_t = torch.tensor([[[[2.0, 1.0]], [[1.0, 1.0]]]], dtype=torch.float64)

    def rows(a, b):
        dot = lambda u, v: sum(p * q for p, q in zip(u, v))  # noqa: E731
        g = [[dot(a, a), dot(a, b)], [dot(b, a), dot(b, b)]]
        return [[v / math.hypot(*r) for v in r] for r in g]

    gs, gt = rows([1, 2], [0, 3]), rows([2, 1], [1, 1])
    expected = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(2) for j in range(2)) / (1 * 2)
    assert ickd_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.numerics
def test_correlation_ignores_the_grid_order_and_scale_and_is_zero_on_itself():
    """The loss compares channels with channels: it is the same for any order of the positions, for maps
    scaled per sample, for a consistent reordering of the channels, and zero against itself. (float64:
    each change only reorders or rescales sums of 9 products, a few eps64 apart.)"""
    g = torch.Generator().manual_seed(0)
    f_s = torch.relu(torch.randn(3, 5, 3, 3, generator=g, dtype=torch.float64))
    f_t = torch.relu(torch.randn(3, 5, 3, 3, generator=g, dtype=torch.float64))
    base = ickd_loss(f_s, f_t).item()
    assert base > 0 and ickd_loss(f_t, f_t).item() == 0.0
    pos = torch.randperm(9, generator=g)
    shuffled = f_s.flatten(2)[:, :, pos].view_as(f_s)
    assert ickd_loss(shuffled, f_t).item() == pytest.approx(base, rel=1e-12)
    scale = torch.tensor([0.5, 3.0, 7.0], dtype=torch.float64).view(3, 1, 1, 1)
    assert ickd_loss(scale * f_s, f_t).item() == pytest.approx(base, rel=1e-12)
    ch = torch.randperm(5, generator=g)
    assert ickd_loss(f_s[:, ch], f_t[:, ch]).item() == pytest.approx(base, rel=1e-12)
    # a teacher grid of another size: only the channel count must agree
    assert math.isfinite(ickd_loss(f_s, F.avg_pool2d(f_t, 2, ceil_mode=True)).item())
    # the rows are unit vectors (or zero for an all-zero channel)
    dead = f_t.clone()
    dead[:, 1] = 0.0
    norms = channel_correlation(dead).norm(dim=2)
    assert torch.allclose(norms[:, 1], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(norms[:, [0, 2, 3, 4]], torch.ones(3, 4, dtype=torch.float64))


def test_step_embeds_the_last_student_stage_and_adds_kd():
    from kdbench.data import Batch, DatasetInfo
    from kdbench.method import build_method, method_defaults, soft_kl
    from kdbench.models import seeded_model

    hp = method_defaults("ickd")
    assert (hp["beta"], hp["kd_weight"], hp["temperature"], hp["ce_weight"]) == (2.5, 1.0, 4.0, 1.0)
    s, t = seeded_model("cnn_small", 10, 1, 0), seeded_model("cnn_wide", 10, 1, 0, "teacher-init")
    m = build_method({"name": "ickd", **hp}, s, DatasetInfo("x", 10, (1, 8, 8), 16), 0, teacher=t)
    assert (m.embed.conv.in_channels, m.embed.conv.out_channels) == (32, 128)  # cnn_small -> cnn_wide, last stage
    assert m.extra_trainable_parameters() == 32 * 128 + 2 * 128
    m.eval()  # BatchNorm from running statistics, so the recomputation below sees the same numbers
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 5, 5, 3]), torch.arange(4))
    out = m.step(batch, epoch=0)
    s_out, t_out = m.student(batch.images), m.teacher_forward(batch.images)
    assert set(out.losses) == {"ce", "kd", "ickd"}
    torch.testing.assert_close(out.losses["ickd"], 2.5 * ickd_loss(m.embed(s_out.features[-1]), t_out.features[-1]))
    torch.testing.assert_close(out.losses["kd"], soft_kl(s_out.logits, t_out.logits, 4.0))
    without_kd = build_method({"name": "ickd", **hp, "kd_weight": 0.0}, s, DatasetInfo("x", 10, (1, 8, 8), 16), 0,
                              teacher=t)
    assert set(without_kd.step(batch, epoch=0).losses) == {"ce", "ickd"}  # the authors' "w/o KL" row
