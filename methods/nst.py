"""NST: Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer",
arXiv:1707.01219, 2017.

- Category / scheme: feature-based / offline.
- Each channel's activation map (over H x W positions) is L2-normalised; the loss is the
  squared MMD between the student's and teacher's sets of channel vectors with the
  polynomial kernel k(x, y) = (x . y)^2 (paper Eq. 7-9, d=2, c=0):
  mean k(t, t') + mean k(s, s') - 2 mean k(s, t), the teacher term without gradient.
- Layers: every stage output (``features[1:]``), paired in order; when spatial sizes
  differ the larger map is average-pooled to the smaller (CRD benchmark). Channel counts
  need not match: the kernel compares H x W vectors.
- Loss: ``ce`` + ``nst`` = ``beta * sum over stages``.
- Defaults: beta=50, ce_weight=1 (CRD benchmark ``-a 0 -b 50``).
- Extra trainable parameters: none.
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 73.68, resnet56->resnet20 69.60,
  resnet32x4->resnet8x4 73.30, vgg13->vgg8 71.53.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, StepOutput, Weight, full_precision, match_sizes, register_method, require


def _poly_mmd_term(a: Tensor, b: Tensor) -> Tensor:
    """Mean over the batch and all channel pairs of (a_i . b_j)^2: a (B, Ca, N), b (B, Cb, N)."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    f_s, f_t = match_sizes(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return _poly_mmd_term(t, t).detach() + _poly_mmd_term(s, s) - 2 * _poly_mmd_term(s, t)


@register_method("nst", category="feature", scheme="offline",
                 description="Huang & Wang 2017: match neuron selectivity patterns by polynomial-kernel MMD",
                 display="NST", order=12, paper="Huang & Wang, arXiv:1707.01219, 2017",
                 code="github.com/HobbitLong/RepDistiller")
class NST(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 50.0, ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        n = min(len(ctx.student_spec.stages), len(ctx.teacher_spec.stages)) - 1
        require(n >= 1, "nst needs at least one stage feature map beyond the stem on both models")
        self.beta, self.ce_weight = beta, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        with full_precision(batch.images.device):
            loss = sum(nst_loss(fs.float(), ft.float()) for fs, ft in zip(s_out.features[1:], t_out.features[1:]))
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "nst": self.beta * loss})
