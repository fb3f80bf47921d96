"""The teacher cache: each teacher is trained once and stored with its provenance.

An entry lives at ``<paths.teachers>/<hash>/`` with ``model.pt`` (state dict)
and ``teacher.json`` (accuracy, config, sha256 of the weights, environment).
The hash covers exactly what determines the teacher: dataset config (minus
paths), architecture, teacher schedule and teacher seed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .config import digest, semantic_dict
from .data import DataBundle
from .engine import fit
from .errors import KDBenchError
from .method import MethodContext
from .models import KDModel, count_parameters, create_model
from .records import SCHEMA_VERSION, environment, git_state, now_iso, read_json, write_json_atomic
from .seeding import derive_seed

log = logging.getLogger(__name__)

DATA_PATH_KEYS = ("root", "download", "cache_dir")


@dataclass(frozen=True)
class TeacherEntry:
    hash: str
    path: Path
    meta: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def test_top1(self) -> float:
        return self.meta["metrics"]["test_top1"]


def teacher_spec(cfg: DictConfig) -> dict[str, Any]:
    """What identifies the teacher a run needs."""
    return {
        "dataset": semantic_dict(cfg.data, drop=DATA_PATH_KEYS),
        "arch": str(cfg.pair.teacher),
        "schedule": OmegaConf.to_container(cfg.teacher.schedule, resolve=True),
        "seed": int(cfg.teacher.seed),
    }


def teacher_hash(cfg: DictConfig) -> str:
    return digest(teacher_spec(cfg))[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_model(arch: str, data_info, seed: int, purpose: str) -> KDModel:
    """A model initialised from a seed derived from (seed, purpose) alone.

    Built on the CPU inside a forked RNG, so the initialisation is the same on
    every device and whatever ran before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, purpose))
        return create_model(arch, num_classes=data_info.num_classes, in_channels=data_info.input_shape[0])


def find_teacher(cfg: DictConfig) -> TeacherEntry | None:
    path = Path(cfg.paths.teachers) / teacher_hash(cfg)
    return _entry(path) if (path / "teacher.json").exists() else None


def _entry(path: Path) -> TeacherEntry:
    return TeacherEntry(path.name, path, read_json(path / "teacher.json"))


def list_teachers(root: Path) -> list[TeacherEntry]:
    root = Path(root)
    if not root.is_dir():
        return []
    return [_entry(p) for p in sorted(root.iterdir()) if (p / "teacher.json").exists()]


def get_teacher(root: Path, prefix: str) -> TeacherEntry:
    """The cached teacher whose hash starts with ``prefix``."""
    matches = [t for t in list_teachers(root) if t.hash.startswith(prefix)]
    if len(matches) != 1:
        valid = ", ".join(t.hash for t in list_teachers(root)) or "(cache is empty)"
        what = "no" if not matches else "more than one"
        raise KDBenchError(f"{what} cached teacher matches {prefix!r} in {root}; cached: {valid}")
    return matches[0]


def ensure_teacher(cfg: DictConfig, data: DataBundle) -> TeacherEntry:
    """The cached teacher for ``cfg``, training it first if the cache lacks it."""
    found = find_teacher(cfg)
    if found is not None:
        log.info("teacher %s (%s) from cache: test top-1 %.2f", found.hash, found.arch, found.test_top1)
        return found
    return train_teacher(cfg, data)


def train_teacher(cfg: DictConfig, data: DataBundle) -> TeacherEntry:
    from .method import create_method

    key = teacher_hash(cfg)
    final = Path(cfg.paths.teachers) / key
    partial = final.with_name(key + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    arch, seed = str(cfg.pair.teacher), int(cfg.teacher.seed)
    log.info("training teacher %s on %s (seed %d, %d epochs) -> %s", arch, data.info.name, seed,
             int(cfg.teacher.schedule.epochs), final)
    model = build_model(arch, data.info, seed, "student-init")
    device = data.train.images.device
    ctx = MethodContext(data=data.info, student_spec=model.feature_spec(data.info.input_shape),
                        teacher_spec=None, seed=seed)
    trainer = create_method({"name": "vanilla"}, model, None, ctx).to(device)
    t0 = time.time()
    # A partial teacher's checkpoint is always resumed: it is ours, not the user's run.
    result = fit(trainer, data, cfg.teacher.schedule, cfg.engine, seed, partial, resume=True, label="teacher ")
    weights = partial / "model.pt"
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    last, sel = result.last["student"], result.selected
    meta = {
        "schema_version": SCHEMA_VERSION,
        "hash": key,
        "source": "trained",
        "arch": arch,
        "dataset": data.info.name,
        "num_classes": data.info.num_classes,
        "input_shape": list(data.info.input_shape),
        "spec": teacher_spec(cfg),
        "metrics": {"epoch": result.last["epoch"], "test_top1": last["test"]["top1"], "test_top5": last["test"]["top5"],
                    "val_top1": last["val"]["top1"] if last["val"] else None},
        "selected": sel,
        "params": count_parameters(model),
        "weights": {"file": "model.pt", "sha256": file_sha256(weights)},
        "train_time_s": result.train_time_s,
        "wall_time_s": time.time() - t0,
        "images_per_s": result.images_per_s,
        "created": now_iso(),
        "git": git_state(),
        "environment": environment(device),
        "engine": {"amp": cfg.engine.amp},
        "history": result.history,
    }
    write_json_atomic(partial / "teacher.json", meta)
    (partial / "checkpoint.pt").unlink(missing_ok=True)
    try:
        os.rename(partial, final)
    except OSError:
        # Another worker finished the same teacher first; theirs is equivalent.
        shutil.rmtree(partial, ignore_errors=True)
    entry = _entry(final)
    log.info("teacher %s trained: test top-1 %.2f", entry.hash, entry.test_top1)
    return entry


def load_teacher(entry: TeacherEntry, device: torch.device) -> KDModel:
    """Rebuild the cached teacher, verifying its checksum; frozen and in eval mode."""
    weights = entry.path / entry.meta["weights"]["file"]
    actual = file_sha256(weights)
    if actual != entry.meta["weights"]["sha256"]:
        raise KDBenchError(f"teacher weights {weights} fail their checksum (expected "
                           f"{entry.meta['weights']['sha256'][:12]}..., got {actual[:12]}...): delete {entry.path} "
                           "to retrain it")
    in_ch = entry.meta["input_shape"][0]
    model = create_model(entry.arch, num_classes=entry.meta["num_classes"], in_channels=in_ch)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KDBenchError(f"teacher weights {weights} do not match architecture {entry.arch!r}: "
                           f"missing keys {missing}, unexpected keys {unexpected}")
    model.requires_grad_(False)
    return model.to(device).eval()
