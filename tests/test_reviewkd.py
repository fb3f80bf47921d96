"""ReviewKD: the hierarchical context loss by hand, the ABF shapes against the authors' per-student
tables, and the review's direction (deeper levels inform shallower ones, never the reverse)."""
from __future__ import annotations

import pytest
import torch
from kdbench.methods.reviewkd import hcl_loss

from kdbench.data import DatasetInfo
from kdbench.method import build_method
from kdbench.models import seeded_model
from kdbench.orchestration.config import compose


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _mse(a, b):
    return ((a - b) ** 2).mean().item()


def _pool(x, k):
    return torch.nn.functional.adaptive_avg_pool2d(x, k)


@pytest.mark.numerics
def test_hcl_weights_pooled_levels_one_half_quarter_eighth():
    s8, t8 = _rand(2, 3, 8, 8), _rand(2, 3, 8, 8, seed=1)
    s4, t4 = _rand(2, 3, 4, 4, seed=2), _rand(2, 3, 4, 4, seed=3)
    s1, t1 = _rand(2, 3, 1, 1, seed=4), _rand(2, 3, 1, 1, seed=5)
    by_hand = ((_mse(s8, t8) + _mse(_pool(s8, 4), _pool(t8, 4)) / 2 + _mse(_pool(s8, 2), _pool(t8, 2)) / 4
                + _mse(_pool(s8, 1), _pool(t8, 1)) / 8) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
               # a 4x4 map skips the 4x4 pooling: its weights are 1, 1/2 (2x2), 1/4 (1x1)
               + (_mse(s4, t4) + _mse(_pool(s4, 2), _pool(t4, 2)) / 2 + _mse(_pool(s4, 1), _pool(t4, 1)) / 4) / 1.75
               + _mse(s1, t1))
    assert hcl_loss([s8, s4, s1], [t8, t4, t1]).item() == pytest.approx(by_hand, rel=1e-12)


def _method(pair: str):
    cfg = compose([f"pair={pair}", "method=reviewkd"])
    student = seeded_model(str(cfg.pair.student), 100, 3, 0, "student-init")
    teacher = seeded_model(str(cfg.pair.teacher), 100, 3, 0, "teacher-init")
    return build_method(cfg.method, student, DatasetInfo("tiny", 100, (3, 32, 32), 8), 0, teacher=teacher,
                        student_arch=str(cfg.pair.student), teacher_arch=str(cfg.pair.teacher)), cfg


# The authors' build_review_kd (CIFAR-100/model/reviewkd.py): in/out channels shallow to deep, and the
# teacher's sizes deep to shallow (out_shapes), per student and teacher.
AUTHORS = {
    "cifar100/resnet32x4-resnet8x4": ([64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32]),
    "cifar100/resnet56-resnet20": ([16, 32, 64, 64], [16, 32, 64, 64], [1, 8, 16, 32]),
    "cifar100/wrn_40_2-wrn_16_2": ([32, 64, 128, 128], [32, 64, 128, 128], [1, 8, 16, 32]),
    "cifar100/vgg13-vgg8": ([128, 256, 512, 512, 512], [128, 256, 512, 512, 512], [1, 4, 4, 8, 16]),
    "cifar100/vgg13-mobilenetv2": ([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], [1, 4, 4, 8, 16]),
    "cifar100/resnet50-mobilenetv2": ([12, 16, 48, 160, 1280], [256, 512, 1024, 2048, 2048], [1, 4, 8, 16, 32]),
    "cifar100/resnet50-vgg8": ([128, 256, 512, 512, 512], [256, 512, 1024, 2048, 2048], [1, 4, 8, 16, 32]),
    "cifar100/wrn_40_2-shufflenetv1": ([240, 480, 960, 960], [32, 64, 128, 128], [1, 8, 16, 32]),
    "cifar100/resnet32x4-shufflenetv1": ([240, 480, 960, 960], [64, 128, 256, 256], [1, 8, 16, 32]),
    "cifar100/resnet32x4-shufflenetv2": ([116, 232, 464, 1024], [64, 128, 256, 256], [1, 8, 16, 32]),
}


@pytest.mark.parametrize("pair", sorted(AUTHORS))
def test_abf_shapes_are_the_authors(pair):
    m, _ = _method(pair)
    c_in, c_out, out_shapes = AUTHORS[pair]
    assert [a.reduce[0].in_channels for a in m.abfs] == c_in
    assert [a.out[0].out_channels for a in m.abfs] == c_out
    assert [a.reduce[0].out_channels for a in m.abfs] == [min(512, c_in[-1])] * len(c_in)
    assert [h for h, _ in m.out_sizes][::-1] == out_shapes
    assert [a.attention is not None for a in m.abfs] == [True] * (len(c_in) - 1) + [False]


def test_per_pair_loss_weights_are_the_authors():
    pairs = ("cifar100/resnet56-resnet20", "cifar100/resnet32x4-resnet8x4", "cifar100/resnet32x4-shufflenetv2",
             "cifar100/vgg13-vgg8")
    weights = {p: float(_method(p)[1].method.beta) for p in pairs}
    assert weights == {"cifar100/resnet56-resnet20": 0.6, "cifar100/resnet32x4-resnet8x4": 5.0,
                       "cifar100/resnet32x4-shufflenetv2": 8.0, "cifar100/vgg13-vgg8": 1.0}


def test_the_review_runs_from_deep_to_shallow():
    m, _ = _method("cifar100/resnet32x4-resnet8x4")
    m.eval()
    x = torch.randn(2, 3, 32, 32)
    out = m.student(x)
    levels = [f.detach().requires_grad_() for f in [*out.features[1:], out.embedding[:, :, None, None]]]
    reviewed = m.review(levels)
    assert [tuple(r.shape[1:]) for r in reviewed] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (256, 1, 1)]
    shallow_from_deep = torch.autograd.grad(reviewed[0].sum(), levels[-1], allow_unused=True)[0]
    deep_from_shallow = torch.autograd.grad(reviewed[-1].sum(), levels[0], allow_unused=True)[0]
    assert shallow_from_deep is not None and shallow_from_deep.abs().sum() > 0
    assert deep_from_shallow is None
