"""Trained students as results: each completed run's final student is kept beside the records
(``paths.models``, ``engine.keep_model``), and ``kdbench eval`` evaluates a stored or imported model.

An artifact is a ``torch.save`` dict of tensors and plain values only (read back with
``weights_only=True``): the architecture, the data's class count and channels, the run id and the
student's weights with their sha256. Evaluating a run's artifact with its record's config reproduces the
record's last-epoch test metrics (same data, same evaluation path, same fast-path arithmetic).
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from kdbench.compute.seeding import state_dict_digest
from kdbench.core.errors import KDBenchError
from kdbench.experiment.records import atomic_write_bytes, now_iso
from kdbench.models import KDModel, create_model

log = logging.getLogger(__name__)

FORMAT = "kdbench-model/1"


def model_path(cfg: DictConfig, run_id: str) -> Path:
    return Path(cfg.paths.models) / f"{run_id}.pt"


def save_model(cfg: DictConfig, run_id: str, model: KDModel, num_classes: int, in_channels: int
               ) -> tuple[Path, str]:
    """The run's final student, written whole or not at all, and its weights digest. Written before the run's
    record, which names the digest (``kept_model``): a kill between the two leaves a run that is not done (it
    runs again), never a record whose model is missing or another training's."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = {"format": FORMAT, "run_id": run_id, "arch": str(cfg.pair.student), "num_classes": int(num_classes),
            "in_channels": int(in_channels), "created": now_iso(), "weights_sha256": state_dict_digest(state),
            "state_dict": state}
    buf = io.BytesIO()
    torch.save(blob, buf)
    path = model_path(cfg, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise KDBenchError(f"could not keep the student at {path}: {exc.strerror or exc} (the record is written "
                           "without it; engine.keep_model=false skips this)") from None
    return path, blob["weights_sha256"]


def model_facts(path: Path) -> dict[str, Any]:
    """A kept model's stored facts, with ``weights_sha256`` the digest of the weights it actually holds; ``{}``
    when it is unreadable or not a kdbench artifact (``doctor`` compares it with the record's)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # never unpickle code; unreadable is "not the named model"
        return {}
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("state_dict"), dict):
        return {}
    return {**{k: v for k, v in blob.items() if k != "state_dict"},
            "weights_sha256": state_dict_digest(blob["state_dict"])}


def load_model(path: Path, arch: str | None = None, num_classes: int | None = None,
               in_channels: int | None = None) -> tuple[KDModel, dict[str, Any]]:
    """(model, facts) from a kdbench artifact, or from a plain state dict with ``arch`` (and the class
    count and channels) given; checked strictly against the architecture."""
    from kdbench.orchestration.teacher_cache import load_state_strict

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KDBenchError(f"no model file at {path}") from None
    except Exception as exc:  # never unpickle code
        raise KDBenchError(f"{path} cannot be read as a state dict ({type(exc).__name__})") from None
    if not isinstance(blob, dict):
        raise KDBenchError(f"{path} holds a {type(blob).__name__}, not a state dict")
    ours = blob.get("format") == FORMAT
    state = blob["state_dict"] if ours else blob.get("state_dict", blob.get("model", blob))
    facts = {k: v for k, v in blob.items() if k != "state_dict"} if ours else {}
    arch = arch or facts.get("arch")
    if not arch:
        raise KDBenchError(f"{path} is not a kdbench artifact: give its architecture (--arch NAME)")
    if ours and facts.get("weights_sha256") != state_dict_digest(state):
        raise KDBenchError(f"{path} fails its checksum: it was changed or truncated after it was written")
    model = create_model(arch, num_classes=int(num_classes or facts.get("num_classes") or 100),
                         in_channels=int(in_channels or facts.get("in_channels") or 3))
    load_state_strict(model, state, str(path), arch)
    return model, {**facts, "arch": arch}


def evaluate_model(cfg: DictConfig, model: KDModel, split: str = "test", data=None) -> dict[str, Any]:
    """Metrics of ``model`` on ``split`` of ``cfg``'s dataset, by the engine's evaluation path with the
    run's fast-path arithmetic; agreement and KL with the run's teacher when it is in the cache."""
    from kdbench.compute.device import resolve_device
    from kdbench.data import load_data
    from kdbench.experiment.catalog import METHODS
    from kdbench.experiment.identity import teacher_config
    from kdbench.orchestration.teacher_cache import find_teacher, load_teacher
    from kdbench.training.fastpath import resolve_fast_path
    from kdbench.training.frozen_teacher import FrozenTeacher
    from kdbench.training.metrics import evaluate, predict

    if split not in ("train", "val", "test"):
        raise KDBenchError(f"split {split!r} is not one of: train, val, test")
    device = resolve_device(str(cfg.engine.device))
    fast = resolve_fast_path(cfg.engine, device, str(cfg.protocol.precision))
    data = data if data is not None else load_data(cfg)
    if split != "test" and not data.split_len(split):
        raise KDBenchError(f"the dataset has no {split} split in this config")
    memory = torch.channels_last if fast.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=memory).eval()
    autocast, bs = fast.autocast(device), int(cfg.engine.eval_batch_size)
    teacher_logits, teacher = None, None
    name = str(cfg.method.name) if cfg.get("method") is not None else ""
    if name in METHODS.names() and METHODS.get(name).obj.uses_teacher:
        entry = find_teacher(cfg)
        if entry is not None:
            t = FrozenTeacher(load_teacher(entry, device)).to(device)
            t.prepare(data.info.input_shape, fold_bn=fast.fold_teacher_bn, inference_mode=fast.teacher_inference_mode,
                      memory_format=memory if fast.channels_last else None, compile=False)
            teacher_logits = predict(t, data, split, bs, autocast, fast.channels_last)[0]
            teacher = {"arch": str(teacher_config(cfg).pair.teacher), "hash": entry.hash,
                       "weights_sha256": entry.meta["weights"]["sha256"]}
    metrics = evaluate(model, data, split, bs, autocast, fast.channels_last, teacher_logits, True)
    return {"split": split, "dataset": data.info.name, "metrics": metrics, "teacher": teacher}


def eval_target(target: str, overrides: list[str], split: str = "test", arch: str | None = None) -> dict[str, Any]:
    """Evaluate a run's kept student (``target`` = a run id, or a unique prefix of one) with its record's
    config, or a model file (a kdbench artifact, or a state dict with ``arch``) with the config the
    overrides compose (``dataset=... pair=...``). With a run, the record's numbers come back beside."""
    from kdbench.experiment.results import counted_records
    from kdbench.orchestration.config import compose

    path = Path(target)
    if path.suffix == ".pt" or path.exists():
        from kdbench.data import load_data

        cfg = compose(overrides)
        data = load_data(cfg)
        model, facts = load_model(path, arch, data.info.num_classes, data.info.input_shape[0])
        out = evaluate_model(cfg, model, split, data)
        return {**out, "model": str(path), "arch": facts["arch"], "run_id": facts.get("run_id"), "record": None}
    base = compose(overrides, check=False)
    matches = {}
    for r in counted_records(base.paths.results):
        if r.get("status") == "completed" and r["run_id"].startswith(target):
            matches.setdefault(r["run_id"], []).append(r)
    if len(matches) != 1:
        what = "no completed run" if not matches else f"{len(matches)} runs ({', '.join(sorted(matches)[:5])} ...)"
        raise KDBenchError(f"{what} in {base.paths.results} matches {target!r}: give a run id (kdbench status lists "
                           "them) or a model file")
    (run_id, recs), = matches.items()
    record = max(recs, key=lambda r: r["created"])  # the newest record of the run is the kept model's
    cfg = OmegaConf.merge(OmegaConf.create(record["config"]), OmegaConf.from_dotlist(
        [o for o in overrides if "=" in o and not o.startswith(("+", "~"))]))
    # the store and its kept models are this invocation's (default <paths.results>/models), never the absolute
    # paths stored in the record: a moved or copied store evaluates its own model
    cfg.paths.results, cfg.paths.models = str(base.paths.results), str(base.paths.models)
    file = model_path(cfg, run_id)
    if not file.exists():
        raise KDBenchError(f"run {run_id} kept no model at {file} (engine.keep_model was off, or the run predates "
                           "kept models): run it again with force=true to keep one")
    model, facts = load_model(file)
    if facts.get("run_id") != run_id:  # a kept model copied or renamed into this run's place
        raise KDBenchError(f"{file} is the kept student of {facts.get('run_id') or 'no kdbench run'}, not of run "
                           f"{run_id}: its numbers would be reported as this run's; delete it (run {run_id} again "
                           "with force=true to keep its own)")
    named = (record.get("kept_model") or {}).get("weights_sha256")
    if named and facts.get("weights_sha256") != named:  # a later training of the run, killed before its record
        raise KDBenchError(f"{file} is not the student that run {run_id}'s newest record kept (its weights differ "
                           "from the digest the record names): a later training of the run stopped before its "
                           f"record was written; run {run_id} again with force=true")
    out = evaluate_model(cfg, model, split)
    primary = record["metrics"]["primary_model"]
    recorded = record["metrics"]["last"][primary].get(split) if split in ("val", "test") else None
    return {**out, "model": str(file), "arch": facts["arch"], "run_id": run_id, "record": recorded}
