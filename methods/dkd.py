"""DKD: Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.

- Category / scheme: response-based / offline.
- KD decoupled (paper Eq. 5: KD = TCKD + (1 - p_t^target) NCKD): with p = softmax(z / T),
  TCKD is the KL divergence between the teacher's and student's binary distributions
  [p(target), p(all others)], NCKD the KL divergence between their distributions over the
  non-target classes alone (softmax of the non-target logits / T); each times T^2, summed
  over classes and averaged over the batch, as the authors' code (mdistiller) computes it.
- Loss: ``ce`` + ``dkd`` = ``w(epoch) * (alpha * TCKD + beta * NCKD)`` with the linear warm-up
  w = min(epoch / warmup, 1) over 1-based epochs (mdistiller's trainer: 1/20 in the first).
- Layers: logits only.
- Defaults: alpha=1, beta=8, T=4, warmup=20 epochs, ce_weight=1 (mdistiller ``CFG.DKD``).
  beta per CIFAR-100 pair from mdistiller's configs/cifar100/dkd/*.yaml, in the pair files
  (``pair.method_overrides.dkd``): 2 for resnet56->resnet20 and resnet110->resnet32, 6 for
  vgg13->vgg8, vgg13->mobilenetv2, wrn_40_2->wrn_16_2 and wrn_40_2->wrn_40_1, the default 8
  for the rest (mdistiller has no config for resnet110->resnet20 and resnet50->vgg8: 8 there
  too, ours). The CIFAR-10 pairs keep 8: the authors tuned on CIFAR-100 only.
- The warm-up is in epochs, as the authors' code; suites with short schedules set it for
  their length (digits: 2 of 24 epochs, cifar10-mini: 1 of 10, i.e. 20/240 rounded up).
- Extra trainable parameters: none.
- Modifier ``logit_stand`` (Sun et al., CVPR 2024; github.com/sunshangquan/logit-standardization-KD):
  both sets of logits z-scored per sample before both terms (see the KD card); CE keeps the raw
  logits. Off by default, and then not part of a run's identity. Their DKD+LS multiplies alpha and
  beta by their ``--kd-weight`` (9) and sets T to their ``--base-temp`` (2): ``method.logit_stand=true
  method.temperature=2 method.alpha=9 method.beta=72`` (beta 8 x 9 where the pair's beta is 8).
  Reported (their README, CIFAR-100): resnet32x4->resnet8x4 77.01, vgg13->vgg8 74.81. Parity
  fixture: their ``dkd_loss`` (commit f6e5aa5) on stored inputs, tests/data/parity/logit-stand.json.
- Modifier ``temperature_schedule=ctkd`` (Li et al., AAAI 2023; github.com/zhengli97/CTKD, whose DKD
  takes the learned temperature in both terms): T learned adversarially under a curriculum (see the KD
  and CTKD cards); ``method.temperature`` is then unused. Off by default, and then not part of a
  run's identity. Parity fixture: their ``DKDloss`` with their ``Global_T``, tests/data/parity/ctkd.json.
- Reported (DKD paper / mdistiller, CIFAR-100, 240 epochs): resnet56->resnet20 71.97,
  resnet32x4->resnet8x4 76.32, wrn_40_2->wrn_16_2 76.23, vgg13->vgg8 74.68.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import (
    CurriculumTemperature,
    Method,
    Modifier,
    Range,
    StepOutput,
    TemperatureSchedule,
    Weight,
    full_precision,
    kl_divergence,
    register_method,
    require,
    soft_kl,
    standardize,
)


def dkd_terms(z_s: Tensor, z_t: Tensor, target: Tensor, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD), each times T^2: shapes (B,), (B,).

    The binary distribution [p(target), p(others)] is taken in log space (log-softmax, then a
    log-sum-exp over the non-target classes), so an untrained network's vanishing probabilities
    give finite losses where log(softmax) would give -inf; the values are the authors' otherwise.
    """
    is_target = F.one_hot(target, z_s.shape[1]).bool()
    n = z_s.shape[1] - 1
    t = temperature

    def binary(z: Tensor) -> Tensor:
        log_p = F.log_softmax(z / t, dim=1)
        return torch.stack([log_p[is_target], torch.logsumexp(log_p[~is_target].view(-1, n), dim=1)], dim=1)

    def non_target(z: Tensor) -> Tensor:
        return z[~is_target].view(-1, n)

    tckd = kl_divergence(binary(z_s), binary(z_t), reduction="per_sample") * t * t
    return tckd, soft_kl(non_target(z_s), non_target(z_t), t, reduction="per_sample")


def dkd_loss(z_s: Tensor, z_t: Tensor, target: Tensor, alpha: float, beta: float, temperature: float | Tensor,
             logit_stand: bool = False) -> Tensor:
    if logit_stand:
        z_s, z_t = standardize(z_s), standardize(z_t)
    tckd, nckd = dkd_terms(z_s, z_t, target, temperature)
    return alpha * tckd.mean() + beta * nckd.mean()


@register_method("dkd", category="response", scheme="offline",
                 description="Zhao et al. 2022: KD decoupled into target-class and non-target-class terms",
                 display="DKD", order=15, paper="Zhao et al., CVPR 2022",
                 code="github.com/megvii-research/mdistiller")
class DKD(Method):
    def __init__(self, student, teacher, ctx, *, alpha: Weight = 1.0, beta: Weight = 8.0,
                 temperature: Annotated[float, Range(gt=0)] = 4.0, warmup: Annotated[int, Range(ge=1)] = 20,
                 ce_weight: Weight = 1.0, logit_stand: Annotated[bool, Modifier()] = False,
                 temperature_schedule: Annotated[TemperatureSchedule, Modifier()] = "fixed") -> None:
        super().__init__(student, teacher, ctx)
        require(ctx.data.num_classes >= 3, "dkd needs at least 3 classes (target plus two non-target classes)")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.warmup, self.ce_weight, self.logit_stand = warmup, ce_weight, logit_stand
        self.curriculum = CurriculumTemperature() if temperature_schedule == "ctkd" else None

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_logits = self.teacher_forward(batch.images).logits
        logits = self.student(batch.images).logits
        ramp = min((epoch + 1) / self.warmup, 1.0)  # the engine's epochs are 0-based, the authors' 1-based
        with full_precision(batch.images.device):  # probabilities of ~1e-3 and their logs: fp32
            dkd = dkd_loss(logits.float(), t_logits.float(), batch.labels, self.alpha, self.beta,
                           self.temperature if self.curriculum is None else self.curriculum(epoch), self.logit_stand)
        return StepOutput(logits, {"ce": self.ce_weight * F.cross_entropy(logits, batch.labels), "dkd": ramp * dkd})
