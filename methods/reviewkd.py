"""ReviewKD: Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021.

- Category / scheme: feature-based / offline.
- Levels: the student's stage outputs (``features[1:]``, post-activation, as mdistiller's default
  ``STU_PREACT=False``) and its pooled embedding as a 1x1 map; the teacher's pre-activation stage
  outputs (``preact_features[1:]``) and its pooled embedding. Student and teacher need as many
  levels; channels and sizes may differ.
- Review by attention-based fusion (ABF), deepest level first: each level's student map goes
  through a 1x1 conv + BN to ``min(512, student embedding width)`` channels; every level but the
  deepest fuses it with the (nearest-upsampled) fused map of the level below through a 1x1 conv
  giving two sigmoid attention maps; the result is resized (nearest) to the teacher's size where
  they differ and mapped to the teacher's channels by a 3x3 conv + BN. The authors hard-code each
  student's channels and sizes; here they are read off the pair's feature shapes (the same numbers
  for the authors' pairs).
- Loss: ``ce`` + ``reviewkd`` = ``w(epoch) * beta * HCL``, the hierarchical context loss: per level,
  MSE of the maps plus MSE after average pooling to 4x4, 2x2 and 1x1 (those smaller than the map),
  weighted 1, 1/2, 1/4, 1/8 and normalised by the weights' sum; summed over levels. The warm-up
  w = min(epoch / warmup, 1) over 1-based epochs (mdistiller's trainer; the authors' script counts
  from 0, so its first epoch has no review loss).
- Defaults: beta=1 (the authors' ``--kd-loss-weight`` default), warmup=20 epochs, ce_weight=1.
  The authors tuned beta per pair (``CIFAR-100/script/reviewKD.sh``): 5 for wrn_40_2->wrn_16_2,
  wrn_40_2->wrn_40_1, wrn_40_2->shufflenetv1, resnet32x4->resnet8x4 (also mdistiller's config),
  resnet32x4->shufflenetv1; 8 for resnet32x4->shufflenetv2; 0.6 for resnet56->resnet20; 1 for
  resnet110->resnet32 -- set in those pair files. The other pairs have no author setting and keep 1.
- Deviation: the authors trained with batch 128, lr 0.1 (0.02 for MobileNet/ShuffleNet), Nesterov;
  kdbench runs every method on the common CRD schedule, as mdistiller does.
- Extra trainable parameters: the ABF modules.
- Reported (ReviewKD paper, CIFAR-100): resnet56->resnet20 71.89, resnet110->resnet32 73.89,
  resnet32x4->resnet8x4 75.63, wrn_40_2->wrn_16_2 76.12, wrn_40_2->wrn_40_1 75.09, vgg13->vgg8 74.84,
  resnet32x4->shufflenetv1 77.45, resnet32x4->shufflenetv2 77.78, wrn_40_2->shufflenetv1 77.14.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Count, Method, Range, StepOutput, Weight, full_precision, register_method, require


class ABF(nn.Module):
    """Attention-based fusion of one student level with the fused level below it."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid))
        self.out = nn.Sequential(nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.attention = nn.Sequential(nn.Conv2d(2 * c_mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.out[0].weight, a=1)

    def forward(self, x: Tensor, below: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(the map compared with the teacher's, the fused map handed to the next shallower level)."""
        x = self.reduce(x)
        if self.attention is not None:
            below = F.interpolate(below, size=x.shape[2:], mode="nearest")
            z = self.attention(torch.cat([x, below], 1))
            x = x * z[:, :1] + below * z[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.out(x), x


def hcl_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Hierarchical context loss summed over levels (see the card)."""
    total = 0.0
    for fs, ft in zip(student, teacher):
        loss, weight, norm = F.mse_loss(fs, ft), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= fs.shape[2]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            norm += weight
        total = total + loss / norm
    return total


def _levels(feats: list[Tensor], embedding: Tensor) -> list[Tensor]:
    return [*feats[1:], embedding[:, :, None, None]]


@register_method("reviewkd", category="feature", scheme="offline",
                 description="Chen et al. 2021: review deeper student levels into shallower ones by attention fusion",
                 display="ReviewKD", order=16, paper="Chen et al., CVPR 2021",
                 code="github.com/megvii-research/mdistiller")
class ReviewKD(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 1.0, warmup: Annotated[int, Range(ge=1)] = 20,
                 ce_weight: Weight = 1.0,
                 max_mid_channels: Count = 512) -> None:
        super().__init__(student, teacher, ctx)
        ss, ts = ctx.student_spec, ctx.teacher_spec
        require(ts.has_preact, f"reviewkd reads the teacher's pre-activation features; {ctx.teacher_arch} has none")
        require(len(ss.stages) == len(ts.stages) and len(ss.stages) >= 2,
                f"reviewkd pairs levels in order: the student has {len(ss.stages) - 1} stages, "
                f"the teacher {len(ts.stages) - 1}")
        c_in = [s.channels for s in ss.stages[1:]] + [ss.embedding_dim]
        c_out = [s.channels for s in ts.stages[1:]] + [ts.embedding_dim]
        self.out_sizes = [(s.height, s.width) for s in ts.stages[1:]] + [(1, 1)]
        mid = min(max_mid_channels, c_in[-1])
        # shallow to deep; every level but the deepest fuses the one below it
        self.abfs = nn.ModuleList(ABF(ci, mid, co, i < len(c_in) - 1) for i, (ci, co) in enumerate(zip(c_in, c_out)))
        self.beta, self.warmup, self.ce_weight = beta, warmup, ce_weight

    def review(self, levels: list[Tensor]) -> list[Tensor]:
        """The student's levels after the review, shallow to deep, shaped as the teacher's."""
        outs: list[Tensor] = []
        below = None
        for abf, x, size in zip(reversed(self.abfs), reversed(levels), reversed(self.out_sizes)):
            y, below = abf(x, below, size)
            outs.insert(0, y)
        return outs

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        reviewed = self.review(_levels(s_out.features, s_out.embedding))
        target = _levels(t_out.preact_features, t_out.embedding)
        ramp = min((epoch + 1) / self.warmup, 1.0)  # the engine's epochs are 0-based, mdistiller's 1-based
        with full_precision(batch.images.device):
            loss = hcl_loss([r.float() for r in reviewed], [t.float() for t in target])
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "reviewkd": ramp * self.beta * loss})
