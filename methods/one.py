"""ONE: Lan, Zhu & Gong, "Knowledge Distillation by On-the-fly Native Ensemble", NeurIPS 2018.

- Category / scheme: response-based / online: no pretrained teacher; a multi-branch student is its
  own ensemble teacher.
- Model: the student's shared trunk (every stage but the deepest) feeds ``branches`` tails -- the
  deepest stage and everything after it, classifier included. Branch 1 is the student's own tail, so
  the deployed model is exactly the student; the others are fresh copies of the student's tail
  (own initialisation). A gate -- global average pool of the trunk output, linear to one score per
  branch, BatchNorm1d, ReLU, softmax -- weighs the branches' logits into the ensemble's (the authors'
  ``control_v1``/``bn_v1``). Works on every family that splits into trunk and tail (the CIFAR zoo and
  the digits CNNs; ``KDModel.TAIL``); others are refused.
- Loss: ``sum_k CE(z_k, y) + CE(z_e, y) + w(epoch) * T^2 * sum_k KL(softmax(z_e/T) || softmax(z_k/T))``
  with the ensemble's softened output a constant in the KL (the authors' ``.data``). The weight ramps
  up as the authors' code does it (``sigmoid_rampup``: exp(-5 (1 - epoch/R)^2), then 1), with R a
  fraction ``rampup`` of the schedule -- 80 of the authors' 300 epochs by default. The authors add
  1e-7 to the target probabilities before the log; kdbench computes the exact KL.
- Evaluated: the student (branch 1, reported and selected on), ``branch2`` ... and ``ensemble``
  (the gated logits, the paper's ONE-E).
- Defaults: 3 branches, T=3 (fixed in the authors' KLLoss), rampup 80/300. The authors trained 300
  epochs, batch 128, lr 0.1 divided by 10 at epochs 150 and 225, weight decay 5e-4; kdbench runs its
  common schedule.
- Extra trainable parameters: the extra branches and the gate (not part of the deployed student).
- Reported (ONE paper Table 2 / survey Table 6, CIFAR-100, online; baseline -> ONE): ResNet-32
  68.99 -> 73.39 (error 31.18 -> 26.61), ResNet-110 71.14 -> 78.47 (error 28.86 -> 21.62).
"""
from __future__ import annotations

import math
from typing import Annotated

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import (
    Method,
    PartsView,
    Positive,
    Range,
    StepOutput,
    full_precision,
    register_method,
    require,
    soft_kl,
)
from kdbench.models import KDModel, ModelOutput, create_model


def sigmoid_rampup(epoch: float, length: float) -> float:
    """exp(-5 (1 - epoch/length)^2) for epoch < length, then 1 (Laine & Aila's ramp, as ONE's code uses it)."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(epoch, 0.0), length) / length
    return float(math.exp(-5.0 * phase * phase))


class _View(PartsView):
    """Branch ``branch`` on the student's trunk, or (None) the gated ensemble."""

    def __init__(self, method: "ONE", branch: int | None) -> None:
        super().__init__(method)
        self.branch = branch

    def forward(self, x: Tensor) -> ModelOutput:
        method = self.parts[0]
        h = method.student.forward_trunk(x)
        if self.branch is not None:
            logits = method.tails[self.branch].forward_tail(h)
        else:
            logits = method.ensemble([t.forward_tail(h) for t in method.tails], h)
        return ModelOutput(logits, [h], F.adaptive_avg_pool2d(h, 1).flatten(1))


@register_method("one", category="response", scheme="online",
                 description="Lan et al. 2018: branches on a shared trunk, taught by their gated ensemble",
                 display="ONE", order=19, paper="Lan, Zhu & Gong, NeurIPS 2018",
                 code="github.com/Lan1991Xu/ONE_NeurIPS2018", survey_teacher="{student}+one")
class ONE(Method):
    uses_teacher = False

    def __init__(self, student, teacher, ctx, *, branches: Annotated[int, Range(ge=2)] = 3,
                 temperature: Annotated[float, Range(gt=0)] = 3.0, rampup: Positive = 80 / 300) -> None:
        super().__init__(student, teacher, ctx)
        require(bool(getattr(student, "TAIL", ())),
                f"one needs a student that splits into a shared trunk and a tail; {ctx.student_arch or 'this model'} "
                "does not (the CIFAR zoo and the digits CNNs do: KDModel.TAIL)")
        info = ctx.data
        self.branches = nn.ModuleList(
            create_model(ctx.student_arch, num_classes=info.num_classes, in_channels=info.input_shape[0]).drop_trunk()
            for _ in range(branches - 1))
        # the gate reads the trunk's output: the last-but-one stage
        self.gate = nn.Linear(ctx.student_spec.stages[-2].channels, branches)
        self.gate_bn = nn.BatchNorm1d(branches)
        self.temperature, self.rampup_epochs = temperature, rampup * ctx.epochs

    @property
    def tails(self) -> list[KDModel]:
        return [self.student, *self.branches]

    def ensemble(self, logits: list[Tensor], trunk: Tensor) -> Tensor:
        """The gate's softmax weights times each branch's logits, summed."""
        g = F.softmax(F.relu(self.gate_bn(self.gate(F.adaptive_avg_pool2d(trunk, 1).flatten(1)))), dim=1)
        return sum(g[:, k:k + 1] * z for k, z in enumerate(logits))

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student, **{f"branch{k + 1}": _View(self, k) for k in range(1, len(self.tails))},
                "ensemble": _View(self, None)}

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        h = self.student.forward_trunk(batch.images)
        logits = [t.forward_tail(h) for t in self.tails]
        ens = self.ensemble(logits, h)
        y = batch.labels
        w = sigmoid_rampup(epoch, self.rampup_epochs)
        with full_precision(batch.images.device):
            # T^2 KL(softmax(z_e/T) || softmax(z_k/T)) per branch, batch mean; the ensemble is the constant target
            kl = sum(soft_kl(z.float(), ens.float(), self.temperature, detach_target=True) for z in logits)
        return StepOutput(logits[0], {"ce": sum(F.cross_entropy(z, y) for z in logits),
                                      "ce_ensemble": F.cross_entropy(ens, y), "kl": w * kl})
