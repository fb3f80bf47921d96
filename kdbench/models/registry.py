"""The model registry and factory."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from kdbench.core.registry import Registry, load_plugins

from .base import KDModel


def _load() -> None:
    # Model modules register on import; list them here so lookups see all.
    for mod in ("digits", "cifar", "timm_models"):
        importlib.import_module(f"kdbench.models.{mod}")
    load_plugins("kdbench.models")


MODELS: Registry[Callable[..., KDModel]] = Registry("model", loader=_load)


def register_model(name: str, description: str = "", **meta: Any):
    """Decorator for a factory ``fn(num_classes, in_channels) -> KDModel``."""
    return MODELS.register(name, description, **meta)


# Families built by architecture name after a prefix (``timm/<arch>``): prefix -> fn(arch, num_classes,
# in_channels). A module registers its prefix on import, like any model.
PREFIXED: dict[str, Callable[[str, int, int], KDModel]] = {}


def register_prefix(prefix: str, factory: Callable[[str, int, int], KDModel]) -> None:
    """Every ``prefix + arch`` builds ``factory(arch, num_classes, in_channels)`` (timm's models)."""
    PREFIXED[prefix] = factory


def _prefixed(name: str) -> tuple[Callable[[str, int, int], KDModel], str] | None:
    MODELS.names()  # the loader imports the modules that register prefixes
    for prefix, factory in PREFIXED.items():
        if name.startswith(prefix):
            return factory, name[len(prefix):]
    return None


def check_model_name(name: str) -> None:
    """Raise the registry's error (listing valid names) unless ``name`` can be built."""
    if _prefixed(name) is None:
        MODELS.get(name)


def seeded_model(name: str, num_classes: int, in_channels: int, seed: int, purpose: str = "student-init") -> KDModel:
    """A model initialised from a seed derived from (seed, purpose) alone.

    Built on the CPU inside a forked RNG, so the initialisation is the same on every device and
    whatever ran before: for a seed, every method's student starts from the same weights.
    """
    import torch

    from kdbench.compute.seeding import derive_seed

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, purpose))
        return create_model(name, num_classes=num_classes, in_channels=in_channels)


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> KDModel:
    """Build a registered model by name (one obvious way, as in timm); ``timm/<arch>`` builds any timm model."""
    found = _prefixed(name)
    if found is not None:
        factory, arch = found
        return factory(arch, num_classes, in_channels)
    return MODELS.get(name).obj(num_classes=num_classes, in_channels=in_channels, **kwargs)
