"""KDSVD: parity with mdistiller's loss and gradient, the SVD backward where PyTorch's is NaN, properties,
and which pairs it serves."""
from __future__ import annotations

import math

import pytest
import torch
from kdbench.methods.kdsvd import _TopRightSingular, kdsvd_loss

from kdbench import KDBenchError
from kdbench.data import DatasetInfo
from kdbench.method import build_method, method_defaults
from kdbench.models import seeded_model
from tests import parity

FIXTURE = parity.load("kdsvd")
FLOAT64 = [c["name"] for c in FIXTURE["cases"] if c["inputs"]["student"][0].dtype == torch.float64]


def _ours(case, requires_grad=False):
    fs = [f.clone().requires_grad_(requires_grad) for f in case["inputs"]["student"]]
    p = case["params"]
    return kdsvd_loss(fs, case["inputs"]["teacher"], p["k"], p["extra"], p["layout"]), fs


@pytest.mark.numerics
@pytest.mark.parametrize("name", FLOAT64)
def test_loss_and_gradient_equal_mdistillers_in_float64(name):
    # float64 in and out, the same LAPACK SVD: what is left is the summation order of a few hundred terms and,
    # in the gradient, another arrangement of the backward formula amplified by the SVD's 1/gap (observed:
    # loss equal to the last bit, gradients within 2e-15 of their largest entry).
    case = parity.case(FIXTURE, name)
    loss, fs = _ours(case, requires_grad=True)
    assert loss.item() == pytest.approx(case["outputs"]["loss"].item(), rel=1e-10, abs=0)
    grads = torch.autograd.grad(loss, fs)
    assert all(torch.isfinite(g).all() for g in grads)
    for g, ref in zip(grads, case["outputs"].get("grad_student", [])):
        # theirs: PyTorch's full SVD backward; ours: the same formula restricted to the kept vectors
        assert torch.allclose(g, ref, rtol=1e-10, atol=1e-12 * ref.abs().max().item())


@pytest.mark.numerics
def test_the_float32_case_equals_their_untouched_code():
    # Both run the same float32 LAPACK SVD on the same matrices and the same forward operations (equal to the
    # last bit here); the loss bound allows for another summation order: RBF values near 1 whose differences are
    # ~1e-2 turn a rounding of 6e-8 into ~1e-5 of a term. The gradients' backward formulas differ (ours keeps
    # the kept vectors' terms only): float32 roundings amplified by the SVD's 1/gap, observed 4e-7 of the
    # largest entry; bound 1e-5.
    case = parity.case(FIXTURE, "ch_w_float32_code_as_is")
    loss, fs = _ours(case, requires_grad=True)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(case["outputs"]["loss"].item(), rel=1e-5)
    for g, ref in zip(torch.autograd.grad(loss, fs), case["outputs"]["grad_student"]):
        assert torch.allclose(g, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def _dead_channel_maps():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 8, 4, 5, generator=g, dtype=torch.float64).relu() for _ in range(3)]
    maps[1][:, 5:] = 0.0  # three dead channels: three exactly-zero singular values of the 20 x 8 matrix
    return maps


@pytest.mark.numerics
def test_svd_gradient_is_finite_and_exact_where_pytorchs_is_nan():
    """With repeated discarded singular values (dead channels), PyTorch's SVD backward divides 0 by 0; ours
    never forms those terms. Its directional derivative is checked against central differences."""
    fs = _dead_channel_maps()
    g = torch.Generator().manual_seed(1)
    ft = [torch.randn(2, 8, 4, 5, generator=g, dtype=torch.float64).relu() for _ in range(3)]
    leaves = [f.clone().requires_grad_(True) for f in fs]
    grads = torch.autograd.grad(kdsvd_loss(leaves, ft), leaves)
    assert all(torch.isfinite(x).all() for x in grads)
    d = [torch.randn(f.shape, generator=g, dtype=torch.float64) for f in fs]
    h = 1e-6
    plus = kdsvd_loss([f + h * e for f, e in zip(fs, d)], ft)
    minus = kdsvd_loss([f - h * e for f, e in zip(fs, d)], ft)
    numeric = ((plus - minus) / (2 * h)).item()
    analytic = sum((x * e).sum() for x, e in zip(grads, d)).item()
    assert analytic == pytest.approx(numeric, rel=1e-6)  # central difference: error ~h^2, rounding ~eps/h


@pytest.mark.numerics
@pytest.mark.parametrize("shape", [(2, 7, 4), (2, 4, 7), (1, 5, 5)])  # tall, wide, square
def test_restricted_svd_backward_passes_gradcheck(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    # |v| and v v^T do not depend on the sign LAPACK picks, so finite differences are well defined
    assert torch.autograd.gradcheck(lambda a: _TopRightSingular.apply(a, 2)[1].abs(), (x,))


@pytest.mark.numerics
def test_zero_when_the_student_equals_the_teacher():
    case = parity.case(FIXTURE, "hw_c_k1")
    t = case["inputs"]["teacher"]
    assert kdsvd_loss([f.clone() for f in t], t).item() == 0.0


@pytest.mark.numerics
def test_hw_c_rows_are_positions_so_their_order_does_not_matter():
    """The right-singular vectors of an (H*W) x C matrix do not depend on the order of its rows, and the student's
    signs are aligned to the teacher's: shuffling the student's positions leaves the loss unchanged."""
    case = parity.case(FIXTURE, "hw_c_k2")
    fs, ft = case["inputs"]["student"], case["inputs"]["teacher"]
    g = torch.Generator().manual_seed(3)
    shuffled = []
    for f in fs:
        b, c, h, w = f.shape
        shuffled.append(f.flatten(2)[:, :, torch.randperm(h * w, generator=g)].reshape(b, c, h, w))
    ref = kdsvd_loss(fs, ft, k=2)
    assert kdsvd_loss(shuffled, ft, k=2).item() == pytest.approx(ref.item(), rel=1e-10)
    # in mdistiller's (C*H) x W reading the positions are not rows, and the same shuffle changes the loss
    assert not math.isclose(kdsvd_loss(shuffled, ft, k=2, layout="ch_w").item(),
                            kdsvd_loss(fs, ft, k=2, layout="ch_w").item(), rel_tol=1e-6)


def _method(student: str, teacher: str, **hp):
    info = DatasetInfo("tiny", 100, (3, 32, 32), 8)
    s, t = seeded_model(student, 100, 3, 0), seeded_model(teacher, 100, 3, 0, "teacher-init")
    cfg = {**method_defaults("kdsvd"), **hp, "name": "kdsvd"}
    return build_method(cfg, s, info, 0, teacher=t, student_arch=student, teacher_arch=teacher)


def test_defaults_are_mdistillers_config():
    d = method_defaults("kdsvd")
    assert (d["k"], d["extra"], d["beta"], d["ce_weight"], d["layout"]) == (1, 3, 1.0, 1.0, "hw_c")


def test_refuses_stages_of_other_channel_counts_unless_read_along_the_width():
    with pytest.raises(KDBenchError, match="same channel counts"):
        _method("wrn_40_1", "wrn_40_2")
    assert _method("wrn_40_1", "wrn_40_2", layout="ch_w").layout == "ch_w"  # equal widths 32, 16, 8
    with pytest.raises(KDBenchError, match="exceeds"):
        _method("resnet20", "resnet56", k=65)  # the last stage's 8x8 positions x 64 channels: rank <= 64
