"""OFD: parity with the authors' distiller (margins, connectors, partial L2, level weights, loss scale), the
margin by hand, the BatchNorm each family's margins come from, the batch-statistics teacher, and folding."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from kdbench.methods.ofd import (
    OFD,
    batch_statistics,
    bn_before_relu,
    bn_margin,
    connector,
    ofd_distance,
    partial_l2,
)
from torch import nn

from kdbench import KDBenchError
from kdbench.data import Batch, DatasetInfo
from kdbench.method import build_method
from kdbench.models import create_model
from tests import parity
from tests.helpers import by_cost

FIXTURE = parity.load("ofd")
DISTILLER_CASES = ["three_levels_edge_margins", "four_levels_batch_2", "one_level_batch_5"]
# float64 throughout: each loss is a sum of at most ~10^3 squares, whose rounding stays near n * eps64 ~ 1e-13
REL = 1e-10


def _connectors(inputs) -> list[nn.Module]:
    """Our connectors holding the fixture's conv weights, double, BN in training mode (as the authors' loop)."""
    out = []
    for s, w in zip(inputs["student"], inputs["connector_weight"]):
        c = connector(s.shape[1], w.shape[0]).double().train()
        with torch.no_grad():
            c[0].weight.copy_(w)
        out.append(c)
    return out


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=REL, atol=0)


@pytest.mark.numerics
@pytest.mark.parametrize("name", DISTILLER_CASES)
def test_matches_the_authors_distiller(name):
    case = parity.case(FIXTURE, name)
    i, o = case["inputs"], case["outputs"]
    margins = [bn_margin(w, b) for w, b in zip(i["bn_weight"], i["bn_bias"])]
    for ours, theirs in zip(margins, o["margins"], strict=True):
        # float64 arithmetic rounded once to float32, as their python-float list -> FloatTensor
        assert ours.dtype == torch.float32 and torch.equal(ours, theirs)
    outs = [c(s) for c, s in zip(_connectors(i), i["student"])]
    assert all(_close(a, b) for a, b in zip(outs, o["connector_out"], strict=True))
    m64 = [m.double().view(1, -1, 1, 1) for m in margins]
    for s, t, m, theirs in zip(outs, i["teacher"], m64, o["level_loss"], strict=True):
        assert _close(partial_l2(s, t, m), theirs)
    d = ofd_distance(outs, i["teacher"], [m.double() for m in margins])
    assert _close(d, o["loss_distill"]) and _close(d, o["loss_distill_initial"])
    batch = case["params"]["batch_size"]
    assert _close(case["params"]["weight"] * d / batch, o["ofd_term"])


@pytest.mark.numerics
def test_partial_l2_on_hand_placed_ties_matches_theirs_and_a_hand_sum():
    case = parity.case(FIXTURE, "partial_l2_ties")
    i, o = case["inputs"], case["outputs"]
    ours = partial_l2(i["source"], i["target"], i["margin"])
    assert _close(ours, o["loss"]) and _close(ours, o["loss_initial"])
    # channel 0 (m = -0.5): (0.1 - 0.3)^2 + (-0.4 + 0.5)^2; channel 1 (m = -1.25): 0 + 0.2^2 + 0.5^2 + 2.5^2;
    # every other element is a tie (s == max(t, m) <= 0) or a student below a non-positive target
    assert ours.item() == pytest.approx(0.04 + 0.01 + 0.04 + 0.25 + 6.25, rel=1e-12)


@pytest.mark.numerics
def test_matches_mdistiller_where_the_teacher_is_twice_the_students_size():
    case = parity.case(FIXTURE, "mdistiller_teacher_twice_the_size")
    i, o = case["inputs"], case["outputs"]
    margins = [bn_margin(w, b) for w, b in zip(i["bn_weight"], i["bn_bias"])]
    assert all(torch.equal(a, b) for a, b in zip(margins, o["margins"], strict=True))
    outs = [c(s) for c, s in zip(_connectors(i), i["student"])]
    d = ofd_distance(outs, i["teacher"], [m.double() for m in margins])
    batch = case["params"]["batch_size"]
    assert _close(d / batch, o["ofd_loss"])  # theirs averages over the batch (mean(0).sum()), ours sums
    # their FEAT_WEIGHT times a batch mean is our weight times a batch sum / B: the same term
    assert _close(1e-3 * d / batch, o["loss_feat"])


@pytest.mark.numerics
def test_margin_is_the_mean_of_the_negative_part_of_the_bn_output():
    g = torch.tensor([1.0, 2.5, -1.3, 0.4, 1.0])
    b = torch.tensor([0.0, 0.0, -0.7, 1.6, 0.0])
    m = bn_margin(g, b)
    # beta = 0: E[x | x < 0] of N(0, s^2) = -s sqrt(2 / pi)
    assert m[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-7)
    assert m[1].item() == pytest.approx(-2.5 * math.sqrt(2 / math.pi), rel=1e-7)
    # the sign of gamma does not matter; a numerical integral of x p(x) over x < 0 for N(-0.7, 1.3^2)
    x = torch.linspace(-0.7 - 13 * 1.3, 0.0, 400_001, dtype=torch.float64)
    p = torch.exp(-0.5 * ((x + 0.7) / 1.3) ** 2)
    assert m[2].item() == pytest.approx((torch.trapezoid(x * p, x) / torch.trapezoid(p, x)).item(), rel=1e-6)
    # P(x < 0) = Phi(-4) < 0.001: the authors' -3 |gamma|; at Phi(-3.3) = 4.8e-4 too, and above the
    # cut-off (Phi(-3) = 1.3e-3) the conditional mean
    assert m[3].item() == pytest.approx(-1.2, rel=1e-7)
    near = bn_margin(torch.tensor([1.0, 1.0]), torch.tensor([3.3, 3.0]))
    assert near[0].item() == -3.0
    phi, tail = math.exp(-4.5) / math.sqrt(2 * math.pi), 0.5 * math.erfc(3 / math.sqrt(2))
    assert near[1].item() == pytest.approx(3.0 - phi / tail, rel=1e-6)
    assert bool((m < 0).all())
    # gamma = 0 (the authors' code divides by it): the limit, min(beta, 0)
    assert bn_margin(torch.zeros(3), torch.tensor([0.5, -0.5, 0.0])).tolist() == [0.0, -0.5, 0.0]


@pytest.mark.numerics
def test_partial_l2_is_zero_on_the_teachers_side_of_its_targets():
    t = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    m = bn_margin(torch.rand(4) + 0.5, torch.randn(4)).double().view(1, -1, 1, 1)
    target = torch.maximum(t, m)
    assert partial_l2(target, t, m).item() == 0.0
    # below a non-positive target nothing is penalised; above a positive one the full square is
    below = torch.where(target <= 0, target - torch.rand_like(t), target)
    assert partial_l2(below, t, m).item() == 0.0
    assert partial_l2(target + 0.5, t, m).item() == pytest.approx(0.25 * t.numel(), rel=1e-12)


# -- the BatchNorm each family's margins come from --------------------------------------------------------

ARCHS = {"resnet8x4": 3, "resnet20": 3, "resnet18": 3, "resnet50": 3, "wrn_16_2": 3, "vgg8": 3,
         "mobilenetv2": 3, "shufflenetv1": 3, "shufflenetv2": 3, "cnn_small": 1}


@pytest.mark.parametrize("arch", by_cost(sorted(ARCHS)))
def test_each_found_batchnorm_feeds_its_stages_preactivation(arch):
    """Adding delta to the found BatchNorm's bias moves the stage's pre-activation by exactly delta in its
    channels (the residual shortcut and ShuffleNetV2's pass-through half stay): it is the BN before the ReLU."""
    model = create_model(arch, num_classes=10, in_channels=ARCHS[arch]).eval()
    x = torch.randn(2, ARCHS[arch], 16, 16, generator=torch.Generator().manual_seed(0))
    if arch.startswith("cnn_"):
        x = x[:, :, :8, :8]
    with torch.no_grad():
        base = model(x).preact_features[1:]
        parts = bn_before_relu(model)
        assert parts is not None and len(parts) == len(base)
        for k, stage in enumerate(parts):
            expected = torch.cat([torch.zeros(p) if isinstance(p, int) else torch.full((p.num_features,), 0.25)
                                  for p in stage])
            assert expected.numel() == base[k].shape[1]
            bns = [p for p in stage if not isinstance(p, int)]
            for bn in bns:
                bn.bias += 0.25
            moved = model(x).preact_features[1 + k] - base[k]
            for bn in bns:
                bn.bias -= 0.25
            # float32 (float64 depthwise convolutions are ~10x slower on CPU): a few roundings of the map's values
            tol = 1e-5 * max(1.0, base[k].abs().max().item())
            assert torch.allclose(moved, expected.view(1, -1, 1, 1).expand_as(moved), rtol=0, atol=tol)


# -- the method ------------------------------------------------------------------------------------------

def _method(student: str, teacher: str, teacher_model=None, **hparams) -> OFD:
    info = DatasetInfo("tiny", 100, (3, 32, 32), 8)
    torch.manual_seed(0)
    s = create_model(student, num_classes=100)
    t = teacher_model if teacher_model is not None else create_model(teacher, num_classes=100).eval()
    return build_method({"name": "ofd", **hparams}, s, info, 0, teacher=t, student_arch=student,
                        teacher_arch=teacher)


def _batch(seed: int = 1, b: int = 4) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 100, (b,), generator=g), torch.arange(b))


def _randomise_bns(model: nn.Module, seed: int = 3) -> nn.Module:
    """A teacher whose BatchNorms are not at their initial weight 1, bias 0 (so the margins differ)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.3)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def test_the_step_is_weight_times_the_distance_over_the_batch_and_uses_the_deepest_levels():
    m = _method("mobilenetv2", "vgg13", weight=2e-3)
    assert len(m.connectors) == 4  # vgg13 and mobilenetv2 both have four stages after the stem
    assert [c[0].out_channels for c in m.connectors] == [128, 256, 512, 512]
    assert [c[0].in_channels for c in m.connectors] == [12, 16, 48, 160]
    m.train()
    batch = _batch()
    out = m.step(batch, 0)
    with torch.no_grad():
        s = m.student(batch.images).preact_features[1:]
        t = m.teacher_features(batch.images).preact_features[1:]
        d = ofd_distance([c(f) for c, f in zip(m.connectors, s)], t, m.margins())
    assert out.losses["ofd"].item() == pytest.approx(2e-3 * d.item() / 4, rel=1e-5)
    assert out.losses["ce"].item() == pytest.approx(F.cross_entropy(out.logits, batch.labels).item(), rel=1e-6)


@pytest.mark.parametrize("teacher", ["resnet20", "shufflenetv2"])
def test_the_margins_are_those_of_the_teachers_batchnorms_before_its_relus(teacher):
    model = _randomise_bns(create_model(teacher, num_classes=100).eval())
    m = _method("resnet8", teacher, teacher_model=model)
    if teacher == "resnet20":
        bns = [layer[-1].bn2 for layer in (model.layer1, model.layer2, model.layer3)]
        want = [bn_margin(bn.weight, bn.bias) for bn in bns]
    else:  # the pass-through half first, margin 0; then the branch's last BatchNorm
        bns = [layer[-1].bn3 for layer in (model.layer1, model.layer2, model.layer3)]
        want = [torch.cat([torch.zeros(bn.num_features), bn_margin(bn.weight, bn.bias)]) for bn in bns]
    assert all(torch.equal(a.view(-1), b) for a, b in zip(m.margins(), want, strict=True))
    assert all(a.shape == (1, b.numel(), 1, 1) for a, b in zip(m.margins(), want))


def test_batch_mode_runs_the_teacher_with_batch_statistics_and_leaves_it_alone():
    teacher = _randomise_bns(create_model("resnet20", num_classes=100).eval())
    m = _method("resnet8", "resnet20", teacher_model=teacher)
    before = copy.deepcopy(m.batch_teacher.state_dict())
    in_train_mode = copy.deepcopy(teacher).train()  # the authors' teacher: training mode throughout
    batch = _batch()
    m.train()
    got = m.teacher_features(batch.images).preact_features
    with torch.no_grad():
        want = in_train_mode(batch.images).preact_features
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(got, want))
    with torch.no_grad():
        eval_mode = m.teacher_forward(batch.images).preact_features
    assert not torch.allclose(got[-1], eval_mode[-1], atol=1e-3)  # the two modes do differ
    after = m.batch_teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "running statistics moved"
    assert not m.batch_teacher.model.training and not any(b.training for b in m.batch_teacher.model.modules()
                                                            if isinstance(b, nn.BatchNorm2d))
    assert not any(k.startswith("batch_teacher.") for k in m.checkpoint_state())


def test_batch_statistics_restores_each_batchnorms_mode():
    bn = nn.BatchNorm2d(3).eval()
    with batch_statistics(nn.Sequential(bn)):
        assert bn.training and not bn.track_running_stats
    assert not bn.training and bn.track_running_stats


@pytest.mark.parametrize("teacher_bn", ["running", "batch"])
def test_folding_the_teacher_after_the_method_is_built_changes_neither_margins_nor_loss(teacher_bn):
    """A run builds the method, then the engine folds the teacher's BatchNorms (``apply_fast_path``): the
    margins, taken at build time, and the loss stay those of the unfolded teacher."""
    teacher = _randomise_bns(create_model("resnet20", num_classes=100).eval())
    plain = _method("resnet8", "resnet20", teacher_model=copy.deepcopy(teacher), teacher_bn=teacher_bn).double()
    folded = _method("resnet8", "resnet20", teacher_model=copy.deepcopy(teacher), teacher_bn=teacher_bn).double()
    folded.teacher.prepare((3, 32, 32), fold_bn=True, inference_mode=False)
    assert folded.teacher.folded > 0 and isinstance(folded.teacher.model.layer3[-1].bn2, nn.Identity)
    assert all(torch.equal(a, b) for a, b in zip(plain.margins(), folded.margins()))
    assert plain.margins()[0].abs().sum() > 0 and not torch.equal(plain.margins()[0], plain.margins()[1][:16])
    batch = _batch()
    batch.images = batch.images.double()
    plain.train(), folded.train()
    a, b = plain.step(batch, 0).losses["ofd"], folded.step(batch, 0).losses["ofd"]
    assert a.item() == pytest.approx(b.item(), rel=1e-9)  # float64: the fold only rounds


@pytest.mark.parametrize("teacher_bn", ["running", "batch"])
def test_a_teacher_folded_before_the_method_is_built_is_refused(teacher_bn):
    """A cohort's shared teacher may be folded by an earlier member: its margin BatchNorms are gone."""
    from kdbench.training.frozen_teacher import FrozenTeacher

    teacher = FrozenTeacher(create_model("resnet20", num_classes=100))
    teacher.prepare((3, 32, 32), fold_bn=True, inference_mode=False)
    with pytest.raises(KDBenchError, match="fold_teacher_bn=false"):
        _method("resnet8", "resnet20", teacher_model=teacher, teacher_bn=teacher_bn)


def test_an_already_folded_wrn_keeps_its_margin_batchnorms_for_the_running_mode():
    """WRN's margins come from BatchNorms that read a residual sum, which folding never touches."""
    from kdbench.training.frozen_teacher import FrozenTeacher

    raw = _randomise_bns(create_model("wrn_40_1", num_classes=100).eval())
    plain = _method("wrn_16_1", "wrn_40_1", teacher_model=copy.deepcopy(raw), teacher_bn="running")
    teacher = FrozenTeacher(raw)
    teacher.prepare((3, 32, 32), fold_bn=True, inference_mode=False)
    assert teacher.folded > 0
    folded = _method("wrn_16_1", "wrn_40_1", teacher_model=teacher, teacher_bn="running")
    assert all(torch.equal(a, b) for a, b in zip(plain.margins(), folded.margins()))


def test_teachers_without_preactivations_or_known_batchnorms_are_refused():
    class Plain(nn.Module):
        pass

    from kdbench.methods.ofd import teacher_margins

    with pytest.raises(KDBenchError, match="does not know"):
        teacher_margins(Plain(), "mystery")
