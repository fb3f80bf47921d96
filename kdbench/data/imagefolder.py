"""ImageFolder trees of small same-size images, and CIFAR-10 shipped as JPEGs.

``imagefolder``: any ``root/train/<class>/*`` + ``root/<test_split>/<class>/*``
tree. ``cifar10-jpg``: the CIFAR-10 JPEG archive (``cifar10-jpg.tar.gz``,
ImageFolder layout inside), extracted once into the cache; its path comes from
``data.source.archive``.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from omegaconf import DictConfig

from ..errors import KDBenchError
from ..config import digest
from ..records import file_sha256
from .base import DataBundle
from .registry import register_dataset
from .small import cached_decode, decode_files, list_tree, small_image_bundle, tree_fingerprint

CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def _bundle_from_tree(cfg: DictConfig, root: Path, name: str, source_key: str | None = None,
                      mean=None, std=None) -> DataBundle:
    size = int(cfg.image_size)
    tr_files, classes = list_tree(root / "train", None, cfg.get("max_per_class"))
    te_files, _ = list_tree(root / str(cfg.test_split), classes, cfg.get("max_test_per_class"))
    key_src = source_key or tree_fingerprint(tr_files + te_files)
    key = f"{name}-{digest([key_src, size, cfg.get('max_per_class'), cfg.get('max_test_per_class'), str(cfg.test_split)])[:16]}"

    def decode() -> dict:
        tr_x, tr_y = decode_files(tr_files, size)
        te_x, te_y = decode_files(te_files, size)
        return {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x, "test_labels": te_y,
                "classes": classes}

    d = cached_decode((cfg.get("source") or {}).get("cache_dir"), key, decode)
    return small_image_bundle(cfg, name, d["train_images"], d["train_labels"], d["test_images"], d["test_labels"],
                              list(d["classes"]), mean, std)


@register_dataset("imagefolder", description="any ImageFolder tree of small same-size images (train/ + test/), held on the device")
def build_imagefolder(cfg: DictConfig) -> DataBundle:
    src = cfg.get("source") or {}
    if not src.get("root"):
        raise KDBenchError("data.source.root is not set: point it at a folder holding train/ and "
                           f"{cfg.get('test_split', 'test')}/ (e.g. data.source.root=/path/to/images)")
    root = Path(str(src.root)).expanduser()
    if not root.is_dir():
        raise KDBenchError(f"data directory {root} does not exist: expected {root}/train/<class>/* and "
                           f"{root}/{cfg.test_split}/<class>/* (set data.source.root)")
    return _bundle_from_tree(cfg, root, str(cfg.name))


@register_dataset("cifar10-jpg", num_classes=10, channels=3, train_per_class=(5000,) * 10, description="CIFAR-10 as 32x32 JPEGs (ImageFolder archive), official train/test split")
def build_cifar10_jpg(cfg: DictConfig) -> DataBundle:
    src = cfg.get("source") or {}
    archive = Path(str(src.archive)).expanduser() if src.get("archive") else None
    if archive is None or not archive.is_file():
        raise KDBenchError(f"CIFAR-10 JPEG archive not found at {archive}: set data.source.archive=/path/to/cifar10-jpg.tar.gz "
                           "(an archive holding cifar10-jpg/train/<class>/*.jpg and cifar10-jpg/test/<class>/*.jpg)")
    checksum = file_sha256(archive)
    if src.get("sha256") and checksum != src.sha256:
        raise KDBenchError(f"{archive} has sha256 {checksum}, expected {src.sha256}")
    out = Path(str(src.extract_dir)).expanduser() / checksum[:16]
    root = out / "cifar10-jpg"
    if not (root / "train").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths and links out of the folder (Python >= 3.11.4).
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(out, **kw)
        if not (root / "train").is_dir():
            raise KDBenchError(f"{archive} does not hold cifar10-jpg/train/: is it the CIFAR-10 JPEG archive?")
    return _bundle_from_tree(cfg, root, "cifar10-jpg", source_key=checksum, mean=CIFAR10_MEAN, std=CIFAR10_STD)
