"""The teacher cache: each teacher is trained once and stored with its provenance.

An entry lives at ``<paths.teachers>/<hash>/`` with ``model.pt`` (state dict)
and ``teacher.json`` (accuracy, config, sha256 of the weights, environment).
The hash covers exactly what determines the teacher: dataset config (minus
paths), architecture, teacher schedule and teacher seed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from kdbench.compute.device import run_environment
from kdbench.core.errors import KDBenchError
from kdbench.core.hashing import digest, file_sha256
from kdbench.data import DataBundle
from kdbench.experiment.identity import assistant_origin, assistant_training_config, schedule_spec, teacher_config
from kdbench.experiment.records import git_state, now_iso, read_json, write_json_atomic
from kdbench.experiment.schema import SCHEMA_VERSION, VANILLA
from kdbench.models import KDModel, count_parameters, create_model, seeded_model
from kdbench.training.engine import fit

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TeacherEntry:
    hash: str
    path: Path
    meta: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    @property
    def test_top1(self) -> float | None:
        return self.meta["metrics"]["test_top1"]


def data_spec(data: DictConfig) -> dict[str, Any]:
    """The dataset as an experiment sees it: everything but ``data.source`` (where the files live)."""
    d = OmegaConf.to_container(data, resolve=True)
    d.pop("source", None)
    return d


def teacher_spec(cfg: DictConfig) -> dict[str, Any]:
    """The recipe of the teacher a run needs: its cache key (the weights' sha256 identifies the result)."""
    cfg = teacher_config(cfg)
    spec = {
        "dataset": data_spec(cfg.data),
        "arch": str(cfg.pair.teacher),
        "schedule": schedule_spec(cfg.teacher.schedule),
        "seed": int(cfg.teacher.seed),
    }
    origin = assistant_origin(cfg)
    if origin is not None:  # a teacher assistant: distilled, so its own teacher is part of what it is
        spec["distilled"] = origin
    return spec


def teacher_hash(cfg: DictConfig) -> str:
    return digest(teacher_spec(cfg))[:16]


def teacher_key(cfg: DictConfig) -> str:
    """The cache entry ``cfg``'s teacher is (or will be) stored under: its pinned hash, else its recipe's."""
    t = teacher_config(cfg)
    return str(t.teacher.hash) if t.teacher.get("hash") else teacher_hash(t)


def find_teacher(cfg: DictConfig) -> TeacherEntry | None:
    """The cached teacher ``cfg`` names: ``teacher.hash`` if set, else the one its spec hashes to."""
    cfg = teacher_config(cfg)
    if cfg.teacher.get("hash"):
        entry = get_teacher(Path(cfg.paths.teachers), str(cfg.teacher.hash))
        if entry.arch != cfg.pair.teacher or entry.meta["dataset"] != cfg.data.name:
            raise KDBenchError(f"teacher.hash={cfg.teacher.hash} is a {entry.arch} on {entry.meta['dataset']}, "
                               f"but pair {cfg.pair.name} on {cfg.data.name} needs a {cfg.pair.teacher}")
        return entry
    path = Path(cfg.paths.teachers) / teacher_hash(cfg)
    return _entry(path) if (path / "teacher.json").exists() else None


def _entry(path: Path) -> TeacherEntry:
    try:
        meta = read_json(path / "teacher.json")
        if not isinstance(meta, dict) or not {"arch", "weights", "metrics"} <= set(meta):
            raise ValueError("fields missing")
    except (OSError, ValueError) as exc:
        raise KDBenchError(f"{path / 'teacher.json'} is damaged ({exc}): delete {path} to retrain this teacher"
                           ) from None
    return TeacherEntry(path.name, path, meta)


def list_teachers(root: Path) -> list[TeacherEntry]:
    """Every readable cache entry; a damaged one is reported and skipped, never a crash of the listing."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if (p / "teacher.json").exists():
            try:
                out.append(_entry(p))
            except KDBenchError as exc:
                log.warning("%s", exc)
    return out


def imported_teacher(cfg: DictConfig) -> str:
    """The cache key of the one imported checkpoint of ``cfg``'s teacher architecture for its dataset (a suite's
    ``teachers: imported``): none or several is an error that says what to do."""
    from kdbench.experiment.pairs import PAIRS

    dataset = str(cfg.data.name)
    imported = [t for t in list_teachers(Path(cfg.paths.teachers))
                if t.meta.get("source") == "imported" and t.meta.get("dataset") == dataset]
    arch = str(cfg.pair.teacher)
    found = [t for t in imported if t.arch == arch]
    if len(found) == 1:
        return found[0].hash
    if not found:  # name every import the suite still needs, not just this pair's
        have = {t.arch for t in imported}
        need = dict.fromkeys(a for p in cfg.suite.pairs
                             if p in PAIRS and (a := PAIRS.get(p).meta["teacher"]) not in have)
        raise KDBenchError(f"the suite's pairs distil from imported teachers (suite.teachers=imported), but the "
                           f"cache {cfg.paths.teachers} holds no imported {', '.join(need)} for {dataset}: "
                           + "; ".join(f"kdbench teacher import CHECKPOINT --arch {a} --dataset {dataset}"
                                       for a in need))
    raise KDBenchError(f"the cache holds {len(found)} imported {arch} teachers for {dataset} "
                       f"({', '.join(t.hash for t in found)}): pin one for pair {cfg.pair.name} in the suite "
                       f"(teachers: {{{cfg.pair.name}: HASH}})")


def get_teacher(root: Path, prefix: str) -> TeacherEntry:
    """The cached teacher whose hash starts with ``prefix``."""
    matches = [t for t in list_teachers(root) if t.hash.startswith(prefix)]
    if len(matches) != 1:
        valid = ", ".join(t.hash for t in list_teachers(root)) or "(cache is empty)"
        what = "no" if not matches else "more than one"
        raise KDBenchError(f"{what} cached teacher matches {prefix!r} in {root}; cached: {valid}")
    return matches[0]


def ensure_teacher(cfg: DictConfig, data: DataBundle) -> TeacherEntry:
    """The cached teacher for ``cfg``, training it first if the cache lacks it.

    A file lock per teacher makes parallel workers wait for the one that
    trains it instead of training duplicates.
    """
    from kdbench.compute import distributed as ddp
    from kdbench.core.locks import file_lock

    found = find_teacher(cfg)
    if found is None and ddp.world() > 1:  # one torchrun job: its processes train the teacher together
        return train_teacher(cfg, data)
    if found is None:
        lock = Path(cfg.paths.teachers) / f"{teacher_hash(cfg)}.lock"
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
    from kdbench.training.method import build_method

    cfg = teacher_config(cfg)
    key = teacher_hash(cfg)
    final = Path(cfg.paths.teachers) / key
    partial = final.with_name(key + ".partial")
    arch, seed = str(cfg.pair.teacher), int(cfg.teacher.seed)
    info, device = data.info, data.device
    upper, own_teacher = None, None
    if cfg.teacher.get("assistant") is not None:
        upper = assistant_training_config(cfg)
        upper_entry = ensure_teacher(upper, data)
        own_teacher = load_teacher(upper_entry, device)
    partial.mkdir(parents=True, exist_ok=True)
    log.info("training %s %s on %s (seed %d, %d epochs) -> %s", "teacher" if upper is None else "assistant", arch,
             data.info.name, seed, int(cfg.teacher.schedule.epochs), final)
    model = seeded_model(arch, info.num_classes, info.input_shape[0], seed, "student-init")
    if upper is None:
        trainer = build_method({"name": VANILLA}, model, info, seed, student_arch=arch).to(device)
    else:
        trainer = build_method(upper.method, model, info, seed, teacher=own_teacher, student_arch=arch,
                               teacher_arch=upper_entry.arch, train_labels=data.train_labels(),
                               epochs=int(cfg.teacher.schedule.epochs)).to(device)
    t0 = time.time()
    # A partial teacher's checkpoint is always resumed: it is ours, not the user's run.
    result = fit(trainer, data, cfg.teacher.schedule, cfg.engine, seed, partial, resume=True, label="teacher ",
                 precision=str(cfg.protocol.precision))
    from kdbench.compute import distributed as ddp

    if not ddp.is_main():  # rank 0 stores the teacher; the others wait, then read it
        ddp.barrier()
        return _entry(final)
    weights = partial / "model.pt"
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    last, sel = result.last["student"], result.selected
    meta = {
        "schema_version": SCHEMA_VERSION,
        "hash": key,
        "source": "trained" if upper is None else "distilled",
        "distilled_from": None if upper is None else {"teacher": upper_entry.hash, "method": str(upper.method.name)},
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
        "environment": run_environment(device),
        "engine": {"amp": result.fast_path["amp"]},
        "history": result.history,
    }
    write_json_atomic(partial / "teacher.json", meta)
    (partial / "checkpoint.pt").unlink(missing_ok=True)
    try:
        os.rename(partial, final)
    except OSError:
        # Another worker finished the same teacher first; theirs is equivalent.
        shutil.rmtree(partial, ignore_errors=True)
    ddp.barrier()
    entry = _entry(final)
    log.info("teacher %s trained: test top-1 %.2f", entry.hash, entry.test_top1)
    return entry


def load_state_strict(model: KDModel, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a message that names what differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        short = lambda xs: ", ".join(xs[:8]) + (f" ... ({len(xs)} in all)" if len(xs) > 8 else "")  # noqa: E731
        parts = [f"missing keys: {short(missing)}" if missing else "",
                 f"unexpected keys: {short(unexpected)}" if unexpected else "",
                 f"shape mismatches (a different class count?): {short(shapes)}" if shapes else ""]
        raise KDBenchError(f"{source} does not match architecture {arch!r}; " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def import_teacher(path: Path, arch: str, cfg: DictConfig, data: DataBundle | None) -> TeacherEntry:
    """Add a published checkpoint (a dict with a ``model`` state dict, or a bare state dict) to the cache.

    Provenance records the source file's name and sha256; accuracy is measured
    on our test split when the data is available.
    """
    from kdbench.training.metrics import evaluate

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
    num_classes = data.info.num_classes if data is not None else _num_classes(cfg)
    model = create_model(arch, num_classes=num_classes, in_channels=3 if data is None else data.info.input_shape[0])
    load_state_strict(model, state, str(path), arch)
    key = digest({"imported": source_sha, "arch": arch, "dataset": cfg.data.name})[:16]
    final = Path(cfg.paths.teachers) / key
    if (final / "teacher.json").exists():
        return _entry(final)
    partial = final.with_name(key + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    weights = partial / "model.pt"
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    metrics: dict[str, Any] = {"epoch": None, "test_top1": None, "test_top5": None, "val_top1": None}
    if data is not None:
        model = model.to(data.device)
        test = evaluate(model, data, "test", int(cfg.engine.eval_batch_size), lambda: contextlib.nullcontext(),
                        False)
        metrics.update(test_top1=test["top1"], test_top5=test["top5"])
    meta = {
        "schema_version": SCHEMA_VERSION, "hash": key, "source": "imported", "arch": arch,
        "dataset": str(cfg.data.name), "num_classes": num_classes,
        "input_shape": list(data.info.input_shape) if data is not None else [3, 32, 32],
        "spec": {"imported_from": path.name, "source_sha256": source_sha, "arch": arch, "seed": None,
                 "dataset": data_spec(cfg.data), "schedule": {"epochs": None}},
        "metrics": metrics, "selected": None, "params": count_parameters(model),
        "weights": {"file": "model.pt", "sha256": file_sha256(weights)},
        "created": now_iso(), "git": git_state(), "environment": run_environment(None),
    }
    write_json_atomic(partial / "teacher.json", meta)
    try:
        os.rename(partial, final)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return _entry(final)


def _num_classes(cfg: DictConfig) -> int:
    from kdbench.data import static_shape

    known = static_shape(cfg.data)
    if known is None:
        raise KDBenchError(f"cannot tell the class count of dataset {cfg.data.name!r} without loading it")
    return known[0]


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
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # never fall back to unpickling code: say what to do instead
        raise KDBenchError(f"teacher weights {weights} cannot be read as a state dict ({type(exc).__name__}): "
                           f"delete {entry.path} to retrain it, or import it again") from None
    if not isinstance(state, dict):
        raise KDBenchError(f"teacher weights {weights} are not a state dict: delete {entry.path} to retrain it")
    load_state_strict(model, state, str(weights), entry.arch)
    model.requires_grad_(False)
    return model.to(device).eval()
