"""DIST: Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

- Category / scheme: response-based / offline.
- Idea: match the *relations* in the teacher's predictions, not the predictions themselves, so a
  student far below a strong teacher is not pushed to reproduce its exact probabilities. The
  relation is Pearson's correlation, which ignores shifts and scales of the compared vectors.
- Loss, on Y = softmax(Z / T) of the student and the teacher (a batch of B rows, C classes), with
  d(u, v) = 1 - cos(u - mean(u), v - mean(v)) the Pearson distance:
  - ``inter`` (inter-class relation): d between each sample's student row and teacher row,
    averaged over the B samples;
  - ``intra`` (intra-class relation): d between each class's student column and teacher column
    (the batch's probabilities of that class), averaged over the C classes.
  ``loss = ce_weight * CE(z_s, y) + beta * T^2 * inter + gamma * T^2 * intra``. As in the
  authors' code the cosine's denominator is ``|u| |v| + 1e-8`` (so identical inputs give a
  distance of 1e-8 / (|u - mean(u)|^2 + 1e-8), not 0, and a batch of one sample gives an intra
  distance of 1) and the teacher's logits carry no gradient (the authors run the teacher under
  no_grad). Computed in fp32 under autocast (differences of probabilities of ~1e-2).
- Layers: logits only.
- Defaults: T=4, beta=2, gamma=2, ce_weight=1 -- the authors' CIFAR-100 configuration
  (hunto/image_classification_sota ``configs/strategies/distill/dist_cifar.yaml``: ``kd: dist_t4``,
  ``ori_loss_weight: 1``, ``kd_loss_weight: 2``; ``lib/models/losses/kd_loss.py`` builds ``dist_t4``
  as their DIST loss with beta=gamma=1, tau=4). Their code weights the sum ``beta*inter + gamma*intra``
  (each times T^2) by ``kd_loss_weight``; we fold that weight into ours, so our beta and gamma are
  the weights on the two terms themselves (2 = 2 x 1). ImageNet (``resnet_dist.yaml``, kd ``dist``)
  uses T=1 with the same weights.
- Paper vs code: the paper states the objective as ``alpha L_cls + beta L_inter + gamma L_intra``
  over softmax(Z / tau) (its appendix A.1 lists the implementation); every detail of the
  arithmetic here -- the T^2 on each relation term, the 1e-8 in the cosine's denominator, the
  means over rows and over columns -- is the released code's, which we follow. With T=4 the T^2
  makes the effective weight of each Pearson distance 2 x 16 = 32 on CIFAR-100.
- Schedule: the authors' CIFAR config is the CRD schedule (batch 64, SGD lr 0.05, momentum 0.9,
  weight decay 5e-4, 240 epochs, lr x0.1 at 150/180/210 via a 120-epoch constant "warm-up" and
  30-epoch steps), and lr 0.01 for MobileNetV2/ShuffleNet students (their README), as the CRD
  pair files already set. No per-pair method hyper-parameters: the same weights and T on every pair.
- Extra trainable parameters: none.
- Reported (DIST_KD README, CIFAR-100, 240 epochs, mean +- std): wrn_40_2->wrn_40_1 74.43 +- 0.24,
  resnet56->resnet20 71.75 +- 0.30, resnet32x4->resnet8x4 76.31 +- 0.19, resnet50->mobilenetv2
  68.66 +- 0.23, resnet32x4->shufflenetv1 76.34 +- 0.18, resnet32x4->shufflenetv2 77.35 +- 0.25
  (with the authors' own teachers, e.g. resnet32x4 at 79.42).
- Parity fixture (tests/data/parity/dist.json): hunto/image_classification_sota at commit d9662f7d
  (the ``classification`` submodule pinned by hunto/DIST_KD 2418f18), ``lib/models/losses/dist_kd.py``,
  class ``DIST``, run unmodified on stored float64 (one case float32) logits: the loss for several
  (beta, gamma, tau), the two relations without T^2, and the loss's gradient by autograd; cases
  include CIFAR-100's 100 classes at T=4, a sharp teacher at T=1, batches of one and two samples,
  a student equal to the teacher and one shifted per row.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, Positive, StepOutput, Weight, full_precision, register_method

#: added to the product of norms in the cosine, as the authors' code does (keeps a zero vector finite)
EPS = 1e-8


def pearson_distance(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """1 - Pearson correlation between the rows of ``a`` and ``b``, averaged over the rows."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1 - corr.mean()


def dist_relations(z_s: Tensor, z_t: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(inter, intra): the Pearson distances of softmax(z / T) by rows (samples) and by columns (classes),
    without the T^2 factor."""
    y_s = F.softmax(z_s / temperature, dim=1)
    y_t = F.softmax(z_t / temperature, dim=1)
    return pearson_distance(y_s, y_t), pearson_distance(y_s.t(), y_t.t())


def dist_loss(z_s: Tensor, z_t: Tensor, beta: float, gamma: float, temperature: float) -> Tensor:
    """T^2 * (beta * inter + gamma * intra), the authors' DIST term."""
    inter, intra = dist_relations(z_s, z_t, temperature)
    t2 = temperature ** 2
    return beta * (t2 * inter) + gamma * (t2 * intra)


@register_method("dist", category="response", scheme="offline",
                 description="Huang et al. 2022: match the teacher's inter- and intra-class prediction correlations",
                 display="DIST", order=24, paper="Huang et al., NeurIPS 2022", code="github.com/hunto/DIST_KD")
class DIST(Method):
    def __init__(self, student, teacher, ctx, *, beta: Weight = 2.0, gamma: Weight = 2.0,
                 temperature: Positive = 4.0, ce_weight: Weight = 1.0) -> None:
        super().__init__(student, teacher, ctx)
        self.beta, self.gamma, self.temperature, self.ce_weight = beta, gamma, temperature, ce_weight

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        t_logits = self.teacher_forward(batch.images).logits
        logits = self.student(batch.images).logits
        with full_precision(batch.images.device):
            inter, intra = dist_relations(logits.float(), t_logits.float(), self.temperature)
        t2 = self.temperature ** 2
        return StepOutput(logits, {"ce": self.ce_weight * F.cross_entropy(logits, batch.labels),
                                   "inter": self.beta * (t2 * inter), "intra": self.gamma * (t2 * intra)})
