"""``kdbench doctor``: what kills and crashes left in the store and the work folder that no record explains.

Every kind of leftover is named by the command that makes it, so each one is recognisably ours: temp files of
atomic writes (``.NAME.*.tmp``), an import's stage (``results/.import-stage-*``), a run's folder (its checkpoint) kept
after its record was written, a teacher training's ``KEY.partial`` folder, a teacher import's stage, a cache
entry without its ``teacher.json``, a kept model without a record, a run folder killed before its first checkpoint;
and, never removed, a kept model that its run's record names but that is missing or replaced. ``--clean`` removes
only what is provably dead: nothing that a running process holds a lock on, nothing a later command could still use
(an interrupted run's checkpoint is resumed by ``resume=true``; a file that is not a valid record is the user's to
read).
"""
from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from kdbench.core.locks import is_locked
from kdbench.experiment.results import load_records

STALE_TMP_S = 3600.0  # a temp file of an atomic write lives for milliseconds; an hour old, its writer is gone
# a run id (kdbench.experiment.identity.run_id_from): method__pair-slug__sSEED__10 hex digits
_RUN_FOLDER = re.compile(r"[\w.+-]+__[\w.+-]+__s\d+__[0-9a-f]{10}")


def is_finished_leftover(run_dir: Path, keep_checkpoint: bool) -> bool:
    """Whether the folder of a run whose completed record is stored is a leftover: the run was killed between
    writing its record and removing its folder. Not one if the run was told to keep it or a process holds it.
    The one rule for both the runner (which removes it when the run is next asked for) and ``doctor``."""
    return run_dir.is_dir() and not keep_checkpoint and not is_locked(run_dir.with_name(run_dir.name + ".lock"))


@dataclass(frozen=True)
class Leftover:
    path: Path
    what: str
    removable: bool  # --clean removes it: provably ours and provably unused


def find_leftovers(cfg: DictConfig) -> list[Leftover]:
    """Everything under ``paths.results`` and ``paths.work`` that no record or cache entry explains."""
    results, runs, teachers = Path(cfg.paths.results), Path(cfg.paths.runs), Path(cfg.paths.teachers)
    out: list[Leftover] = []
    stored = load_records(results)  # finishes an interrupted import first, or removes its stage
    # finished runs, and whether each was told to keep its folder (engine.keep_checkpoint=true)
    done = {s.record["run_id"]: bool(((s.record.get("config") or {}).get("engine") or {}).get("keep_checkpoint"))
            for s in stored if not s.errors and s.record.get("status") == "completed"}
    known = {s.record["run_id"] for s in stored if not s.errors}
    out += [Leftover(s.path, f"not a valid record ({s.errors[0]}): not counted anywhere", False)
            for s in stored if s.errors]
    models = Path(cfg.paths.models)
    if models.is_dir():
        out += [Leftover(p, "a kept model of no stored run", False) for p in sorted(models.glob("*.pt"))
                if p.stem not in known]
    out += _kept_model_problems(stored, models)
    if runs.is_dir():
        for d in sorted(p for p in runs.iterdir() if p.is_dir()):
            if d.name in done:
                if is_finished_leftover(d, done[d.name]):
                    out.append(Leftover(d, "a finished run's folder (checkpoint), left when the run was killed "
                                           "after writing its record", True))
            elif is_locked(d.with_name(d.name + ".lock")):
                continue  # being trained now
            elif (d / "checkpoint.pt").exists():
                out.append(Leftover(d, "an interrupted run: `resume=true` (or the suite) continues it", False))
            elif _RUN_FOLDER.fullmatch(d.name) and {p.name for p in d.iterdir()} <= {"config.yaml"}:
                out.append(Leftover(d, "a run stopped before its first checkpoint: nothing to resume (run again, "
                                       "it starts afresh)", True))
    if teachers.is_dir():
        out += _teacher_leftovers(teachers)
    now = time.time()
    for root in {results, Path(cfg.paths.work)}:
        if root.is_dir():
            for p in sorted(root.rglob(".*.tmp")):
                if p.is_file():
                    out.append(Leftover(p, "the temp file of a write that was killed", True)
                               if now - p.stat().st_mtime > STALE_TMP_S else
                               Leftover(p, "the temp file of a write under way, or killed less than an hour ago "
                                           "(--clean removes it once it is an hour old)", False))
    return out


def _kept_model_problems(stored, models: Path) -> list[Leftover]:
    """Runs whose newest record names a kept model that is missing, or that is not the model it names (a later
    training of the run, killed before its record). Never removable: the user decides (``force=true`` re-runs)."""
    from kdbench.orchestration.artifacts import model_facts

    newest: dict[str, dict] = {}
    for s in stored:
        r = s.record
        if not s.errors and r.get("status") == "completed" and (
                r["run_id"] not in newest or r["created"] > newest[r["run_id"]]["created"]):
            newest[r["run_id"]] = r
    out = []
    for run_id, r in sorted(newest.items()):
        named = (r.get("kept_model") or {}).get("weights_sha256")
        if not named:
            continue  # kept nothing (engine.keep_model=false), or written before records named their model
        path = models / f"{run_id}.pt"
        if not path.is_file():
            out.append(Leftover(path, f"missing: run {run_id}'s record names this kept model (deleted, or the "
                                      "store was copied without models/); `kdbench eval` cannot evaluate the run "
                                      "until it runs again with force=true", False))
        elif model_facts(path).get("weights_sha256") != named:
            out.append(Leftover(path, f"not the model run {run_id}'s newest record kept (a later training was "
                                      "stopped before its record): run it again with force=true", False))
    return out


def _teacher_leftovers(teachers: Path) -> list[Leftover]:
    out = []
    for d in sorted(p for p in teachers.iterdir() if p.is_dir()):
        if d.name.endswith(".partial"):
            key = d.name.split(".")[0]
            if is_locked(teachers / f"{key}.lock"):
                continue  # a training or an import under way
            if d.name == f"{key}.partial":
                out.append(Leftover(d, "an interrupted teacher training: resumed when the teacher is next needed",
                                    False))
            else:
                out.append(Leftover(d, "the stage of a teacher import that was killed", True))
        elif not (d / "teacher.json").exists() and not is_locked(teachers / f"{d.name}.lock"):
            out.append(Leftover(d, "a cache entry without teacher.json (never usable): it is retrained or "
                                   "imported again when needed", True))
    return out


def clean(leftovers: list[Leftover]) -> list[Leftover]:
    """Remove the removable ones; the list of what was removed."""
    gone = []
    for item in leftovers:
        if item.removable:
            if item.path.is_dir():
                shutil.rmtree(item.path, ignore_errors=True)
            else:
                item.path.unlink(missing_ok=True)
            gone.append(item)
    return gone


def format_leftovers(leftovers: list[Leftover], cleaned: bool) -> str:
    if not leftovers:
        return "nothing left over: every file is a record, a kept model of a stored run, or a cache entry"
    lines = [f"{'removed' if cleaned and x.removable else 'kept' if cleaned else '-'} {x.path}: {x.what}"
             + ("" if cleaned or not x.removable else " [--clean removes it]") for x in leftovers]
    return "\n".join(lines)

