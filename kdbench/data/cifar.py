"""CIFAR-10 and CIFAR-100 from the official python pickle batches, via torchvision."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from kdbench.core.errors import KDBenchError

from .base import DataBundle
from .registry import register_dataset
from .small import small_image_bundle

# Per-channel statistics used by the CRD benchmark's loaders.
STATS = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761]),
}
FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _load(cfg: DictConfig, name: str) -> DataBundle:
    from torchvision import datasets

    src = cfg.get("source") or {}
    root = Path(str(src.get("root"))).expanduser()
    folder = root / FOLDERS[name]
    if not folder.is_dir() and not src.get("download"):
        raise KDBenchError(f"{name} not found: expected the official python batches in {folder} "
                           f"(set data.source.root, or data.source.download=true on a machine with internet)")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train = cls(str(root), train=True, download=bool(src.get("download")))
        test = cls(str(root), train=False, download=bool(src.get("download")))
    except RuntimeError as exc:  # torchvision: missing or corrupted files
        raise KDBenchError(f"{name} in {folder} could not be read: {exc}") from None
    to_t = lambda d: (torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous(),  # noqa: E731
                      torch.tensor(d.targets, dtype=torch.long))
    (tr_x, tr_y), (te_x, te_y) = to_t(train), to_t(test)
    cap = cfg.get("max_per_class")
    if cap:
        keep = torch.cat([torch.nonzero(tr_y == c).flatten()[:cap] for c in range(len(train.classes))]).sort().values
        tr_x, tr_y = tr_x[keep], tr_y[keep]
    mean, std = STATS[name]
    return small_image_bundle(cfg, name, tr_x, tr_y, te_x, te_y, list(train.classes), mean, std)


@register_dataset("cifar10", num_classes=10, channels=3, train_per_class=(5000,) * 10,
                  description="CIFAR-10 (official python batches via torchvision), 50k/10k, 10 classes")
def build_cifar10(cfg: DictConfig) -> DataBundle:
    return _load(cfg, "cifar10")


@register_dataset("cifar100", num_classes=100, channels=3, train_per_class=(500,) * 100,
                  description="CIFAR-100 (official python batches via torchvision), 50k/10k, 100 classes")
def build_cifar100(cfg: DictConfig) -> DataBundle:
    return _load(cfg, "cifar100")
