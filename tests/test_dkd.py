"""DKD: its two terms by hand, the paper's decomposition of KD, the warm-up, the authors' per-pair beta."""
from __future__ import annotations

import math

import pytest
import torch
from kdbench.methods.dkd import dkd_loss, dkd_terms
from kdbench.methods.kd import kd_loss


def _softmax(z, T):
    e = [math.exp(v / T) for v in z]
    return [x / sum(e) for x in e]


def _kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def _hand_terms(zs, zt, y, T):
    ps, pt = _softmax(zs, T), _softmax(zt, T)
    tckd = _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]]) * T * T
    qs = _softmax([v for i, v in enumerate(zs) if i != y], T)
    qt = _softmax([v for i, v in enumerate(zt) if i != y], T)
    return tckd, _kl(qt, qs) * T * T


@pytest.mark.numerics
def test_terms_equal_a_hand_computation():
    zs = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 2.0]], dtype=torch.float64)
    zt = torch.tensor([[2.0, 0.0, 1.0, 0.5], [1.0, 1.0, 1.5, -2.0]], dtype=torch.float64)
    y = torch.tensor([1, 3])
    for T in (1.0, 4.0):
        tckd, nckd = dkd_terms(zs, zt, y, T)
        for i in range(2):
            ht, hn = _hand_terms(zs[i].tolist(), zt[i].tolist(), int(y[i]), T)
            assert math.isclose(tckd[i].item(), ht, rel_tol=1e-10) and math.isclose(nckd[i].item(), hn, rel_tol=1e-10)
        loss = dkd_loss(zs, zt, y, 1.0, 8.0, T)
        assert math.isclose(loss.item(), (tckd.mean() + 8.0 * nckd.mean()).item(), rel_tol=1e-12)


@pytest.mark.numerics
def test_kd_decomposes_into_tckd_and_weighted_nckd():
    """Paper Eq. 5, a second formulation: KD = TCKD + (1 - p_t(target)) * NCKD, sample by sample."""
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randn(6, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    T = 4.0
    tckd, nckd = dkd_terms(zs, zt, y, T)
    pt_target = torch.softmax(zt / T, 1)[torch.arange(6), y]
    for i in range(6):
        kd_i = kd_loss(zs[i:i + 1], zt[i:i + 1], T)
        assert math.isclose(kd_i.item(), (tckd[i] + (1 - pt_target[i]) * nckd[i]).item(), rel_tol=1e-9)


def _method(warmup=20):
    from kdbench.data import DatasetInfo
    from kdbench.method import build_method
    from kdbench.models import seeded_model
    from kdbench.orchestration.config import compose

    cfg = compose(["method=dkd", f"method.warmup={warmup}", "pair=cifar100/resnet56-resnet20", "dataset=cifar100"])
    info = DatasetInfo("x", 100, (3, 32, 32), 16)
    s, t = seeded_model("resnet8", 100, 3, 0), seeded_model("resnet20", 100, 3, 0, "teacher-init")
    return build_method(cfg.method, s, info, 0, teacher=t, student_arch="resnet8", teacher_arch="resnet20")


@pytest.mark.numerics
def test_the_warm_up_ramps_linearly_over_one_based_epochs():
    from kdbench.data import Batch

    m = _method().eval()
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 5, 9, 3]), torch.arange(4))
    full = m.step(batch, epoch=19).losses["dkd"]
    assert torch.allclose(m.step(batch, epoch=0).losses["dkd"], full / 20)  # mdistiller: epoch 1 -> 1/20
    assert torch.allclose(m.step(batch, epoch=9).losses["dkd"], full / 2)
    assert torch.allclose(m.step(batch, epoch=100).losses["dkd"], full)


@pytest.mark.parametrize("pair,beta", [("cifar100/resnet56-resnet20", 2.0), ("cifar100/resnet110-resnet32", 2.0),
                                       ("cifar100/vgg13-vgg8", 6.0), ("cifar100/wrn_40_2-wrn_16_2", 6.0),
                                       ("cifar100/resnet32x4-resnet8x4", 8.0), ("cifar10/resnet56-resnet20", 8.0)])
def test_beta_follows_the_authors_configs_per_pair(pair, beta):
    from kdbench.orchestration.config import compose

    cfg = compose(["method=dkd", f"pair={pair}", f"dataset={pair.split('/')[0]}"])
    assert cfg.method.beta == beta and cfg.method.alpha == 1.0 and cfg.method.temperature == 4.0
