"""BYOT: Zhang et al., "Be Your Own Teacher: Improve the Performance of Convolutional Neural Networks via
Self Distillation", ICCV 2019.

- Category / scheme: response- and feature-based / self-distillation: no teacher network; the
  student's deepest classifier teaches classifiers attached to its shallower stages.
- Heads: one per student stage except the stem (``features[0]``) and the deepest stage, built from
  the student's feature shapes: a bottleneck (1x1 conv to E/4 channels, BN, ReLU; a k x k conv with
  stride k, k = the stage's height / the deepest stage's height, BN, ReLU; 1x1 conv to E, BN, ReLU),
  global average pooling and a linear classifier, where E is the student's embedding width (the
  authors' ResNets: the last stage's channels). A stage whose size is not a multiple of the deepest
  one's is refused.
- Loss: ``(1 - alpha) * sum_c CE(z_c, y)`` over every classifier (deepest included)
  ``+ alpha * T^2 * sum_i KL(softmax(z_deep/T) || softmax(z_i/T))`` over the shallow heads
  ``+ beta * sum_i ||f_i - f_deep||^2`` (summed over batch and dimensions, as the authors' code does),
  where f_i is a head's pooled feature and f_deep the student's embedding; the deepest classifier's
  outputs and embedding are constants in the KD and hint terms. The public code (luanyunteng/
  pytorch-be-your-own-teacher; the paper's authors released none) writes the KD term as a
  cross-entropy with soft targets, which differs from the paper's KL by the target's entropy (a
  constant: same gradients); kdbench reports the KL. Its feature loss masks positions where both
  features are zero -- there the difference is zero anyway, so the mask is dropped.
- Evaluated: the deepest classifier is the student (reported and selected on; the deployed model
  has no heads); each head (``head1`` shallowest ...) and ``ensemble`` (the mean of every classifier's
  softmax, the paper's ensemble row) are recorded beside it.
- Defaults: T=3, alpha=0.1, beta=1e-6 (the public code's). The paper trained 200 epochs, batch 128,
  lr 0.1 divided by 10 at epochs 75/130/180; kdbench runs its common schedule.
- Extra trainable parameters: the heads (not part of the deployed student).
- Reported (BYOT paper / survey Table 6, CIFAR-100, self; baseline -> deepest classifier):
  ResNet18 77.09 -> 78.64, ResNet50 77.68 -> 80.56, ResNet101 77.98 -> 81.23, WRN-20-8 79.76 -> 80.92.
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import (
    Method,
    PartsView,
    Range,
    StepOutput,
    Weight,
    full_precision,
    register_method,
    require,
    soft_kl,
)
from kdbench.models import KDModel, ModelOutput, StageSpec


class Head(nn.Module):
    """A shallow stage's bottleneck, pooling and classifier."""

    def __init__(self, stage: StageSpec, deepest_height: int, width: int, num_classes: int) -> None:
        super().__init__()
        k = stage.height // deepest_height
        mid = max(width // 4, 1)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(stage.channels, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, k, stride=k), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, width, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, pooled feature)."""
        f = F.adaptive_avg_pool2d(self.bottleneck(x), 1).flatten(1)
        return self.fc(f), f


class _HeadView(PartsView):
    """The student up to a head."""

    def __init__(self, student: KDModel, head: Head, stage: int) -> None:
        super().__init__(student, head)
        self.stage = stage

    def forward(self, x: Tensor) -> ModelOutput:
        student, head = self.parts
        out = student(x)
        logits, f = head(out.features[self.stage])
        return ModelOutput(logits, out.features, f)


class _Ensemble(PartsView):
    """Every classifier's softmax, averaged; its log is returned as logits."""

    def forward(self, x: Tensor) -> ModelOutput:
        method = self.parts[0]
        out = method.student(x)
        logits = [out.logits, *(h(out.features[i])[0] for i, h in zip(method.head_stages, method.heads))]
        probs = torch.stack([F.softmax(z.float(), dim=1) for z in logits]).mean(0)
        return ModelOutput(probs.clamp_min(1e-12).log(), out.features, out.embedding)


def byot_hint(head_feature: Tensor, deep_feature: Tensor) -> Tensor:
    """Squared L2 distance summed over the batch and the dimensions (the public code's reduction)."""
    return (head_feature - deep_feature.detach()).pow(2).sum()


@register_method("byot", category="response", scheme="self",
                 description="Zhang et al. 2019: the deepest classifier teaches heads on the student's own stages",
                 display="BYOT", order=22, paper="Zhang et al., ICCV 2019",
                 code="github.com/luanyunteng/pytorch-be-your-own-teacher")
class BYOT(Method):
    uses_teacher = False

    def __init__(self, student, teacher, ctx, *, temperature: Annotated[float, Range(gt=0)] = 3.0,
                 alpha: Annotated[float, Range(ge=0, le=1)] = 0.1, beta: Weight = 1e-6) -> None:
        super().__init__(student, teacher, ctx)
        spec = ctx.student_spec
        stages = spec.stages
        require(len(stages) >= 3, f"byot needs a student with at least three stages (a stem, a shallow stage and "
                                  f"the deepest); {ctx.student_arch or 'this student'} has {len(stages)}")
        deepest = stages[-1].height
        self.head_stages = list(range(1, len(stages) - 1))
        for i in self.head_stages:
            require(stages[i].height % deepest == 0 and stages[i].width % stages[-1].width == 0,
                    f"byot: stage {i} of {ctx.student_arch or 'the student'} is {stages[i].height}x{stages[i].width}, "
                    f"not a multiple of the deepest stage's {deepest}x{stages[-1].width}")
        self.heads = nn.ModuleList(Head(stages[i], deepest, spec.embedding_dim, spec.num_classes)
                                   for i in self.head_stages)
        self.temperature, self.alpha, self.beta = temperature, alpha, beta

    def eval_models(self) -> dict[str, nn.Module]:
        views = {f"head{k + 1}": _HeadView(self.student, h, i)
                 for k, (i, h) in enumerate(zip(self.head_stages, self.heads))}
        return {"student": self.student, **views, "ensemble": _Ensemble(self)}

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        out = self.student(batch.images)
        y = batch.labels
        heads = [h(out.features[i]) for i, h in zip(self.head_stages, self.heads)]
        ce = F.cross_entropy(out.logits, y)
        ce_heads = sum(F.cross_entropy(z, y) for z, _ in heads)
        with full_precision(batch.images.device):
            # T^2 KL(softmax(z_deep/T) || softmax(z_head/T)) per head, batch mean; the deepest side is constant
            kd = sum(soft_kl(z.float(), out.logits.float(), self.temperature, detach_target=True) for z, _ in heads)
            hint = sum(byot_hint(f.float(), out.embedding.float()) for _, f in heads)
        return StepOutput(out.logits, {"ce": (1 - self.alpha) * ce, "ce_heads": (1 - self.alpha) * ce_heads,
                                       "kd": self.alpha * kd, "hint": self.beta * hint})
