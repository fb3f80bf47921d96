"""AB: Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons", AAAI 2019.

- Category / scheme: feature-based / offline.
- Pre-activation features: the stage outputs before their last ReLU (``preact_features[1:]``, stem
  excluded), the student's mapped onto the teacher's shape by a connector (identity when channels
  and size already agree, else a conv/transposed conv + BN without ReLU, as in the CRD benchmark).
  MobileNetV2's stages end in a linear bottleneck, so their outputs are their pre-activations.
- Loss (the authors' alternative L2 with margin m, as the CRD benchmark implements it): per layer,
  sum over elements of (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0] -- the student
  is pushed to the teacher's side of each neuron's activation boundary by a margin --, weighted
  2^(i - n + 1) from shallow to deep (the deepest weighs 1), divided by the batch size and scaled by
  3/1000.
- Stages (paper Sec. 3.3, CRD benchmark ``init``): an initialisation stage ``ab`` of ``init_epochs``
  epochs trains the student's layers and the connectors on the AB loss alone; then the schedule's
  epochs train the student with cross-entropy alone (the CRD benchmark runs ``-a 0 -b 1`` with its
  main-stage AB term set to 0; the paper follows the transfer with classification training too).
- Defaults: margin=1, init_epochs=30 (RepDistiller), at the schedule's base learning rate; ce_weight=1.
- Extra trainable parameters: the connectors (initialisation stage only).
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 72.50, resnet56->resnet20 69.47,
  resnet32x4->resnet8x4 73.17, vgg13->vgg8 70.94, vgg13->mobilenetv2 66.06,
  resnet32x4->shufflenetv1 73.55.
"""
from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import InitStage, Method, Range, StepOutput, Weight, full_precision, register_method, require
from kdbench.training.connectors import ConvRegressor


def boundary_loss(s: Tensor, t: Tensor, margin: float = 1.0) -> Tensor:
    """Summed margin loss of one layer: penalise student pre-activations on the wrong side of the
    teacher's boundary (or within ``margin`` of it)."""
    t_on = t > 0
    wrong_off = (s > -margin) & ~t_on  # teacher inactive: the student should be below -margin
    wrong_on = (s <= margin) & t_on    # teacher active: the student should be above +margin
    return ((s + margin).pow(2) * wrong_off + (s - margin).pow(2) * wrong_on).sum()


def ab_loss(feats_s: list[Tensor], feats_t: list[Tensor], margin: float = 1.0) -> Tensor:
    """Layer losses weighted 2^(i - n + 1), over the batch size, times 3/1000 (authors' scaling)."""
    n = len(feats_s)
    total = sum(2.0 ** (i - n + 1) * boundary_loss(s, t, margin) for i, (s, t) in enumerate(zip(feats_s, feats_t)))
    return total / feats_s[0].shape[0] * 3 / 1000


def _connector(s, t) -> nn.Module:
    if s.channels == t.channels and s.height == t.height:
        return nn.Identity()
    return ConvRegressor(s, t, relu=False)


@register_method("ab", category="feature", scheme="offline",
                 description="Heo et al. 2019: initialise the student on the teacher's activation boundaries",
                 display="AB", order=9, paper="Heo et al., AAAI 2019", code="github.com/HobbitLong/RepDistiller")
class AB(Method):
    def __init__(self, student, teacher, ctx, *, margin: Annotated[float, Range(gt=0)] = 1.0,
                 init_epochs: Annotated[int, Range(ge=0)] = 30,
                 ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        ss, ts = ctx.student_spec, ctx.teacher_spec
        require(ss.has_preact and ts.has_preact,
                f"ab needs pre-activation features; {ctx.student_arch if not ss.has_preact else ctx.teacher_arch} "
                "does not provide them")
        require(len(ss.stages) == len(ts.stages) and len(ss.stages) >= 2,
                f"ab pairs stage by stage: the student has {len(ss.stages) - 1} stages, "
                f"the teacher {len(ts.stages) - 1}")
        self.connectors = nn.ModuleList(_connector(s, t) for s, t in zip(ss.stages[1:], ts.stages[1:]))
        self.margin, self.init_epochs, self.ce_weight = margin, init_epochs, ce_weight

    def init_stages(self) -> list[InitStage]:
        return [InitStage("ab", self.init_epochs, (self.student, self.connectors))]

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student]  # the connectors serve the initialisation only

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        s_out = self.student(batch.images)
        if self.stage == "ab":
            t_out = self.teacher_forward(batch.images)
            mapped = [c(f) for c, f in zip(self.connectors, s_out.preact_features[1:])]
            with full_precision(batch.images.device):
                loss = ab_loss([f.float() for f in mapped], [f.float() for f in t_out.preact_features[1:]],
                               self.margin)
            return StepOutput(s_out.logits, {"ab": loss})
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels)})
