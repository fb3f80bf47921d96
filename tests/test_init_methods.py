"""AB, FT, FSP and VID: losses against hand computations (Python loops, float64) and their stages."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from kdbench.methods.ab import ab_loss, boundary_loss
from kdbench.methods.fsp import fsp_loss, fsp_matrix
from kdbench.methods.ft import factor, ft_loss
from kdbench.methods.vid import vid_nll

from kdbench import KDBenchError
from kdbench.data import DatasetInfo, load_data
from kdbench.method import build_method
from kdbench.models import seeded_model
from kdbench.orchestration.config import compose
from kdbench.training.engine import fit


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.numerics
def test_fsp_matrix_and_loss_equal_the_papers_sums():
    a, b = _rand(2, 3, 4, 4), _rand(2, 5, 4, 4, seed=1)
    g = fsp_matrix(a, b)
    assert g.shape == (2, 5, 3)
    for n in range(2):
        for i in range(5):
            for j in range(3):
                hand = sum(b[n, i, h, w].item() * a[n, j, h, w].item() for h in range(4) for w in range(4)) / 16
                assert g[n, i, j].item() == pytest.approx(hand, rel=1e-12)
    # a larger map is average-pooled to the smaller before the product
    big = _rand(2, 3, 8, 8, seed=2)
    assert torch.allclose(fsp_matrix(big, b), fsp_matrix(torch.nn.functional.avg_pool2d(big, 2), b))
    s, t = [_rand(2, 3, 4, 4, seed=k) for k in (3, 4, 5)], [_rand(2, 3, 4, 4, seed=k) for k in (6, 7, 8)]
    hand = sum(((fsp_matrix(s[i], s[i + 1]) - fsp_matrix(t[i], t[i + 1])) ** 2).mean() for i in range(2))
    assert fsp_loss(s, t).item() == pytest.approx(hand.item(), rel=1e-12)
    assert fsp_loss(s, s).item() == 0


@pytest.mark.numerics
def test_ab_boundary_loss_by_cases():
    s, t = _rand(2, 3, 2, 2), _rand(2, 3, 2, 2, seed=1)
    m = 0.5
    hand = 0.0
    for x, y in zip(s.flatten().tolist(), t.flatten().tolist()):
        if y > 0 and x <= m:      # the teacher's neuron fires: the student must be above +m
            hand += (x - m) ** 2
        elif y <= 0 and x > -m:   # it does not: the student must be below -m
            hand += (x + m) ** 2
    assert boundary_loss(s, t, m).item() == pytest.approx(hand, rel=1e-12)
    # on the right side of every boundary by the margin: no loss
    assert boundary_loss(torch.where(t > 0, 2.0, -2.0), t, 1.0).item() == 0


@pytest.mark.numerics
def test_ab_layers_weigh_two_to_the_depth_over_batch_times_three_thousandths():
    s = [_rand(4, 2, 3, 3, seed=k) for k in range(3)]
    t = [_rand(4, 2, 3, 3, seed=10 + k) for k in range(3)]
    per = [boundary_loss(a, b).item() for a, b in zip(s, t)]
    hand = (per[0] / 4 + per[1] / 2 + per[2]) / 4 * 3 / 1000
    assert ab_loss(s, t).item() == pytest.approx(hand, rel=1e-12)


@pytest.mark.numerics
def test_ft_factor_and_loss_by_hand():
    f = _rand(2, 3, 2, 2)
    fac = factor(f)
    for n in range(2):
        m = [sum(f[n, c, h, w].item() ** 2 for c in range(3)) / 3 for h in range(2) for w in range(2)]
        norm = math.sqrt(sum(v * v for v in m))
        assert fac[n].tolist() == pytest.approx([v / norm for v in m], rel=1e-12)
    g = _rand(2, 5, 2, 2, seed=1)  # channel counts may differ: the factor is a map
    hand = sum(abs(x - y) for x, y in zip(factor(f).flatten().tolist(), factor(g).flatten().tolist())) / 8
    assert ft_loss(f, g).item() == pytest.approx(hand, rel=1e-12)


@pytest.mark.numerics
def test_vid_nll_is_the_gaussian_negative_log_likelihood_less_its_constant():
    mu, t = _rand(2, 3, 2, 2), _rand(2, 3, 2, 2, seed=1)
    var = torch.tensor([0.5, 2.0, 5.0], dtype=torch.float64)
    lp = torch.distributions.Normal(mu, var.sqrt().view(1, 3, 1, 1)).log_prob(t)  # a second formulation
    assert vid_nll(mu, var, t).item() == pytest.approx((-lp).mean().item() - 0.5 * math.log(2 * math.pi), rel=1e-12)


def _method(name: str, pair: str = "cifar100/resnet32x4-resnet8x4", *over: str):
    cfg = compose([f"pair={pair}", f"method={name}", *over])
    student = seeded_model(str(cfg.pair.student), 100, 3, 0, "student-init")
    teacher = seeded_model(str(cfg.pair.teacher), 100, 3, 0, "teacher-init")
    return build_method(cfg.method, student, DatasetInfo("tiny", 100, (3, 32, 32), 8), 0, teacher=teacher,
                        student_arch=str(cfg.pair.student), teacher_arch=str(cfg.pair.teacher))


@pytest.mark.numerics
def test_vid_starts_at_variance_five_and_trains_its_variances():
    m = _method("vid")
    assert all(torch.allclose(r.variance(), torch.full_like(r.variance(), 5.0)) for r in m.regressors)
    trained = {id(p) for p in m.trainable_parameters()}
    assert all(id(r.alpha) in trained for r in m.regressors)  # learned (the CRD benchmark trains them too)
    # hidden width = the teacher's channels (the authors' choice), no biases
    convs = [c for c in m.regressors[0].mean if isinstance(c, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 64] and all(c.bias is None for c in convs)


def test_fsp_refuses_pairs_whose_channels_differ():
    with pytest.raises(KDBenchError, match="same channel counts"):
        _method("fsp", "cifar100/wrn_40_2-wrn_40_1")


def test_ft_paraphraser_lr_follows_the_crd_benchmark():
    assert _method("ft").init_stages()[0].lr == 0.01          # resnet8x4 student: 0.01
    assert _method("ft", "cifar100/vgg13-vgg8").init_stages()[0].lr is None  # vgg8: the schedule's base rate
    assert _method("ft", "cifar100/vgg13-vgg8", "method.init_lr=0.2").init_stages()[0].lr == 0.2


def test_ab_reads_mobilenetv2_stage_outputs_as_pre_activations():
    m = _method("ab", "cifar100/vgg13-mobilenetv2")
    out = m.student(torch.randn(2, 3, 32, 32))
    assert all(p is f for p, f in zip(out.preact_features, out.features))
    assert (out.features[2] < 0).any()  # a linear bottleneck: no ReLU after it


@pytest.mark.parametrize("method,helpers,student_in_stage", [
    ("ab", "connectors", True), ("fsp", None, True), ("ft", "paraphraser", False)])
def test_init_stage_trains_what_the_paper_says_then_the_main_stage_the_rest(make_cfg, tmp_path, method, helpers,
                                                                           student_in_stage):
    cfg = make_cfg(f"method={method}", "method.init_epochs=1", epochs=1)
    data = load_data(cfg)
    info = data.info
    student = seeded_model("cnn_small", info.num_classes, 1, 0, "student-init")
    # FSP needs equal channel counts: a cnn_small teacher (other weights) for it
    teacher = seeded_model("cnn_small" if method == "fsp" else "cnn_wide", info.num_classes, 1, 0, "teacher-init")
    m = build_method(cfg.method, student, info, 0, teacher=teacher, student_arch="cnn_small")
    start = copy.deepcopy(m.state_dict())
    marks = {}
    fit(m, data, cfg.schedule, cfg.engine, 0, tmp_path / "run", resume=False,
        on_step=lambda n, s: marks.setdefault(n, copy.deepcopy(m.state_dict())) if s == 0 else None)
    end = m.state_dict()
    after_init = marks[1]  # one step into the main stage; the first stage ended just before
    changed = lambda a, b, prefix: any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))  # noqa: E731
    assert changed(start, marks[0], "student.") is student_in_stage
    if helpers:
        assert changed(start, marks[0], helpers + ".")
        # frozen after their stage (BatchNorm statistics aside, which nothing reads in the main stage)
        assert not any(not torch.equal(after_init[k], end[k]) for k in end
                       if k.startswith(helpers + ".") and "running" not in k and "num_batches" not in k)
