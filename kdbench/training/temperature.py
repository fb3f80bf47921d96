"""A learnable distillation temperature under a curriculum: CTKD (Li et al., "Curriculum Temperature for
Knowledge Distillation", AAAI 2023), shared by every method that softens logits by a temperature.

The temperature is ``t_start + t_end * sigmoid(theta)`` with one learnable ``theta`` (their "global"
temperature). Its gradient passes a reversal whose strength ``lambda`` follows a cosine from ``lambda_max`` (0)
to ``lambda_min`` (-1) over the first ``loops`` epochs and stays there: the optimizer's step on ``theta`` then
*raises* the distillation loss, so the student meets ever harder targets as training goes on.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

#: how a method's distillation temperature is set: ``fixed`` (its ``temperature``) or learned as CTKD learns it
TemperatureSchedule = Literal["fixed", "ctkd"]


class _ScaledGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` (negative: a gradient reversal)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class CurriculumTemperature(nn.Module):
    """CTKD's global temperature. Defaults are the authors' CIFAR settings (their ``--t_start 1 --t_end 20
    --decay_max 0 --decay_min -1 --decay_loops 10``, cosine); ``theta`` starts at 1, as theirs does."""

    def __init__(self, t_start: float = 1.0, t_end: float = 20.0, loops: int = 10,
                 lambda_max: float = 0.0, lambda_min: float = -1.0) -> None:
        super().__init__()
        self.t_start, self.t_end, self.loops = t_start, t_end, loops
        self.lambda_max, self.lambda_min = lambda_max, lambda_min
        self.theta = nn.Parameter(torch.ones(1))

    def strength(self, epoch: int) -> float:
        """The reversal's lambda in ``epoch`` (0-based; the authors count from 1 and so reach lambda_min at
        their epoch ``loops``, our ``loops - 1``)."""
        i = min(max(epoch + 1, 0), self.loops)
        return (math.cos(i * math.pi / self.loops) + 1.0) / 2 * (self.lambda_max - self.lambda_min) + self.lambda_min

    def forward(self, epoch: int) -> Tensor:
        """The temperature for this epoch's steps, a 0-d tensor that carries the gradient to ``theta``."""
        theta = _ScaledGradient.apply(self.theta, self.strength(epoch))
        return (self.t_start + self.t_end * torch.sigmoid(theta)).squeeze(0)
