"""The teacher of a distillation as one object: fixed weights, always in eval mode, never in autograd.

It owns everything that follows from being frozen, so methods and the engine need not know:
the forward pass without autograd history (under ``torch.inference_mode`` on the fast path,
each output field copied to a normal tensor on first read, since losses such as KL and MSE save
their target for backward), BatchNorm folding, compilation, and staying out of checkpoints (the
teacher cache holds it, checked by sha256). Methods call it -- ``self.teacher(x)`` or
``self.teacher_forward(x)`` -- and nothing else; the engine calls :meth:`prepare` once.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.models import FeatureSpec, KDModel, ModelOutput
from kdbench.models.fold import fold_batchnorm

log = logging.getLogger(__name__)


def _copy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


class _CopiedOnRead:
    """A ModelOutput made in inference mode; each field is copied out of it on first read."""

    def __init__(self, out: ModelOutput) -> None:
        self._out, self._copies = out, {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._copies:
            self._copies[name] = _copy(getattr(self._out, name))
        return self._copies[name]


class FrozenTeacher(nn.Module):
    """A frozen model: ``train()`` keeps it in eval mode, its parameters never require grad."""

    def __init__(self, model: KDModel) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.inference_mode = False  # set by prepare(); off, the forward runs under no_grad
        self.folded = 0  # BatchNorm layers folded into convolutions by prepare()
        self._prepared: tuple | None = None  # prepare()'s arguments, once done
        self._memo: list | None = None  # shared by a cohort: [input, output] of the last forward
        # its logits on a whole split, by (split, batch size, precision, channels_last): computed by the first
        # run that asks, reused by the other members of a cohort
        self.predictions: dict[tuple, Tensor] = {}

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)  # BatchNorm statistics never move

    def share(self) -> None:
        """Serve several methods (a cohort trained in lockstep): a forward on the very tensor of the last one
        returns its outputs again instead of recomputing them, each caller getting its own copies."""
        self._memo = []

    def forward(self, x: Tensor) -> ModelOutput:
        if self._memo is not None:
            if self._memo and self._memo[0] is x:  # the same batch, already run for another member
                return _CopiedOnRead(self._memo[1])  # type: ignore[return-value]
            out = self._compute(x)
            self._memo[:] = [x, out]  # holding x keeps its identity from being reused
            return _CopiedOnRead(out)  # type: ignore[return-value]
        out = self._compute(x)
        return _CopiedOnRead(out) if self.inference_mode else out  # type: ignore[return-value]

    def _compute(self, x: Tensor) -> ModelOutput:
        if not self.inference_mode:
            with torch.no_grad():
                return self.model(x)
        with torch.inference_mode():
            return self.model(x)

    def feature_spec(self, input_shape: tuple[int, ...]) -> FeatureSpec:
        return self.model.feature_spec(input_shape)

    def prepare(self, input_shape: tuple[int, ...], *, fold_bn: bool, inference_mode: bool,
                memory_format: torch.memory_format | None = None, compile: bool = False) -> None:
        """The engine's fast path for the teacher, once before training: fold BatchNorms (checked, see
        :mod:`kdbench.models.fold`), then memory format, inference mode and compilation (static shapes).
        Done once: a teacher shared by a cohort is prepared by its first member."""
        args = (tuple(input_shape), fold_bn, inference_mode, memory_format, compile)
        if self._prepared is not None:
            if self._prepared != args:
                raise RuntimeError(f"a shared teacher was prepared with {self._prepared}, now asked for {args}")
            return
        self._prepared = args
        if fold_bn:
            self.folded = fold_batchnorm(self.model, input_shape)
            log.debug("folded %d BatchNorm layers into the teacher's convolutions", self.folded)
        if memory_format is not None:
            self.model.to(memory_format=memory_format)
        self.inference_mode = inference_mode
        if compile:
            # Static shapes: one graph per batch size (train, last batch, eval); inductor's frozen-weight
            # convolutions can fail a stride check under dynamic batch sizes with channels_last.
            self.model.compile(dynamic=False)


def frozen_state_prefixes(module: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of every frozen teacher inside ``module`` (never checkpointed)."""
    return tuple(f"{name}." for name, m in module.named_modules() if isinstance(m, FrozenTeacher) and name)
