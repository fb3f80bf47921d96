"""Vanilla: the student trained alone with cross-entropy; the baseline every table starts from.

- Category / scheme: none / none (no teacher, no distillation).
- Loss: ``ce`` = cross-entropy on the labels, weight 1.
"""
from __future__ import annotations

import torch.nn.functional as F

from kdbench.data import Batch
from kdbench.experiment.schema import VANILLA
from kdbench.method import Method, StepOutput, register_method


@register_method(VANILLA, category="none", scheme="none",
                 description="student alone, cross-entropy only (the baseline)",
                 display="Student (vanilla)", order=0)
class Vanilla(Method):
    uses_teacher = False

    def __init__(self, student, teacher, ctx) -> None:
        super().__init__(student, teacher, ctx)

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        logits = self.student(batch.images).logits
        return StepOutput(logits, {"ce": F.cross_entropy(logits, batch.labels)})
