"""RKD: Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.

- Category / scheme: relation-based / offline.
- Distance-wise loss: Huber (smooth L1) between the students' and teacher's
  pairwise Euclidean distances, each divided by its mean over non-zero pairs
  (paper Eq. 4-5).
- Angle-wise loss: Huber between the cosines of the angles e_i - e_j, e_k - e_j
  over all triplets (paper Eq. 6-7).
- Loss: ``ce`` + ``rkd`` = ``beta * (25 * distance + 50 * angle)``; teacher terms
  computed without gradient.
- Layers: the pooled embeddings (``embedding``), as in the CRD benchmark.
- Precision: distances and angles run in fp32 even under the engine's bf16
  autocast (the CUDA default): the distance matrix subtracts nearly equal
  bf16 products, and the authors trained in fp32.
- Defaults: distance_weight=25, angle_weight=50 (paper and authors' code),
  beta=1, ce_weight=1 (CRD benchmark ``-a 0 -b 1``).
- Extra trainable parameters: none.
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 73.35, resnet56->resnet20 69.61,
  resnet32x4->resnet8x4 71.90, vgg13->vgg8 71.48.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, StepOutput, Weight, full_precision, register_method


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix with an exact zero diagonal."""
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=d.dtype))


def _normalised_distances(e: Tensor) -> Tensor:
    d = pairwise_distances(e)
    return d / d[d > 0].mean()


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # diff[j, i] = e_i - e_j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_distance_loss(s: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad():
        td = _normalised_distances(t)
    return F.smooth_l1_loss(_normalised_distances(s), td)


def rkd_angle_loss(s: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad():
        ta = _angles(t)
    return F.smooth_l1_loss(_angles(s), ta)


@register_method("rkd", category="relation", scheme="offline",
                 description="Park et al. 2019: match pairwise distances and triplet angles of embeddings",
                 display="RKD", order=7, paper="Park, Kim, Lu & Cho, CVPR 2019",
                 code="github.com/HobbitLong/RepDistiller")
class RKD(Method):
    def __init__(self, student, teacher, ctx, *, distance_weight: Weight = 25.0, angle_weight: Weight = 50.0,
                 beta: Weight = 1.0, ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.beta, self.ce_weight = beta, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t = self.teacher_forward(batch.images).embedding.float()
        s_out = self.student(batch.images)
        s = s_out.embedding.float()
        with full_precision(s.device):  # distances and angles in fp32, as the authors' code
            rkd = self.distance_weight * rkd_distance_loss(s, t) + self.angle_weight * rkd_angle_loss(s, t)
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "rkd": self.beta * rkd})
