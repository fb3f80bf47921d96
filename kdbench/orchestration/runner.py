"""One run, end to end: config -> data -> teacher -> method -> fit -> result record."""
from __future__ import annotations

import logging
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from kdbench.compute.device import run_environment, run_precision
from kdbench.compute.seeding import data_order_digest
from kdbench.core.errors import KDBenchError
from kdbench.core.locks import file_lock, is_locked
from kdbench.data import DataBundle, load_data
from kdbench.experiment.catalog import METHODS
from kdbench.experiment.identity import (
    experiment_id,
    experiment_spec,
    method_defaults_on_pair,
    run_id_from,
    teacher_config,
)
from kdbench.experiment.records import atomic_write_bytes, git_state, now_iso
from kdbench.experiment.results import add_record, completed_records, records_of_run, runs_dir
from kdbench.experiment.schema import SCHEMA_VERSION
from kdbench.models import count_parameters, forward_flops, seeded_model
from kdbench.orchestration.doctor import is_finished_leftover
from kdbench.orchestration.teacher import ensure_teacher
from kdbench.orchestration.teacher_cache import load_teacher
from kdbench.training.checkpoint import CHECKPOINT
from kdbench.training.engine import Steps, drive, fit_steps
from kdbench.training.method import build_method
from kdbench.training.signals import RunDiverged

log = logging.getLogger(__name__)


def spec_of(cfg: DictConfig) -> dict[str, Any]:
    """The experiment ``cfg`` describes, in the precision it trains in on this machine's device."""
    return experiment_spec(cfg, run_precision(cfg))


def run_identity(cfg: DictConfig) -> str:
    """The run id of ``cfg`` on this machine (see :func:`kdbench.experiment.identity.run_id_from`)."""
    return run_id_from(spec_of(cfg), int(cfg.seed))


@dataclass(frozen=True)
class RunPaths:
    """Where one run keeps its files -- the one place that knows: working folder (checkpoint,
    config), lock, and the record's name in the store."""

    run_id: str
    work: Path
    lock: Path
    record: Path

    @property
    def checkpoint(self) -> Path:
        return self.work / CHECKPOINT

    @classmethod
    def of(cls, cfg: DictConfig, run_id: str | None = None) -> "RunPaths":
        run_id = run_id or run_identity(cfg)
        work = Path(cfg.paths.runs) / run_id
        return cls(run_id, work, work.with_name(run_id + ".lock"), runs_dir(cfg.paths.results) / f"{run_id}.json")


def _identity_fields(cfg: DictConfig, spec: dict[str, Any], method) -> dict[str, Any]:
    """What every record of a run says about which run it is (completed or not)."""
    return {
        "experiment": {"id": experiment_id(spec), "spec": spec, "defaults": method_defaults_on_pair(cfg)},
        "method": {"name": method.name, "category": method.category, "scheme": method.scheme},
        "pair": {"name": str(cfg.pair.name), "teacher": str(cfg.pair.teacher), "student": str(cfg.pair.student)},
        "seed": int(cfg.seed),
    }


def _failure_record(cfg: DictConfig, run_id: str, spec: dict[str, Any], method, data: DataBundle, started: str,
                    exc: BaseException) -> dict[str, Any]:
    diverged = isinstance(exc, RunDiverged)
    history = exc.history if diverged else []
    return {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "status": "diverged" if diverged else "failed",
        "kind": "student", "created": now_iso(), "started": started,
        **_identity_fields(cfg, spec, method),
        "dataset": {"name": data.info.name, "num_train": data.info.num_train},
        "schedule": {"name": str(cfg.schedule.name), "epochs": int(cfg.schedule.epochs)},
        "error": {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__,
                  "epoch": exc.epoch + 1 if diverged else None, "step": exc.step + 1 if diverged else None,
                  "stage": exc.stage if diverged else None,
                  "traceback": "" if diverged else "".join(traceback.format_exception(exc))[-4000:]},
        "history": history, "environment": run_environment(data.device), "git": git_state(),
        "note": str(cfg.note), "config": OmegaConf.to_container(cfg, resolve=True),
    }


def teacher_fields(entry) -> dict[str, Any]:
    """How a record names its teacher: by the sha256 of its weights; the cache key is provenance."""
    return {"weights_sha256": entry.meta["weights"]["sha256"], "hash": entry.hash, "arch": entry.arch,
            "test_top1": entry.test_top1, "source": entry.meta.get("source", "trained")}


def _prior_outcome(cfg: DictConfig, run_id: str, uses_teacher: bool, data: DataBundle | None,
                   on_error: str) -> dict[str, Any] | None:
    """The stored record that makes this run unnecessary, or None to run it.

    A completed record counts only if it was distilled from the teacher this run would use
    (same weights); an uncached teacher is trained first to know. The last try having failed
    or diverged stops the run unless ``retry_failed=true``.
    """
    previous = records_of_run(cfg.paths.results, run_id)
    if not previous or cfg.force:
        return None
    done = completed_records(previous)
    if done and uses_teacher:
        sha = teacher_fields(ensure_teacher(cfg, data if data is not None else load_data(cfg)))["weights_sha256"]
        mine = [r for r in done if (r.get("teacher") or {}).get("weights_sha256") == sha]
        if not mine:
            log.warning("run %s has %d completed record(s) distilled from another teacher (weights %s); this "
                        "teacher's weights are %s...: running it for this teacher", run_id, len(done),
                        ", ".join(sorted({(r.get("teacher") or {}).get("weights_sha256", "?")[:12] + "..."
                                          for r in done})), sha[:12])
        done = mine
    if done:
        log.info("run %s already has a completed record; skipping (force=true re-runs it)", run_id)
        return done[-1]
    last = previous[-1]
    if last["status"] != "completed" and not cfg.get("retry_failed"):
        log.warning("run %s %s before (%s); skipping (retry_failed=true runs it again)", run_id,
                    last["status"], last["error"]["message"])
        if on_error == "raise":
            raise KDBenchError(f"run {run_id} {last['status']} before: {last['error']['message']} "
                               "(pass retry_failed=true to run it again)")
        return last
    return None


def run(cfg: DictConfig, data: DataBundle | None = None,
        on_step: Callable[[int, int], None] | None = None, on_error: str = "raise",
        wait: bool = False, workers: int = 1) -> dict[str, Any]:
    """Train one student as ``cfg`` says and write its result record (see :func:`run_steps`)."""
    return drive(run_steps(cfg, data, on_step, on_error, wait, workers))


def run_steps(cfg: DictConfig, data: DataBundle | None = None,
              on_step: Callable[[int, int], None] | None = None, on_error: str = "raise",
              wait: bool = False, workers: int = 1, member: Any = None) -> Steps[dict[str, Any]]:
    """Train one student as ``cfg`` says and write its result record.

    Idempotent: a run whose completed record exists is returned as is (unless
    ``force=true``); one whose last try failed or diverged is skipped unless
    ``retry_failed=true``. A failure during training writes a ``failed`` or
    ``diverged`` record; with ``on_error="record"`` (suites) the record is
    returned so the grid continues, otherwise the error is raised after it is
    written. ``data`` may be passed to reuse an already built dataset. A run that another process
    is training is an error, or with ``wait=True`` (suites) waited for and then taken as it ended.
    ``workers`` is how many jobs share this machine's cores (a parallel launcher's), for
    ``engine.threads=auto``. A generator that yields after every training step (:func:`~kdbench.training.engine.
    fit_steps`); ``member`` (a :class:`kdbench.orchestration.cohort.Member`) is the run's place in a cohort that
    trains the runs of one pair and seed in lockstep (:func:`kdbench.orchestration.cohort.run_cohort`); its record
    is the solo run's.
    """
    from kdbench.compute import distributed as ddp

    ddp.init_from_env()  # under torchrun: join the process group
    ddp.apply_threads(cfg.engine.get("threads", "auto"), workers)  # ``workers``: jobs sharing the cores
    spec = spec_of(cfg)
    run_id = run_id_from(spec, int(cfg.seed))
    uses_teacher = METHODS.get(cfg.method.name).obj.uses_teacher
    prior = _prior_outcome(cfg, run_id, uses_teacher, data, on_error)
    if prior is not None:
        if prior["status"] == "completed":
            _drop_finished_folder(cfg, run_id)
        return prior
    paths = RunPaths.of(cfg, run_id)
    run_dir, lock = paths.work, paths.lock
    if not ddp.is_main():  # rank 0 holds the run's lock for the whole process group
        return (yield from _run_locked(cfg, run_id, spec, run_dir, data, on_step, on_error, member))
    if wait and is_locked(lock):
        log.info("run %s is running in another process; waiting for it", run_id)
    with file_lock(lock, blocking=wait) as mine:
        if not mine:
            raise KDBenchError(f"run {run_id} is running in another process ({run_dir})")
        # Another process may have finished it between the check above and taking the lock.
        prior = _prior_outcome(cfg, run_id, uses_teacher, data, on_error)
        if prior is not None:
            return prior
        return (yield from _run_locked(cfg, run_id, spec, run_dir, data, on_step, on_error, member))


def _teacher_costs(teacher, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The teacher's parameters and forward FLOPs, counted before the engine folds its BatchNorms in place
    (which would change its parameter count)."""
    return {"teacher": count_parameters(teacher) if teacher is not None else None,
            "teacher_flops": forward_flops(teacher, input_shape) if teacher is not None else None}


def _model_costs(method, teacher_costs: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Parameters and forward FLOPs of the student, its helpers and its teacher, counted before training."""
    return {"student": count_parameters(method.student), "teacher": teacher_costs["teacher"],
            "extra_trainable": method.extra_trainable_parameters(),
            "student_flops": forward_flops(method.student, input_shape),
            "teacher_flops": teacher_costs["teacher_flops"]}


def _completed_record(cfg: DictConfig, run_id: str, spec: dict[str, Any], method, data: DataBundle, result,
                      teacher_entry, costs: dict[str, Any], started: str, wall_time_s: float) -> dict[str, Any]:
    """The record of a finished run: identity, metrics, provenance, cost (docs/record-schema.md)."""
    from kdbench.compute import distributed as ddp

    primary = next(iter(method.eval_models()))
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "completed",
        "kind": "student",
        "created": now_iso(),
        "started": started,
        **_identity_fields(cfg, spec, method),
        "dataset": {"name": data.info.name, "num_train": data.info.num_train, "num_val": data.split_len("val"),
                    "num_test": data.split_len("test"), "num_classes": data.info.num_classes},
        "schedule": {"name": str(cfg.schedule.name), "epochs": result.epochs, "init_stages": result.init_stages},
        "metrics": {
            "primary_model": primary,
            "last": result.last,
            "selected": result.selected,
            "selection": "best validation top-1 of the primary model; test metrics at that epoch",
        },
        "teacher": None if teacher_entry is None else teacher_fields(teacher_entry),
        "params": costs,
        "method_report": method.report(),
        "fairness": {"student_init_sha256": method.student_init_sha256,
                     "data_order_sha256": data_order_digest(data.info.num_train, int(cfg.seed), result.epochs)},
        "timing": {"wall_time_s": wall_time_s, "train_time_s": result.train_time_s,
                   "epoch_time_s": result.train_time_s / max(len(result.history) + len(result.init_history), 1),
                   "images_per_s": result.images_per_s, "resumed_from_epoch": result.resumed_from_epoch},
        "memory": result.peak_memory,
        "engine": result.fast_path,
        "history": result.history,
        "init_history": result.init_history,
        "environment": {**run_environment(data.device), "processes": ddp.world()},
        "git": git_state(),
        "note": str(cfg.note),
        "kept_model": None,  # set once the student is kept (engine.keep_model)
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _run_teacher(cfg: DictConfig, data: DataBundle, member: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(frozen teacher or None, its cache entry, its costs) for the run; a cohort's members share one teacher
    object per cache entry, so it runs once per batch."""
    if not METHODS.get(cfg.method.name).obj.uses_teacher:
        return None, None, _teacher_costs(None, data.info.input_shape)
    entry = ensure_teacher(cfg, data)
    if member is None:
        teacher = load_teacher(entry, data.device)
        return teacher, entry, _teacher_costs(teacher, data.info.input_shape)
    from kdbench.training.frozen_teacher import FrozenTeacher

    def load():
        raw = load_teacher(entry, data.device)
        return FrozenTeacher(raw), _teacher_costs(raw, data.info.input_shape)

    teacher, costs = member.shared_teacher(f"{entry.hash}@{data.device}", load)
    return teacher, entry, costs


def _record_failure(cfg: DictConfig, run_id: str, spec: dict[str, Any], method, data: DataBundle, started: str,
                    exc: BaseException, run_dir: Path, on_error: str) -> dict[str, Any]:
    """A run that failed or diverged while training: its record is stored (rank 0), and raised again or returned."""
    from kdbench.compute import distributed as ddp

    rec = _failure_record(cfg, run_id, spec, method, data, started, exc)
    if not ddp.is_main():
        raise exc
    out = add_record(cfg.paths.results, rec)
    log.error("run %s %s: %s (record: %s)", run_id, rec["status"], rec["error"]["message"], out)
    if rec["status"] == "diverged":
        shutil.rmtree(run_dir, ignore_errors=True)  # resuming would diverge again
    if on_error == "raise":
        if isinstance(exc, RunDiverged):
            raise KDBenchError(f"run {run_id} diverged: {exc} (record: {out})") from None
        raise exc
    return rec


def _drop_finished_folder(cfg: DictConfig, run_id: str) -> None:
    """Remove a finished run's leftover folder (doctor.is_finished_leftover) when the run is next asked for."""
    work = RunPaths.of(cfg, run_id).work
    if is_finished_leftover(work, bool(cfg.engine.get("keep_checkpoint"))):
        shutil.rmtree(work, ignore_errors=True)


def _setup_failure(cfg: DictConfig, run_id: str, spec: dict[str, Any], method, data: DataBundle, started: str,
                   exc: BaseException, on_error: str) -> dict[str, Any]:
    """A run that failed before its first training step (set-up: a checkpoint, the data pipeline, the fast path)
    stores nothing, so the corrected command runs it; a suite gets the unstored record to show and goes on."""
    log.error("run %s failed before its first training step: %s: %s (nothing stored: the same command runs it "
              "again once the cause is fixed)", run_id, type(exc).__name__, exc)
    if on_error == "raise":
        raise exc
    return _failure_record(cfg, run_id, spec, method, data, started, exc)


def _run_locked(cfg: DictConfig, run_id: str, spec: dict[str, Any], run_dir: Path, data: DataBundle | None,
                on_step: Callable[[int, int], None] | None, on_error: str, member: Any = None
                ) -> Steps[dict[str, Any]]:
    from kdbench.compute import distributed as ddp

    data = data if data is not None else load_data(cfg)
    device = data.device
    seed = int(cfg.seed)
    info = data.info
    teacher, teacher_entry, teacher_costs = _run_teacher(cfg, data, member)

    # Fairness: the student's initialisation and the data order depend on the
    # seed alone, so every method starts from the same point and sees the same batches.
    student = seeded_model(str(cfg.pair.student), info.num_classes, info.input_shape[0], seed, "student-init")
    method = build_method(cfg.method, student, info, seed, teacher=teacher, student_arch=str(cfg.pair.student),
                          teacher_arch=str(teacher_config(cfg).pair.teacher),
                          train_labels=data.train_labels(), epochs=int(cfg.schedule.epochs)).to(device)

    costs = _model_costs(method, teacher_costs, info.input_shape)
    run_dir.mkdir(parents=True, exist_ok=True)
    if ddp.is_main():
        atomic_write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg).encode())
    log.info("run %s: %s on %s, seed %d, device %s", run_id, cfg.method.name, cfg.pair.name, seed, device)
    t0 = time.time()
    started = now_iso()
    from kdbench.training.tracking import Trackers

    trackers = Trackers(run_id, cfg) if ddp.is_main() else None  # named before training when one cannot start
    training = []
    try:
        result = yield from fit_steps(
            method, data, cfg.schedule, cfg.engine, seed, run_dir, resume=bool(cfg.resume),
            label=f"{cfg.method.name} s{seed} ", on_step=on_step, precision=str(cfg.protocol.precision),
            on_epoch=trackers if trackers is not None and trackers.active else None,
            batches=member.batches(data) if member is not None else None, pacer=member,
            on_start=lambda: training.append(True))
    except (RunDiverged, Exception) as exc:
        if isinstance(exc, KDBenchError) and not isinstance(exc, RunDiverged):
            raise  # a user mistake found late: nothing ran, so nothing to record
        if not training:
            return _setup_failure(cfg, run_id, spec, method, data, started, exc, on_error)
        return _record_failure(cfg, run_id, spec, method, data, started, exc, run_dir, on_error)
    finally:
        if trackers is not None:
            trackers.close()
    record = _completed_record(cfg, run_id, spec, method, data, result, teacher_entry, costs, started,
                               time.time() - t0)
    if not ddp.is_main():
        return record  # rank 0 writes the record
    kept_error = None
    if cfg.engine.get("keep_model", True):  # the model first: a record is written only once its model is in place
        from kdbench.orchestration.artifacts import save_model

        try:
            path, digest = save_model(cfg, run_id, method.student, info.num_classes, info.input_shape[0])
            record["kept_model"] = {"file": path.name, "weights_sha256": digest}
            log.info("student kept: %s", path)
        except KDBenchError as exc:  # the run's numbers are still worth their record
            kept_error = exc
    out = add_record(cfg.paths.results, record)  # never overwrites: force=true adds a record beside the old one
    log.info("record written: %s", out)
    if kept_error is not None:
        raise kept_error
    if not cfg.engine.keep_checkpoint:
        shutil.rmtree(run_dir, ignore_errors=True)
    return record
