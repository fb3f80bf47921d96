"""The training loop: method-agnostic, device-resident, resumable bit-for-bit.

Per epoch: set the learning rate from the schedule, seed the epoch's global RNG
from (seed, epoch), run ``method.step`` on every batch, sum its named losses,
step the optimizer, evaluate every model of ``method.eval_models()`` on the
validation and test splits, and write a checkpoint atomically. Because every
epoch's randomness is derived from (seed, epoch), a run resumed from a
checkpoint reproduces the uninterrupted run exactly (on CPU).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Protocol, TypeVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from kdbench.compute.seeding import derive_seed
from kdbench.core.errors import KDBenchError
from kdbench.data import DataBundle
from kdbench.experiment.identity import milestone_epochs
from kdbench.training.checkpoint import CHECKPOINT, RunState
from kdbench.training.epochs import EpochPlan, Tally, plan_epochs
from kdbench.training.fastpath import (
    FastPath,
    apply_fast_path,
    build_optimizer,
    compile_context,
    resolve_fast_path,
    train_one_step,
)
from kdbench.training.method import MAIN_STAGE, InitStage, Method
from kdbench.training.metrics import epoch_summary, evaluate, measure_peak_memory, predict, select_epoch
from kdbench.training.signals import DivergenceWatch, StopOnInterrupt

log = logging.getLogger(__name__)
T = TypeVar("T")

def lr_at(epoch: int, sched: DictConfig) -> float:
    """Learning rate for ``epoch`` (0-based), set once at the start of the epoch as in the CRD code."""
    if sched.lr_schedule == "multistep":
        return float(sched.lr) * float(sched.gamma) ** sum(epoch >= m for m in milestone_epochs(sched))
    if sched.lr_schedule == "cosine":
        return 0.5 * float(sched.lr) * (1 + math.cos(math.pi * epoch / int(sched.epochs)))
    raise KDBenchError(f"schedule.lr_schedule={sched.lr_schedule!r} is not one of: multistep, cosine")


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    last: dict[str, Any]
    selected: dict[str, Any] | None
    train_time_s: float
    images_per_s: float
    epochs: int
    resumed_from_epoch: int = 0
    peak_memory: dict[str, Any] = field(default_factory=dict)
    fast_path: dict[str, Any] = field(default_factory=dict)
    # initialisation stages (name, epochs, lr) and their per-epoch rows (training only; no evaluation)
    init_stages: list[dict[str, Any]] = field(default_factory=list)
    init_history: list[dict[str, Any]] = field(default_factory=list)


def _progress_enabled(setting: Any) -> bool:
    if setting == "auto":
        return sys.stderr.isatty()
    return bool(setting)


class Pacer(Protocol):
    """How a run that shares its process with others is paced (a cohort's member): the stop request they
    share (one set of signal handlers for all), how many they are, and the seconds this run has spent
    while the others took their steps (not its cost: left out of its epoch time)."""

    stop: StopOnInterrupt
    members: int

    def waited(self) -> float: ...


Steps = Generator[None, None, T]


def drive(steps: Steps[T]) -> T:
    """Run a generator of training steps to its end: its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def fit(method: Method, data: DataBundle, sched: DictConfig, engine: DictConfig, seed: int,
        run_dir: Path, resume: bool, label: str = "",
        on_step: Callable[[int, int], None] | None = None, precision: str = "auto",
        on_epoch: Callable[[int, str, dict[str, Any]], None] | None = None) -> FitResult:
    """Train ``method`` on ``data`` for ``sched.epochs`` epochs and evaluate every epoch.

    ``precision`` is the protocol's (auto | fp32 | bf16). ``on_step(epoch, step)`` is called
    after each optimizer step (tests use it to simulate a kill mid-epoch); ``on_epoch(n, stage, row)``
    after each epoch's row is complete, on the main process (live trackers, :mod:`kdbench.training.tracking`).
    """
    return drive(fit_steps(method, data, sched, engine, seed, run_dir, resume, label, on_step, precision, on_epoch))


def fit_steps(method: Method, data: DataBundle, sched: DictConfig, engine: DictConfig, seed: int,
              run_dir: Path, resume: bool, label: str = "",
              on_step: Callable[[int, int], None] | None = None, precision: str = "auto",
              on_epoch: Callable[[int, str, dict[str, Any]], None] | None = None,
              batches: Callable[..., Iterator] | None = None, pacer: Pacer | None = None,
              on_start: Callable[[], None] | None = None) -> Steps[FitResult]:
    """:func:`fit` as a generator that yields after every optimisation step, so that whoever drives it decides
    what runs in between: a cohort (:mod:`kdbench.orchestration.cohort`) takes one step of each member in
    turn, on one thread. ``batches(batch_size, seed, data_epoch, paired=...)`` replaces the data's own
    training batches (a cohort's shared stream: the same batches, cut once); ``pacer`` is the run's place
    among the others. ``on_start()`` is called once, as the first optimisation step of this call begins: what
    fails before it is set-up (a checkpoint, the data pipeline, the fast path), not training. The arithmetic
    is the solo run's."""
    fast = resolve_fast_path(engine, data.device, precision)
    with compile_context(fast):
        loop = _Loop(method, data, sched, engine, seed, Path(run_dir) / CHECKPOINT, label, on_step, fast,
                     batches, pacer)
        loop.on_epoch, loop.on_start = on_epoch, on_start
        return (yield from loop.steps(resume))


class _Loop:
    """One run's training loop: set-up (fast path, processes), then per epoch a training part
    (:meth:`train_epoch`) and an end-of-epoch part (:meth:`end_epoch`: totals, evaluation, log,
    checkpoint). Initialisation stages (:class:`InitStage`) come first, each with its own
    optimizer; the run's state lives in :class:`RunState`."""

    def __init__(self, method: Method, data: DataBundle, sched: DictConfig, engine: DictConfig, seed: int,
                 ckpt: Path, label: str, on_step: Callable[[int, int], None] | None, fast: FastPath,
                 batches: Callable[..., Iterator] | None = None, pacer: Pacer | None = None) -> None:
        from kdbench.compute import distributed as ddp

        self.method, self.data, self.sched, self.seed, self.ckpt = method, data, sched, seed, ckpt
        self.label, self.on_step, self.fast, self.device = label, on_step, fast, data.device
        self.autocast, self.channels_last = fast.autocast(self.device), fast.channels_last
        self.bs = int(sched.batch_size)
        self.eval_bs, self.show = int(engine.eval_batch_size), _progress_enabled(engine.progress)
        self.log_every = max(1, int(engine.log_every))
        self.n_proc, self.main = ddp.world(), ddp.is_main()
        self.stages = [s for s in method.init_stages() if s.epochs != 0]
        self.plan = plan_epochs(self.stages, int(sched.epochs))
        self.epochs = int(sched.epochs)  # the schedule's; len(self.plan) counts every stage's
        apply_fast_path(method, fast)
        self.optimizers: dict[str, Any] = {}
        if self.n_proc > 1:
            if self.bs % self.n_proc:
                raise KDBenchError(f"schedule.batch_size={self.bs} does not split over {self.n_proc} processes")
            self.bs //= self.n_proc  # per-process batch: the global batch stays the schedule's
            for t in [*method.parameters(), *method.buffers()]:
                torch.distributed.broadcast(t.data, 0)
        self.steps_per_epoch = math.ceil(math.ceil(data.split_len("train") / self.n_proc) / self.bs)
        self.watch = DivergenceWatch(self.device)
        # a run alone catches the signals itself; a cohort's members share the cohort's catcher
        self.own_stop = pacer is None
        self.stop = StopOnInterrupt() if pacer is None else pacer.stop
        self.teacher_test_logits = None
        self.on_epoch: Callable[[int, str, dict[str, Any]], None] | None = None
        self.on_start: Callable[[], None] | None = None
        self.batch_source: Callable[..., Iterator] = batches if batches is not None else data.train_batches
        self.waited: Callable[[], float] = pacer.waited if pacer is not None else (lambda: 0.0)
        self.cohort_size: int | None = pacer.members if pacer is not None else None

    def optimizer(self, stage: InitStage | None):
        """The stage's optimizer, made on first use: the main stage's over the method's trainable
        parameters, an initialisation stage's over its modules only."""
        from kdbench.compute import distributed as ddp

        name = stage.name if stage is not None else MAIN_STAGE
        if name not in self.optimizers:
            params = list(self.method.trainable_parameters(None if stage is None else stage.modules))
            if not params:
                raise KDBenchError(f"method {self.method.name!r}: stage {name!r} has no trainable parameters")
            # DOT (a method's ``optimizer=dot``) trains the main stage; initialisation stages keep SGD
            opt = build_optimizer(params, self.sched, self.fast.optimizer_impl,
                                  self.method.dot_delta if stage is None else None)
            self.optimizers[name] = ddp.GradSync(opt) if self.n_proc > 1 else opt
        return self.optimizers[name]

    def _restore(self, resume: bool) -> RunState:
        if not self.ckpt.exists():
            return RunState()
        if not resume:
            raise KDBenchError(f"a checkpoint of this run exists at {self.ckpt}: pass resume=true to continue "
                               "it, or delete the file to start over")
        state = RunState.load(self.ckpt, self.method, self.device, self.n_proc)
        if state.epoch < len(self.plan):
            at = self.plan[state.epoch]
            if at.name == state.optimizer_stage:  # else a stage ended there: its successor starts afresh
                self.optimizer(at.stage).load_state_dict(state.optimizer)
        elif state.epoch > len(self.plan):
            raise KDBenchError(f"the checkpoint {self.ckpt} has {state.epoch} epochs done, more than this run's "
                               f"{len(self.plan)}: delete it to start over, or pass force=true")
        state.optimizer = None
        log.info("%sresuming from epoch %d%s of %d (%s)", self.label, state.epoch,
                 f", step {state.partial['step']}" if state.partial else "", len(self.plan), self.ckpt)
        return state

    def _teacher_predictions(self, split: str) -> Tensor:
        """The frozen teacher's logits on ``split``, once per teacher object (a cohort's members share one)."""
        teacher, key = self.method.teacher, (split, self.eval_bs, self.fast.amp, self.channels_last)
        if key not in teacher.predictions:
            teacher.predictions[key] = predict(teacher, self.data, split, self.eval_bs, self.autocast,
                                               self.channels_last)[0]
        return teacher.predictions[key]

    def steps(self, resume: bool) -> Steps[FitResult]:
        """The whole run, yielding after every optimisation step (see :func:`fit_steps`)."""
        try:  # from here on the Ctrl-C handlers are restored whatever happens (a refused checkpoint too)
            state = self._restore(resume)
            start = state.epoch
            if self.method.teacher is not None and self.main:  # fixed: for agreement and KL on the test split
                self.teacher_test_logits = self._teacher_predictions("test")
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            for n in range(start, len(self.plan)):
                at = self.plan[n]
                lr = lr_at(at.local, self.sched) if at.stage is None else self._stage_lr(at.stage)
                tally, epoch_time = yield from self.train_epoch(n, at, lr, state)
                self.end_epoch(n, at, lr, tally, epoch_time, state)
        finally:
            if self.own_stop:
                self.stop.restore()  # also when an exception ends training
            self.method.stage = MAIN_STAGE
        if self.channels_last:  # the trained models back to the default layout; a frozen teacher stays as it is
            for m in self.method.trainable_modules():  # (a cohort's other members may still be using it)
                m.to(memory_format=torch.contiguous_format)
        h = state.history
        fast = self.fast.as_dict()
        if self.cohort_size is not None:  # how it ran, for reading its timing: not part of the experiment
            fast["cohort"] = {"members": self.cohort_size}
        return FitResult(fast_path=fast, peak_memory=measure_peak_memory(self.device), history=h,
                         last=epoch_summary(h, len(h) - 1, self.method), selected=select_epoch(h, self.method),
                         train_time_s=state.train_time, images_per_s=state.images_seen / max(state.train_time, 1e-9),
                         epochs=self.epochs, resumed_from_epoch=start, init_history=state.init_history,
                         init_stages=[{"name": s.name, "epochs": s.epochs, "lr": self._stage_lr(s)}
                                      for s in self.stages])

    def _stage_lr(self, stage: InitStage) -> float:
        """An initialisation stage's constant learning rate: its own, else the schedule's base rate."""
        return float(self.sched.lr if stage.lr is None else stage.lr)

    def train_epoch(self, n: int, at: EpochPlan, lr: float, state: RunState) -> Steps[tuple[Tally, float]]:
        """The epoch's optimisation steps; Ctrl-C stops after a step with every process's share saved."""
        from kdbench.compute import distributed as ddp

        ddp.broadcast_buffers(self.method)  # BatchNorm statistics from rank 0
        optimizer = self.optimizer(at.stage)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(derive_seed(self.seed, "epoch-rng", at.data_epoch))  # method-side randomness
        self.method.stage = self.watch.stage = at.name
        self.method.train()
        tally, state.partial = Tally.start(self.device, state.partial), None
        t0, w0 = time.perf_counter(), self.waited()
        span = self.epochs if at.stage is None else at.stage.epochs
        what = "epoch" if at.stage is None else f"{at.name} epoch"
        bar = _bar(self.show, self.steps_per_epoch, f"{self.label}{what} {at.local + 1}/{span}")
        for step, batch in enumerate(self.batch_source(self.bs, self.seed, at.data_epoch,
                                                       paired=self.method.paired_batches)):
            if step < tally.first_step:
                continue  # cut and augmented again so the random streams line up; not trained on
            if self.on_start is not None:
                self.on_start()
                self.on_start = None
            out = train_one_step(self.method, batch, at.local, optimizer, self.autocast, self.channels_last)
            self.watch.push(at.local, step, out.losses, state.history)
            tally.add(out, batch)
            if self.on_step is not None:
                self.on_step(n, step)
            checkpoint_point = (step + 1) % self.log_every == 0 or step + 1 == self.steps_per_epoch
            if self.stop.now(self.device, checkpoint_point):
                ranks = ddp.gather_objects(tally.share())  # each process's share of the epoch so far
                if self.main:
                    elapsed = tally.time_before + time.perf_counter() - t0 - (self.waited() - w0)
                    state.save(self.ckpt, self.method, optimizer, n,
                               {"step": step + 1, "time_s": elapsed, "ranks": ranks}, at.name)
                ddp.barrier()  # nobody exits before the checkpoint is on disk
                if self.own_stop:
                    self.stop.hand_over()
                raise KeyboardInterrupt(f"stopped after {what} {at.local + 1}, step {step + 1}; "
                                        f"checkpoint {self.ckpt}")
            if bar is not None and checkpoint_point:
                _show_progress(bar, tally, step + 1, time.perf_counter() - t0)
            yield
        self.watch.poll(state.history, wait=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if bar is not None:
            bar.close()
        return tally, time.perf_counter() - t0 - (self.waited() - w0) + tally.time_before

    def end_epoch(self, n: int, at: EpochPlan, lr: float, tally: Tally, epoch_time: float,
                  state: RunState) -> None:
        """Totals over processes, evaluation (rank 0; the others receive its numbers), log, checkpoint.
        Initialisation epochs are logged and checkpointed but not evaluated (the student is not yet
        trained to classify)."""
        tally.reduce(self.device)
        state.train_time += epoch_time
        state.images_seen += tally.seen
        row: dict[str, Any] = {
            "epoch": at.local + 1, "lr": lr, "time_s": epoch_time, "images_per_s": tally.seen / max(epoch_time, 1e-9),
            "train_loss": {k: v.item() / tally.seen for k, v in tally.sums.items()},
            "train_top1": None if tally.no_logits else 100.0 * tally.correct.item() / tally.seen,
        }
        if at.stage is not None:
            state.init_history.append({"stage": at.name, **row})
            log.info("%s%s epoch %d/%d lr %.4g loss %s | %.0f img/s", self.label, at.name, at.local + 1,
                     at.stage.epochs, lr, {k: round(v, 4) for k, v in row["train_loss"].items()},
                     row["images_per_s"])
        else:
            if self.main:
                for name, model in self.method.eval_models().items():
                    val = evaluate(model, self.data, "val", self.eval_bs, self.autocast, self.channels_last) \
                        if self.data.split_len("val") else None
                    test = evaluate(model, self.data, "test", self.eval_bs, self.autocast, self.channels_last,
                                    self.teacher_test_logits, True)
                    row[name] = {"val": val, "test": test}
            if self.n_proc > 1:
                shared = [row]
                torch.distributed.broadcast_object_list(shared, 0)
                row = shared[0]
            state.history.append(row)
            primary = next(iter(self.method.eval_models()))
            log.info("%sepoch %d/%d lr %.4g loss %s train %.2f | val %s test %.2f | %.0f img/s", self.label,
                     at.local + 1, self.epochs, lr, {k: round(v, 4) for k, v in row["train_loss"].items()},
                     row["train_top1"], f"{row[primary]['val']['top1']:.2f}" if row[primary]["val"] else "-",
                     row[primary]["test"]["top1"], row["images_per_s"])
        if self.main:
            state.save(self.ckpt, self.method, self.optimizer(at.stage), n + 1, stage=at.name)
            if self.on_epoch is not None:
                self.on_epoch(n + 1, at.name, row)


def _show_progress(bar, tally: Tally, done: int, elapsed: float) -> None:
    post = {k: f"{v.item() / tally.seen:.3f}" for k, v in tally.sums.items()}
    if not tally.no_logits:
        post["acc"] = f"{100.0 * tally.correct.item() / tally.seen:.1f}"
    post["img/s"] = f"{tally.seen / max(elapsed, 1e-9):.0f}"
    bar.set_postfix(post, refresh=False)
    bar.update(done - bar.n)


def _bar(show: bool, total: int, desc: str):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
