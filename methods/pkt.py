"""PKT: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018.

- Category / scheme: relation-based / offline.
- Each side's pooled embeddings are L2-normalised; their cosine similarities, mapped to
  [0, 1] by (c + 1) / 2, are normalised per row into conditional probabilities
  p(j | i) (paper Eq. 5 with the cosine kernel the authors use); the loss is the KL
  divergence KL(P_t || P_s), averaged over all B x B entries with eps=1e-7 in numerator
  and denominator, as the authors' released code (and the CRD benchmark) computes it;
  NaNs from an all-zero embedding become 0 there too.
- Loss: ``ce`` + ``pkt`` = ``beta * KL``.
- Layers: the pooled embeddings (``embedding``; the benchmark's ``feat[-1]``).
- Defaults: beta=30000, ce_weight=1 (CRD benchmark ``-a 0 -b 30000``).
- Extra trainable parameters: none.
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 74.54, resnet56->resnet20 70.34,
  resnet32x4->resnet8x4 73.64, vgg13->vgg8 72.88.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, StepOutput, Weight, full_precision, register_method

EPS = 1e-7


def _conditional_probabilities(e: Tensor) -> Tensor:
    n = e / (e.pow(2).sum(1, keepdim=True).sqrt() + EPS)
    n = torch.nan_to_num(n, nan=0.0)
    sim = (n @ n.t() + 1.0) / 2.0
    return sim / sim.sum(1, keepdim=True)


def pkt_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """KL(P_t || P_s) of the cosine-kernel conditional probabilities, mean over B x B entries."""
    p_s, p_t = _conditional_probabilities(e_s), _conditional_probabilities(e_t)
    return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()


@register_method("pkt", category="relation", scheme="offline",
                 description="Passalis & Tefas 2018: match the embeddings' cosine-kernel probability distributions",
                 display="PKT", order=8, paper="Passalis & Tefas, ECCV 2018",
                 code="github.com/HobbitLong/RepDistiller")
class PKT(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 30000.0, ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        self.beta, self.ce_weight = beta, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        with full_precision(batch.images.device):  # a KL of ~1/B probabilities: fp32
            loss = pkt_loss(s_out.embedding.float(), t_out.embedding.float())
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "pkt": self.beta * loss})
