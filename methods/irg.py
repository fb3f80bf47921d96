"""IRG: Liu et al., "Knowledge Distillation via Instance Relationship Graph", CVPR 2019.

- Category / scheme: relation-based / offline.
- The graph of a layer: its vertices are the samples' features, its edges the B x B matrix of
  squared Euclidean distances between them, each matrix divided by its largest entry (the
  diagonal is 0). The transformation between two layers: per sample, the squared distance
  between its features at the two layers, the B values divided by their largest.
- Loss, as in Knowledge-Distillation-Zoo (the reference, ``kd_losses/irg.py`` with its
  ``train_kd.py``): ``ce`` + ``vertex`` + ``edge`` + ``transformation``, where
  ``vertex = w_vert * MSE(z_s, z_t)`` on the logits; ``edge = w_edge * (MSE(E_s, E_t) over the
  embedding, the next-to-last stage and the last stage) / 3`` (each MSE a mean over the B x B
  entries); ``transformation = w_tran * MSE(T_s, T_t)`` from the next-to-last to the last stage
  (mean over the batch). Distances use |a|^2 + |b|^2 - 2 a.b clamped at 1e-12, as the Zoo does;
  the division by the largest entry is part of the graph (it carries gradient); the teacher's
  terms are constants.
- Layers: the logits, the pooled embedding (the Zoo's ``feat``) and the outputs of the last two
  stages (``features[-2]``, ``features[-1]``, post-activation; the Zoo's ``rb2[1]``, ``rb3[1]`` of
  its CIFAR ResNets). For the transformation the earlier map is average-pooled to the later one's
  size and, when the later map has twice the channels, each pair of adjacent channels is averaged
  (the Zoo's rule). Ours, where the Zoo's code would fail: any other channel ratio is bridged by
  average-pooling the map with more channels over the channel axis to the other's count (for 2:1
  exactly the Zoo's pairwise mean); of the CIFAR-100 pairs only MobileNetV2 (48 -> 160) needs it.
  Student and teacher are never compared feature to feature, so every pair is served.
- Defaults: w_vert=0.1, w_edge=5, w_tran=5, ce_weight=1 (Zoo ``train_kd.py`` defaults with
  ``--lambda_kd 1``, its example_train_script.sh for resnet110 -> resnet20).
- Paper and the authors' code vs the Zoo (we follow the Zoo, as asked):
  * The authors' released code (yufanLIU/IRG, Caffe, ResNet20 -> ResNet20-x0.5) comes as two
    separate models: ``IRG.prototxt`` distils only the edge of the pooled final features, and
    ``IRG_Transformation.prototxt`` only the transformations between globally pooled block outputs
    inside each stage (blocks 1->3, 4->6, 7->9, equal channels), each an EuclideanLoss of weight
    0.005 beside CE; neither has the logit (vertex) term. Their distance layers divide by the
    largest entry but treat it as a constant in the backward pass, and the edge layer sends each
    pair's gradient to one of its two samples only.
  * The Zoo combines vertex, edge and transformation in one loss on the last layers ("one-to-one
    mode" only, per its README), with the max inside the autograd graph.
- Precision: distances run in fp32 outside the engine's bf16 autocast (they subtract nearly equal
  products, as RKD's), as the Zoo trains in fp32.
- Extra trainable parameters: none.
- Per-pair settings: none (the Zoo uses the same weights for every pair).
- Reported: IRG paper, as listed by the survey (Gou et al. 2021, Tables 5-6), ResNet20 ->
  ResNet20-x0.5: CIFAR-10 88.36 -> 90.69 (teacher 91.45), CIFAR-100 72.51 -> 74.64 (teacher
  78.40). Zoo README (200 epochs): CIFAR-10 / CIFAR-100 resnet20 -> resnet20 92.77 / 70.37,
  resnet110 -> resnet20 93.13 / 69.36, resnet110 -> resnet110 94.44 / 74.96.
- Parity fixture (tests/data/parity/irg.json): AberHu/Knowledge-Distillation-Zoo at 65470c84,
  ``kd_losses/irg.py:IRG`` (imports only torch), called as ``train_kd.py`` does with
  [next-to-last map, last map, embedding, logits] of each model, in float64 on fixed inputs: maps
  with pooling and channel halving, maps of equal size and channels, a batch with repeated
  samples, a batch of two, and two sets of weights; it stores the loss and the three unweighted
  terms (the module's own distance helpers) and the loss's gradient for the student's inputs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, StepOutput, Weight, full_precision, match_sizes, register_method, require

EPS = 1e-12  # the Zoo's floor on squared distances


def edge_matrix(x: Tensor) -> Tensor:
    """Squared Euclidean distances between the samples' flattened features, diagonal 0, over their max: (B, B)."""
    x = x.flatten(1)
    sq = x.pow(2).sum(1)
    d = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * x @ x.t()).clamp(min=EPS)
    d = d * (1 - torch.eye(len(x), dtype=d.dtype, device=d.device))
    return d / d.max()


def pool_channels(f: Tensor, c: int) -> Tensor:
    """(B, C, H, W) -> (B, c, H, W): adaptive average pooling along the channel axis."""
    b, _, h, w = f.shape
    pooled = F.adaptive_avg_pool1d(f.flatten(2).transpose(1, 2).reshape(b * h * w, 1, -1), c)
    return pooled.reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)


def match_channels(f1: Tensor, f2: Tensor) -> tuple[Tensor, Tensor]:
    """The map with more channels average-pooled over channels to the other's count (2:1: mean of adjacent pairs)."""
    c1, c2 = f1.shape[1], f2.shape[1]
    if c1 == c2:
        return f1, f2
    if c2 == 2 * c1:  # the Zoo's case (a ResNet stage doubles the channels), in its arithmetic
        return f1, (f2[:, 0::2] + f2[:, 1::2]) / 2.0
    return (f1, pool_channels(f2, c1)) if c1 < c2 else (pool_channels(f1, c2), f2)  # ours, any other ratio


def transformation(f1: Tensor, f2: Tensor) -> Tensor:
    """Per sample, the squared distance between its maps at two layers (f1 before f2), over the batch's max: (B,)."""
    f1, f2 = match_channels(*match_sizes(f1, f2))
    d = (f1.flatten(1) - f2.flatten(1)).pow(2).sum(1).clamp(min=EPS)
    return d / d.max()


def irg_terms(s: Sequence[Tensor], t: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Unweighted (vertex, edge, transformation) from [next-to-last map, last map, embedding, logits] of each model."""
    fm1_s, fm2_s, emb_s, z_s = s
    fm1_t, fm2_t, emb_t, z_t = (x.detach() for x in t)
    vertex = F.mse_loss(z_s, z_t)
    edge = sum(F.mse_loss(edge_matrix(a), edge_matrix(b)) for a, b in ((emb_s, emb_t), (fm1_s, fm1_t), (fm2_s, fm2_t)))
    tran = F.mse_loss(transformation(fm1_s, fm2_s), transformation(fm1_t, fm2_t))
    return vertex, edge / 3.0, tran


@register_method("irg", category="relation", scheme="offline",
                 description="Liu et al. 2019: match instance relationship graphs (logits, distances, layer-to-layer)",
                 display="IRG", order=28, paper="Liu et al., CVPR 2019",
                 code="github.com/AberHu/Knowledge-Distillation-Zoo")
class IRG(Method):
    def __init__(self, student, teacher, ctx, *, w_vert: Weight = 0.1, w_edge: Weight = 5.0, w_tran: Weight = 5.0,
                 ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        n_s, n_t = len(ctx.student_spec.stages), len(ctx.teacher_spec.stages)
        require(min(n_s, n_t) >= 2, "irg relates the last two stages' feature maps: both models need at least two "
                                    f"(student {n_s}, teacher {n_t})")
        self.w_vert, self.w_edge, self.w_tran, self.ce_weight = w_vert, w_edge, w_tran, ce_weight

    @staticmethod
    def _inputs(out) -> list[Tensor]:
        return [out.features[-2].float(), out.features[-1].float(), out.embedding.float(), out.logits.float()]

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        with full_precision(batch.images.device):  # distances in fp32, as the Zoo's
            vertex, edge, tran = irg_terms(self._inputs(s_out), self._inputs(t_out))
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "vertex": self.w_vert * vertex, "edge": self.w_edge * edge,
                                         "transformation": self.w_tran * tran})
