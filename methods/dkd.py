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
- Reported (DKD paper / mdistiller, CIFAR-100, 240 epochs): resnet56->resnet20 71.97,
  resnet32x4->resnet8x4 76.32, wrn_40_2->wrn_16_2 76.23, vgg13->vgg8 74.68.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, StepOutput, full_precision, register_method, require


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """sum_j p_j (log p_j - log q_j) per row, with 0 log 0 = 0 (a class the teacher gives no mass)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(1)


def dkd_terms(z_s: Tensor, z_t: Tensor, target: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD), each times T^2: shapes (B,), (B,).

    The binary distribution [p(target), p(others)] is taken in log space (log-softmax, then a
    log-sum-exp over the non-target classes), so an untrained network's vanishing probabilities
    give finite losses where log(softmax) would give -inf; the values are the authors' otherwise.
    """
    is_target = F.one_hot(target, z_s.shape[1]).bool()
    n = z_s.shape[1] - 1

    def binary_and_rest(z: Tensor) -> tuple[Tensor, Tensor]:
        log_p = F.log_softmax(z / temperature, dim=1)
        rest = log_p[~is_target].view(-1, n)
        binary = torch.stack([log_p[is_target], torch.logsumexp(rest, dim=1)], dim=1)
        return binary, F.log_softmax(z[~is_target].view(-1, n) / temperature, dim=1)

    b_s, q_s = binary_and_rest(z_s)
    b_t, q_t = binary_and_rest(z_t)
    return _kl_rows(b_t, b_s) * temperature ** 2, _kl_rows(q_t, q_s) * temperature ** 2


def dkd_loss(z_s: Tensor, z_t: Tensor, target: Tensor, alpha: float, beta: float, temperature: float) -> Tensor:
    tckd, nckd = dkd_terms(z_s, z_t, target, temperature)
    return alpha * tckd.mean() + beta * nckd.mean()


@register_method("dkd", category="response", scheme="offline",
                 description="Zhao et al. 2022: KD decoupled into target-class and non-target-class terms")
class DKD(Method):
    __doc__ = __doc__

    def __init__(self, student, teacher, ctx, *, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup: int = 20, ce_weight: float = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        require(ctx.data.num_classes >= 3, "dkd needs at least 3 classes (target plus two non-target classes)")
        require(warmup >= 1, f"method.warmup must be at least 1 epoch, got {warmup}")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.warmup, self.ce_weight = warmup, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_logits = self.teacher_forward(batch.images).logits
        logits = self.student(batch.images).logits
        ramp = min((epoch + 1) / self.warmup, 1.0)  # the engine's epochs are 0-based, the authors' 1-based
        with full_precision(batch.images.device):  # probabilities of ~1e-3 and their logs: fp32
            dkd = dkd_loss(logits.float(), t_logits.float(), batch.labels, self.alpha, self.beta, self.temperature)
        return StepOutput(logits, {"ce": self.ce_weight * F.cross_entropy(logits, batch.labels), "dkd": ramp * dkd})
