"""SP: Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

- Category / scheme: relation-based / offline.
- Loss: ``ce`` + ``sp`` = ``beta * ||G_t - G_s||_F^2 / B^2`` where ``G = A A^T`` is the
  batch's similarity matrix of the flattened last-stage maps ``A`` (B x CHW), each row
  L2-normalised (paper Eq. 2-4; Frobenius norm squared over the B x B entries).
- Layers: the last stage's output (``features[-1]``, post-activation; the benchmark's
  ``feat[-2]``), one pair.
- Defaults: beta=3000, ce_weight=1 (CRD benchmark ``-a 0 -b 3000``; the paper's gamma=3000
  for CIFAR).
- Extra trainable parameters: none. Shapes need not match: only B x B matrices are compared.
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 73.83, resnet56->resnet20 69.67,
  resnet32x4->resnet8x4 72.94, vgg13->vgg8 72.68.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, StepOutput, Weight, full_precision, register_method, require


def similarity_matrix(f: Tensor) -> Tensor:
    """Row-normalised Gram matrix of a batch of feature maps: (B, B)."""
    a = f.flatten(1)
    return F.normalize(a @ a.t(), dim=1)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Squared Frobenius distance of the two similarity matrices, over B^2."""
    b = f_s.shape[0]
    return (similarity_matrix(f_t) - similarity_matrix(f_s)).pow(2).sum() / (b * b)


@register_method("sp", category="relation", scheme="offline",
                 description="Tung & Mori 2019: preserve the batch's pairwise similarities of the last stage",
                 display="SP", order=4, paper="Tung & Mori, ICCV 2019", code="github.com/HobbitLong/RepDistiller")
class SP(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 3000.0, ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        require(len(ctx.student_spec.stages) > 1 and len(ctx.teacher_spec.stages) > 1,
                "sp needs a stage feature map beyond the stem on both models")
        self.beta, self.ce_weight = beta, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        with full_precision(batch.images.device):  # Gram matrices of CHW-long rows: fp32, as the authors
            loss = sp_loss(s_out.features[-1].float(), t_out.features[-1].float())
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "sp": self.beta * loss})
