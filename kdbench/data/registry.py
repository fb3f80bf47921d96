"""The dataset registry: a builder ``fn(data_cfg) -> DataBundle`` per name."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from omegaconf import DictConfig

from ..registry import Registry
from .base import DataBundle


def _load() -> None:
    for mod in ("digits", "imagefolder", "cifar", "imagenet"):
        importlib.import_module(f"kdbench.data.{mod}")


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


def build_dataset(cfg: DictConfig) -> DataBundle:
    """Build the dataset named by ``cfg.name`` (the resolved ``data`` config node)."""
    return DATASETS.get(cfg.name).obj(cfg)
