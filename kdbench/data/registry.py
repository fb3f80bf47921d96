"""The dataset registry: a builder ``fn(data_cfg) -> DataBundle`` per name."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from omegaconf import DictConfig

from kdbench.core.registry import Registry, load_plugins

from .base import DataBundle, held_out_count


def _load() -> None:
    for mod in ("digits", "imagefolder", "cifar", "imagenet"):
        importlib.import_module(f"kdbench.data.{mod}")
    load_plugins("kdbench.datasets")


DATASETS: Registry[Callable[[DictConfig], DataBundle]] = Registry("dataset", loader=_load)


def register_dataset(name: str, description: str = "", **meta: Any):
    return DATASETS.register(name, description, **meta)


def static_shape(cfg: DictConfig) -> tuple[int, tuple[int, int, int]] | None:
    """(classes, input shape) of a dataset known without loading it (registry metadata), else None.

    For commands that build models but need no data: ``show method``, ``plan``, ``teacher import``.
    """
    meta = DATASETS.get(cfg.name).meta
    if "num_classes" not in meta:
        return None  # e.g. an arbitrary ImageFolder tree: its classes are its folders
    size = int(cfg.get("image_size") or meta["image_size"])
    return int(meta["num_classes"]), (int(meta["channels"]), size, size)


def static_train_size(cfg: DictConfig) -> int | None:
    """Training-split size (after the validation carve) known without loading the data, else None.

    Uses the per-class counts of the official training set in the registry
    metadata (``train_per_class``), ``data.max_per_class`` and the same
    stratified rounding as the splits themselves; datasets with no official
    test split carve ``data.test_fraction`` first.
    """
    per_class = DATASETS.get(cfg.name).meta.get("train_per_class")
    if per_class is None:
        return None
    cap = cfg.get("max_per_class")
    total = 0
    for n in per_class:
        n = min(n, int(cap)) if cap else n
        if cfg.get("test_fraction") is not None:
            n -= held_out_count(n, float(cfg.test_fraction))
        total += n - held_out_count(n, float(cfg.val_fraction))
    return total


def build_dataset(cfg: DictConfig) -> DataBundle:
    """Build the dataset named by ``cfg.name`` (the resolved ``data`` config node)."""
    return DATASETS.get(cfg.name).obj(cfg)


def load_data(cfg: Any) -> DataBundle:
    """The dataset a run's config names (``cfg.data``), on the device it trains on (``cfg.engine.device``)."""
    from kdbench.compute.device import resolve_device

    return build_dataset(cfg.data).to(resolve_device(str(cfg.engine.device)))
