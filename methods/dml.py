"""DML: Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018.

- Category / scheme: response-based / online (no pretrained teacher).
- Cohort: K >= 2 students trained together from scratch; member 0 is the
  pair's student, the others are ``peers`` (architecture names; empty entries
  mean the student's architecture). Each member has its own initialisation
  (derived from the run seed) and every member is evaluated and recorded.
- Loss of member k: CE(p_k, y) + 1/(K-1) * sum_{l != k} KL(p_l || p_k), with
  p = softmax of logits at temperature 1 (paper Eq. 1-2 and 9-10).
- Update order (``update=sequential``, the default, paper Algorithm 1): in
  each mini-batch the members are updated one after another; before member k's
  update the predictions of members already updated in this batch are
  recomputed with their new parameters (no gradient; BatchNorm running
  statistics are restored so that re-estimation does not count the batch
  twice). ``update=simultaneous`` computes all predictions once and updates
  every member in one step -- cheaper, common in re-implementations, not the paper's.
- The authors' released code (github.com/YingZhangDUT/Deep-Mutual-Learning, TensorFlow, its
  ``kl_loss_compute``) differs from the paper in two ways: it *sums* the K-1 peer terms (the paper's
  Eq. 10 averages them: equal for K=2) and computes each as
  ``mean_batch(sum_c p_l * log(1e-8 + p_l / (p_k + 1e-8)))`` instead of the exact KL. We follow the
  paper by default (``kl_form=paper``); ``kl_form=code`` is the released code's form (a modifier: at
  its default it is not part of a run's identity). Parity fixture for it: tests/data/parity/dml.json,
  their ``kl_loss_compute`` at commit 34a2058 run under TensorFlow 2's v1 compatibility layer on
  stored float64 logits.
- Defaults: K=2, same architecture, the run's optimiser and schedule for
  every member (the paper uses SGD with Nesterov momentum on CIFAR-100;
  we keep the benchmark's schedule so the student is comparable to the other
  methods' students).
- Extra trainable parameters: the peers.
- Reported (DML paper Table 2, CIFAR-100, two-network cohorts; independent -> DML):
  resnet32 & resnet32: 68.99 -> 71.19 / 70.75; resnet32 with mobilenet: 68.99 -> 71.10;
  resnet32 with wrn_28_10: 68.99 -> 70.73 (results/reference/zhang2018dml.csv).
"""
from __future__ import annotations

import contextlib
from typing import Annotated, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Method, Modifier, StepOutput, Weight, kl_divergence, register_method, require
from kdbench.models import create_model

KLForm = Literal["paper", "code"]


def _code_kl(logits: Tensor, peer: Tensor) -> Tensor:
    """The released code's KL(p_peer || p_self): epsilons inside the log, summed over classes, batch mean."""
    p, q = F.softmax(logits, dim=1), F.softmax(peer, dim=1)
    return (q * torch.log(1e-8 + q / (p + 1e-8))).sum(1).mean()


def dml_loss(logits: Tensor, peer_logits: list[Tensor], labels: Tensor,
             kl_form: KLForm = "paper") -> tuple[Tensor, Tensor]:
    """(CE, the peers' KL(p_peer || p_self)) for one member, peers constants: their mean of exact KLs (paper
    Eq. 10), or with ``kl_form="code"`` the released code's sum of its epsilon form."""
    if kl_form == "code":
        kl = sum(_code_kl(logits, q.detach()) for q in peer_logits)
    else:
        log_p = F.log_softmax(logits, dim=1)
        kl = sum(kl_divergence(log_p, F.log_softmax(q.detach(), dim=1)) for q in peer_logits) / len(peer_logits)
    return F.cross_entropy(logits, labels), kl


@contextlib.contextmanager
def _frozen_bn_stats(model: nn.Module):
    """Run a forward in train mode without letting BatchNorm running statistics move."""
    saved = {k: v.clone() for k, v in model.state_dict().items()
             if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    try:
        yield
    finally:
        model.load_state_dict(saved, strict=False)


@register_method("dml", category="response", scheme="online",
                 description="Zhang et al. 2018: a cohort of students teach each other (no pretrained teacher)",
                 display="DML", order=18, paper="Zhang, Xiang, Hospedales & Lu, CVPR 2018")
class DML(Method):
    uses_teacher = False

    def __init__(self, student, teacher, ctx, *,
                 peers: list = (None,),  # the other members' architectures; None = the pair's student's
                 # sequential (paper Algorithm 1) | simultaneous (one step for all)
                 update: Literal["sequential", "simultaneous"] = "sequential",
                 kl_weight: Weight = 1.0, kl_form: Annotated[KLForm, Modifier()] = "paper") -> None:
        super().__init__(student, teacher, ctx)
        require(len(peers) >= 1, "dml needs at least one peer (method.peers), i.e. a cohort of K >= 2")
        info = ctx.data
        self.peers = nn.ModuleList(
            create_model(arch or ctx.student_arch, num_classes=info.num_classes, in_channels=info.input_shape[0])
            for arch in peers)
        self.update, self.kl_weight, self.kl_form = update, kl_weight, kl_form

    @property
    def cohort(self) -> list[nn.Module]:
        return [self.student, *self.peers]

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student, **{f"peer{i + 1}": p for i, p in enumerate(self.peers)}}

    def _losses(self, k: int, logits: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        ce, kl = dml_loss(logits[k], [z for j, z in enumerate(logits) if j != k], labels, self.kl_form)
        tag = "" if k == 0 else f"_peer{k}"
        return {f"ce{tag}": ce, f"kl{tag}": self.kl_weight * kl}

    def step(self, batch: Batch, epoch: int) -> StepOutput:
        """Simultaneous form: every member's loss from one set of predictions."""
        logits = [m(batch.images).logits for m in self.cohort]
        losses: dict[str, Tensor] = {}
        for k in range(len(logits)):
            losses.update(self._losses(k, logits, batch.labels))
        return StepOutput(logits[0], losses)

    def train_step(self, batch: Batch, epoch: int, optimizer: torch.optim.Optimizer,
                   autocast: Callable[[], contextlib.AbstractContextManager]) -> StepOutput:
        if self.update == "simultaneous":
            return super().train_step(batch, epoch, optimizer, autocast)
        cohort = self.cohort
        with autocast():
            logits = [m(batch.images).logits for m in cohort]
        all_losses: dict[str, Tensor] = {}
        first_logits = logits[0]
        for k in range(len(cohort)):
            with autocast():
                losses = self._losses(k, logits, batch.labels)
            # Only member k's parameters receive gradients; SGD skips the others (grad None).
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
            all_losses.update({n: v.detach() for n, v in losses.items()})
            with torch.no_grad(), autocast(), _frozen_bn_stats(cohort[k]):
                logits[k] = cohort[k](batch.images).logits  # re-estimate with the updated parameters
        return StepOutput(first_logits.detach(), all_losses)
