"""CS-KD: Yun, Park, Lee & Shin, "Regularizing Class-wise Predictions via Self-knowledge Distillation",
CVPR 2020.

- Category / scheme: response-based / self-distillation: no teacher network; the student's prediction
  on another sample of the same class is the soft target.
- Batches: paired. Every sample of the shared training order comes with a partner drawn uniformly
  from its class (itself included, as the authors' ``PairBatchSampler`` draws it), redrawn each epoch
  from the run seed and augmented on a stream of its own, so the sampled images are exactly those
  of every other method's run; the partners come on top (a step forwards 2B images, like the authors'
  batch of B samples + B partners).
- Loss: ``CE(z, y) + lambda * T^2 * KL(softmax(z'/T) || softmax(z/T))`` with z the student's logits on
  the samples and z' on their partners; z' is computed without gradient in train mode (its
  BatchNorm sees the partner batch and updates the running statistics, as the authors' code does).
  CE is on the samples only.
- Defaults: T=4, lambda=1 (the authors' ``--temp``/``--lamda`` defaults and CIFAR-100 setting). They
  trained 200 epochs, batch 128, lr 0.1 divided by 10 at 50 % and 75 %, weight decay 1e-4; kdbench
  runs its common schedule.
- Extra trainable parameters: none.
- Reported (CS-KD paper Table 1, CIFAR-100, self; cross-entropy -> CS-KD): ResNet-18 24.71 -> 21.99
  top-1 *error*, DenseNet-121 22.23 -> 21.69 error (survey Table 6: ResNet18 75.29 -> 78.01).
"""
from __future__ import annotations

from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F

from kdbench.data import Batch
from kdbench.method import Method, Range, StepOutput, Weight, full_precision, register_method, require, soft_kl


@register_method("cs-kd", category="response", scheme="self",
                 description="Yun et al. 2020: match the student's predictions on two samples of one class",
                 display="CS-KD", order=23, paper="Yun, Park, Lee & Shin, CVPR 2020", code="github.com/alinlab/cs-kd")
class CSKD(Method):
    uses_teacher = False
    paired_batches: ClassVar[bool] = True

    def __init__(self, student, teacher, ctx, *, temperature: Annotated[float, Range(gt=0)] = 4.0,
                 lamda: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        self.temperature, self.lamda = temperature, lamda

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        require(batch.pair_images is not None, "cs-kd needs paired batches (each sample with a same-class partner)")
        logits = self.student(batch.images).logits
        with torch.no_grad():
            partner = self.student(batch.pair_images).logits
        with full_precision(batch.images.device):
            # T^2 KL(softmax(z'/T) || softmax(z/T)), batch mean; the partners' predictions z' are constants
            cls = soft_kl(logits.float(), partner.float(), self.temperature, detach_target=True)
        return StepOutput(logits, {"ce": F.cross_entropy(logits, batch.labels), "cls": self.lamda * cls})
