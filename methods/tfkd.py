"""TF-KD: Yuan et al., "Revisiting Knowledge Distillation via Label Smoothing Regularization", CVPR 2020
(arXiv title: "Revisit Knowledge Distillation: a Teacher-free Framework").

- Category / scheme: response-based / self-distillation: no stronger teacher network. Two variants,
  registered as two methods:
  - ``tf-kd-self``: the teacher is a trained copy of the student's own architecture (trained by the
    pair's student schedule, cached and identified like any teacher, shared by every seed; as every
    teacher is a vanilla run of ``teacher.seed``, the student of that same seed starts from its
    teacher's initial weights). Loss
    ``(1 - alpha) CE + alpha * multiplier * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``.
  - ``tf-kd-reg``: a hand-designed virtual teacher, no network: probability ``correct_prob`` on the
    label and the rest spread evenly, softened as softmax(p / T) (the paper's p^d_tau: the
    temperature divides the *probabilities*). Loss ``(1 - alpha) CE + alpha * multiplier *
    KL(softmax(p/T) || softmax(z_s))`` -- the student's logits are not softened.
- As the authors' code computes it, each KL is PyTorch's element-wise mean over batch *and*
  classes (``nn.KLDivLoss()``'s old default), i.e. the usual per-sample KL divided by the number
  of classes; the multiplier compensates (100 on CIFAR-100 makes ``tf-kd-reg``'s term a
  per-sample KL).
- Defaults: the authors' CIFAR-100 ResNet18 settings (``experiments/.../params.json``): self
  alpha=0.95, T=6, multiplier=50; reg alpha=0.1, T=20, multiplier=100, correct_prob=0.99. Other
  authors' settings: MobileNetV2 reg alpha=0.95, T=40, multiplier=1. The authors tuned these per
  student architecture (not for the CRD pairs' students), trained 200 epochs at lr 0.1, batch 128;
  kdbench runs its common schedule.
- Extra trainable parameters: none.
- Reported (TF-KD paper / survey Table 6, CIFAR-100, self): ResNet18 75.87 -> 77.10,
  ShuffleNetV2 70.34 -> 72.23, ResNeXt29 81.03 -> 82.08.
"""
from __future__ import annotations

from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import (
    Method,
    Range,
    StepOutput,
    Weight,
    full_precision,
    kl_divergence,
    register_method,
    require,
    soft_kl,
)


def virtual_teacher(labels: Tensor, num_classes: int, correct_prob: float, temperature: float) -> Tensor:
    """softmax(p^d / T): p^d puts ``correct_prob`` on the label and the rest evenly on the others."""
    p = torch.full((len(labels), num_classes), (1 - correct_prob) / (num_classes - 1), device=labels.device)
    p.scatter_(1, labels[:, None], correct_prob)
    return F.softmax(p / temperature, dim=1)


@register_method("tf-kd-reg", category="response", scheme="self",
                 description="Yuan et al. 2020: teacher-free KD from a hand-designed virtual teacher",
                 display="TF-KD (reg)", order=21, paper="Yuan et al., CVPR 2020",
                 code="github.com/yuanli2333/Teacher-free-Knowledge-Distillation")
class TFKDReg(Method):
    uses_teacher = False

    def __init__(self, student, teacher, ctx, *, alpha: Annotated[float, Range(ge=0, le=1)] = 0.1,
                 temperature: Annotated[float, Range(gt=0)] = 20.0, multiplier: Weight = 100.0,
                 correct_prob: Annotated[float, Range(gt=0, lt=1)] = 0.99) -> None:
        super().__init__(student, teacher, ctx)
        require(ctx.data.num_classes >= 2, "tf-kd-reg needs at least 2 classes")
        self.alpha, self.temperature, self.multiplier, self.correct_prob = alpha, temperature, multiplier, correct_prob

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        logits = self.student(batch.images).logits
        with full_precision(batch.images.device):
            target = virtual_teacher(batch.labels, logits.shape[1], self.correct_prob, self.temperature)
            # the authors' element-wise mean over batch x classes, the target passed as probabilities
            reg = kl_divergence(F.log_softmax(logits.float(), dim=1), target, reduction="mean", log_target=False)
        return StepOutput(logits, {"ce": (1 - self.alpha) * F.cross_entropy(logits, batch.labels),
                                   "reg": self.alpha * self.multiplier * reg})


@register_method("tf-kd-self", category="response", scheme="self",
                 description="Yuan et al. 2020: teacher-free KD from a trained copy of the student itself",
                 display="TF-KD (self)", order=20, survey_name="tf-kd", paper="Yuan et al., CVPR 2020",
                 code="github.com/yuanli2333/Teacher-free-Knowledge-Distillation")
class TFKDSelf(Method):
    teacher_arch: ClassVar[str] = "student"  # a trained copy of the student's architecture

    def __init__(self, student, teacher, ctx, *, alpha: Annotated[float, Range(ge=0, le=1)] = 0.95,
                 temperature: Annotated[float, Range(gt=0)] = 6.0, multiplier: Weight = 50.0) -> None:
        super().__init__(student, teacher, ctx)
        self.alpha, self.temperature, self.multiplier = alpha, temperature, multiplier

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_logits = self.teacher_forward(batch.images).logits
        logits = self.student(batch.images).logits
        t = self.temperature
        with full_precision(batch.images.device):
            # as the authors compute it: element-wise mean, target as probabilities, T^2 in the weight below
            kl = soft_kl(logits.float(), t_logits.float(), t, reduction="mean", t_squared=False, log_target=False)
        return StepOutput(logits, {"ce": (1 - self.alpha) * F.cross_entropy(logits, batch.labels),
                                   "kd": self.alpha * self.multiplier * t * t * kl})
