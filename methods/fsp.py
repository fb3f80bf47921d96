"""FSP: Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization
and Transfer Learning", CVPR 2017.

- Category / scheme: relation-based (the "flow" between layers) / offline.
- FSP matrix of consecutive feature maps a (B, Ca, H, W) and b (B, Cb, H, W):
  G[c_b, c_a] = mean over the H x W positions of b[c_b] * a[c_a] (paper Eq. 2). Where the two
  maps differ in size the larger is average-pooled to the smaller (CRD benchmark).
- Layers: every feature map, stem included (``features[0:]``), consecutive pairs; the student's
  and teacher's channel counts must agree map by map, so FSP serves same-family pairs only
  (the CRD benchmark reports N/A for the others).
- Stages (paper Sec. 3.3, CRD benchmark ``init``): an initialisation stage ``fsp`` of
  ``init_epochs`` epochs minimises the sum over pairs of mean((G_s - G_t)^2) and trains the
  student's feature layers (the classifier gets no gradient); then the schedule's epochs train
  the student with cross-entropy alone. The CRD benchmark's ``-b 50`` weights a main-stage
  FSP term that its code sets to 0, so it has no effect and is not a parameter here.
- Defaults: init_epochs=30 (RepDistiller ``--init_epochs``), at the schedule's base learning rate
  (0.05; 0.01 for MobileNet/ShuffleNet students, as the pair files set it); ce_weight=1.
- Extra trainable parameters: none.
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 72.91, resnet56->resnet20 69.95,
  resnet110->resnet20 70.11, resnet110->resnet32 71.89, resnet32x4->resnet8x4 72.62, vgg13->vgg8 70.23.
"""
from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import Tensor

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


def fsp_matrix(a: Tensor, b: Tensor) -> Tensor:
    """(B, Cb, Ca): position-averaged products of b's and a's channels, after matching sizes."""
    a, b = match_sizes(a, b)
    return b.flatten(2) @ a.flatten(2).transpose(1, 2) / (a.shape[2] * a.shape[3])


def fsp_loss(feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
    """Sum over consecutive pairs of the mean squared difference of the FSP matrices."""
    return sum((fsp_matrix(s0, s1) - fsp_matrix(t0, t1).detach()).pow(2).mean()
               for s0, s1, t0, t1 in zip(feats_s, feats_s[1:], feats_t, feats_t[1:]))


@register_method("fsp", category="relation", scheme="offline",
                 description="Yim et al. 2017: initialise the student on the teacher's layer-to-layer FSP matrices",
                 display="FSP", order=11, paper="Yim et al., CVPR 2017", code="github.com/HobbitLong/RepDistiller")
class FSP(Method):
    def __init__(self, student, teacher, ctx, *, init_epochs: Annotated[int, Range(ge=0)] = 30,
                 ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        s = [x.channels for x in ctx.student_spec.stages]
        t = [x.channels for x in ctx.teacher_spec.stages]
        require(len(s) >= 2 and s == t, f"fsp needs feature maps with the same channel counts on both models "
                f"(same-family pairs); the student has {s}, the teacher {t}")
        self.init_epochs, self.ce_weight = init_epochs, ce_weight

    def init_stages(self) -> list[InitStage]:
        return [InitStage("fsp", self.init_epochs, (self.student,))]

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        s_out = self.student(batch.images)
        if self.stage == "fsp":
            t_out = self.teacher_forward(batch.images)
            with full_precision(batch.images.device):
                loss = fsp_loss([f.float() for f in s_out.features], [f.float() for f in t_out.features])
            return StepOutput(s_out.logits, {"fsp": loss})
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels)})
