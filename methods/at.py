"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.

- Category / scheme: feature-based / offline.
- Attention map of a feature map f (B, C, H, W): the channel mean of |f|^p,
  flattened and L2-normalised per sample (paper Sec. 3.1, F^p_mean; p=2).
- Loss: ``ce`` + ``at`` = ``beta * sum_j mean((Q_s^j - Q_t^j)^2)`` over matched
  stage pairs j. The paper writes beta/2 * ||Q_s - Q_t||_p summed over layers;
  the authors' and the CRD benchmark's code square the difference and average
  over batch and positions, with beta=1000 -- that is what we follow.
- Layers: every stage output (``features[1:]``, post-activation), paired in
  order with the teacher's; when spatial sizes differ the larger map is
  average-pooled to the smaller (CRD benchmark).
- Defaults: p=2, beta=1000, ce_weight=1 (CRD benchmark ``-a 0 -b 1000``).
- Extra trainable parameters: none.
- Reported (CRD benchmark, CIFAR-100): wrn_40_2->wrn_16_2 74.08, resnet56->resnet20 70.55,
  resnet32x4->resnet8x4 73.44, vgg13->vgg8 71.43.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, Positive, StepOutput, Weight, match_sizes, register_method, require


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """L2-normalised, flattened channel mean of |f|^p: shape (B, H*W)."""
    # |f|^p == f^p exactly for even integer p (the default p=2): skip abs and its backward.
    powered = f.pow(p) if float(p).is_integer() and int(p) % 2 == 0 else f.abs().pow(p)
    return F.normalize(powered.mean(1).flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    """Mean squared difference of attention maps after matching spatial sizes."""
    f_s, f_t = match_sizes(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@register_method("at", category="feature", scheme="offline",
                 description="Zagoruyko & Komodakis 2017: match spatial attention maps of every stage",
                 display="AT", order=3, paper="Zagoruyko & Komodakis, ICLR 2017",
                 code="github.com/HobbitLong/RepDistiller")
class AT(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 1000.0, p: Positive = 2.0,
                 ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        n = min(len(ctx.student_spec.stages), len(ctx.teacher_spec.stages)) - 1
        require(n >= 1, "at needs at least one stage feature map beyond the stem on both models")
        self.beta, self.p, self.ce_weight = beta, p, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        loss = sum(at_loss(fs, ft, self.p) for fs, ft in zip(s_out.features[1:], t_out.features[1:]))
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "at": self.beta * loss})
