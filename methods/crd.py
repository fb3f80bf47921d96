"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

- Category / scheme: relation-based / offline (the survey files CRD under
  relation-based knowledge; it contrasts instance relations across models).
- Heads: student and teacher pooled embeddings -> linear -> L2 norm, 128 dims
  (both heads trainable, as in the authors' code).
- Memory: one 128-d vector per training sample for each side (the student
  bank is contrasted with teacher anchors and vice versa), initialised
  uniformly in +-1/sqrt(dim/3), updated after each step with momentum 0.5 and
  renormalised. Size: num_train x 128 x 2 floats, nothing else.
- Scores: h = exp(v_anchor . m / T) / Z with T = 0.07; Z (one constant per
  side) is estimated once, on the first batch, as mean(exp(.)) * num_train,
  then frozen -- the authors' code, not the paper's learned normaliser.
- Computation (ours, same numbers): while the bank holds at most 16 x (1 + K) rows
  (CIFAR) the scores come from one product of the anchors with the whole bank,
  then the sampled columns are picked, instead of gathering B x (1 + K) rows as
  the authors' code does; equal scores and gradients (tested; the speed-up is
  in docs/performance.md). The product reads a copy of each bank made for the step (freed after backward),
  because the banks are updated in place before the backward pass.
- Precision: heads, scores and NCE run in fp32 even under the engine's bf16
  autocast (the CUDA default): bf16 dot products divided by T = 0.07 would move
  each score by several percent; the authors trained in fp32.
- Loss: the NCE objective of the authors' code (paper Eq. 18) with
  K = 16,384 negatives and noise P_n = 1/num_train:
  -[log(h+/(h+ + K P_n)) + sum_neg log(K P_n/(h- + K P_n))] / batch, both sides summed.
- Sampling (authors' CIFAR-100 sampler): ``mode=exact`` takes the anchor
  sample itself as the positive; ``mode=relax`` a random sample of the same
  class. ``negatives=other_class`` (default) draws K indices from other classes,
  without replacement when there are at least K of them, else with
  replacement; ``negatives=uniform`` draws from every sample, as the memory
  does when no sampler is given. Drawn on the device from the method's own
  generator (one stream per process under data parallelism).
- Total: ``ce_weight * CE + kd_weight * KD(T=4) + beta * CRD``. ``crd``: 1 / 0 / 0.8;
  ``crd+kd``: 1 / 1 / 0.8 (CRD benchmark ``-a 0 -b 0.8`` and ``-a 1 -b 0.8``).
- Extra trainable parameters: the two heads; the memory banks are buffers.
- Modifier ``optimizer=dot`` (Zhao et al., "DOT: A Distillation-Oriented Trainer", ICCV 2023;
  github.com/megvii-research/mdistiller, their ``CRDDOT`` trainer): trained by DOT, one momentum buffer for
  the CE gradient (``schedule.momentum - dot_delta``) and one for the distillation gradient (CRD's term, and
  KD's under ``crd+kd``: ``+ dot_delta``). The heads, reached by the CRD term only, and the student's
  classifier, reached by CE only (when ``kd_weight=0``), keep one buffer at ``schedule.momentum``, as their
  code does (``kdbench.training.dot`` has the update rule and the rest). ``dot_delta`` 0.075 (their CIFAR-100
  value; they publish no CRD+DOT config nor, in their README, a CRD+DOT number). Off by default, and then not
  part of a run's identity.
- Reported (CRD benchmark, CIFAR-100): crd wrn_40_2->wrn_16_2 75.48, resnet56->resnet20 71.16,
  resnet32x4->resnet8x4 75.51, vgg13->vgg8 73.94; crd+kd 75.64, 71.63, 75.46, 74.29.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.compute.distributed import all_gather_cat, all_reduce_sum, stream, world
from kdbench.compute.seeding import class_groups, derive_seed
from kdbench.data import Batch
from kdbench.method import (
    Count,
    DotDelta,
    Method,
    OptimizerChoice,
    Range,
    StepOutput,
    Weight,
    full_precision,
    register_method,
    require,
    soft_kl,
)
from kdbench.training.connectors import L2Embed

EPS = 1e-7
# Score the whole bank with one matrix product when it holds at most this many times the
# sampled 1 + K rows; beyond that (ImageNet: 1.28M rows vs 16,385) gathering the rows is cheaper.
DENSE_RATIO = 16
Mode = Literal["exact", "relax"]
Negatives = Literal["other_class", "uniform"]


def nce_loss(scores: Tensor, n_data: int) -> Tensor:
    """NCE loss of normalised scores (B, 1 + K); column 0 is the positive."""
    k = scores.shape[1] - 1
    noise = k / float(n_data)  # K * P_n
    pos = scores[:, 0]
    neg = scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + EPS))
    log_d0 = torch.log(noise / (neg + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class ContrastMemory(nn.Module):
    """Two memory banks (student side, teacher side) and the frozen normalisers Z."""

    def __init__(self, dim: int, n_data: int, temperature: float, momentum: float) -> None:
        super().__init__()
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # (Z_s, Z_t); < 0 = not yet estimated
        self.temperature, self.momentum, self.n_data = temperature, momentum, n_data

    def scores(self, v_s: Tensor, v_t: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised scores of student anchors vs teacher memory and vice versa: (B, 1 + K) each."""
        b, k1 = idx.shape
        if self.n_data <= DENSE_RATIO * k1:
            # One GEMM scores every bank row, then the 1 + K sampled columns are picked: the same
            # dot products as gathering B x (1 + K) rows first (the authors' way), without moving
            # B x (1 + K) x dim floats.
            # (copies of the banks: the product keeps them for backward, and update() runs before it)
            dot_s = torch.gather(v_s @ self.memory_t.clone().t(), 1, idx)
            dot_t = torch.gather(v_t @ self.memory_s.clone().t(), 1, idx)
        else:  # a bank much larger than the sample (ImageNet): gather the sampled rows
            w_t = self.memory_t[idx.flatten()].view(b, k1, -1)
            w_s = self.memory_s[idx.flatten()].view(b, k1, -1)
            dot_s = torch.bmm(w_t, v_s.unsqueeze(2)).squeeze(2)
            dot_t = torch.bmm(w_s, v_t.unsqueeze(2)).squeeze(2)
        out_s = torch.exp(dot_s / self.temperature)
        out_t = torch.exp(dot_t / self.temperature)
        if self.z[0] < 0:  # first batch: estimate the normalisers once (authors' code)
            with torch.no_grad():
                z = torch.stack([out_s.mean(), out_t.mean()]) * self.n_data
                self.z.copy_(all_reduce_sum(z) / world())  # one value across data-parallel processes
        return out_s / self.z[0], out_t / self.z[1]

    @torch.no_grad()
    def update(self, v_s: Tensor, v_t: Tensor, y: Tensor) -> None:
        for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            mixed = bank[y] * self.momentum + v.float() * (1 - self.momentum)
            bank.index_copy_(0, y, F.normalize(mixed, dim=1))

    def size_bytes(self) -> int:
        return (self.memory_s.numel() + self.memory_t.numel()) * self.memory_s.element_size()


class NegativeSampler(nn.Module):
    """Per-anchor contrast indices (B, 1 + K): positive first, then K negatives."""

    def __init__(self, labels: Tensor, k: int, mode: Mode, negatives: Negatives, seed: int) -> None:
        super().__init__()
        require(mode in get_args(Mode), f"mode must be one of {get_args(Mode)}, got {mode!r}")
        require(negatives in get_args(Negatives), f"negatives must be one of {get_args(Negatives)}, got {negatives!r}")
        self.k, self.mode, self.negatives = k, mode, negatives
        self.n = len(labels)
        self.register_buffer("labels", labels.clone(), persistent=False)
        order, counts, starts = class_groups(labels)
        self.register_buffer("by_class", order, persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("starts", starts, persistent=False)
        # Under data parallelism each process draws its own negatives (its own stream);
        # alone, the stream is the same as it always was.
        self._seed = derive_seed(seed, *stream("crd-negatives"))
        self._gen: torch.Generator | None = None
        self._draws = 0

    def _generator(self, device: torch.device) -> torch.Generator:
        # A fresh generator per (seed, draw count) keeps sampling resumable from a checkpoint.
        g = torch.Generator(device=device)
        g.manual_seed(self._seed + self._draws)
        self._draws += 1
        return g

    def forward(self, index: Tensor, y: Tensor) -> Tensor:
        g = self._generator(index.device)
        b = len(index)
        if self.mode == "exact":
            pos = index
        else:  # a random sample of the anchor's class
            off = (torch.rand(b, generator=g, device=index.device) * self.counts[y]).long()
            pos = self.by_class[self.starts[y] + off]
        if self.negatives == "uniform":
            neg = torch.randint(0, self.n, (b, self.k), generator=g, device=index.device)
        else:
            neg = self._other_class(y, g)
        return torch.cat([pos[:, None], neg], 1)

    def _other_class(self, y: Tensor, g: torch.Generator) -> Tensor:
        # Position r among the n - count[y] other-class samples maps to the sorted
        # order by skipping the anchor's own class block.
        avail = self.n - self.counts[y]  # (B,)
        b, dev = len(y), y.device
        if self.k <= int(avail.min()):  # without replacement: top-k of random keys
            keys = torch.rand(b, int(avail.max()), generator=g, device=dev)
            keys = keys.masked_fill(torch.arange(keys.shape[1], device=dev)[None] >= avail[:, None], -1.0)
            r = keys.topk(self.k, dim=1).indices
        else:  # fewer candidates than K: with replacement, as the authors' sampler does
            r = (torch.rand(b, self.k, generator=g, device=dev) * avail[:, None]).long()
        start = self.starts[y][:, None]
        r = torch.where(r >= start, r + self.counts[y][:, None], r)
        return self.by_class[r]

    def get_extra_state(self) -> dict:
        return {"draws": self._draws}

    def set_extra_state(self, state: dict) -> None:
        self._draws = int(state["draws"])


@register_method("crd", category="relation", scheme="offline",
                 description="Tian et al. 2020: contrast student and teacher embeddings against memory banks (NCE)",
                 display="CRD", order=13, paper="Tian, Krishnan & Isola, ICLR 2020",
                 code="github.com/HobbitLong/RepDistiller")
class CRD(Method):
    def __init__(self, student, teacher, ctx, *, feat_dim: Count = 128, nce_k: Count = 16384,
                 nce_t: Annotated[float, Range(gt=0)] = 0.07, nce_m: Annotated[float, Range(ge=0, le=1)] = 0.5,
                 mode: Mode = "exact",  # exact: positive = the anchor itself; relax: a same-class sample
                 negatives: Negatives = "other_class",  # other_class (authors' CIFAR sampler) | uniform (any sample)
                 beta: Weight = 0.8, ce_weight: Weight = 1.0, kd_weight: Weight = 0.0,
                 temperature: Annotated[float, Range(gt=0)] = 4.0,
                 optimizer: OptimizerChoice = "sgd", dot_delta: DotDelta = 0.075) -> None:
        super().__init__(student, teacher, ctx)
        self.use_optimizer(optimizer, dot_delta)
        require(ctx.data.has_indices and ctx.train_labels is not None,
                f"crd needs the index and label of every training sample; dataset {ctx.data.name!r} provides none")
        n = ctx.data.num_train
        self.embed_s = L2Embed(ctx.student_spec.embedding_dim, feat_dim)
        self.embed_t = L2Embed(ctx.teacher_spec.embedding_dim, feat_dim)
        self.memory = ContrastMemory(feat_dim, n, nce_t, nce_m)
        self.sampler = NegativeSampler(ctx.train_labels, nce_k, mode, negatives, ctx.seed)
        self.n_data = n
        self.beta, self.ce_weight, self.kd_weight, self.temperature = beta, ce_weight, kd_weight, temperature

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_out = self.teacher_forward(batch.images)
        s_out = self.student(batch.images)
        with full_precision(batch.images.device):  # heads, scores and NCE in fp32, as the authors' code
            v_s = self.embed_s(s_out.embedding.float())
            v_t = self.embed_t(t_out.embedding.float())
            idx = self.sampler(batch.indices, batch.labels)
            out_s, out_t = self.memory.scores(v_s, v_t, idx)
            crd = nce_loss(out_s, self.n_data) + nce_loss(out_t, self.n_data)
        # Under data parallelism every process applies the whole global batch, so the banks stay equal.
        self.memory.update(all_gather_cat(v_s.detach().float()), all_gather_cat(v_t.detach().float()),
                           all_gather_cat(batch.indices))
        losses = {"ce": self.ce_weight * F.cross_entropy(s_out.logits, batch.labels), "crd": self.beta * crd}
        if self.kd_weight:
            losses["kd"] = self.kd_weight * soft_kl(s_out.logits, t_out.logits.float(), self.temperature)
        return StepOutput(s_out.logits, losses)

    def report(self) -> dict:
        return {"memory_bank_bytes": self.memory.size_bytes(),
                "memory_bank_shape": [2, *self.memory.memory_s.shape]}


@register_method("crd+kd", category="relation", scheme="offline",
                 description="CRD combined with Hinton KD (CRD benchmark's CRD+KD row)",
                 display="CRD+KD", order=14, paper="Tian, Krishnan & Isola, ICLR 2020",
                 code="github.com/HobbitLong/RepDistiller")
class CRDKD(CRD):
    defaults = {"kd_weight": 1.0}  # the CRD benchmark's CRD+KD: -a 1 -b 0.8
