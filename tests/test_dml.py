"""DML's two KL forms: the paper's (the default) by definition, the released code's against that code.

The fixture (tests/data/parity/dml.json) holds the outputs of the authors' ``kl_loss_compute``
(YingZhangDUT/Deep-Mutual-Learning at 34a2058, train_models.py; TensorFlow, run as written under TF 2's
v1 compatibility layer in graph mode) on stored float64 logits: member 0 against peers 1 and 2.
"""
from __future__ import annotations

import math

import pytest
import torch
from kdbench.methods.dml import dml_loss

from tests import parity

FIXTURE = parity.load("dml")


@pytest.mark.numerics
@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["name"])
def test_the_code_form_equals_the_released_code(case):
    x, want = case["inputs"], case["outputs"]
    labels = torch.zeros(x["z_self"].shape[0], dtype=torch.long)
    for peers, expected in (([x["z_peer1"]], want["kl_peer1"]), ([x["z_peer2"]], want["kl_peer2"]),
                            ([x["z_peer1"], x["z_peer2"]], want["kl_peer1"] + want["kl_peer2"])):  # a sum
        _, kl = dml_loss(x["z_self"], peers, labels, kl_form="code")
        # float64 on both sides; TF and torch softmax differ in the last bits only
        assert math.isclose(kl.item(), expected.item(), rel_tol=1e-12), (kl.item(), expected.item())


@pytest.mark.numerics
def test_the_paper_form_is_the_mean_of_exact_kls_and_equals_the_code_for_two_members_up_to_its_epsilons():
    case = FIXTURE["cases"][0]["inputs"]
    zs, z1, z2 = case["z_self"], case["z_peer1"], case["z_peer2"]
    labels = torch.zeros(zs.shape[0], dtype=torch.long)

    def exact(peer):
        p, q = torch.softmax(zs, 1), torch.softmax(peer, 1)
        return (q * (q.log() - p.log())).sum(1).mean().item()

    _, kl = dml_loss(zs, [z1, z2], labels)
    assert math.isclose(kl.item(), (exact(z1) + exact(z2)) / 2, rel_tol=1e-12)
    _, paper = dml_loss(zs, [z1], labels)
    _, code = dml_loss(zs, [z1], labels, kl_form="code")
    assert math.isclose(paper.item(), code.item(), rel_tol=1e-6) and paper.item() != code.item()


def test_the_code_form_is_a_new_experiment_and_the_default_keeps_the_stored_ids():
    from kdbench.experiment.identity import experiment_spec
    from kdbench.orchestration.config import compose

    assert "kl_form" not in experiment_spec(compose(["method=dml"]), "fp32")["method"]
    assert experiment_spec(compose(["method=dml", "method.kl_form=code"]), "fp32")["method"]["kl_form"] == "code"
