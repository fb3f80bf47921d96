"""FT: Kim et al., "Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS 2018.

- Category / scheme: feature-based / offline.
- Helpers on the last stage's feature maps (``features[-1]``): a *paraphraser*, an autoencoder on
  the teacher's map (three 3x3 convs down to ``rate`` x C channels and three 3x3 transposed convs
  back, LeakyReLU 0.1, no BatchNorm), and a *translator* on the student's map (three 3x3 convs to
  ``rate`` x C_teacher channels, BatchNorm, LeakyReLU 0.1) -- the CRD benchmark's shapes.
- Stages (paper Sec. 3): an initialisation stage ``paraphraser`` of ``init_epochs`` epochs trains the
  paraphraser alone to reconstruct the teacher's map (MSE); the student is not run. Then the
  schedule's epochs train the student and the translator on ``ce`` + ``ft`` = ``beta`` x mean |F_s - F_t|,
  where F_t is the frozen paraphraser's encoding of the teacher's map and F_s the translator's output.
- Factor as the CRD benchmark computes it: each factor map is reduced to the channel mean of its
  squares, flattened and L2-normalised (an attention-map form); where sizes differ the larger is
  average-pooled. Deviation from the paper, which L2-normalises the whole factor tensor; we follow
  the CRD benchmark, whose numbers are the comparison.
- Initialisation learning rate (RepDistiller): 0.01 for CIFAR ResNet and WRN students, otherwise
  the schedule's base rate; ``init_lr`` sets it explicitly.
- Defaults: beta=200, ce_weight=1 (CRD benchmark ``-a 0 -b 200``), rate=0.5, init_epochs=30.
- Extra trainable parameters: the translator (main stage) and the paraphraser (initialisation).
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 73.25, resnet56->resnet20 69.84,
  resnet32x4->resnet8x4 72.86, vgg13->vgg8 70.58, vgg13->mobilenetv2 61.78,
  resnet32x4->shufflenetv1 71.75.
"""
from __future__ import annotations

import re
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import (
    InitStage,
    Method,
    Range,
    StepOutput,
    Weight,
    full_precision,
    match_sizes,
    register_method,
    require,
)

# Students whose paraphraser RepDistiller trains at 0.01 (helper/pretrain.py's list of CIFAR ResNets and WRNs).
_LOW_INIT_LR = re.compile(r"^(resnet(8|14|20|32|44|56|110|8x4|32x4)|wrn_(16|40)_[12])$")


def _convs(channels: list[int], transpose: bool = False, bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cin, cout in zip(channels, channels[1:]):
        layers.append((nn.ConvTranspose2d if transpose else nn.Conv2d)(cin, cout, 3, 1, 1))
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Autoencoder of the teacher's feature map: ``encoder`` gives the factor, ``decoder`` the reconstruction."""

    def __init__(self, channels: int, rate: float) -> None:
        super().__init__()
        k = int(channels * rate)
        self.encoder = _convs([channels, channels, k, k])
        self.decoder = _convs([k, k, channels, channels], transpose=True)


def factor(f: Tensor) -> Tensor:
    """Channel mean of the squared factor, flattened and L2-normalised per sample."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def ft_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    f_s, f_t = match_sizes(f_s, f_t)
    return (factor(f_s) - factor(f_t)).abs().mean()


@register_method("ft", category="feature", scheme="offline",
                 description="Kim et al. 2018: transfer the teacher's paraphrased factors through a translator",
                 display="FT", order=10, paper="Kim et al., NeurIPS 2018", code="github.com/HobbitLong/RepDistiller")
class FT(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 200.0, ce_weight: Weight = 1.0,
                 rate: Annotated[float, Range(gt=0, le=1)] = 0.5, init_epochs: Annotated[int, Range(ge=0)] = 30,
                 init_lr: Annotated[float, Range(gt=0)] | None = None) -> None:
        super().__init__(student, teacher, ctx)
        s, t = ctx.student_spec.stages[-1], ctx.teacher_spec.stages[-1]
        require(0 < rate <= 1 and int(t.channels * rate) >= 1, f"method.rate must be in (0, 1], got {rate}")
        self.paraphraser = Paraphraser(t.channels, rate)
        self.translator = _convs([s.channels, s.channels, int(t.channels * rate), int(t.channels * rate)], bn=True)
        self.beta, self.ce_weight, self.init_epochs = beta, ce_weight, init_epochs
        self.init_lr = init_lr if init_lr is not None else (0.01 if _LOW_INIT_LR.match(ctx.student_arch) else None)

    def init_stages(self) -> list[InitStage]:
        return [InitStage("paraphraser", self.init_epochs, (self.paraphraser,), lr=self.init_lr)]

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.translator]  # the paraphraser is frozen after its stage

    def train(self, mode: bool = True) -> "FT":
        super().train(mode)
        if self.stage != "paraphraser":  # frozen, in eval mode, after its stage (as the CRD benchmark)
            self.paraphraser.eval()
        return self

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        f_t = self.teacher_forward(batch.images).features[-1]
        if self.stage == "paraphraser":
            with full_precision(batch.images.device):
                f_t = f_t.float()
                rec = self.paraphraser.decoder(self.paraphraser.encoder(f_t))
                return StepOutput(None, {"reconstruction": F.mse_loss(rec, f_t)})
        s_out = self.student(batch.images)
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(f_t)
        factor_s = self.translator(s_out.features[-1])
        with full_precision(batch.images.device):
            loss = ft_loss(factor_s.float(), factor_t.float())
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "ft": self.beta * loss})
