"""VID: Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019.

- Category / scheme: feature-based / offline.
- For each stage pair (``features[1:]``, post-activation, paired in order) the teacher's map t is
  modelled as a Gaussian whose mean is regressed from the student's map s by three 1x1 convolutions
  (no bias; ReLU between; hidden width = the teacher's channels) and whose variance is learned per
  teacher channel, sigma^2 = softplus(alpha_c) + eps (paper Eq. 6). The loss is the negative
  log-likelihood up to a constant, mean over batch, channels and positions of
  0.5 (log sigma^2 + (t - mu(s))^2 / sigma^2). Where sizes differ the larger map is average-pooled.
- Loss: ``ce`` + ``vid`` = ``beta`` x sum over stages.
- Defaults: beta=1, ce_weight=1 (CRD benchmark ``-a 0 -b 1``); initial variance 5 and eps=1e-5 (the
  authors' code, kept by the CRD benchmark and mdistiller).
- Extra trainable parameters: the regressors and the variances, trained with the student (the paper
  learns the variances and the CRD benchmark optimises them; mdistiller keeps them in a plain list
  outside its optimizer, so they stay at 5 there -- a difference from its VID numbers).
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 74.11, resnet56->resnet20 70.38,
  resnet32x4->resnet8x4 73.09, vgg13->vgg8 71.23, vgg13->mobilenetv2 65.56,
  resnet32x4->shufflenetv1 73.38.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Method, Positive, StepOutput, Weight, full_precision, match_sizes, register_method, require


class VariationalRegressor(nn.Module):
    """Mean and per-channel variance of q(t | s) for one stage pair."""

    def __init__(self, s_channels: int, t_channels: int, init_var: float, eps: float) -> None:
        super().__init__()
        self.mean = nn.Sequential(nn.Conv2d(s_channels, t_channels, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(t_channels, t_channels, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(t_channels, t_channels, 1, bias=False))
        # softplus^-1(init_var - eps): the variance starts at init_var
        self.alpha = nn.Parameter(torch.full((t_channels,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + self.eps


def vid_nll(mu: Tensor, var: Tensor, t: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood (without the constant) of t under N(mu, var per channel)."""
    var = var.view(1, -1, 1, 1)
    return 0.5 * ((t - mu).pow(2) / var + var.log()).mean()


@register_method("vid", category="feature", scheme="offline",
                 description="Ahn et al. 2019: maximise a variational bound on student-teacher mutual information",
                 display="VID", order=6, paper="Ahn et al., CVPR 2019", code="github.com/HobbitLong/RepDistiller")
class VID(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 1.0, ce_weight: Weight = 1.0, init_var: Positive = 5.0,
                 eps: Positive = 1e-5) -> None:
        super().__init__(student, teacher, ctx)
        s, t = ctx.student_spec.stages[1:], ctx.teacher_spec.stages[1:]
        require(len(s) >= 1 and len(t) >= 1, "vid needs at least one stage feature map beyond the stem on both models")
        require(init_var > eps > 0, f"method.init_var must exceed method.eps > 0, got {init_var} and {eps}")
        self.regressors = nn.ModuleList(VariationalRegressor(a.channels, b.channels, init_var, eps)
                                        for a, b in zip(s, t))
        self.beta, self.ce_weight = beta, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        loss = 0.0
        for reg, f_s, f_t in zip(self.regressors, s_out.features[1:], t_out.features[1:]):
            f_s, f_t = match_sizes(f_s, f_t)
            mu = reg.mean(f_s)
            with full_precision(batch.images.device):
                loss = loss + vid_nll(mu.float(), reg.variance().float(), f_t.float())
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "vid": self.beta * loss})
