"""ImageFolder trees of small same-size images, and CIFAR-10 shipped as JPEGs.

``imagefolder``: any ``root/train/<class>/*`` + ``root/<test_split>/<class>/*``
tree. ``cifar10-jpg``: the CIFAR-10 JPEG archive (``cifar10-jpg.tar.gz``,
ImageFolder layout inside), extracted once into the cache; its path comes from
``data.source.archive``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

from omegaconf import DictConfig

from kdbench.core.errors import KDBenchError
from kdbench.core.hashing import digest, file_sha256
from kdbench.core.locks import file_lock

from .base import DataBundle
from .registry import register_dataset
from .small import IMAGE_SUFFIXES, cached_decode, decode_files, list_tree, small_image_bundle, tree_fingerprint

log = logging.getLogger(__name__)

CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def _bundle_from_tree(cfg: DictConfig, root: Path, name: str, source_key: str | None = None,
                      mean=None, std=None) -> DataBundle:
    size = int(cfg.image_size)
    tr_files, classes = list_tree(root / "train", None, cfg.get("max_per_class"))
    te_files, _ = list_tree(root / str(cfg.test_split), classes, cfg.get("max_test_per_class"))
    key_src = source_key or tree_fingerprint(tr_files + te_files)
    parts = [key_src, size, cfg.get("max_per_class"), cfg.get("max_test_per_class"), str(cfg.test_split)]
    key = f"{name}-{digest(parts)[:16]}"

    def decode() -> dict:
        tr_x, tr_y = decode_files(tr_files, size)
        te_x, te_y = decode_files(te_files, size)
        return {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x, "test_labels": te_y,
                "classes": classes}

    def complete(d: dict) -> bool:
        return (len(d["train_labels"]) == len(tr_files) and len(d["test_labels"]) == len(te_files)
                and list(d["classes"]) == list(classes))

    d = cached_decode((cfg.get("source") or {}).get("cache_dir"), key, decode, complete)
    return small_image_bundle(cfg, name, d["train_images"], d["train_labels"], d["test_images"], d["test_labels"],
                              list(d["classes"]), mean, std)


@register_dataset("imagefolder",
                  description="any ImageFolder tree of small same-size images (train/ + test/), held on the device")
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


@register_dataset("cifar10-jpg", num_classes=10, channels=3, train_per_class=(5000,) * 10,
                  description="CIFAR-10 as 32x32 JPEGs (ImageFolder archive), official train/test split")
def build_cifar10_jpg(cfg: DictConfig) -> DataBundle:
    src = cfg.get("source") or {}
    archive = Path(str(src.archive)).expanduser() if src.get("archive") else None
    if archive is None or not archive.is_file():
        raise KDBenchError(f"CIFAR-10 JPEG archive not found at {archive}: "
                           "set data.source.archive=/path/to/cifar10-jpg.tar.gz "
                           "(an archive holding cifar10-jpg/train/<class>/*.jpg and cifar10-jpg/test/<class>/*.jpg)")
    checksum = file_sha256(archive)
    if src.get("sha256") and checksum != src.sha256:
        raise KDBenchError(f"{archive} has sha256 {checksum}, expected {src.sha256}")
    root = extract_verified(archive, Path(str(src.extract_dir)).expanduser() / checksum[:16], "cifar10-jpg")
    return _bundle_from_tree(cfg, root, "cifar10-jpg", source_key=checksum, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def _image_counts(names: list[str], top: str) -> dict[str, int]:
    """Images per ``split/class`` among archive member names or tree paths under ``top``."""
    counts: dict[str, int] = {}
    for name in names:
        parts = Path(name).parts
        if len(parts) == 4 and parts[0] == top and Path(name).suffix.lower() in IMAGE_SUFFIXES:
            key = f"{parts[1]}/{parts[2]}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _tree_counts(out: Path, top: str) -> dict[str, int]:
    return _image_counts([str(p.relative_to(out)) for p in (out / top).glob("*/*/*")], top)


def extract_verified(archive: Path, out: Path, top: str) -> Path:
    """``archive`` extracted to ``out/top``, complete: images per split and class as the archive lists them.

    Extraction goes to a temporary folder that is renamed into place only after the count check,
    and ``out/.complete.json`` records the counts; a tree without it, or whose counts no longer
    match (a killed extraction, files deleted since), is extracted again.
    """
    marker = out / ".complete.json"
    if marker.is_file() and not any(out.parent.glob(f"{out.name}.partial-*")):  # else: clear those first, locked
        try:
            if json.loads(marker.read_text()) == _tree_counts(out, top):
                return out / top
        except (OSError, ValueError):
            pass
        log.warning("%s is incomplete or damaged; extracting %s again", out, archive)
    with file_lock(out.with_name(out.name + ".lock")):
        # Holding the lock, no other extraction of this archive runs: any partial folder is a killed one's.
        for stale in out.parent.glob(f"{out.name}.partial-*") if out.parent.is_dir() else ():
            shutil.rmtree(stale, ignore_errors=True)
        if marker.is_file() and json.loads(marker.read_text()) == _tree_counts(out, top):
            return out / top  # another process finished it while we waited
        tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(archive) as tar:
                expected = _image_counts([m.name for m in tar.getmembers() if m.isfile()], top)
                # The "data" filter refuses absolute paths and links out of the folder (Python >= 3.11.4).
                kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, **kw)
        except (tarfile.TarError, OSError, EOFError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise KDBenchError(f"{archive} could not be extracted ({exc}): is it complete?") from None
        got = _tree_counts(tmp, top)
        if not any(k.startswith("train/") for k in expected) or got != expected:
            shutil.rmtree(tmp, ignore_errors=True)
            raise KDBenchError(f"{archive} does not hold {top}/train/<class>/<image> as listed, or its extraction "
                               "is incomplete: is it the CIFAR-10 JPEG archive?")
        (tmp / ".complete.json").write_text(json.dumps(expected, sort_keys=True))
        shutil.rmtree(out, ignore_errors=True)  # a damaged earlier extraction
        os.rename(tmp, out)
    return out / top
