"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS DL Workshop 2015.

- Category / scheme: response-based / offline.
- Loss: ``ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``,
  KL summed over classes and averaged over the batch. The T^2 factor keeps the
  soft-target gradients on the scale of the hard-target ones (paper, Sec. 2).
- Layers: logits only.
- Defaults: T=4, ce_weight=0.1, kd_weight=0.9 -- the CRD benchmark
  (RepDistiller ``--distill kd -r 0.1 -a 0.9``); the paper gives no single value.
- Extra trainable parameters: none.
- Modifier ``logit_stand`` (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024;
  github.com/sunshangquan/logit-standardization-KD): both sets of logits are z-scored per sample
  (``kdbench.method.standardize``: unbiased std, ``1e-7`` added to it, as their code) before the
  softened KL; CE keeps the raw logits. Off by default, and then not part of a run's identity. The
  authors' recipe changes two more values (their ``--base-temp 2 --kd-weight 9``, CE weight 0.1), so
  their KD+LS is ``method.logit_stand=true method.temperature=2 method.kd_weight=9``; their per-pair
  base temperatures and weights are in the names of their logs (3 and 9 for vgg13->vgg8, for example).
  Reported (their README, CIFAR-100): resnet32x4->resnet8x4 76.62, vgg13->vgg8 74.36,
  wrn_40_2->wrn_16_2 76.11, resnet56->resnet20 71.43. Parity fixture: tests/data/parity/logit-stand.json,
  their ``kd_loss`` and ``dkd_loss`` (commit f6e5aa5) run on stored float64 logits, with and without it.
- Modifier ``temperature_schedule=ctkd`` (Li et al., AAAI 2023; github.com/zhengli97/CTKD): the
  temperature is learned adversarially under a curriculum instead of fixed
  (``kdbench.method.CurriculumTemperature``, the authors' defaults; see ``kdbench show method ctkd``,
  which is this KD with it on); ``method.temperature`` is then unused. Off by default, and then not
  part of a run's identity.
- Modifier ``optimizer=dot`` (Zhao et al., "DOT: A Distillation-Oriented Trainer", ICCV 2023;
  github.com/megvii-research/mdistiller): trained by DOT, SGD with one momentum buffer for the CE
  gradient (``schedule.momentum - dot_delta``) and one for the KD gradient (``+ dot_delta``), two backward
  passes a step (``kdbench.training.dot``: the update rule, where the authors' code and paper differ, their
  configs, the fixture). ``dot_delta`` defaults to 0.075, their value for every CIFAR-100 pair
  (``configs/cifar100/dot/*.yaml``: resnet32x4->resnet8x4, vgg13->vgg8, resnet32x4->ShuffleV2, with the
  CRD benchmark's schedule and these KD defaults). As their code does (the paper states only the two
  momenta), the weight decay goes with the CE gradient, and a parameter reached by one loss only keeps one
  buffer at ``schedule.momentum``. Off by default, and then not part of a run's identity. Parity fixture:
  tests/data/parity/dot.json (their optimizer, commit a08d46f, driving this KD's two terms).
  Reported (their README, CIFAR-100, KD -> KD+DOT): resnet32x4->resnet8x4 73.33 -> 75.12, vgg13->vgg8
  72.98 -> 73.77, resnet32x4->ShuffleNetV2 74.45 -> 75.55.
- Reported (CRD benchmark, CIFAR-100, 240 epochs): wrn_40_2->wrn_16_2 74.92,
  resnet56->resnet20 70.66, resnet32x4->resnet8x4 73.33, vgg13->vgg8 72.98.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import (
    CurriculumTemperature,
    DotDelta,
    Method,
    Modifier,
    OptimizerChoice,
    Range,
    StepOutput,
    TemperatureSchedule,
    Weight,
    register_method,
    soft_kl,
    standardize,
)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor,
            logit_stand: bool = False) -> Tensor:
    """T^2 * KL(p_t^T || p_s^T), summed over classes, mean over the batch; of z-scored logits with
    ``logit_stand``."""
    if logit_stand:
        student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
    return soft_kl(student_logits, teacher_logits, temperature)


@register_method("kd", category="response", scheme="offline",
                 description="Hinton et al. 2015: match the teacher's temperature-softened class probabilities",
                 display="KD", order=1, paper="Hinton, Vinyals & Dean, NIPS DL Workshop 2015",
                 code="github.com/HobbitLong/RepDistiller")
class KD(Method):
    def __init__(self, student, teacher, ctx, *, temperature: Annotated[float, Range(gt=0)] = 4.0,
                 ce_weight: Weight = 0.1, kd_weight: Weight = 0.9,
                 logit_stand: Annotated[bool, Modifier()] = False,
                 temperature_schedule: Annotated[TemperatureSchedule, Modifier()] = "fixed",
                 optimizer: OptimizerChoice = "sgd", dot_delta: DotDelta = 0.075) -> None:
        super().__init__(student, teacher, ctx)
        self.use_optimizer(optimizer, dot_delta)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight
        self.logit_stand = logit_stand
        self.curriculum = CurriculumTemperature() if temperature_schedule == "ctkd" else None

    def temperature_at(self, epoch: int) -> float | Tensor:
        """This epoch's temperature: the fixed one, or the learned one (a tensor carrying its gradient)."""
        return self.temperature if self.curriculum is None else self.curriculum(epoch)

    def report(self) -> dict:
        if self.curriculum is None:
            return {}
        with torch.no_grad():  # the learned temperature at the end (lambda does not change the value)
            return {"final_temperature": float(self.curriculum(0))}

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_logits = self.teacher_forward(batch.images).logits
        logits = self.student(batch.images).logits
        return StepOutput(logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, batch.labels),
            "kd": self.kd_weight * kd_loss(logits, t_logits.float(), self.temperature_at(epoch), self.logit_stand),
        })
