"""CIFAR-format datasets, the decode cache, and the device-resident vs DataLoader pipelines."""
from __future__ import annotations

import pytest
import torch
import torchvision

from kdbench import KDBenchError
from kdbench.data import LoaderBundle, TensorBundle, build_dataset
from kdbench.orchestration.config import compose
from tests.helpers import SHARED_ARCHIVE, write_cifar10_jpg_archive, write_cifar_pickles


@pytest.fixture
def no_md5(monkeypatch):
    # Generated batches cannot carry the official files' md5 sums.
    for cls in (torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)


def _data_cfg(tmp_path, dataset, *extra):
    return compose([f"dataset={dataset}", f"paths.data={tmp_path}", f"paths.work={tmp_path}/work", *extra],
                   check=False).data


@pytest.mark.parametrize("dataset,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickles_load_with_indices(tmp_path, no_md5, dataset, num_classes):
    write_cifar_pickles(tmp_path, num_classes, per_class=10)
    data = build_dataset(_data_cfg(tmp_path, dataset, "data.val_fraction=0.2"))
    assert isinstance(data, TensorBundle)
    assert data.info.num_classes == num_classes and data.info.input_shape == (3, 32, 32)
    assert data.split_len("train") == 8 * num_classes and data.split_len("val") == 2 * num_classes
    assert data.split_len("test") == 2 * num_classes
    batch = next(data.train_batches(16, seed=0, epoch=0))
    assert batch.images.shape == (16, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.indices.max() < data.info.num_train


def test_missing_cifar_names_the_expected_folder(tmp_path):
    with pytest.raises(KDBenchError, match="cifar-100-python"):
        build_dataset(_data_cfg(tmp_path, "cifar100"))


def test_cifar10_jpg_archive_is_extracted_once_and_decoded_once(tmp_path):
    archive = write_cifar10_jpg_archive(tmp_path / "cifar10-jpg.tar.gz", per_class=4)
    cfg = _data_cfg(tmp_path, "cifar10-jpg", "data.val_fraction=0.25")
    data = build_dataset(cfg)
    assert data.info.classes[0] == "airplane" and data.split_len("train") == 30 and data.split_len("test") == 40
    cached = list((tmp_path / "work" / "data-cache").glob("cifar10-jpg-*.pt"))
    assert len(cached) == 1
    archive.unlink()
    write_cifar10_jpg_archive(tmp_path / "cifar10-jpg.tar.gz", per_class=4)  # same content, new file
    again = build_dataset(cfg)
    assert torch.equal(again.train.images, data.train.images)


def test_a_partial_extraction_is_never_taken_as_complete(tmp_path):
    """kill -9 during extraction once left 7 of 10 classes that later runs trained on, and a decoded
    cache that kept the damage."""
    import shutil

    archive = write_cifar10_jpg_archive(tmp_path / "cifar10-jpg.tar.gz", per_class=4)
    cfg = _data_cfg(tmp_path, "cifar10-jpg", "data.val_fraction=0.25")
    full = build_dataset(cfg)
    (out,) = [p for p in (tmp_path / "work" / "data-extract").iterdir() if p.is_dir()]
    # What a killed extraction leaves: some classes only, no completion marker; and a cache made from it.
    (out / ".complete.json").unlink()
    for cls in ("ship", "truck", "horse"):
        shutil.rmtree(out / "cifar10-jpg" / "train" / cls)
    (cache,) = (tmp_path / "work" / "data-cache").glob("*.pt")
    cache.write_bytes(cache.read_bytes()[:100])  # and a truncated decoded cache
    again = build_dataset(cfg)
    assert again.info.num_classes == 10 and torch.equal(again.train.images, full.train.images)
    assert (out / ".complete.json").is_file() and not list(out.parent.glob("*.partial-*"))
    # Files deleted after a complete extraction: the counts no longer match, so it is extracted again.
    for f in list((out / "cifar10-jpg" / "test" / "cat").iterdir())[:2]:
        f.unlink()
    assert torch.equal(build_dataset(cfg).test.images, full.test.images)
    assert archive.exists()


def test_a_killed_extractions_partial_folder_goes_with_the_next_extraction(tmp_path):
    """A killed extraction's partial folder stayed beside the complete tree that a later extraction made."""
    archive = write_cifar10_jpg_archive(tmp_path / "cifar10-jpg.tar.gz", per_class=2)
    cfg = _data_cfg(tmp_path, "cifar10-jpg", "data.val_fraction=0.25")
    build_dataset(cfg)
    (out,) = [p for p in (tmp_path / "work" / "data-extract").iterdir() if p.is_dir()]
    killed = out.with_name(f"{out.name}.partial-99999")  # what kill -9 mid-extraction leaves
    (killed / "cifar10-jpg" / "train" / "cat").mkdir(parents=True)
    build_dataset(cfg)  # the tree is complete: used as it is, and the dead partial removed under the lock
    assert not killed.exists() and (out / ".complete.json").is_file() and archive.exists()


_KILL_DURING_EXTRACTION = """
import os, signal, sys, tarfile
from kdbench.orchestration.config import compose
from kdbench.data import build_dataset
real, n = tarfile.TarFile._extract_member, [0]
def extract(self, *a, **k):
    n[0] += 1
    if n[0] == 60:  # kill -9 this process in the middle of the archive
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *a, **k)
tarfile.TarFile._extract_member = extract
build_dataset(compose(sys.argv[1:], check=False).data)
"""


def test_kill_9_during_extraction_leaves_nothing_that_is_used(tmp_path):
    import subprocess
    import sys

    write_cifar10_jpg_archive(tmp_path / "cifar10-jpg.tar.gz", per_class=4)
    args = ["dataset=cifar10-jpg", f"paths.data={tmp_path}", f"paths.work={tmp_path}/work", "data.val_fraction=0.25"]
    p = subprocess.run([sys.executable, "-c", _KILL_DURING_EXTRACTION, *args], capture_output=True, timeout=300)
    assert p.returncode == -9
    extract = tmp_path / "work" / "data-extract"
    assert not [d for d in extract.iterdir() if d.is_dir() and not d.name.endswith((".lock",))
                and ".partial-" not in d.name]  # only the temporary folder exists
    data = build_dataset(_data_cfg(tmp_path, "cifar10-jpg", "data.val_fraction=0.25"))
    assert data.info.num_classes == 10 and data.split_len("train") == 30 and data.split_len("test") == 40


def test_a_decoded_cache_that_does_not_match_its_source_is_rebuilt(tmp_path):
    write_cifar10_jpg_archive(tmp_path / "cifar10-jpg.tar.gz", per_class=4)
    cfg = _data_cfg(tmp_path, "cifar10-jpg", "data.val_fraction=0.25")
    full = build_dataset(cfg)
    (cache,) = (tmp_path / "work" / "data-cache").glob("*.pt")
    d = torch.load(cache, weights_only=True)
    d["train_images"], d["train_labels"] = d["train_images"][:5], d["train_labels"][:5]
    torch.save(d, cache)
    assert torch.equal(build_dataset(cfg).train.images, full.train.images)


def test_missing_archive_says_where_to_point(tmp_path):
    with pytest.raises(KDBenchError, match="data.source.archive"):
        build_dataset(_data_cfg(tmp_path, "cifar10-jpg"))


def test_unknown_pipeline_is_an_error(tmp_path, no_md5):
    write_cifar_pickles(tmp_path, 10)
    with pytest.raises(KDBenchError, match="pipeline"):
        build_dataset(_data_cfg(tmp_path, "cifar10", "data.pipeline=gpu"))


def _offsets_and_flips(images: torch.Tensor, mean, std):
    """Recover (dx, dy, flip) from augmented copies of a coordinate-coded image."""
    x = images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    px = (x * 255).round().long()
    col, row = px[:, 0], px[:, 1]  # channel 0 encodes column+1, channel 1 encodes row+1 (0 = padding)
    centre_c = col[:, 16, 15:17]
    flip = centre_c[:, 0] > centre_c[:, 1]
    c16 = torch.where(flip[:, None], col[:, 16].flip(1), col[:, 16])
    j = (c16 > 0).float().argmax(1)
    dx = c16[torch.arange(len(c16)), j] - 1 + 4 - j
    r16 = row[:, :, 16]
    i = (r16 > 0).float().argmax(1)
    dy = r16[torch.arange(len(r16)), i] - 1 + 4 - i
    return dx, dy, flip


def test_device_and_dataloader_paths_agree_in_order_and_augmentation(tmp_path, no_md5):
    n = 3000
    write_cifar_pickles(tmp_path, 10, per_class=1, test_per_class=1)
    coords = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    coords[:, 0] = torch.arange(1, 33, dtype=torch.uint8)[None, None, :]
    coords[:, 1] = torch.arange(1, 33, dtype=torch.uint8)[None, :, None]
    labels = torch.arange(n) % 10
    from kdbench.data.small import small_image_bundle

    mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    results = {}
    for pipeline in ("device", "dataloader"):
        cfg = _data_cfg(tmp_path, "cifar10", f"data.pipeline={pipeline}", "data.val_fraction=0")
        names = [str(i) for i in range(10)]
        bundle = small_image_bundle(cfg, "coords", coords, labels, coords[:10], labels[:10], names, mean, std)
        assert isinstance(bundle, TensorBundle if pipeline == "device" else LoaderBundle)
        batches = list(bundle.train_batches(500, seed=3, epoch=1))
        idx = torch.cat([b.indices for b in batches])
        images = torch.cat([b.images for b in batches])
        results[pipeline] = (idx, *_offsets_and_flips(images, mean, std))
    (i_d, dx_d, dy_d, f_d), (i_l, dx_l, dy_l, f_l) = results["device"], results["dataloader"]
    assert torch.equal(i_d, i_l), "both paths must see the same samples in the same order"
    for a, b in ((dx_d, dx_l), (dy_d, dy_l)):
        fa = torch.bincount(a, minlength=9).float() / n
        fb = torch.bincount(b, minlength=9).float() / n
        assert len(fa) == len(fb) == 9 and (fa - fb).abs().max() < 0.035
        assert (fa - 1 / 9).abs().max() < 0.025
    assert abs(f_d.float().mean() - f_l.float().mean()) < 0.04 and abs(f_d.float().mean() - 0.5) < 0.03


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason=f"real CIFAR-10 JPEG archive not found at {SHARED_ARCHIVE}")
def test_one_epoch_on_real_cifar10_jpeg_subset(tmp_path):
    from kdbench.orchestration.runner import run

    rec = run(compose([
        "pair=cifar10/resnet56-resnet20", "dataset=cifar10-jpg", f"data.source.archive={SHARED_ARCHIVE}",
        "pair.teacher=resnet8", "pair.student=resnet8", "method=kd",
        "data.max_per_class=30", "data.max_test_per_class=20",
        "schedule.epochs=1", "teacher.schedule.epochs=1", "schedule.batch_size=32", "teacher.schedule.batch_size=32",
        f"paths.results={tmp_path}/results", f"paths.work={tmp_path}/work", "engine.progress=false"]))
    assert rec["status"] == "completed" and rec["dataset"]["name"] == "cifar10-jpg"
    assert rec["dataset"]["num_test"] == 200 and rec["dataset"]["num_train"] == 270
    assert 0 <= rec["metrics"]["last"]["student"]["test"]["top1"] <= 100


def test_imagenet_style_tree_through_the_dataloader_path(tmp_path):
    from tests.helpers import write_image_tree

    write_image_tree(tmp_path / "imagenet", per_class=6, size=40, classes=("n01", "n02"), splits=("train", "val"))
    cfg = _data_cfg(tmp_path, "imagenet", "data.image_size=32", "data.source.workers=0", "data.val_fraction=0.5")
    data = build_dataset(cfg)
    assert isinstance(data, LoaderBundle) and data.info.input_shape == (3, 32, 32)
    assert data.split_len("train") == 6 and data.split_len("val") == 6 and data.split_len("test") == 12
    batch = next(data.train_batches(4, seed=0, epoch=0))
    assert batch.images.shape == (4, 3, 32, 32) and batch.indices.max() < 6
    ev = next(data.eval_batches("test", 5))
    assert ev.images.shape == (5, 3, 32, 32)
    assert sorted(data.train_labels().tolist()) == [0, 0, 0, 1, 1, 1]  # stratified: half of each class


def test_missing_imagenet_names_the_folder(tmp_path):
    with pytest.raises(KDBenchError, match="imagenet/train"):
        build_dataset(_data_cfg(tmp_path, "imagenet"))


def test_dataloader_transforms_do_not_share_the_global_rng_with_the_method(tmp_path):
    """workers=0: per-image augmentation draws from its own stream, so a method drawing from
    torch's global RNG neither changes the images nor has its own draws moved."""
    from tests.helpers import write_image_tree

    write_image_tree(tmp_path / "imagenet", per_class=6, size=40, classes=("n01", "n02"), splits=("train", "val"))
    data = build_dataset(_data_cfg(tmp_path, "imagenet", "data.image_size=32", "data.source.workers=0"))

    def epoch(draw_between: bool) -> list[torch.Tensor]:
        out = []
        for b in data.train_batches(4, seed=0, epoch=0):
            out.append(b.images)
            if draw_between:
                torch.rand(1000)  # e.g. dropout in the method's step
        return out

    plain, disturbed = epoch(False), epoch(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, disturbed))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    epoch(False)
    assert torch.equal(torch.rand(3), expected)  # the augmentation left the global RNG alone
