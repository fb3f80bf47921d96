"""NKD: Yang, Zeng, Yuan & Li, "From Knowledge Distillation to Self-Knowledge Distillation: A Unified
Approach with Normalized Loss and Customized Soft Labels", ICCV 2023 (Normalized KD).

- Category / scheme: response-based / offline. (The paper's second method, USKD, is teacher-free
  self-distillation with customized soft labels and an extra head; it is not this method.)
- Idea: KD's loss splits into a target-class term and a non-target term whose weight
  (1 - p_t(target)) shrinks as the teacher grows confident; NKD normalizes the non-target
  probabilities to sum to 1 so that term keeps its full strength.
- Loss, with y the label, p = softmax(z) at temperature 1 and q = softmax over the C - 1
  non-target logits / T (the non-target probabilities renormalized):
  ``ce_weight * CE(z_s, y)``
  ``+ target``: ``-p_t(y) log p_s(y)``, the teacher's probability a constant, averaged over the batch;
  ``+ non_target``: ``-gamma * T^2 * sum_{i != y} q_t(i) log q_s(i)``, averaged over the batch.
  The non-target term is a cross-entropy, as in the authors' code: it exceeds the KL divergence by
  the teacher's (constant) non-target entropy, so the gradients are the KL's but the logged value
  is not 0 when the student equals the teacher. Computed in fp32 under autocast.
- Layers: logits only.
- Defaults: T=3, gamma=3.5, ce_weight=1 -- the authors' only CIFAR-100 configuration
  (yzd-v/cls_KD ``configs/distillers/cifar100/res34_distill_res18_cifar.py``: ``NKDLoss`` temp=3.0,
  gamma=3.5, ResNet-34 -> ResNet-18), the CE being the student head's ``CrossEntropyLoss`` at
  loss_weight 1 that their ``ClassificationDistiller`` keeps beside the NKD loss. Their ImageNet
  configs (``configs/distillers/imagenet/res34_distill_res18_img.py``, ``res50_distill_mv1_img.py``)
  use temp=1, gamma=1.5. The repository has no configuration for the CRD pairs; we use the
  CIFAR-100 one on every pair (no per-pair values).
- Paper vs code: the paper's loss is the one above (target term plus gamma * T^2 times the
  cross-entropy of the normalized non-target distributions); we follow the code, which computes
  the normalized distributions as a softmax over the non-target logits (equal to renormalizing
  softmax(z / T) without the target class). The authors' code went through three versions: the
  first (March 2023) suppressed the target by subtracting 1000 from its logit (the same up to
  exp(-1000 / T)); from July to October 2023 a mask bug (``scatter_(..., 1)``) kept the target
  class inside the "non-target" softmax; commit 9466b3f (October 2023, branch 1.0) fixed it. We
  follow the fixed code.
- Schedule: the authors' CIFAR-100 run (mmcls, ResNet-18 student, 200 epochs, SGD lr 0.1, batch
  128) is not the CRD schedule; kdbench runs its common schedule.
- Extra trainable parameters: none.
- Reported: the repository (nkd.md) reports ImageNet only: ResNet-34 -> ResNet-18 71.96 (baseline
  69.90), ResNet-50 -> MobileNet 72.58 (69.21), DeiT III-Small -> DeiT-Tiny 76.68 (74.42).
- Parity fixture (tests/data/parity/nkd.json): yzd-v/cls_KD at commit 1e5d48f (branch 1.0),
  ``mmcls/models/dis_losses/nkd.py``, class ``NKDLoss``, run unmodified (its ``mmcls.registry``
  import stubbed by a no-op decorator) on stored float64 (one case float32) logits and labels:
  the loss for the CIFAR-100 and ImageNet settings and others, the target term alone (gamma=0)
  and the loss's gradient by autograd; cases include 100 classes with repeated labels, a sharp
  and a wrong teacher, two classes (an empty non-target term), a student equal to the teacher
  and a batch of one.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, Positive, StepOutput, Weight, full_precision, register_method


def nkd_terms(z_s: Tensor, z_t: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(target, non_target) batch means, without gamma and T^2: ``-p_t(y) log p_s(y)`` and the
    cross-entropy between the teacher's and the student's normalized non-target distributions at T."""
    y = labels.view(-1, 1)
    p_t_y = F.softmax(z_t, dim=1).gather(1, y).detach()
    target = -(p_t_y * F.log_softmax(z_s, dim=1).gather(1, y)).mean()
    others = ~F.one_hot(labels, z_s.shape[1]).bool()
    n, c = z_s.shape
    q_t = F.softmax(z_t[others].view(n, c - 1) / temperature, dim=1)
    log_q_s = F.log_softmax(z_s[others].view(n, c - 1) / temperature, dim=1)
    return target, -(q_t * log_q_s).sum(1).mean()


def nkd_loss(z_s: Tensor, z_t: Tensor, labels: Tensor, temperature: float, gamma: float) -> Tensor:
    """The authors' NKD loss: target + gamma * T^2 * non_target."""
    target, non_target = nkd_terms(z_s, z_t, labels, temperature)
    return target + gamma * temperature ** 2 * non_target


@register_method("nkd", category="response", scheme="offline",
                 description="Yang et al. 2023: KD with the target term and normalized non-target distributions",
                 display="NKD", order=25, paper="Yang et al., ICCV 2023", code="github.com/yzd-v/cls_KD")
class NKD(Method):
    def __init__(self, student, teacher, ctx, *, temperature: Positive = 3.0, gamma: Weight = 3.5,
                 ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        self.temperature, self.gamma, self.ce_weight = temperature, gamma, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_logits = self.teacher_forward(batch.images).logits
        logits = self.student(batch.images).logits
        with full_precision(batch.images.device):
            target, non_target = nkd_terms(logits.float(), t_logits.float(), batch.labels, self.temperature)
        return StepOutput(logits, {"ce": self.ce_weight * F.cross_entropy(logits, batch.labels),
                                   "target": target,
                                   "non_target": self.gamma * self.temperature ** 2 * non_target})

