"""The teacher cache, write side: each teacher is trained (or imported) once and stored with its provenance.

A teacher is a vanilla run of its architecture; a teacher assistant (TAKD) a distilled run from its own
teacher. Where entries live and how they are found: :mod:`kdbench.orchestration.teacher_cache`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from kdbench.compute.device import run_environment
from kdbench.core.errors import KDBenchError
from kdbench.core.hashing import digest, file_sha256
from kdbench.core.locks import file_lock
from kdbench.data import DataBundle
from kdbench.experiment.identity import assistant_training_config, data_spec, teacher_config
from kdbench.experiment.records import git_state, now_iso, write_json_atomic
from kdbench.experiment.schema import SCHEMA_VERSION, VANILLA
from kdbench.models import KDModel, count_parameters, create_model, seeded_model
from kdbench.orchestration.teacher_cache import (
    TeacherEntry,
    check_finite,
    check_outputs_finite,
    find_teacher,
    load_state_strict,
    load_teacher,
    read_entry,
    recipe_key,
    teacher_recipe,
)
from kdbench.training.engine import fit
from kdbench.training.signals import RunDiverged

log = logging.getLogger(__name__)

def ensure_teacher(cfg: DictConfig, data: DataBundle) -> TeacherEntry:
    """The cached teacher for ``cfg``, training it first if the cache lacks it.

    A file lock per teacher makes parallel workers wait for the one that
    trains it instead of training duplicates.
    """
    from kdbench.compute import distributed as ddp

    found = find_teacher(cfg)
    if found is None and ddp.world() > 1:  # one torchrun job: its processes train the teacher together
        return train_teacher(cfg, data)
    if found is None:
        lock = Path(cfg.paths.teachers) / f"{recipe_key(cfg)}.lock"
        with file_lock(lock):
            found = find_teacher(cfg)  # another worker may have finished it while we waited
            if found is None:
                return train_teacher(cfg, data)
    acc = f"{found.test_top1:.2f}" if found.test_top1 is not None else "n/a"
    log.info("teacher %s (%s) from cache: test top-1 %s", found.hash, found.arch, acc)
    return found


def train_teacher(cfg: DictConfig, data: DataBundle) -> TeacherEntry:
    """A teacher is a vanilla run of its architecture (built by the one factory), stored in the cache; a
    teacher assistant (TAKD) is a distilled run from its own teacher, which is found or trained first."""
    from kdbench.compute import distributed as ddp

    cfg = teacher_config(cfg)
    key = recipe_key(cfg)
    final = Path(cfg.paths.teachers) / key
    partial = final.with_name(key + ".partial")
    arch, seed = str(cfg.pair.teacher), int(cfg.teacher.seed)
    upper = assistant_training_config(cfg) if cfg.teacher.get("assistant") is not None else None
    upper_entry = ensure_teacher(upper, data) if upper is not None else None
    partial.mkdir(parents=True, exist_ok=True)
    log.info("training %s %s on %s (seed %d, %d epochs) -> %s", "teacher" if upper is None else "assistant", arch,
             data.info.name, seed, int(cfg.teacher.schedule.epochs), final)
    model = seeded_model(arch, data.info.num_classes, data.info.input_shape[0], seed, "student-init")
    trainer = _trainer(cfg, data, model, upper, upper_entry)
    t0 = time.time()
    # A partial teacher's checkpoint is always resumed: it is ours, not the user's run.
    try:
        result = fit(trainer, data, cfg.teacher.schedule, cfg.engine, seed, partial, resume=True, label="teacher ",
                     precision=str(cfg.protocol.precision))
    except RunDiverged as exc:
        shutil.rmtree(partial, ignore_errors=True)  # resuming would diverge again
        raise KDBenchError(f"the {'teacher' if upper is None else 'assistant'} {arch} (seed {seed}) diverged while "
                           f"training: {exc}; nothing was cached. Lower its learning rate (its schedule's lr is "
                           f"{float(cfg.teacher.schedule.lr):g}: teacher.schedule.lr) or check the data") from None
    if not ddp.is_main():  # rank 0 stores the teacher; the others wait, then read it
        ddp.barrier()
        return read_entry(final)
    weights = partial / "model.pt"
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    meta = {"schema_version": SCHEMA_VERSION, "hash": key, "source": "trained" if upper is None else "distilled",
            "distilled_from": None if upper is None else {"teacher": upper_entry.hash,
                                                          "method": str(upper.method.name)},
            **_trained_meta(cfg, data, model, weights, result), "wall_time_s": time.time() - t0}
    meta = {k: meta[k] for k in _META_ORDER}
    write_json_atomic(partial / "teacher.json", meta)
    (partial / "checkpoint.pt").unlink(missing_ok=True)
    try:
        os.rename(partial, final)
    except OSError:
        # Another worker finished the same teacher first; theirs is equivalent.
        shutil.rmtree(partial, ignore_errors=True)
    ddp.barrier()
    entry = read_entry(final)
    log.info("teacher %s trained: test top-1 %.2f", entry.hash, entry.test_top1)
    return entry


# teacher.json's fields in their written order
_META_ORDER = ("schema_version", "hash", "source", "distilled_from", "arch", "dataset", "num_classes", "input_shape",
               "spec", "metrics", "selected", "params", "weights", "train_time_s", "wall_time_s", "images_per_s",
               "created", "git", "environment", "engine", "history")


def _trainer(cfg: DictConfig, data: DataBundle, model: KDModel, upper: DictConfig | None,
             upper_entry: TeacherEntry | None):
    """The method that trains a teacher: vanilla, or the assistant's link method from its own teacher."""
    from kdbench.training.method import build_method

    arch, seed = str(cfg.pair.teacher), int(cfg.teacher.seed)
    if upper is None:
        return build_method({"name": VANILLA}, model, data.info, seed, student_arch=arch).to(data.device)
    own_teacher = load_teacher(upper_entry, data.device)
    return build_method(upper.method, model, data.info, seed, teacher=own_teacher, student_arch=arch,
                        teacher_arch=upper_entry.arch, train_labels=data.train_labels(),
                        epochs=int(cfg.teacher.schedule.epochs)).to(data.device)


def _trained_meta(cfg: DictConfig, data: DataBundle, model: KDModel, weights: Path, result) -> dict[str, Any]:
    """What a trained teacher's entry says about its data, accuracy, weights, cost and environment."""
    last = result.last["student"]
    return {
        "arch": str(cfg.pair.teacher), "dataset": data.info.name, "num_classes": data.info.num_classes,
        "input_shape": list(data.info.input_shape), "spec": teacher_recipe(cfg),
        "metrics": {"epoch": result.last["epoch"], "test_top1": last["test"]["top1"], "test_top5": last["test"]["top5"],
                    "val_top1": last["val"]["top1"] if last["val"] else None},
        "selected": result.selected, "params": count_parameters(model),
        "weights": {"file": "model.pt", "sha256": file_sha256(weights)},
        "train_time_s": result.train_time_s, "images_per_s": result.images_per_s, "created": now_iso(),
        "git": git_state(), "environment": run_environment(data.device), "engine": {"amp": result.fast_path["amp"]},
        "history": result.history,
    }


def import_teacher(path: Path, arch: str, cfg: DictConfig, data: DataBundle | None) -> TeacherEntry:
    """Add a published checkpoint (a dict with a ``model`` state dict, or a bare state dict) to the cache.

    Provenance records the source file's name and sha256; accuracy is measured
    on our test split when the data is available.
    """
    path = Path(path)
    if not path.is_file():
        raise KDBenchError(f"no checkpoint file at {path}")
    source_sha = file_sha256(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or not a torch file; torch's advice to unpickle is never shown
        raise KDBenchError(f"{path} is not a checkpoint of tensors ({type(exc).__name__}): kdbench loads weights "
                           "with torch.load(weights_only=True) and never runs code from a file") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KDBenchError(f"{path} holds no state dict (expected a dict with a 'model' entry, or a state dict)")
    if data is not None:
        num_classes, shape = data.info.num_classes, list(data.info.input_shape)
    else:  # --no-eval: the classes and the input shape (its channels too) from the dataset named
        num_classes, shape = _static_shape(cfg)
    model = create_model(arch, num_classes=num_classes, in_channels=shape[0])
    check_finite(state, str(path))
    load_state_strict(model, state, str(path), arch)
    check_outputs_finite(model, shape, str(path))
    key = digest({"imported": source_sha, "arch": arch, "dataset": cfg.data.name})[:16]
    root = Path(cfg.paths.teachers)
    # Locked like training (two imports of one checkpoint: one writes, the other finds it), staged in a
    # folder of this process's own, and published by one rename: an entry is whole or absent.
    with file_lock(root / f"{key}.lock"):
        final = root / key
        if (final / "teacher.json").exists():
            return read_entry(final)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}.", suffix=".partial", dir=root))
        try:
            meta = _imported_meta(path, key, arch, cfg, data, model, staging, source_sha, num_classes, shape)
            write_json_atomic(staging / "teacher.json", meta)
            os.rename(staging, final)
        except OSError as exc:
            raise KDBenchError(f"could not store teacher {key} in {root}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return read_entry(final)


def _imported_meta(path: Path, key: str, arch: str, cfg: DictConfig, data: DataBundle | None, model: KDModel,
                   staging: Path, source_sha: str, num_classes: int, shape: list[int]) -> dict[str, Any]:
    """An imported teacher's weights written into ``staging``, and its teacher.json (measured on our test
    split when the data is there)."""
    from kdbench.training.metrics import evaluate

    weights = staging / "model.pt"
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    metrics: dict[str, Any] = {"epoch": None, "test_top1": None, "test_top5": None, "val_top1": None}
    if data is not None:
        model = model.to(data.device)
        test = evaluate(model, data, "test", int(cfg.engine.eval_batch_size), lambda: contextlib.nullcontext(),
                        False)
        metrics.update(test_top1=test["top1"], test_top5=test["top5"])
    return {
        "schema_version": SCHEMA_VERSION, "hash": key, "source": "imported", "arch": arch,
        "dataset": str(cfg.data.name), "num_classes": num_classes, "input_shape": shape,
        "spec": {"imported_from": path.name, "source_sha256": source_sha, "arch": arch, "seed": None,
                 "dataset": data_spec(cfg.data), "schedule": {"epochs": None}},
        "metrics": metrics, "selected": None, "params": count_parameters(model),
        "weights": {"file": "model.pt", "sha256": file_sha256(weights)},
        "created": now_iso(), "git": git_state(), "environment": run_environment(None),
    }


def _static_shape(cfg: DictConfig) -> tuple[int, list[int]]:
    from kdbench.data import static_shape

    known = static_shape(cfg.data)
    if known is None:
        raise KDBenchError(f"cannot tell the classes and input shape of dataset {cfg.data.name!r} without loading "
                           "it: import with the data present (without --no-eval)")
    return known[0], list(known[1])
