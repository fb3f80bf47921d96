"""Any ImageFolder tree (``root/train/<class>/*``, ``root/<test_split>/<class>/*``) of small images.

Images are decoded once into a uint8 tensor that lives on the training device;
training batches get random crop (zero padding) and horizontal flip as whole
batch operations, then normalisation. Every image must already have the
configured size: resizing would silently change the benchmark.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from ..errors import KDBenchError
from .base import DataBundle, DatasetInfo, Split, carve_validation
from .registry import register_dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


def _read_tree(root: Path, size: int, max_per_class: int | None,
               classes: list[str] | None = None) -> tuple[Tensor, Tensor, list[str]]:
    from PIL import Image
    import numpy as np

    if not root.is_dir():
        raise KDBenchError(f"expected an image folder at {root} (layout: {root}/<class>/<image>), but it does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = classes if classes is not None else found
    if not classes:
        raise KDBenchError(f"no class folders in {root} (layout: {root}/<class>/<image>)")
    arrays, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if max_per_class:
            files = files[:max_per_class]
        for f in files:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    raise KDBenchError(f"{f} is {im.size[0]}x{im.size[1]}, but data.image_size={size}: "
                                       "every image of this dataset must have that size")
                arrays.append(np.asarray(im, dtype=np.uint8))
            labels.append(label)
    if not arrays:
        raise KDBenchError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.long), classes


def crop_flip(padding: int):
    """Batch augmentation: random crop after zero padding, and horizontal flip (p=0.5)."""

    def augment(images: Tensor, gen: torch.Generator | None) -> Tensor:
        n, _, h, w = images.shape
        padded = torch.nn.functional.pad(images, (padding,) * 4)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=images.device)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=images.device)
        rows = (dy[:, None] + torch.arange(h, device=images.device)[None])  # n, h
        cols = (dx[:, None] + torch.arange(w, device=images.device)[None])  # n, w
        flip = torch.rand(n, generator=gen, device=images.device) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        idx_n = torch.arange(n, device=images.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n, h, w, c
        return out.permute(0, 3, 1, 2).contiguous()

    return augment


def normalizer(mean: Tensor, std: Tensor):
    def prepare(images: Tensor) -> Tensor:
        m, s = mean.to(images.device), std.to(images.device)
        return (images.float() / 255.0 - m) / s

    return prepare


@register_dataset("imagefolder", description="any ImageFolder tree of small same-size images (train/ + test/), held on the device")
def build_imagefolder(cfg: DictConfig) -> DataBundle:
    if not cfg.get("root"):
        raise KDBenchError("data.root is not set: point it at a folder holding train/ and "
                           f"{cfg.get('test_split', 'test')}/ (e.g. data.root=/path/to/cifar10-jpg)")
    root = Path(str(cfg.root)).expanduser()
    if not root.is_dir():
        raise KDBenchError(f"data directory {root} does not exist: expected {root}/train/<class>/* and "
                           f"{root}/{cfg.test_split}/<class>/* (set data.root)")
    size, cap = int(cfg.image_size), cfg.get("max_per_class")
    tr_images, tr_labels, classes = _read_tree(root / "train", size, cap)
    te_images, te_labels, _ = _read_tree(root / str(cfg.test_split), size, cfg.get("max_test_per_class"), classes)
    train, val = carve_validation(tr_images, tr_labels, float(cfg.val_fraction), int(cfg.split_seed))
    if cfg.get("mean") is not None:
        mean, std = torch.tensor(list(cfg.mean)), torch.tensor(list(cfg.std))
    else:
        x = train.images.float() / 255.0
        mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    info = DatasetInfo(name=str(cfg.name), num_classes=len(classes), input_shape=(3, size, size),
                       num_train=len(train), classes=tuple(classes))
    test = Split(te_images, te_labels, torch.arange(len(te_labels)))
    return DataBundle(info=info, train=train, val=val, test=test,
                      augment=crop_flip(int(cfg.crop_padding)) if cfg.crop_padding else None,
                      prepare=normalizer(mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)))
