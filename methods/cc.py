"""CC: Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.

- Category / scheme: relation-based / offline.
- As the CRD benchmark implements it (code the original author sent to the benchmark's
  authors), not the paper's Gaussian-kernel correlation matrices: both pooled embeddings
  are mapped by a trainable linear layer to 128 dimensions, and with d = |f_s - f_t| the
  loss is the mean over consecutive samples i of sum_k d_ik * d_(i+1)k, i.e. it compares
  the two sides' differences of neighbouring samples in the batch.
- Loss: ``ce`` + ``cc`` = ``beta * loss``.
- Layers: the pooled embeddings (``embedding``; the benchmark's ``feat[-1]``).
- Defaults: beta=0.02, feat_dim=128, ce_weight=1 (CRD benchmark ``-a 0 -b 0.02``).
- Extra trainable parameters: the two linear embeddings (student and teacher sides).
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 73.56, resnet56->resnet20 69.63,
  resnet32x4->resnet8x4 72.97, vgg13->vgg8 70.71.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Count, Method, StepOutput, Weight, register_method


def cc_loss(v_s: Tensor, v_t: Tensor) -> Tensor:
    d = (v_s - v_t).abs()
    return (d[:-1] * d[1:]).sum(1).mean()


@register_method("cc", category="relation", scheme="offline",
                 description="Peng et al. 2019: correlation congruence of embedded features (CRD benchmark form)",
                 display="CC", order=5, paper="Peng et al., ICCV 2019", code="github.com/HobbitLong/RepDistiller")
class CC(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 0.02, feat_dim: Count = 128,
                 ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        self.embed_s = nn.Linear(ctx.student_spec.embedding_dim, feat_dim)
        self.embed_t = nn.Linear(ctx.teacher_spec.embedding_dim, feat_dim)
        self.beta, self.ce_weight = beta, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        loss = cc_loss(self.embed_s(s_out.embedding), self.embed_t(t_out.embedding))
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "cc": self.beta * loss})
