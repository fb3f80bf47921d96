"""Small-image (32x32-class) datasets: decode once, cache on disk, serve from the device.

A split is decoded into a uint8 tensor (N, C, H, W) once and cached under
``data.source.cache_dir`` keyed by a fingerprint of its source, so later runs load a
single file. The default ``data.pipeline=device`` keeps the tensors on the
training device and augments whole batches there (random crop after zero
padding, horizontal flip, normalisation); ``data.pipeline=dataloader`` is the
classic per-image torchvision path (PIL, ``RandomCrop(padding)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``), kept as the reference.
"""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig
from torch import Tensor

from kdbench.core.errors import KDBenchError
from kdbench.experiment.records import atomic_write_bytes

from .base import DataBundle, DatasetInfo, IndexedDataset, LoaderBundle, Split, TensorBundle, stratified_split

log = logging.getLogger(__name__)


def crop_flip(padding: int) -> Callable[[Tensor, torch.Generator | None], Tensor]:
    """Batch augmentation: random crop after zero padding, then horizontal flip with p=0.5."""

    def augment(images: Tensor, gen: torch.Generator | None) -> Tensor:
        n, c, h, w = images.shape
        dev = images.device
        big_h, big_w = h + 2 * padding, w + 2 * padding
        padded = torch.nn.functional.pad(images, (padding,) * 4)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=dev)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=dev)
        flip = torch.rand(n, generator=gen, device=dev) < 0.5
        rows = dy[:, None] + torch.arange(h, device=dev)[None]
        cols = dx[:, None] + torch.arange(w, device=dev)[None]
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        # One flat gather (take) instead of 4-D advanced indexing: the faster of the two on CPU.
        plane = (torch.arange(n, device=dev)[:, None] * c + torch.arange(c, device=dev)[None]) * (big_h * big_w)
        idx = plane[:, :, None, None] + (rows * big_w)[:, None, :, None] + cols[:, None, None, :]
        return padded.reshape(-1).take(idx)

    return augment


def normalizer(mean: Tensor, std: Tensor) -> Callable[[Tensor], Tensor]:
    """uint8 -> (x/255 - mean)/std as one multiply-add on a fresh float tensor."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (-mean / std).view(1, -1, 1, 1)
    cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def prepare(images: Tensor) -> Tensor:
        if images.device not in cache:
            cache[images.device] = (scale.to(images.device), shift.to(images.device))
        a, b = cache[images.device]
        return images.float().mul_(a).add_(b)

    return prepare


class _UInt8Images(torch.utils.data.Dataset):
    """(PIL image, label) from a uint8 (N, C, H, W) tensor: the DataLoader path's source."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels
        self.targets = labels  # as torchvision datasets name them: the training labels (CRD, CS-KD) read them

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        arr = self.images[i].permute(1, 2, 0).numpy()
        return Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr), int(self.labels[i])


def small_image_bundle(cfg: DictConfig, name: str, train_images: Tensor, train_labels: Tensor,
                       test_images: Tensor, test_labels: Tensor, classes: list[str],
                       mean: list[float] | None = None, std: list[float] | None = None) -> DataBundle:
    """Carve the validation split and build the configured pipeline over uint8 tensors."""
    tr, va = stratified_split(train_labels, float(cfg.val_fraction), int(cfg.split_seed))
    if cfg.get("mean") is not None:
        mean, std = list(cfg.mean), list(cfg.std)
    if mean is None:
        x = train_images[tr].float() / 255.0
        mean, std = x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()
    c, h, w = train_images.shape[1:]
    info = DatasetInfo(name=name, num_classes=len(classes), input_shape=(c, h, w), num_train=len(tr),
                       classes=tuple(classes))
    padding = int(cfg.get("crop_padding", 4))
    pipeline = cfg.get("pipeline", "device")
    if pipeline == "device":
        return TensorBundle(
            info,
            Split(train_images[tr], train_labels[tr], torch.arange(len(tr))),
            Split(train_images[va], train_labels[va], torch.arange(len(va))),
            Split(test_images, test_labels, torch.arange(len(test_labels))),
            augment=crop_flip(padding) if padding else None,
            prepare=normalizer(torch.tensor(mean), torch.tensor(std)))
    if pipeline == "dataloader":
        from torchvision import transforms as T

        norm = [T.ToTensor(), T.Normalize(mean, std)]
        aug = [T.RandomCrop(h, padding=padding), T.RandomHorizontalFlip()] if padding else []
        train_src = _UInt8Images(train_images, train_labels)
        splits = {
            "train": IndexedDataset(train_src, T.Compose(aug + norm), tr),
            "val": IndexedDataset(train_src, T.Compose(norm), va),
            "test": IndexedDataset(_UInt8Images(test_images, test_labels), T.Compose(norm)),
        }
        return LoaderBundle(info, splits, workers=int((cfg.get("source") or {}).get("workers", 0)))
    raise KDBenchError(f"data.pipeline={pipeline!r} is not one of: device, dataloader")


# -- decoding ImageFolder trees, with an on-disk cache ---------------------------------

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


def list_tree(root: Path, classes: list[str] | None = None,
              max_per_class: int | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """(file, label) pairs of an ImageFolder split, sorted; classes from folder names."""
    if not root.is_dir():
        raise KDBenchError(f"expected an image folder at {root} (layout: {root}/<class>/<image>), "
                           "but it does not exist")
    classes = classes if classes is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise KDBenchError(f"no class folders in {root} (layout: {root}/<class>/<image>)")
    files = []
    for label, cls in enumerate(classes):
        found = sorted(p for p in (root / cls).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += [(p, label) for p in (found[:max_per_class] if max_per_class else found)]
    if not files:
        raise KDBenchError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return files, classes


def decode_files(files: list[tuple[Path, int]], size: int) -> tuple[Tensor, Tensor]:
    """Decode to uint8 RGB; every image must be ``size`` x ``size`` (no silent resizing)."""
    import numpy as np
    from PIL import Image

    arrays = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        with Image.open(f) as im:
            if im.size != (size, size):
                raise KDBenchError(f"{f} is {im.size[0]}x{im.size[1]}, but data.image_size={size}: "
                                   "every image of this dataset must have that size")
            arrays[i] = np.asarray(im.convert("RGB"), dtype=np.uint8)
    labels = torch.tensor([lab for _, lab in files], dtype=torch.long)
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous(), labels


def tree_fingerprint(files: list[tuple[Path, int]]) -> str:
    h = hashlib.sha256()
    for f, label in files:
        st = f.stat()
        h.update(f"{f}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_decode(cache_dir: str | None, key: str, decode: Callable[[], dict],
                  complete: Callable[[dict], bool] | None = None) -> dict:
    """``decode()`` once per ``key``; later calls load the cached tensors.

    The file is written atomically; one that cannot be read (truncated) or fails ``complete``
    (other image counts than the source now has) is decoded again and replaced.
    """
    if not cache_dir:
        return decode()
    path = Path(cache_dir) / f"{key}.pt"
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if complete is None or complete(cached):
                log.debug("decoded-data cache hit: %s", path)
                return cached
            log.warning("decoded-data cache %s does not match its source; decoding again", path)
        except Exception as exc:  # a truncated or foreign file: rebuild it, never trust it
            log.warning("decoded-data cache %s is damaged (%s); decoding again", path, type(exc).__name__)
    out = decode()
    buf = io.BytesIO()
    torch.save(out, buf)
    atomic_write_bytes(path, buf.getvalue())
    log.info("decoded data cached at %s", path)
    return out
