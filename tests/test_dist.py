"""DIST: parity with the authors' loss, a hand computation of the two relations, the loss's invariances,
and the step's terms and defaults."""
from __future__ import annotations

import math
import statistics

import pytest
import torch
from kdbench.methods.dist import dist_loss, dist_relations, pearson_distance

from tests import parity
from tests.helpers import small_method

FIXTURE = parity.load("dist")
FLOAT64_CASES = [c["name"] for c in FIXTURE["cases"] if c["inputs"]["z_s"].dtype == torch.float64]


@pytest.mark.numerics
@pytest.mark.parametrize("name", FLOAT64_CASES)
def test_loss_relations_and_gradient_equal_the_authors_code(name):
    """float64 in and out, the same operations in the same order: agreement to rounding (rel 1e-10)."""
    c = parity.case(FIXTURE, name)
    p, z_t = c["params"], c["inputs"]["z_t"]
    z_s = c["inputs"]["z_s"].clone().requires_grad_(True)
    loss = dist_loss(z_s, z_t, p["beta"], p["gamma"], p["tau"])
    (grad,) = torch.autograd.grad(loss, z_s)
    inter, intra = dist_relations(z_s.detach(), z_t, p["tau"])
    out = c["outputs"]
    # student == teacher leaves only the eps's ~1e-6 residue: compare it absolutely as well
    assert math.isclose(loss.item(), out["loss"].item(), rel_tol=1e-10, abs_tol=1e-15)
    assert math.isclose(inter.item(), out["inter"].item(), rel_tol=1e-10, abs_tol=1e-15)
    assert math.isclose(intra.item(), out["intra"].item(), rel_tol=1e-10, abs_tol=1e-15)
    assert torch.allclose(grad, out["grad_z_s"], rtol=1e-9, atol=1e-14 * out["grad_z_s"].abs().max().item())


@pytest.mark.numerics
def test_float32_loss_equals_the_authors_code_in_float32():
    """float32 as the authors train: sums of 100 and 16 terms in a possibly different order (BLAS, SIMD) stay
    within a few ulps of each relation (~1e-7 relative); rel 1e-5 leaves two orders of margin and still
    catches any formula change, which moves the loss by far more."""
    c = parity.case(FIXTURE, "cifar100_default_t4_float32")
    p = c["params"]
    loss = dist_loss(c["inputs"]["z_s"], c["inputs"]["z_t"], p["beta"], p["gamma"], p["tau"])
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), c["outputs"]["loss"].item(), rel_tol=1e-5)


def _hand_distance(rows_s, rows_t, eps=1e-8):
    """1 - mean over rows of cov(a, b) / (|a - mean a| |b - mean b| + eps), in plain Python."""
    total = 0.0
    for a, b in zip(rows_s, rows_t):
        da, db = [x - sum(a) / len(a) for x in a], [x - sum(b) / len(b) for x in b]
        norms = math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(x * x for x in db))
        total += sum(x * y for x, y in zip(da, db)) / (norms + eps)
    return 1 - total / len(rows_s)


def _cols(y):
    return [list(c) for c in zip(*y)]


@pytest.mark.numerics
def test_relations_equal_a_hand_computation():
    """inter over the samples' rows, intra over the classes' columns, the eps where the authors put it."""
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    T = 2.0
    ys, yt = torch.softmax(zs / T, 1).tolist(), torch.softmax(zt / T, 1).tolist()
    inter, intra = dist_relations(zs, zt, T)
    assert math.isclose(inter.item(), _hand_distance(ys, yt), rel_tol=1e-12)
    assert math.isclose(intra.item(), _hand_distance(_cols(ys), _cols(yt)), rel_tol=1e-12)
    assert math.isclose(dist_loss(zs, zt, 2.0, 3.0, T).item(), T * T * (2 * inter.item() + 3 * intra.item()),
                        rel_tol=1e-12)
    # without the eps it is Pearson's correlation itself
    rows = 1 - sum(statistics.correlation(a, b) for a, b in zip(ys, yt)) / len(ys)
    f64 = lambda y: torch.tensor(y, dtype=torch.float64)  # noqa: E731
    assert math.isclose(pearson_distance(f64(ys), f64(yt), eps=0.0).item(), rows, rel_tol=1e-12)


@pytest.mark.numerics
def test_the_teachers_own_predictions_leave_only_the_eps_and_logit_shifts_change_nothing():
    g = torch.Generator().manual_seed(4)
    zt = torch.randn(8, 100, generator=g, dtype=torch.float64) * 3
    yt = torch.softmax(zt / 4.0, 1)
    assert abs(pearson_distance(yt, yt, eps=0.0).item()) < 1e-12
    # with the eps, each of the distances is eps / (|u|^2 + eps) on average: small, not zero
    residue = [(1e-8 / ((y - y.mean(1, keepdim=True)).norm(dim=1) ** 2 + 1e-8)).mean() for y in (yt, yt.t())]
    assert math.isclose(dist_loss(zt + 5.0, zt, 2.0, 2.0, 4.0).item(), 16 * 2 * sum(residue).item(), rel_tol=1e-6)
    zs = torch.randn(8, 100, generator=g, dtype=torch.float64)
    shifted = zs + torch.randn(8, 1, generator=g, dtype=torch.float64)  # softmax is shift-invariant per row
    assert math.isclose(dist_loss(shifted, zt, 2.0, 2.0, 4.0).item(), dist_loss(zs, zt, 2.0, 2.0, 4.0).item(),
                        rel_tol=1e-10)
    # at a high T softmax is nearly linear in z, so negated logits give correlations near -1: distances near 2
    # (not too high: the probabilities' spread must stay well above the eps's scale)
    inter, intra = dist_relations(-zs, zs, 20.0)
    assert inter.item() > 1.98 and intra.item() > 1.98


def _method(*overrides: str):
    return small_method("dist", *overrides, cifar=True)


def test_the_step_returns_ce_and_both_weighted_relations():
    import torch.nn.functional as F

    from kdbench.data import Batch

    m = _method("method.beta=3.0", "method.gamma=0.5", "method.ce_weight=0.7").eval()
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 5, 5, 3]), torch.arange(4))
    out = m.step(batch, epoch=0)
    with torch.no_grad():
        zt, zs = m.teacher(batch.images).logits, m.student(batch.images).logits
    inter, intra = dist_relations(zs, zt, 4.0)
    assert set(out.losses) == {"ce", "inter", "intra"}
    assert torch.allclose(out.losses["ce"], 0.7 * F.cross_entropy(zs, batch.labels))
    assert torch.allclose(out.losses["inter"], 3.0 * 16 * inter)
    assert torch.allclose(out.losses["intra"], 0.5 * 16 * intra)


def test_defaults_are_the_authors_cifar100_configuration():
    """dist_cifar.yaml: kd dist_t4 (beta=gamma=1, tau=4) times kd_loss_weight 2, CE weight 1; no per-pair values."""
    from kdbench.orchestration.config import compose

    for pair in ("cifar100/resnet56-resnet20", "cifar100/resnet32x4-shufflenetv2"):
        cfg = compose(["method=dist", f"pair={pair}", "dataset=cifar100"]).method
        assert (cfg.beta, cfg.gamma, cfg.temperature, cfg.ce_weight) == (2.0, 2.0, 4.0, 1.0)
