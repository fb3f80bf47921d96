"""ImageNet (or any large ImageFolder tree with train/ and val/) through the DataLoader path.

Standard transforms: RandomResizedCrop(224) + horizontal flip for training;
Resize(256) + CenterCrop(224) for evaluation; ImageNet mean/std. The official
validation set is the test split; the selection split is carved from train.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from kdbench.core.errors import KDBenchError

from .base import DataBundle, DatasetInfo, IndexedDataset, LoaderBundle, stratified_split
from .registry import register_dataset

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@register_dataset("imagenet", num_classes=1000, channels=3,
                  description="ImageNet-1k (ImageFolder train/ + val/), standard transforms, DataLoader path")
def build_imagenet(cfg: DictConfig) -> DataBundle:
    from torchvision import datasets
    from torchvision import transforms as T

    src = cfg.get("source") or {}
    root = Path(str(src.root)).expanduser() if src.get("root") else None
    for split in ("train", str(cfg.test_split)):
        if root is None or not (root / split).is_dir():
            raise KDBenchError(f"ImageNet not found: expected {root}/{split}/<class>/<image> (set data.source.root)")
    size = int(cfg.image_size)
    norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
    train_t = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm])
    eval_t = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), *norm])
    train_base = datasets.ImageFolder(str(root / "train"))
    if not len(train_base):
        raise KDBenchError(f"no images under {root / 'train'}")
    test_base = datasets.ImageFolder(str(root / str(cfg.test_split)))
    if test_base.classes != train_base.classes:
        raise KDBenchError(f"class folders of {root / 'train'} and {root / str(cfg.test_split)} differ")
    labels = torch.tensor(train_base.targets)
    tr, va = stratified_split(labels, float(cfg.val_fraction), int(cfg.split_seed))
    info = DatasetInfo(name=str(cfg.name), num_classes=len(train_base.classes), input_shape=(3, size, size),
                       num_train=len(tr), classes=tuple(train_base.classes))
    splits = {"train": IndexedDataset(train_base, train_t, tr), "val": IndexedDataset(train_base, eval_t, va),
              "test": IndexedDataset(test_base, eval_t)}
    return LoaderBundle(info, splits, workers=int(src.get("workers", 0)))
