"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS DL Workshop 2015.

- Category / scheme: response-based / offline.
- Loss: ``ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``,
  KL summed over classes and averaged over the batch. The T^2 factor keeps the
  soft-target gradients on the scale of the hard-target ones (paper, Sec. 2).
- Layers: logits only.
- Defaults: T=4, ce_weight=0.1, kd_weight=0.9 -- the CRD benchmark
  (RepDistiller ``--distill kd -r 0.1 -a 0.9``); the paper gives no single value.
- Extra trainable parameters: none.
- Reported (CRD benchmark, CIFAR-100, 240 epochs): wrn_40_2->wrn_16_2 74.92,
  resnet56->resnet20 70.66, resnet32x4->resnet8x4 73.33, vgg13->vgg8 72.98.
"""
from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, Range, StepOutput, Weight, register_method, soft_kl


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(p_t^T || p_s^T), summed over classes, mean over the batch."""
    return soft_kl(student_logits, teacher_logits, temperature)


@register_method("kd", category="response", scheme="offline",
                 description="Hinton et al. 2015: match the teacher's temperature-softened class probabilities",
                 display="KD", order=1, paper="Hinton, Vinyals & Dean, NIPS DL Workshop 2015",
                 code="github.com/HobbitLong/RepDistiller")
class KD(Method):
    def __init__(self, student, teacher, ctx, *, temperature: Annotated[float, Range(gt=0)] = 4.0,
                 ce_weight: Weight = 0.1, kd_weight: Weight = 0.9) -> None:
        super().__init__(student, teacher, ctx)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_logits = self.teacher_forward(batch.images).logits
        logits = self.student(batch.images).logits
        return StepOutput(logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, batch.labels),
            "kd": self.kd_weight * kd_loss(logits, t_logits.float(), self.temperature),
        })
