"""Datasets: digits splits, the ImageFolder reader on generated JPEGs, batch augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from kdbench import KDBenchError
from kdbench.data import build_dataset
from kdbench.data.small import crop_flip
from kdbench.orchestration.config import compose
from tests.helpers import write_image_tree


def test_digits_splits_are_disjoint_stratified_and_complete():
    data = build_dataset(compose().data)
    assert data.info.input_shape == (1, 8, 8) and data.info.num_classes == 10
    n = len(data.train) + len(data.val) + len(data.test)
    assert n == 1797
    assert len(data.test) == pytest.approx(0.2 * 1797, abs=10)
    assert len(data.val) == pytest.approx(0.1 * (1797 - len(data.test)), abs=10)
    # every class appears in every split
    for split in (data.train, data.val, data.test):
        assert set(split.labels.tolist()) == set(range(10))
    # no image is shared between splits (digits has a few exact duplicates; compare by count)
    flat = lambda s: {tuple(x.flatten().tolist()) for x in s.images}  # noqa: E731
    assert len(flat(data.train) & flat(data.test)) <= 5
    # sample indices address the training set (CRD's memory bank needs them)
    assert sorted(data.train.indices.tolist()) == list(range(len(data.train)))


def test_split_seed_not_run_seed_fixes_the_split():
    a = build_dataset(compose(["seed=1"]).data)
    b = build_dataset(compose(["seed=2"]).data)
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.val.images, b.val.images)


def test_val_fraction_out_of_range_is_an_error():
    with pytest.raises(KDBenchError, match="val_fraction"):
        build_dataset(compose(["data.val_fraction=1.5"]).data)


def test_data_order_depends_on_seed_and_epoch_only():
    data = build_dataset(compose().data)
    order = lambda s, e: torch.cat([b.indices for b in data.train_batches(64, s, e)])  # noqa: E731
    assert torch.equal(order(0, 3), order(0, 3))
    assert not torch.equal(order(0, 3), order(0, 4)) and not torch.equal(order(0, 3), order(1, 3))
    assert sorted(order(0, 0).tolist()) == list(range(len(data.train)))


def _imagefolder_cfg(root, **kw):
    cfg = OmegaConf.create(compose(["dataset=imagefolder", "pair.datasets=[imagefolder]"]).data)
    cfg.source.root = None if root is None else str(root)
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def test_imagefolder_reads_a_generated_jpeg_tree(tmp_path):
    write_image_tree(tmp_path, per_class=10)
    data = build_dataset(_imagefolder_cfg(tmp_path, val_fraction=0.2))
    assert data.info.classes == ("cat", "dog") and data.info.input_shape == (3, 32, 32)
    assert len(data.train) == 16 and len(data.val) == 4 and len(data.test) == 20
    assert data.train.images.dtype == torch.uint8
    batch = next(data.train_batches(8, seed=0, epoch=0))
    assert batch.images.dtype == torch.float32 and batch.images.shape == (8, 3, 32, 32)


def test_imagefolder_missing_directory_names_the_expected_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(KDBenchError, match=str(missing)):
        build_dataset(_imagefolder_cfg(missing))


def test_imagefolder_without_root_says_how_to_set_it():
    with pytest.raises(KDBenchError, match="data.source.root"):
        build_dataset(_imagefolder_cfg(None))


def test_imagefolder_with_no_images_is_an_error(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with pytest.raises(KDBenchError, match="no images"):
        build_dataset(_imagefolder_cfg(tmp_path))


def test_imagefolder_rejects_mixed_sizes(tmp_path):
    write_image_tree(tmp_path)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "train" / "cat" / "big.jpg")
    with pytest.raises(KDBenchError, match="40x40"):
        build_dataset(_imagefolder_cfg(tmp_path))


def test_crop_flip_statistics_and_content():
    n = 9000
    img = torch.arange(1, 33, dtype=torch.uint8).repeat(n, 3, 32, 1)  # pixel = column index + 1
    out = crop_flip(4)(img, torch.Generator().manual_seed(0))
    assert out.shape == img.shape and out.dtype == torch.uint8
    row = out[:, 0, 16, :].long()
    assert torch.equal(out[:, 0], out[:, 2]), "all channels are cropped alike"
    flipped = row[:, 15] > row[:, 16]  # the centre is never padding
    assert 0.47 < flipped.float().mean().item() < 0.53
    row = torch.where(flipped[:, None], row.flip(1), row)
    # An unflipped row is a window of the zero-padded row: out[j] = in[j + dx - 4] (0 outside).
    j = (row > 0).float().argmax(dim=1)
    dx = row[torch.arange(n), j] - 1 + 4 - j
    expected = torch.where((torch.arange(32)[None] + dx[:, None] - 4).clamp(-1, 32).lt(0) |
                           (torch.arange(32)[None] + dx[:, None] - 4).ge(32), 0,
                           torch.arange(32)[None] + dx[:, None] - 3)
    assert torch.equal(row, expected)
    freq = torch.bincount(dx, minlength=9).float() / n
    assert len(freq) == 9 and (freq - 1 / 9).abs().max() < 0.02


def test_static_train_size_matches_the_built_and_the_recorded_splits():
    import json
    from pathlib import Path

    from kdbench.data import static_train_size

    for extra in ([], ["data.val_fraction=0.25"], ["data.test_fraction=0.5"]):
        cfg = compose(extra)
        assert static_train_size(cfg.data) == build_dataset(cfg.data).info.num_train, extra
    # committed CIFAR-10 records (real JPEG data, 500 per class cap) say what their splits held
    recs = [json.loads(p.read_text()) for p in sorted(Path("results/runs").glob("*cifar10_*.json"))[:3]]
    assert recs, "the committed cifar10-mini records are missing"
    for r in recs:
        cfg = compose([f"pair={r['pair']['name']}", f"data.max_per_class={r['config']['data']['max_per_class']}"])
        assert static_train_size(cfg.data) == r["dataset"]["num_train"]
    assert static_train_size(compose(["dataset=imagefolder"], check=False).data) is None  # unknown until read
