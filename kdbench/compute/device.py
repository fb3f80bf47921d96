"""Which device a run trains on, and the precision that follows from it."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from kdbench.compute import distributed
from kdbench.core.errors import KDBenchError
from kdbench.experiment.identity import resolve_precision
from kdbench.experiment.records import environment


def resolve_device(name: str) -> torch.device:
    """``auto``: this rank's GPU where CUDA is available, else the CPU; a named device must exist here."""
    if name == "auto":
        d = distributed.info()
        if torch.cuda.is_available():
            return torch.device("cuda", d.local_rank) if d else torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KDBenchError(f"engine.device={name} but CUDA is not available here; use engine.device=cpu or auto")
    return dev


def run_precision(cfg: DictConfig) -> str:
    """The precision a run trains in on the device it resolves to (part of its identity)."""
    return resolve_precision(str(cfg.protocol.precision), resolve_device(str(cfg.engine.device)).type)


def run_environment(device: torch.device | None = None) -> dict[str, Any]:
    """The environment a record stores: packages and hardware, with torch's threads and the GPU's name."""
    gpu = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else None
    return environment(str(device) if device is not None else None, gpu, torch.get_num_threads())
