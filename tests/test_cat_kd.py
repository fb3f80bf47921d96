"""CAT-KD against the authors' distiller (pooled, optionally normalised class activation maps; loss and
gradients to the student's map and classifier), and the method's wiring of both classifiers. How the fixture
was made: its ``source.how`` and the CAT-KD card (``kdbench show method cat-kd``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kdbench.methods.cat_kd import cat_loss, pooled_cams

from kdbench.data import Batch
from tests import parity
from tests.helpers import small_method

FIXTURE = parity.load("cat-kd")
# float64 in and out. Ours pools the map before the 1x1 product, theirs after: the same sums in another
# order, a few hundred terms each, so the two differ by ~1e2 * eps64 ~ 1e-14 relative
REL = 1e-10


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=REL, atol=1e-14)


@pytest.mark.numerics
@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: c["name"])
def test_matches_the_authors_cat_loss_and_gradients(case):
    i, o, p = case["inputs"], case["outputs"], case["params"]
    s_map = i["student_map"].clone().requires_grad_(True)
    w_s = i["student_weight"].clone().requires_grad_(True)
    r = p["cam_resolution"]
    # their CAMs at full resolution are the 1x1 product of the classifier weight with the map
    assert _close(torch.einsum("kc,bchw->bkhw", w_s, s_map).detach(), o["student_cam"])
    loss = p["beta"] * cat_loss(pooled_cams(s_map, w_s, r), pooled_cams(i["teacher_map"], i["teacher_weight"], r),
                                p["normalize"])
    assert _close(loss.detach(), o["cat"])
    loss.backward()
    assert _close(s_map.grad, o["grad_student_map"]) and _close(w_s.grad, o["grad_student_weight"])


@pytest.mark.numerics
def test_the_loss_by_hand_and_the_normalisation_ignores_scale():
    g = torch.Generator().manual_seed(0)
    m, w = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    cams = pooled_cams(m, w, 2)
    # one pooled CAM by hand: class 1, top-left 2x2 window of image 0
    want = sum(w[1, c] * m[0, c, :2, :2].mean() for c in range(3))
    assert torch.isclose(cams[0, 1, 0, 0], want)
    assert cat_loss(cams, cams, normalize=False).item() == 0.0
    # normalised CAMs compare shapes only: a positive rescale of the teacher's map changes nothing
    other = pooled_cams(torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64), w, 2)
    assert torch.isclose(cat_loss(cams, 7.0 * other, True), cat_loss(cams, other, True))
    assert not torch.isclose(cat_loss(cams, 7.0 * other, False), cat_loss(cams, other, False))
    assert torch.isclose(cat_loss(cams, other, False), F.mse_loss(cams, other))


def _method(*overrides: str):
    return small_method("cat-kd", *overrides)


def test_the_step_compares_both_models_cams_and_trains_the_students_classifier():
    m = _method("method.beta=12", "method.normalize=false", "method.cam_resolution=1")
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(8, 1, 8, 8, generator=g), torch.arange(8) % 10, torch.arange(8))
    out = m.step(batch, epoch=0)
    assert set(out.losses) == {"ce", "cat"}
    with torch.no_grad():  # at resolution 1 a pooled CAM is the logit without its bias
        t, s = m.teacher.model(batch.images), m.student(batch.images)
        want = 12 * F.mse_loss(s.logits - m.student.fc.bias, t.logits - m.teacher.model.fc.bias)
    assert torch.allclose(out.losses["cat"], want, rtol=1e-5)
    sum(out.losses.values()).backward()
    assert m.student.fc.weight.grad is not None and m.teacher.model.fc.weight.grad is None
    assert m.extra_trainable_parameters() == 0
