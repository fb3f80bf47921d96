"""CTKD's learned temperature (and the ``temperature_schedule=ctkd`` modifier of KD and DKD) against the
authors' code: the curriculum's lambda, the temperature, the KD and DKD losses and the gradients that reach
theta through the reversal and the student's logits. How the fixture was made: its ``source.how`` and the
CTKD card (``kdbench show method ctkd``)."""
from __future__ import annotations

import math

import pytest
import torch
from kdbench.methods.dkd import dkd_loss
from kdbench.methods.kd import kd_loss

from kdbench.method import CurriculumTemperature
from tests import parity
from tests.helpers import small_method

FIXTURE = parity.load("ctkd")


@pytest.mark.numerics
@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["name"])
def test_the_learned_temperature_and_its_gradients_equal_the_authors_code(case):
    x, p, want = case["inputs"], case["params"], case["outputs"]
    epoch = p["epoch_1_based"] - 1  # ours count from 0
    for name, loss_fn in (("kd", lambda zs, t: kd_loss(zs, x["z_t"], t)),
                          ("dkd", lambda zs, t: dkd_loss(zs, x["z_t"], x["target"], p["alpha"], p["beta"], t))):
        curriculum = CurriculumTemperature().double()
        with torch.no_grad():
            curriculum.theta.fill_(p["theta"])
        zs = x["z_s"].clone().requires_grad_(True)
        assert math.isclose(curriculum.strength(epoch), want["lambda"].item(), rel_tol=1e-12, abs_tol=1e-15)
        temperature = curriculum(epoch)
        assert math.isclose(temperature.item(), want["temperature"].item(), rel_tol=1e-12)
        loss = loss_fn(zs, temperature)
        loss.backward()
        # float64 on both sides; DKD's authors' form (log of softmax, a -1000 mask) is ~1e-13 from ours
        assert math.isclose(loss.item(), want[f"{name}_loss"].item(), rel_tol=1e-9), name
        got_theta, want_theta = curriculum.theta.grad.reshape(()), want[f"{name}_grad_theta"]
        if torch.isnan(want_theta):  # their DKDloss: 0 * log 0 where the -1000 mask underflows (see the card)
            assert name == "dkd" and torch.isfinite(got_theta)
        else:
            assert torch.allclose(got_theta, want_theta, rtol=1e-7, atol=1e-15), (name, got_theta, want_theta)
        assert torch.allclose(zs.grad, want[f"{name}_grad_zs"], rtol=1e-7, atol=1e-13), name


@pytest.mark.numerics
def test_the_curriculum_reverses_the_gradient_ever_more_strongly_then_holds():
    c = CurriculumTemperature()
    lambdas = [c.strength(e) for e in range(12)]
    assert all(a > b for a, b in zip(lambdas[:10], lambdas[1:10])) and lambdas[9] == lambdas[11] == -1.0
    assert -0.03 < lambdas[0] < 0  # their epoch 1: (cos(pi/10) + 1) / 2 - 1


def _method(name: str, *overrides: str):
    return small_method(name, *overrides)


def test_ctkd_is_kd_with_the_modifier_and_theta_gets_the_reversed_gradient():
    from kdbench.data import Batch

    g = torch.Generator().manual_seed(3)
    batch = Batch(torch.randn(8, 1, 8, 8, generator=g), torch.arange(8) % 10, torch.arange(8))
    ctkd, kd = _method("ctkd"), _method("kd", "method.temperature_schedule=ctkd")
    kd.student.load_state_dict(ctkd.student.state_dict())
    a, b = ctkd.step(batch, epoch=20), kd.step(batch, epoch=20)
    assert torch.equal(a.losses["kd"], b.losses["kd"]) and torch.equal(a.losses["ce"], b.losses["ce"])
    assert ctkd.extra_trainable_parameters() == 1 and "curriculum.theta" in ctkd.checkpoint_state()
    # lambda = -1: theta's gradient is minus the KD loss's, so the optimizer's descent on theta ascends the loss
    # (checked on gradients: in float32 at T ~ 15 the loss's own rounding, ~1e-3 relative, hides small steps)
    theta = ctkd.curriculum.theta
    sum(a.losses.values()).backward()
    kd.curriculum.lambda_max = kd.curriculum.lambda_min = 1.0  # no reversal: the plain derivative
    (dkd_dtheta,) = torch.autograd.grad(kd.step(batch, epoch=20).losses["kd"], kd.curriculum.theta)
    assert torch.allclose(theta.grad, -dkd_dtheta) and theta.grad.abs().item() > 0
    assert 1.0 < ctkd.report()["final_temperature"] < 21.0


def test_dkd_takes_the_modifier_and_it_is_a_new_experiment():
    from kdbench.experiment.identity import experiment_spec
    from kdbench.orchestration.config import compose

    m = _method("dkd", "method.temperature_schedule=ctkd")
    assert m.curriculum is not None and m.extra_trainable_parameters() == 1
    assert "temperature_schedule" not in experiment_spec(compose(["method=dkd"]), "fp32")["method"]
    on = experiment_spec(compose(["method=dkd", "method.temperature_schedule=ctkd"]), "fp32")
    assert on["method"]["temperature_schedule"] == "ctkd"
