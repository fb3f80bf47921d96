"""KDSVD: Lee, Kim & Song, "Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018.

- Category / scheme: relation-based / offline (the knowledge is how consecutive stages relate).
- Decomposition: each stage output f (B, C, H, W) is read per sample as an (H*W) x C matrix
  (rows: positions, columns: channels) and decomposed by SVD. The teacher keeps its top ``k``
  right-singular vectors (C-dimensional) and singular values, the student its top ``k + extra``
  vectors; every kept vector is L2-normalised, and so is the teacher's vector of ``k`` singular
  values (for k = 1 that makes it 1).
- Sign alignment: for each teacher vector the student vector with the largest |cosine| is picked
  and multiplied by the sign of that cosine, so the student matches the teacher's sign; both
  models' vectors are then scaled by the teacher's normalised singular values.
- Relation: between consecutive stages l-1 and l of one model, the radial basis function
  exp(-(v_l[i, m] - v_{l-1}[j, m])^2 / 8) of every pair of coordinates i (of stage l) and j (of
  stage l-1), for each kept vector m: a (C_l, C_{l-1}, k) tensor per sample.
- Loss: ``ce`` + ``kdsvd`` = ``beta * sum_l sum (rbf_s - rbf_t)^2 / B`` over the consecutive stage
  pairs, summed over coordinates, vectors and the batch, divided by the batch size; non-finite
  entries are set to 0 before the sum; the teacher's relation is a constant.
- Layers: every stage output after the stem (``features[1:]``, post-activation), paired in order
  with the teacher's (mdistiller ``feats[1:]``; RepDistiller ``feat[1:-1]``, the same maps).
- Defaults: k=1, extra=3, beta=1, ce_weight=1: mdistiller ``CFG.KDSVD`` (K=1, LOSS.FEAT_WEIGHT=1,
  LOSS.CE_WEIGHT=1; mdistiller/engine/cfg.py, configs/cifar100/kdsvd.yaml), whose loss hard-codes
  the student's k + 3 vectors and the RBF width 8 of the authors' later TF code
  (sseung0703/KD_methods_with_TF, nets/Shared.py ``KD_SVD``).
- Pairs: the vectors of student and teacher are compared coordinate by coordinate, so the stages
  must have the same channel counts (in every version of the authors' code). Of the 13 CIFAR-100 pairs
  this serves resnet56/110 -> resnet20/32, resnet32x4 -> resnet8x4, vgg13 -> vgg8 and
  wrn_40_2 -> wrn_16_2; the others, and the digits pair (cnn_wide -> cnn_small), are refused
  before training. ``k`` must not exceed the rank bound min(H*W, C) of any teacher stage used.
- Precision: SVD, alignment and RBF run in fp32 outside the engine's bf16 autocast, as
  mdistiller (which casts to float) and the authors' TF code (float32, SVD on the CPU) do.
- Gradient of the SVD (ours, same values where PyTorch's are finite): only the kept vectors
  carry a gradient, so it is computed from them alone -- the textbook formula restricted to the
  terms that involve a kept vector. PyTorch's full SVD backward forms 0/0 for every pair of equal
  discarded singular values and turns the whole gradient into NaN whenever a feature matrix is
  rank-deficient (e.g. two dead ReLU channels; tested); coefficients that are still not finite
  (a kept singular value that is 0 or repeated) are set to 0, as the authors' TF gradient does.
- Where the codes differ, and what we follow:
  * mdistiller (the runnable reference for the parity fixture) reshapes the NCHW map with
    ``view(B, C*H, W)``, the index order of the TF code's NHWC reshape applied to NCHW, so its
    matrix is (C*H) x W and its "right-singular vectors" live along the image width. That is a
    port slip, not the method: we follow the authors' (H*W) x C matrix (RepDistiller computes
    the same, for square maps). ``layout=ch_w`` reproduces mdistiller's computation exactly
    (then the stages must share their widths instead of their channel counts).
  * RepDistiller (``distiller_zoo/KDSVD.py``): the same loss as mdistiller with the correct
    (H*W) x C matrix, but built as ``view(-1, C, H*H)``, right only for square maps; it returns
    one term per stage pair (summed by its loop), has no default weight (``-b`` must be given)
    and no CIFAR-100 results for KDSVD.
  * The authors' later TF code (KD_methods_with_TF, the source of both ports) sums the loss over
    the batch without dividing by B, and clips the distillation gradient of every variable to the
    norm of its cross-entropy gradient times sigmoid(epoch); its SVD gradient is hand-written.
    We follow the PyTorch ports (mean over the batch, no clipping).
  * The paper's own code (sseung0703/SSKD_SVD, nets/Distillation.py) differs further: the student
    offers k + 1 candidate vectors (``extra=1`` gives that), the alignment weights both sides by
    the teacher's singular values before choosing signs, samples with a non-finite vector are
    masked out and the batch rescaled, and the loss is half the sum of squares times sqrt(k);
    it also clips the distillation gradients. Not offered beyond ``extra``.
  * The signs of the teacher's singular vectors are whatever the SVD routine returns (LAPACK on
    the CPU, cuSOLVER on CUDA), and the relation between two stages depends on them: the loss,
    like the authors', is defined up to that choice.
- Extra trainable parameters: none.
- Per-pair settings: none (mdistiller has one config, res32x4 -> res8x4, with the defaults).
- Reported: no CIFAR-100 numbers on the CRD benchmark's pairs in mdistiller or RepDistiller. The
  authors' KD_methods_with_TF README (CIFAR-100, their ResNet-32 -> ResNet-8 of doubled depth,
  5 runs): KD-SVD 73.68 last / 73.78 best vs 71.76 / 71.92 for the student alone.
- Parity fixture (tests/data/parity/kdsvd.json): megvii-research/mdistiller at a08d46f1,
  ``mdistiller/distillers/KDSVD.py:kdsvd_loss``, imported with its ``Distiller`` base stubbed and,
  for the float64 cases, its ``.float()`` cast removed; run on fixed post-ReLU-like features
  (NCHW for ``layout=ch_w``; permuted to NHWC for ``layout=hw_c``, which makes its reshape the
  authors' (H*W) x C one -- checked equal to RepDistiller's KDSVD at b84f547c on square maps),
  with k = 1 and 2, non-square maps, a student with dead channels (a rank-deficient matrix), a batch
  of one, and one float32 case with the code untouched; it stores the loss and, in five cases, its
  autograd gradient for the student's maps, which ours (the restricted SVD backward) must equal.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Count, Index, Method, StepOutput, Weight, full_precision, register_method, require

#: how a (B, C, H, W) map becomes a batch of matrices: ``hw_c`` (H*W) x C, the authors';
#: ``ch_w`` (C*H) x W, what mdistiller's reshape of NCHW maps computes
Layout = Literal["hw_c", "ch_w"]
RBF_WIDTH = 8.0  # exp(-d^2 / 8): fixed in every version of the authors' code


def feature_matrix(f: Tensor, layout: Layout = "hw_c") -> Tensor:
    """The batch of matrices whose right-singular vectors are distilled: (B, H*W, C) or (B, C*H, W)."""
    b, c, h, w = f.shape
    return f.flatten(2).transpose(1, 2) if layout == "hw_c" else f.reshape(b, c * h, w)


def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class _TopRightSingular(torch.autograd.Function):
    """Top-n singular values (no gradient) and right-singular vectors of a batch of matrices.

    Backward: the gradient of A = U S V^T from dL/dV_n alone (the first n columns),
    U S (skew(V^T G) / E) V^T + U_n S_n^-1 G_n^T (I - V V^T) with G = [G_n, 0] and
    E_ij = s_j^2 - s_i^2; the entries of skew(V^T G) with both indices beyond n are 0, so their
    1/E (infinite for repeated discarded values) is never formed, and non-finite coefficients are 0.
    """

    @staticmethod
    def forward(ctx, x: Tensor, n: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        u, s, v = _finite(u), _finite(s), _finite(vh.transpose(-2, -1))
        ctx.save_for_backward(u, s, v)
        top_s, top_v = s[..., :n], v[..., :n]
        ctx.mark_non_differentiable(top_s)
        return top_s, top_v

    @staticmethod
    def backward(ctx, _grad_s: Tensor, grad_v: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        u, s, v = ctx.saved_tensors
        n, r = grad_v.shape[-1], s.shape[-1]
        j = torch.zeros(*s.shape[:-1], r, r, dtype=v.dtype, device=v.device)
        j[..., :n] = v.transpose(-2, -1) @ grad_v  # V^T G: only the kept columns are non-zero
        s2 = s * s
        coef = _finite(1.0 / (s2.unsqueeze(-2) - s2.unsqueeze(-1)))  # 1 / (s_j^2 - s_i^2)
        coef.diagonal(dim1=-2, dim2=-1).zero_()
        inner = s.unsqueeze(-1) * ((j - j.transpose(-2, -1)) * coef)
        grad = u @ inner @ v.transpose(-2, -1)
        g_t = grad_v.transpose(-2, -1)  # (n, C): its component outside span(V) (zero when V is square)
        outside = g_t - (g_t @ v) @ v.transpose(-2, -1)
        grad = grad + (u[..., :n] * _finite(1.0 / s[..., :n]).unsqueeze(-2)) @ outside
        return grad, None


def top_singular(f: Tensor, n: int, layout: Layout = "hw_c") -> tuple[Tensor, Tensor]:
    """L2-normalised top-n singular values (B, n) and right-singular vectors (B, D, n) of a stage map."""
    s, v = _TopRightSingular.apply(feature_matrix(f, layout), n)
    return F.normalize(s, dim=1), F.normalize(v, dim=1)


def align_signs(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For each teacher vector, the student vector of largest |cosine| times that cosine's sign: (B, D, n_t)."""
    with torch.no_grad():  # the choice is piecewise constant: no gradient through it
        cos = v_s.transpose(-2, -1) @ v_t
        best = cos.abs().amax(dim=1, keepdim=True)
        pick = torch.where(cos.abs() == best, cos.sign(), torch.zeros_like(cos))
    return v_s @ pick


def _rbf(v: Tensor, v_prev: Tensor) -> Tensor:
    """exp(-(v[i, m] - v_prev[j, m])^2 / 8) for every coordinate pair (i, j) and vector m: (B, D, D_prev, n)."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / RBF_WIDTH)


def kdsvd_loss(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor], k: int = 1, extra: int = 3,
               layout: Layout = "hw_c") -> Tensor:
    """Sum over consecutive stage pairs of the squared difference of the RBF relations, / batch size."""
    prev: tuple[Tensor, Tensor] | None = None
    terms = []
    for f_s, f_t in zip(feats_s, feats_t):
        with torch.no_grad():
            sigma_t, v_t = top_singular(f_t.detach(), k, layout)
        _, v_s = top_singular(f_s, k + extra, layout)
        scale = sigma_t.unsqueeze(1)
        v_s, v_t = align_signs(v_s, v_t) * scale, v_t * scale
        if prev is not None:
            sq = (_rbf(v_s, prev[0]) - _rbf(v_t, prev[1])).pow(2)
            terms.append(_finite(sq).sum() / f_s.shape[0])
        prev = (v_s, v_t)
    return torch.stack(terms).sum()


def _rank_bound(stage, layout: Layout) -> int:
    return min(stage.height * stage.width, stage.channels) if layout == "hw_c" else \
        min(stage.channels * stage.height, stage.width)


@register_method("kdsvd", category="relation", scheme="offline",
                 description="Lee et al. 2018: match RBF relations of consecutive stages' top singular vectors",
                 display="KDSVD", order=27, paper="Lee, Kim & Song, ECCV 2018",
                 code="github.com/megvii-research/mdistiller")
class KDSVD(Method):
    def __init__(self, student, teacher, ctx, *, k: Count = 1,
                 extra: Index = 3,  # the student offers k + extra candidate vectors (mdistiller: 3; SSKD_SVD: 1)
                 layout: Layout = "hw_c",  # hw_c: (H*W) x C, the authors'; ch_w: (C*H) x W, mdistiller's reshape
                 beta: Weight = 1.0, ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        s, t = ctx.student_spec.stages[1:], ctx.teacher_spec.stages[1:]
        n = min(len(s), len(t))
        require(n >= 2, "kdsvd relates consecutive stages: it needs at least two stage outputs beyond the stem "
                        f"on both models (student {len(s)}, teacher {len(t)})")
        if layout == "hw_c":
            require([x.channels for x in s[:n]] == [x.channels for x in t[:n]],
                    "kdsvd compares singular vectors channel by channel and needs the same channel counts in the "
                    f"student's and teacher's stages: student {[x.channels for x in s[:n]]}, "
                    f"teacher {[x.channels for x in t[:n]]}")
        else:
            require([x.width for x in s[:n]] == [x.width for x in t[:n]],
                    "kdsvd with layout=ch_w compares singular vectors along the image width and needs the same "
                    f"widths in the student's and teacher's stages: student {[x.width for x in s[:n]]}, "
                    f"teacher {[x.width for x in t[:n]]}")
        bound = min(_rank_bound(x, layout) for x in t[:n])
        require(k <= bound, f"kdsvd: k={k} exceeds the {bound} singular vectors of the teacher's smallest stage matrix")
        self.k, self.extra, self.layout, self.beta, self.ce_weight = k, extra, layout, beta, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        with full_precision(batch.images.device):  # SVD and RBF in fp32, as the authors' and mdistiller's code
            loss = kdsvd_loss([f.float() for f in s_out.features[1:]], [f.float() for f in t_out.features[1:]],
                              self.k, self.extra, self.layout)
        return StepOutput(s_out.logits, {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels),
                                         "kdsvd": self.beta * loss})
