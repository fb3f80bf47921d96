"""Logit standardisation (Sun et al., CVPR 2024), a modifier of KD and DKD: equal to the authors' code, a
z-score by hand, invariant to the logits' shift and scale, and out of a run's identity while it is off.

The fixture (tests/data/parity/logit-stand.json) holds the outputs of the authors' ``kd_loss`` and ``dkd_loss``
(sunshangquan/logit-standardization-KD at f6e5aa5, mdistiller/distillers/{KD,DKD}.py) called on float64
logits from ``torch.Generator().manual_seed(2024)``: three shapes (5x10, 8x100, 4x7), T in {2, 4},
standardisation off and on, DKD with alpha=1, beta=8.
"""
from __future__ import annotations

import math

import pytest
import torch
from kdbench.methods.dkd import dkd_loss
from kdbench.methods.kd import kd_loss

from kdbench.method import standardize
from tests import parity

FIXTURE = parity.load("logit-stand")


@pytest.mark.numerics
@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["name"])
def test_kd_and_dkd_equal_the_authors_code(case):
    x, p, want = case["inputs"], case["params"], case["outputs"]
    kd = kd_loss(x["z_s"], x["z_t"], p["temperature"], p["logit_stand"])
    dkd = dkd_loss(x["z_s"], x["z_t"], x["target"], p["alpha"], p["beta"], p["temperature"], p["logit_stand"])
    # float64 throughout; theirs takes log(softmax) and masks with -1000, ours works in log space: ~1e-13 apart
    assert math.isclose(kd.item(), want["kd"].item(), rel_tol=1e-10)
    assert math.isclose(dkd.item(), want["dkd"].item(), rel_tol=1e-10)


@pytest.mark.numerics
def test_standardize_is_the_z_score_with_the_unbiased_std():
    z = torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    for row, got in zip(z.tolist(), standardize(z)):
        mean = sum(row) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / 2)
        assert all(math.isclose(g, (v - mean) / (1e-7 + std), rel_tol=1e-12) for g, v in zip(got.tolist(), row))


@pytest.mark.numerics
def test_standardized_kd_ignores_each_networks_shift_and_scale():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(4, 10, generator=g, dtype=torch.float64), torch.randn(4, 10, generator=g, dtype=torch.float64)
    base = kd_loss(zs, zt, 2.0, logit_stand=True)
    assert math.isclose(kd_loss(3.0 * zs + 1.5, 0.25 * zt - 2.0, 2.0, logit_stand=True).item(), base.item(),
                        rel_tol=1e-6)  # exact but for the 1e-7 added to the std
    assert not math.isclose(kd_loss(3.0 * zs, zt, 2.0).item(), kd_loss(zs, zt, 2.0).item(), rel_tol=1e-3)


def test_the_modifier_off_leaves_identity_unchanged_and_on_is_a_new_labelled_experiment():
    from kdbench.experiment.identity import run_identity
    from kdbench.orchestration.config import compose

    plain = compose(["method=kd"])
    assert "logit_stand" in plain.method and plain.method.logit_stand is False
    explicit_off = compose(["method=kd", "method.logit_stand=false"])
    on = compose(["method=kd", "method.logit_stand=true"])
    assert run_identity(plain, "fp32") == run_identity(explicit_off, "fp32") != run_identity(on, "fp32")
    # the committed KD and DKD records keep their ids: the spec they were hashed from has no logit_stand
    from kdbench.experiment.identity import experiment_spec

    assert "logit_stand" not in experiment_spec(plain, "fp32")["method"]
    assert experiment_spec(on, "fp32")["method"]["logit_stand"] is True
    with pytest.raises(Exception, match="logit_stand"):
        compose(["method=dkd", "method.logit_stand=maybe"])
