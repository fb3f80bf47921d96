"""FitNets: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

- Category / scheme: feature-based / offline.
- Losses: ``ce`` (weight ``ce_weight``) + ``hint`` = ``beta * MSE(r(F_s), F_t)``,
  where ``r`` is a trainable convolutional regressor from the student's guided
  layer to the teacher's hint layer (conv/BN/ReLU sized from the two shapes,
  as in the CRD benchmark's ``ConvReg``).
- Layers: ``features[hint_layer]`` of both models (stem = 0); default 2, the
  middle stage (CRD benchmark ``--hint_layer 2``), post-activation features.
- Forms: ``stages=1`` (default) is the CRD benchmark's single-stage form
  (CE + 100 * hint throughout). ``stages=2`` is the paper's form: an
  initialisation stage ``hint`` of ``init_epochs`` epochs (before the schedule's,
  with its own optimizer at the schedule's base learning rate) in which only the
  hint loss trains the student up to the guided layer and the regressor; then the
  schedule's epochs train the whole student with KD (``kd_weight`` * T^2 KL +
  ``kd_ce_weight`` CE). The stage length is RepDistiller's ``--init_epochs 30``.
- Defaults: beta=100, ce_weight=1, hint_layer=2 (CRD benchmark,
  ``--distill hint -a 0 -b 100``); two-stage: init_epochs=30, T=4, KD 0.9 / CE 0.1.
- Extra trainable parameters: the regressor.
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 73.58, resnet56->resnet20 69.21,
  resnet32x4->resnet8x4 73.50, vgg13->vgg8 71.02.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Index, InitStage, Method, Range, StepOutput, Weight, register_method, require, soft_kl
from kdbench.training.connectors import ConvRegressor


def hint_loss(regressed_student: Tensor, teacher_feature: Tensor) -> Tensor:
    """Mean squared error between the regressed student feature and the teacher hint."""
    return F.mse_loss(regressed_student, teacher_feature)


@register_method("fitnet", category="feature", scheme="offline",
                 description="Romero et al. 2015: regress a middle student feature map onto the teacher's",
                 display="FitNet", order=2, paper="Romero et al., ICLR 2015",
                 code="github.com/HobbitLong/RepDistiller")
class FitNet(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 100.0, ce_weight: Weight = 1.0,
                 hint_layer: Index = 2,  # index into features (0 = stem): the middle stage
                 stages: Literal[1, 2] = 1,  # 1: CE + beta*hint throughout; 2: the paper's hints-then-KD
                 init_epochs: Annotated[int, Range(ge=0)] = 30,  # the hint stage's epochs (RepDistiller --init_epochs)
                 temperature: Annotated[float, Range(gt=0)] = 4.0, kd_weight: Weight = 0.9,
                 kd_ce_weight: Weight = 0.1) -> None:
        super().__init__(student, teacher, ctx)
        s, t = ctx.student_spec.stages, ctx.teacher_spec.stages
        require(len(s) > hint_layer and len(t) > hint_layer,
                f"fitnet needs feature maps at index {hint_layer}: the student exposes {len(s)}, "
                f"the teacher {len(t)} (set method.hint_layer)")
        self.regressor = ConvRegressor(s[hint_layer], t[hint_layer])
        self.beta, self.ce_weight, self.hint_layer = beta, ce_weight, hint_layer
        self.stages, self.init_epochs = stages, init_epochs
        self.temperature, self.kd_weight, self.kd_ce_weight = temperature, kd_weight, kd_ce_weight

    def init_stages(self) -> list[InitStage]:
        # The student's layers past the guided one get no gradient from the hint, so they stay put.
        return [InitStage("hint", self.init_epochs, (self.student, self.regressor))] if self.stages == 2 else []

    def trainable_modules(self):
        # The paper's second stage trains the student alone; the regressor served only the hints.
        return [self.student] if self.stages == 2 else super().trainable_modules()

    def _hint(self, s_out, t_out) -> Tensor:
        return hint_loss(self.regressor(s_out.features[self.hint_layer]), t_out.features[self.hint_layer])

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        if self.stage == "hint":  # paper stage 1: hints only
            return StepOutput(s_out.logits, {"hint": self.beta * self._hint(s_out, t_out)})
        if self.stages == 2:  # paper stage 2: KD of the whole student
            return StepOutput(s_out.logits, {
                "ce": self.kd_ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                "kd": self.kd_weight * soft_kl(s_out.logits, t_out.logits.float(), self.temperature)})
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "hint": self.beta * self._hint(s_out, t_out)})
