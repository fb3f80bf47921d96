"""The engine's speed switches: which fast path a run takes on its device (never part of its identity),
how it is applied to a method's models, and the optimisation step itself."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from omegaconf import DictConfig

from kdbench.core.errors import KDBenchError
from kdbench.experiment.identity import PRECISIONS, resolve_precision
from kdbench.training.dot import DistillationOrientedSGD
from kdbench.training.method import Method


def build_optimizer(params, sched: DictConfig, impl: str = "for_loop",
                    dot_delta: float | None = None) -> torch.optim.Optimizer:
    """SGD as the schedule says; ``impl`` picks PyTorch's fused, foreach or per-tensor kernels (same math).
    With ``dot_delta`` (a method trained with DOT), DOT with the schedule's rate, momentum and decay."""
    if sched.optimizer != "sgd":
        raise KDBenchError(f"schedule.optimizer={sched.optimizer!r} is not one of: sgd")
    if dot_delta is not None:
        if bool(sched.nesterov):
            raise KDBenchError("method.optimizer=dot has no Nesterov form: set schedule.nesterov=false")
        m = float(sched.momentum)
        if not (0 <= m - dot_delta and m + dot_delta < 1):
            raise KDBenchError(f"method.dot_delta={dot_delta:g} with schedule.momentum={m:g}: DOT's momenta "
                               f"{m - dot_delta:g} and {m + dot_delta:g} must lie in [0, 1)")
        return DistillationOrientedSGD(list(params), lr=float(sched.lr), momentum=m, delta=float(dot_delta),
                                       weight_decay=float(sched.weight_decay))
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
    (docs/performance.md has what it did where we measured)."""
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
    them and uses pre-packed oneDNN convolutions (docs/performance.md). Never with students, whose
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
