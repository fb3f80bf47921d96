"""The training loop: method-agnostic, device-resident, resumable bit-for-bit.

Per epoch: set the learning rate from the schedule, seed the epoch's global RNG
from (seed, epoch), run ``method.step`` on every batch, sum its named losses,
step the optimizer, evaluate every model of ``method.eval_models()`` on the
validation and test splits, and write a checkpoint atomically. Because every
epoch's randomness is derived from (seed, epoch), a run resumed from a
checkpoint reproduces the uninterrupted run exactly (on CPU).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from kdbench.compute.seeding import derive_seed
from kdbench.core.errors import KDBenchError
from kdbench.data import DataBundle
from kdbench.experiment.identity import PRECISIONS, milestone_epochs, resolve_precision
from kdbench.experiment.records import atomic_write_bytes
from kdbench.training.method import MAIN_STAGE, InitStage, Method

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def lr_at(epoch: int, sched: DictConfig) -> float:
    """Learning rate for ``epoch`` (0-based), set once at the start of the epoch as in the CRD code."""
    if sched.lr_schedule == "multistep":
        return float(sched.lr) * float(sched.gamma) ** sum(epoch >= m for m in milestone_epochs(sched))
    if sched.lr_schedule == "cosine":
        return 0.5 * float(sched.lr) * (1 + math.cos(math.pi * epoch / int(sched.epochs)))
    raise KDBenchError(f"schedule.lr_schedule={sched.lr_schedule!r} is not one of: multistep, cosine")


def build_optimizer(params, sched: DictConfig, impl: str = "for_loop") -> torch.optim.Optimizer:
    """SGD as the schedule says; ``impl`` picks PyTorch's fused, foreach or per-tensor kernels (same math)."""
    if sched.optimizer != "sgd":
        raise KDBenchError(f"schedule.optimizer={sched.optimizer!r} is not one of: sgd")
    kw = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    return torch.optim.SGD(list(params), lr=float(sched.lr), momentum=float(sched.momentum),
                           weight_decay=float(sched.weight_decay), nesterov=bool(sched.nesterov), **kw)


@dataclass(frozen=True)
class FastPath:
    """The engine switches resolved for a device (recorded with every run)."""

    amp: str              # fp32 | bf16
    channels_last: bool
    compile: str          # off | teacher | all
    optimizer_impl: str   # fused | foreach | for_loop
    fold_teacher_bn: bool  # the frozen teacher's BatchNorms folded into its convs
    teacher_inference_mode: bool  # teacher forward in inference_mode (outputs copied on read)

    def autocast(self, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
        if self.amp == "bf16":
            return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext

    def as_dict(self) -> dict[str, Any]:
        return {"amp": self.amp, "channels_last": self.channels_last, "compile": self.compile,
                "optimizer_impl": self.optimizer_impl, "fold_teacher_bn": self.fold_teacher_bn,
                "teacher_inference_mode": self.teacher_inference_mode}


def _switch(engine: DictConfig, key: str, allowed: tuple = ("auto", True, False)) -> Any:
    """``engine.<key>``, checked against ``allowed`` ("auto" is truthy: on)."""
    value = engine.get(key, "auto")
    if value not in allowed:
        raise KDBenchError(f"engine.{key}={value!r} is not one of: {', '.join(str(a).lower() for a in allowed)}")
    return value


def resolve_fast_path(engine: DictConfig, device: torch.device, precision: str = "auto") -> FastPath:
    """Defaults where safe: the protocol's precision (``auto``: bf16 autocast on CUDA, fp32 on
    CPU -- an experiment setting, not an engine switch); channels_last everywhere (same
    math, faster convolutions); the frozen teacher's BatchNorms folded into its convs and its
    forward in inference mode; fused SGD on CUDA, foreach on CPU; torch.compile only when asked
    (it did not help on our CPU)."""
    cuda = device.type == "cuda"
    if precision not in PRECISIONS:
        raise KDBenchError(f"protocol.precision={precision!r} is not one of: {', '.join(PRECISIONS)}")
    impl = _switch(engine, "optimizer_impl", ("auto", "fused", "foreach", "for_loop"))
    return FastPath(amp=resolve_precision(precision, device.type),
                    channels_last=bool(_switch(engine, "channels_last")),
                    compile=_compile_setting(engine.get("compile", False)),
                    optimizer_impl=("fused" if cuda else "foreach") if impl == "auto" else impl,
                    fold_teacher_bn=bool(_switch(engine, "fold_teacher_bn")),
                    teacher_inference_mode=bool(_switch(engine, "teacher_inference_mode")))


def _compile_setting(value: Any) -> str:
    if value in (False, None, "off"):
        return "off"
    if value in (True, "all"):
        return "all"
    if value == "teacher":
        return "teacher"
    raise KDBenchError(f"engine.compile={value!r} is not one of: false, teacher, true")


@contextlib.contextmanager
def compile_context(fast: FastPath) -> Iterator[None]:
    """Inductor settings while a run's compiled graphs are built and run.

    With ``engine.compile=teacher`` the only compiled module is the frozen
    teacher, so its weights may be frozen into the graph: inductor then folds
    them and uses pre-packed oneDNN convolutions (measured in README). Never with students, whose
    weights change every step: a frozen graph would keep computing with the
    first step's weights. (Inductor reads this from its global config; a
    per-module ``options={"freezing": True}`` was silently ignored.)
    """
    if fast.compile != "teacher":
        yield
        return
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


def apply_fast_path(method: Method, fast: FastPath) -> None:
    """BatchNorm folding of the frozen teacher, then memory format and compilation of every
    model the method owns (the checkpointed state -- everything but the teacher -- is unchanged)."""
    memory_format = torch.channels_last if fast.channels_last else None
    if method.teacher is not None and method.ctx.teacher_spec is not None:
        # weights frozen into its graphs under compile_context
        method.teacher.prepare(method.ctx.teacher_spec.input_shape, fold_bn=fast.fold_teacher_bn,
                               inference_mode=fast.teacher_inference_mode, memory_format=memory_format,
                               compile=fast.compile != "off")
    if memory_format is not None:
        method.to(memory_format=memory_format)
    if fast.compile == "all":
        for m in {id(m): m for m in [*method.eval_models().values(), method.student]}.values():
            m.compile()


def train_one_step(method: Method, batch, epoch: int, optimizer: torch.optim.Optimizer,
                   autocast: Callable[[], contextlib.AbstractContextManager], channels_last: bool):
    """The hot path: one optimisation step, no host-device synchronisation."""
    if channels_last:
        batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        if batch.pair_images is not None:
            batch.pair_images = batch.pair_images.contiguous(memory_format=torch.channels_last)
    return method.train_step(batch, epoch, optimizer, autocast)


@torch.no_grad()
def predict(model: nn.Module, data: DataBundle, split: str, batch_size: int,
            autocast: Callable[[], contextlib.AbstractContextManager], channels_last: bool) -> tuple[Tensor, Tensor]:
    """(logits, labels) of ``model`` over ``split``, in order, on the data's device."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in data.eval_batches(split, batch_size):
        x = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
        with autocast():
            logits.append(model(x).logits.float())
        labels.append(batch.labels)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> Tensor:
    """ECE with equal-width confidence bins (Guo et al. 2017), as a fraction in [0, 1]."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    which = torch.bucketize(conf, edges[1:-1], right=True)  # bin b holds conf in (e_b, e_{b+1}]
    acc = torch.zeros(bins, device=probs.device).index_add_(0, which, correct)
    cf = torch.zeros(bins, device=probs.device).index_add_(0, which, conf)
    return ((acc - cf).abs().sum() / max(len(labels), 1)) if len(labels) else torch.zeros(())


def classification_metrics(logits: Tensor, labels: Tensor, teacher_logits: Tensor | None = None,
                           extended: bool = False) -> dict[str, float | None]:
    """Top-1/top-5 (%), mean CE; with ``extended``: ECE (%, 15 bins), and against a teacher:
    top-1 agreement (%) and KL(teacher || student) in nats per sample."""
    n = max(len(labels), 1)
    k = min(5, logits.shape[1])
    hit = logits.topk(k, dim=1).indices == labels[:, None]
    values = [hit[:, 0].float().sum() * 100 / n, hit.any(1).float().sum() * 100 / n,
              F.cross_entropy(logits, labels, reduction="sum") / n]
    names = ["top1", "top5", "loss"]
    if extended:
        log_p = F.log_softmax(logits, 1)
        values.append(expected_calibration_error(log_p.exp(), labels) * 100)
        names.append("ece")
        if teacher_logits is not None:
            log_q = F.log_softmax(teacher_logits, 1)
            values.append((logits.argmax(1) == teacher_logits.argmax(1)).float().sum() * 100 / n)
            values.append(F.kl_div(log_p, log_q, reduction="sum", log_target=True) / n)
            names += ["teacher_agreement", "kl_teacher_student"]
    out: dict[str, float | None] = dict(zip(names, torch.stack(values).tolist()))  # one host sync
    if extended and teacher_logits is None:
        out.update(teacher_agreement=None, kl_teacher_student=None)
    return out


def evaluate(model: nn.Module, data: DataBundle, split: str, batch_size: int,
             autocast: Callable[[], contextlib.AbstractContextManager], channels_last: bool,
             teacher_logits: Tensor | None = None, extended: bool = False) -> dict[str, float | None]:
    """Metrics of ``model`` on ``split`` (see :func:`classification_metrics`)."""
    logits, labels = predict(model, data, split, batch_size, autocast, channels_last)
    return classification_metrics(logits, labels, teacher_logits, extended)


class RunDiverged(Exception):
    """A loss became NaN or Inf: the run cannot continue. Carries where it happened (the epoch
    within its stage)."""

    def __init__(self, epoch: int, step: int, history: list[dict[str, Any]], stage: str = MAIN_STAGE) -> None:
        where = "" if stage == MAIN_STAGE else f" of the initialisation stage {stage!r}"
        super().__init__(f"the loss became non-finite at epoch {epoch + 1}{where}, step {step + 1}")
        self.epoch, self.step, self.history, self.stage = epoch, step, history, stage


class StopOnInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the current step, checkpoint it, stop.

    The same request again stops at once. Under torchrun the launcher forwards the
    signal to every process (a cluster's pre-emption SIGTERM too); the processes agree
    on the step to stop at -- at the steps where the progress bar reads the device
    anyway (every ``engine.log_every``) -- so every rank checkpoints the same step.

    SIGUSR1/SIGUSR2 are caught only where a Python handler already waits for them: submitit's
    "time limit near" signal, on which it requeues the job. The run checkpoints its step first, then
    :meth:`hand_over` gives the signal to that handler (which requeues and exits), so the requeued job
    resumes from this very step rather than from the last epoch.
    """

    def __init__(self) -> None:
        import signal
        import threading

        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
            for sig in (getattr(signal, "SIGUSR1", None), getattr(signal, "SIGUSR2", None)):
                if sig is not None and callable(signal.getsignal(sig)):
                    self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        import os
        import signal

        if self.requested and signum in (signal.SIGINT, signal.SIGTERM):  # asked twice: stop now
            self.restore()
            if signum == signal.SIGINT:
                signal.default_int_handler(signum, frame)
            os.kill(os.getpid(), signum)
            return
        if self.requested:
            return
        self.requested, self.signum = True, signum
        log.warning("%s: stopping after this step with a checkpoint%s", signal.Signals(signum).name,
                    " (send it again to stop at once)" if signum in (signal.SIGINT, signal.SIGTERM) else
                    ", then handing the signal on (a job scheduler's requeue)")

    def hand_over(self) -> None:
        """After the checkpoint: a caught SIGUSR1/2 goes to the handler it was meant for (submitit requeues
        the job and exits); for Ctrl-C and SIGTERM this does nothing. Restores the handlers."""
        import signal

        old = self._old.get(self.signum) if self.signum is not None else None
        self.restore()
        if self.signum not in (None, signal.SIGINT, signal.SIGTERM) and callable(old):
            old(self.signum, None)

    def now(self, device: torch.device, check_point: bool) -> bool:
        """Whether to stop after this step: alone, as soon as asked; under data parallelism, at
        check points only, and then if any process was asked."""
        from kdbench.compute import distributed as ddp

        if ddp.world() == 1:
            return self.requested
        if not check_point:
            return False
        flag = torch.tensor([float(self.requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.requested = bool(flag.item())
        return self.requested

    def restore(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class _DivergenceWatch:
    """Per-step non-finite check without stalling the device.

    On CPU the check is immediate. On CUDA each step's flag is copied to the
    host asynchronously and read once the copy has landed (a step or two
    later), so the step that diverged is reported exactly without a host sync
    inside the step.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.stage = MAIN_STAGE
        self.pending: list[tuple[int, int, Tensor, Any]] = []

    def push(self, epoch: int, step: int, losses: dict[str, Tensor], history) -> None:
        finite = torch.isfinite(torch.stack([v.detach().float() for v in losses.values()]).sum())
        if not self.cuda:
            if not bool(finite):
                raise RunDiverged(epoch, step, history, self.stage)
            return
        flag = finite.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((epoch, step, flag, event))
        self.poll(history, wait=False)

    def poll(self, history, wait: bool) -> None:
        while self.pending and (wait or self.pending[0][3].query()):
            epoch, step, flag, event = self.pending.pop(0)
            event.synchronize()
            if not bool(flag):
                raise RunDiverged(epoch, step, history, self.stage)


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


def measure_peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of training: CUDA allocator peak on GPU; the process's max RSS on CPU."""
    if device.type == "cuda":
        return {"bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda_max_allocated"}
    import resource

    return {"bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "kind": "cpu_max_rss_process"}


def _progress_enabled(setting: Any) -> bool:
    if setting == "auto":
        return sys.stderr.isatty()
    return bool(setting)


def fit(method: Method, data: DataBundle, sched: DictConfig, engine: DictConfig, seed: int,
        run_dir: Path, resume: bool, label: str = "",
        on_step: Callable[[int, int], None] | None = None, precision: str = "auto",
        on_epoch: Callable[[int, str, dict[str, Any]], None] | None = None, cohort: Any = None) -> FitResult:
    """Train ``method`` on ``data`` for ``sched.epochs`` epochs and evaluate every epoch.

    ``precision`` is the protocol's (auto | fp32 | bf16). ``on_step(epoch, step)`` is called
    after each optimizer step (tests use it to simulate a kill mid-epoch); ``on_epoch(n, stage, row)``
    after each epoch's row is complete, on the main process (live trackers, :mod:`kdbench.training.tracking`).
    ``cohort`` (a :class:`kdbench.orchestration.cohort.Member`) trains this run in lockstep with others: it supplies the
    batches and takes turns (:mod:`kdbench.orchestration.cohort`); the arithmetic is the solo run's.
    """
    fast = resolve_fast_path(engine, data.device, precision)
    with compile_context(fast):
        loop = _Loop(method, data, sched, engine, seed, Path(run_dir) / CHECKPOINT, label, on_step, fast)
        loop.on_epoch = on_epoch
        if cohort is not None:
            cohort.attach(loop)
        return loop.run(resume)


@dataclass
class RunState:
    """A run between epochs: what a checkpoint holds and a resume restores. ``epoch`` counts finished
    epochs of every stage (initialisation stages first). ``partial`` is set when Ctrl-C stopped an
    epoch midway: every process's share of it (sums, images, random state). ``optimizer`` is the
    state of the optimizer of stage ``optimizer_stage`` when loaded from a checkpoint."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time: float = 0.0
    images_seen: int = 0
    partial: dict[str, Any] | None = None
    init_history: list[dict[str, Any]] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    optimizer_stage: str = MAIN_STAGE

    def save(self, path: Path, method: Method, optimizer, epoch: int, partial: dict[str, Any] | None = None,
             stage: str = MAIN_STAGE) -> None:
        state = {"epoch": epoch, "method": method.checkpoint_state(), "optimizer": optimizer.state_dict(),
                 "optimizer_stage": stage, "init_history": self.init_history,
                 "history": self.history, "train_time": self.train_time, "images_seen": self.images_seen}
        _save_checkpoint(path, {**state, "partial": partial} if partial is not None else state)

    @classmethod
    def load(cls, path: Path, method: Method, device: torch.device, n_proc: int) -> "RunState":
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            if not isinstance(state, dict) or not {"method", "optimizer", "history", "epoch"} <= set(state):
                raise ValueError("not a kdbench checkpoint")
        except Exception as exc:  # truncated, foreign, or refused by weights_only: never run code from a file
            raise KDBenchError(f"the checkpoint {path} cannot be read ({type(exc).__name__}; truncated or "
                               "not written by kdbench): delete it to start this run over, or pass force=true"
                               ) from None
        method.load_checkpoint_state(state["method"])
        partial = state.get("partial")  # stopped mid-epoch (Ctrl-C): continue at the next step
        if partial is not None and len(partial["ranks"]) != n_proc:
            raise KDBenchError(f"{path} stopped mid-epoch with {len(partial['ranks'])} process(es); "
                               f"resume it with as many (torchrun --nproc_per_node={len(partial['ranks'])})")
        return cls(state["epoch"], state["history"], state["train_time"], state["images_seen"], partial,
                   state.get("init_history", []), state["optimizer"], state.get("optimizer_stage", MAIN_STAGE))


@dataclass
class _Tally:
    """One process's running totals of an epoch, kept on the device (no host sync in the step)."""

    sums: dict[str, Tensor]
    correct: Tensor
    seen: int = 0
    first_step: int = 0
    time_before: float = 0.0
    no_logits: bool = False

    @classmethod
    def start(cls, device: torch.device, partial: dict[str, Any] | None) -> "_Tally":
        if partial is None:
            return cls({}, torch.zeros((), device=device))
        from kdbench.compute import distributed as ddp

        mine = partial["ranks"][ddp.rank()]  # the rest of an epoch stopped by Ctrl-C
        torch.set_rng_state(mine["rng"])
        return cls({k: torch.tensor(v, device=device) for k, v in mine["sums"].items()},
                   torch.tensor(mine["correct"], device=device), mine["seen"], partial["step"], partial["time_s"])

    def add(self, out, batch) -> None:
        n = len(batch.labels)
        self.seen += n
        for k, v in out.losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float() * n
        if out.logits is not None:
            self.correct += (out.logits.detach().argmax(1) == batch.labels).sum()
        else:
            self.no_logits = True  # no student forward (an initialisation stage): accuracy not reported

    def share(self) -> dict[str, Any]:
        return {"seen": self.seen, "sums": {k: float(v) for k, v in self.sums.items()},
                "correct": float(self.correct), "rng": torch.get_rng_state()}

    def reduce(self, device: torch.device) -> None:
        """Totals over every process (a no-op for one)."""
        from kdbench.compute import distributed as ddp

        if ddp.world() == 1:
            return
        keys = sorted(self.sums)
        tot = ddp.all_reduce_sum(torch.stack([*(self.sums[k] for k in keys), self.correct.float(),
                                              torch.tensor(float(self.seen), device=device)]))
        self.sums = dict(zip(keys, tot[:len(keys)]))
        self.correct, self.seen = tot[len(keys)], int(tot[-1].item())


@dataclass(frozen=True)
class _EpochPlan:
    """Where a run's n-th epoch falls: its stage, the epoch within the stage, its data epoch."""

    stage: InitStage | None  # None: the main stage (the schedule's epochs)
    local: int
    data_epoch: int  # main epochs use the schedule's epoch index, so every method sees the same
    #                  batches there; initialisation epochs draw their own streams (negative indices)

    @property
    def name(self) -> str:
        return self.stage.name if self.stage is not None else MAIN_STAGE


def plan_epochs(stages: list[InitStage], main_epochs: int) -> list[_EpochPlan]:
    """The run's epochs in order: every initialisation stage's, then the schedule's."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names) or MAIN_STAGE in names:
        raise KDBenchError(f"initialisation stage names must be distinct and not {MAIN_STAGE!r}: {names}")
    plan: list[_EpochPlan] = []
    for s in stages:
        if s.epochs < 0:
            raise KDBenchError(f"initialisation stage {s.name!r} has {s.epochs} epochs; it needs 0 or more")
        plan += [_EpochPlan(s, j, -(len(plan) + j + 1)) for j in range(s.epochs)]
    return plan + [_EpochPlan(None, k, k) for k in range(main_epochs)]


class _Loop:
    """One run's training loop: set-up (fast path, processes), then per epoch a training part
    (:meth:`train_epoch`) and an end-of-epoch part (:meth:`end_epoch`: totals, evaluation, log,
    checkpoint). Initialisation stages (:class:`InitStage`) come first, each with its own
    optimizer; the run's state lives in :class:`RunState`."""

    def __init__(self, method: Method, data: DataBundle, sched: DictConfig, engine: DictConfig, seed: int,
                 ckpt: Path, label: str, on_step: Callable[[int, int], None] | None, fast: FastPath) -> None:
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
        self.watch, self.stop = _DivergenceWatch(self.device), StopOnInterrupt()
        self.teacher_test_logits = None
        self.on_epoch: Callable[[int, str, dict[str, Any]], None] | None = None
        # where training batches come from (a cohort's shared stream), and the seconds this run spent
        # waiting for its turn in a cohort (not its cost: left out of its epoch time)
        self.batch_source: Callable[..., Iterator] = data.train_batches
        self.waited: Callable[[], float] = lambda: 0.0
        self.cohort_size: int | None = None

    def optimizer(self, stage: InitStage | None):
        """The stage's optimizer, made on first use: the main stage's over the method's trainable
        parameters, an initialisation stage's over its modules only."""
        from kdbench.compute import distributed as ddp

        name = stage.name if stage is not None else MAIN_STAGE
        if name not in self.optimizers:
            params = list(self.method.trainable_parameters(None if stage is None else stage.modules))
            if not params:
                raise KDBenchError(f"method {self.method.name!r}: stage {name!r} has no trainable parameters")
            opt = build_optimizer(params, self.sched, self.fast.optimizer_impl)
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

    def run(self, resume: bool) -> FitResult:
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
                tally, epoch_time = self.train_epoch(n, at, lr, state)
                self.end_epoch(n, at, lr, tally, epoch_time, state)
        finally:
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
                         last=_summary(h, len(h) - 1, self.method), selected=_select(h, self.method),
                         train_time_s=state.train_time, images_per_s=state.images_seen / max(state.train_time, 1e-9),
                         epochs=self.epochs, resumed_from_epoch=start, init_history=state.init_history,
                         init_stages=[{"name": s.name, "epochs": s.epochs, "lr": self._stage_lr(s)}
                                      for s in self.stages])

    def _stage_lr(self, stage: InitStage) -> float:
        """An initialisation stage's constant learning rate: its own, else the schedule's base rate."""
        return float(self.sched.lr if stage.lr is None else stage.lr)

    def train_epoch(self, n: int, at: _EpochPlan, lr: float, state: RunState) -> tuple[_Tally, float]:
        """The epoch's optimisation steps; Ctrl-C stops after a step with every process's share saved."""
        from kdbench.compute import distributed as ddp

        ddp.broadcast_buffers(self.method)  # BatchNorm statistics from rank 0
        optimizer = self.optimizer(at.stage)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(derive_seed(self.seed, "epoch-rng", at.data_epoch))  # method-side randomness
        self.method.stage = self.watch.stage = at.name
        self.method.train()
        tally, state.partial = _Tally.start(self.device, state.partial), None
        t0, w0 = time.perf_counter(), self.waited()
        span = self.epochs if at.stage is None else at.stage.epochs
        what = "epoch" if at.stage is None else f"{at.name} epoch"
        bar = _bar(self.show, self.steps_per_epoch, f"{self.label}{what} {at.local + 1}/{span}")
        for step, batch in enumerate(self.batch_source(self.bs, self.seed, at.data_epoch,
                                                       paired=self.method.paired_batches)):
            if step < tally.first_step:
                continue  # cut and augmented again so the random streams line up; not trained on
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
                self.stop.hand_over()
                raise KeyboardInterrupt(f"stopped after {what} {at.local + 1}, step {step + 1}; "
                                        f"checkpoint {self.ckpt}")
            if bar is not None and checkpoint_point:
                _show_progress(bar, tally, step + 1, time.perf_counter() - t0)
        self.watch.poll(state.history, wait=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if bar is not None:
            bar.close()
        return tally, time.perf_counter() - t0 - (self.waited() - w0) + tally.time_before

    def end_epoch(self, n: int, at: _EpochPlan, lr: float, tally: _Tally, epoch_time: float,
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


def _show_progress(bar, tally: _Tally, done: int, elapsed: float) -> None:
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


def _summary(history: list[dict[str, Any]], i: int, method: Method) -> dict[str, Any]:
    row = history[i]
    return {"epoch": row["epoch"], **{name: {"val": row[name]["val"], "test": row[name]["test"]}
                                      for name in method.eval_models()}}


def _select(history: list[dict[str, Any]], method: Method) -> dict[str, Any] | None:
    """The epoch with the best validation top-1 of the primary model (earliest on ties)."""
    primary = next(iter(method.eval_models()))
    if not history or history[0][primary]["val"] is None:
        return None
    best = max(range(len(history)), key=lambda i: (history[i][primary]["val"]["top1"], -i))
    return _summary(history, best, method)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Written whole or not at all; a full disk or read-only folder stops the run without a failure
    record (it is not the run's fault): free space and resume."""
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise KDBenchError(f"could not write the checkpoint {path}: {exc.strerror or exc}; the previous checkpoint "
                           "is intact: make room (or fix permissions) and run again with resume=true") from None
