"""CS-KD: the paired (same-class) sampler on both pipelines, its loss by hand, and resumption."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdbench.compute.seeding import class_partners
from kdbench.data import LoaderBundle, TensorBundle
from kdbench.method import build_method
from kdbench.models import seeded_model
from kdbench.orchestration.config import compose
from kdbench.orchestration.runner import run
from tests.helpers import approx_float32_kl, float32_kl_error


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


def test_partners_share_the_class_are_redrawn_each_epoch_and_cover_the_class():
    labels = torch.arange(600) % 7
    p0, p1 = class_partners(labels, 0, 0), class_partners(labels, 0, 1)
    assert torch.equal(labels[p0], labels) and torch.equal(labels[p1], labels)
    assert torch.equal(p0, class_partners(labels, 0, 0)), "a pure function of (labels, seed, epoch)"
    assert not torch.equal(p0, p1) and not torch.equal(p0, class_partners(labels, 1, 0))
    # uniform over the class, the sample itself included (the authors' sampler draws it too)
    small = torch.arange(60) % 3
    hits = torch.bincount(torch.stack([class_partners(small, 0, e) for e in range(400)])[:, 0], minlength=60)
    assert set(torch.nonzero(hits).flatten().tolist()) == set(range(0, 60, 3))  # itself (0) included
    assert hits.max() < 45 and hits[hits > 0].min() > 5  # 20 expected each


def _constant_images(n: int) -> torch.Tensor:
    """Each image is its index, constant over the pixels (survives crop and flip at the centre)."""
    img = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    img[:, 0] = (torch.arange(n) // 256).to(torch.uint8)[:, None, None]
    img[:, 1] = (torch.arange(n) % 256).to(torch.uint8)[:, None, None]
    return img


def _decode(images: torch.Tensor) -> torch.Tensor:
    px = (images[:, :2, 16, 16] * 255).round().long()
    return px[:, 0] * 256 + px[:, 1]


def test_both_pipelines_pair_the_same_samples_and_the_device_path_keeps_the_unpaired_images(tmp_path):
    from kdbench.data.small import small_image_bundle

    n = 500
    images, labels = _constant_images(n), torch.arange(n) % 10
    seen = {}
    for pipeline in ("device", "dataloader"):
        cfg = compose(["dataset=cifar10", f"data.pipeline={pipeline}", "data.val_fraction=0",
                       f"paths.data={tmp_path}", f"paths.work={tmp_path}/work"], check=False).data
        bundle = small_image_bundle(cfg, "ids", images, labels, images[:10], labels[:10],
                                    [str(i) for i in range(10)], [0.0] * 3, [1.0] * 3)
        assert isinstance(bundle, TensorBundle if pipeline == "device" else LoaderBundle)
        paired = list(bundle.train_batches(64, seed=3, epoch=2, paired=True))
        plain = list(bundle.train_batches(64, seed=3, epoch=2))
        idx = torch.cat([b.indices for b in paired])
        pidx = torch.cat([b.pair_indices for b in paired])
        assert torch.equal(idx, torch.cat([b.indices for b in plain])), "the order is every method's"
        assert sorted(idx.tolist()) == list(range(n)), "each sample once per epoch"
        assert torch.equal(labels[pidx], torch.cat([b.labels for b in paired])), "partners share the class"
        assert torch.equal(_decode(torch.cat([b.pair_images for b in paired])), pidx), "partner images are theirs"
        assert torch.equal(_decode(torch.cat([b.images for b in paired])), idx)
        assert all(len(b.pair_images) == len(b.images) for b in paired)
        if pipeline == "device":  # partners augment on their own stream: the sampled images are unchanged
            assert all(torch.equal(a.images, b.images) for a, b in zip(paired, plain))
        seen[pipeline] = pidx
    assert torch.equal(seen["device"], seen["dataloader"])


@pytest.mark.numerics
def test_cskd_loss_by_hand():
    cfg = compose(["method=cs-kd", "method.temperature=3", "method.lamda=0.7"], check=False)
    student = seeded_model("cnn_small", 10, 1, 0, "student-init")
    from kdbench.data import Batch, DatasetInfo

    m = build_method(cfg.method, student, DatasetInfo("tiny", 10, (1, 8, 8), 8), 0)
    x, x2 = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    y = torch.arange(6) % 10
    m.train()
    state = {k: v.clone() for k, v in student.state_dict().items()}
    out = m.step(Batch(x, y, torch.arange(6), x2, torch.arange(6)), 0)
    out.losses["cls"].backward()
    assert student.fc.weight.grad is not None  # the sample side carries the gradient
    student.load_state_dict(state)
    z = student(x).logits.double()
    with torch.no_grad():
        z2 = student(x2).logits.double()
    p2, log_p2, log_p = F.softmax(z2 / 3, 1), F.log_softmax(z2 / 3, 1), F.log_softmax(z / 3, 1)
    kl = (p2 * (log_p2 - log_p)).sum() / 6 * 9
    # p2 and p are near each other (one network at initialisation): float32's KL against its own bound
    bound = 0.7 * 9 / 6 * float32_kl_error(p2, log_p, z / 3, z2 / 3)
    assert out.losses["cls"].item() == approx_float32_kl(0.7 * kl.item(), bound)
    assert torch.allclose(out.losses["ce"].double(), F.cross_entropy(z, y), rtol=1e-5)


def test_a_killed_cskd_run_resumes_to_the_uninterrupted_history(make_cfg, tmp_path):
    full = run(make_cfg("method=cs-kd"))
    other = f"paths.results={tmp_path / 'other'}"

    def kill(n, step):
        if (n, step) == (1, 2):
            raise _Killed

    with pytest.raises(_Killed):
        run(make_cfg("method=cs-kd", other), on_step=kill)
    resumed = run(make_cfg("method=cs-kd", other, "resume=true"))
    assert resumed["timing"]["resumed_from_epoch"] == 1
    drop = ("time_s", "images_per_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])
    assert set(full["history"][0]["train_loss"]) == {"ce", "cls"}
