"""The teacher cache, read side: where a teacher is stored, how it is found, listed and loaded.

An entry lives at ``<paths.teachers>/<hash>/`` with ``model.pt`` (state dict) and ``teacher.json`` (accuracy,
config, sha256 of the weights, environment). The hash covers exactly what determines the teacher: dataset
config (minus where its files live), architecture, teacher schedule and teacher seed (and, for a teacher
assistant, how it is distilled). Training and importing teachers: :mod:`kdbench.orchestration.teacher`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from kdbench.core.errors import KDBenchError
from kdbench.core.hashing import digest, file_sha256
from kdbench.experiment.identity import assistant_origin, data_spec, schedule_spec, teacher_config
from kdbench.experiment.records import read_json
from kdbench.models import KDModel, create_model

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


def teacher_recipe(cfg: DictConfig) -> dict[str, Any]:
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


def recipe_key(cfg: DictConfig) -> str:
    """The cache folder a teacher trained from ``cfg``'s recipe lives in (an imported one has its own key)."""
    return digest(teacher_recipe(cfg))[:16]


def entry_key(cfg: DictConfig) -> str:
    """The cache entry ``cfg``'s teacher is (or will be) stored under: its pinned hash, else its recipe's."""
    t = teacher_config(cfg)
    return str(t.teacher.hash) if t.teacher.get("hash") else recipe_key(t)


def find_teacher(cfg: DictConfig) -> TeacherEntry | None:
    """The cached teacher ``cfg`` names: ``teacher.hash`` if set, else the one its spec hashes to."""
    cfg = teacher_config(cfg)
    if cfg.teacher.get("hash"):
        entry = get_teacher(Path(cfg.paths.teachers), str(cfg.teacher.hash))
        if entry.arch != cfg.pair.teacher or entry.meta["dataset"] != cfg.data.name:
            raise KDBenchError(f"teacher.hash={cfg.teacher.hash} is a {entry.arch} on {entry.meta['dataset']}, "
                               f"but pair {cfg.pair.name} on {cfg.data.name} needs a {cfg.pair.teacher}")
        return entry
    path = Path(cfg.paths.teachers) / recipe_key(cfg)
    return read_entry(path) if (path / "teacher.json").exists() else None


_ENTRY_FIELDS = {"arch": str, "dataset": str, "source": str, "created": str, "spec": dict, "weights": dict,
                 "metrics": dict}


def read_entry(path: Path) -> TeacherEntry:
    try:
        meta = read_json(path / "teacher.json")
        # every field a command reads from an entry, with its type: a damaged one is one message, not a traceback
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        for key, kind in _ENTRY_FIELDS.items():
            if not isinstance(meta.get(key), kind):
                raise ValueError(f"{key!r} is missing or not a {kind.__name__}")
        weights, metrics = meta["weights"], meta["metrics"]
        top1 = metrics.get("test_top1")  # None: imported with --no-eval
        if not isinstance(weights.get("sha256"), str) or not (top1 is None or isinstance(top1, (int, float))):
            raise ValueError("weights.sha256 or metrics.test_top1 is missing or of the wrong type")
        name = weights.get("file")
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"its weights file {name!r} is not a file of the entry")
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
                out.append(read_entry(p))
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


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity: a teacher trained from them would teach nothing but NaN."""
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise KDBenchError(f"{source} holds weights that are not finite (NaN or infinity) in "
                           f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: a diverged or damaged checkpoint")


def check_outputs_finite(model: KDModel, input_shape: list[int] | tuple[int, ...], source: str) -> None:
    """Refuse a teacher whose logits on a probe batch (standard normal, the shape of standardised images) are not
    finite: finite but huge weights overflow float32 in the forward, and every student would learn NaN."""
    probe = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(probe).logits
    finally:
        model.train(was_training)
    if not bool(torch.isfinite(logits).all()):
        big = max((float(v.abs().max()) for v in model.state_dict().values()
                   if torch.is_floating_point(v) and v.numel()), default=0.0)
        raise KDBenchError(f"{source} gives logits that are not finite on a probe batch (its largest weight is "
                           f"{big:.3g}): float32 overflows in its forward; a diverged or damaged checkpoint")


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


def load_teacher(entry: TeacherEntry, device: torch.device) -> KDModel:
    """Rebuild the cached teacher, verifying its checksum; frozen and in eval mode."""
    weights = entry.path / entry.meta["weights"]["file"]
    if weights.is_symlink() or not weights.is_file() or weights.resolve().parent != entry.path.resolve():
        raise KDBenchError(f"teacher weights {weights} are not a file inside {entry.path} (a link, a device or "
                           f"missing): delete {entry.path} to retrain it, or import it again")
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
    check_finite(state, str(weights))
    load_state_strict(model, state, str(weights), entry.arch)
    model.requires_grad_(False)
    return model.to(device).eval()
