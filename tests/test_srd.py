"""SRD against the authors' code (connector, feature-matching and softmax-regression terms, gradients), the
student map each model family gives, and the method's wiring of the teacher's frozen classifier. How the
fixture was made: its ``source.how`` and the SRD card (``kdbench show method srd``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kdbench.methods.srd import Connector, probe, srd_terms
from torch import nn

from kdbench.data import Batch
from kdbench.models import create_model
from tests import parity
from tests.helpers import by_cost, small_method

FIXTURE = parity.load("srd")
# float64 in and out; each term is a mean of at most a few hundred squares after a BatchNorm over <= 48
# values per channel, so the rounding stays within ~1e3 * eps64 ~ 1e-13 relative
REL = 1e-10


def _connector(inputs) -> nn.Module:
    w = inputs["connector_conv_weight"]
    c = Connector(w.shape[1], w.shape[0]).double().train()
    with torch.no_grad():
        c[0].weight.copy_(w)
        c[1].weight.copy_(inputs["connector_bn_weight"])
        c[1].bias.copy_(inputs["connector_bn_bias"])
    return c


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=REL, atol=1e-14)


@pytest.mark.numerics
@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["name"])
def test_matches_the_authors_connector_loss_and_gradients(case):
    i, o, p = case["inputs"], case["outputs"], case["params"]
    conn = _connector(i)
    s_map = i["student_map"].clone().requires_grad_(True)
    assert _close(conn(s_map).detach(), o["connector_out"])
    # the teacher's map enters only through its spatial mean: its embedding
    fm, sr = srd_terms(s_map, conn, i["teacher_map"].mean((2, 3)), i["teacher_logits"],
                       i["classifier_weight"], i["classifier_bias"])
    total = p["fm_weight"] * fm + p["sr_weight"] * sr
    assert _close(fm.detach(), o["fm"]) and _close(sr.detach(), o["sr"]) and _close(total.detach(), o["total"])
    total.backward()
    assert _close(s_map.grad, o["grad_student_map"])
    assert _close(conn[0].weight.grad, o["grad_conv_weight"])
    assert _close(conn[1].weight.grad, o["grad_bn_weight"]) and _close(conn[1].bias.grad, o["grad_bn_bias"])


@pytest.mark.numerics
def test_both_terms_vanish_when_the_student_feature_is_the_teachers():
    g = torch.Generator().manual_seed(0)
    t_map = torch.rand(3, 6, 4, 4, generator=g, dtype=torch.float64)
    fc = nn.Linear(6, 5).double()
    emb = t_map.mean((2, 3))
    fm, sr = srd_terms(t_map, nn.Identity(), emb, fc(emb).detach(), fc.weight, fc.bias)
    assert fm.item() == 0.0 and sr.item() < 1e-28
    # and by hand on a shifted feature: fm = mean of the squared shift, sr = mean of (W shift)^2
    fm, sr = srd_terms(t_map + 0.5, nn.Identity(), emb, fc(emb).detach(), fc.weight, fc.bias)
    assert torch.isclose(fm, torch.tensor(0.25, dtype=torch.float64))
    assert torch.isclose(sr, (fc.weight.sum(1) * 0.5).pow(2).mean())


# every student and teacher of the CIFAR-100 pairs, and the digits nets: where their pre-pooling map comes from
FAMILIES = {"resnet8x4": "features", "resnet20": "features", "vgg8": "features", "shufflenetv1": "features",
            "resnet50": "features", "vgg13": "features", "resnet32x4": "features", "wrn_16_2": "preact_relu",
            "wrn_40_2": "preact_relu", "shufflenetv2": "module_relu", "mobilenetv2": "module"}


@pytest.mark.parametrize("arch", by_cost(sorted(FAMILIES)))
def test_the_student_map_averages_to_the_embedding_in_training_mode(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=100).train()
    found = probe(model, (3, 32, 32), hooks=True)
    assert found.pooled_map is not None and found.pooled_map.source == FAMILIES[arch]
    assert found.classifier in ("fc", "linear", "classifier", "classifier.0")
    reader = found.pooled_map.attach(model)
    with reader.capture():
        out = model(torch.randn(4, 3, 32, 32))
    m = reader.read(out)
    assert m.requires_grad and torch.allclose(m.mean((2, 3)), out.embedding, rtol=1e-5, atol=1e-6)
    lin = model.get_submodule(found.classifier)
    assert torch.allclose(lin(out.embedding), out.logits)
    with torch.no_grad():  # outside capture() a hooked module keeps nothing
        model(torch.randn(2, 3, 32, 32))
    assert reader._value is None


def _method(*overrides: str):
    return small_method("srd", *overrides)


def test_the_step_uses_the_frozen_teacher_classifier_and_trains_only_the_connector():
    m = _method("method.fm_weight=10")
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(8, 1, 8, 8, generator=g), torch.arange(8) % 10, torch.arange(8))
    out = m.step(batch, epoch=0)
    assert set(out.losses) == {"ce", "fm", "sr"}
    # recomputed from the models' outputs: fm * 10, sr through the teacher's own classifier
    with torch.no_grad():
        t = m.teacher.model(batch.images)
        s = m.student(batch.images)
        h = m.connector(s.features[-1]).mean((2, 3))
        fc = m.teacher.model.fc
        want_fm = 10 * F.mse_loss(h, t.embedding)
        want_sr = F.mse_loss(fc(h), t.logits)
    assert torch.allclose(out.losses["fm"], want_fm, rtol=1e-5) and torch.allclose(out.losses["sr"], want_sr, rtol=1e-5)
    sum(out.losses.values()).backward()
    assert m.teacher.model.fc.weight.grad is None
    assert m.connector[0].weight.grad is not None and m.connector[0].weight.grad.abs().sum() > 0
    assert m.extra_trainable_parameters() == sum(p.numel() for p in m.connector.parameters())
    assert not any(k.startswith("teacher") for k in m.checkpoint_state())
