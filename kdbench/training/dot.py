"""DOT: Zhao, Cui, Song & Liang, "DOT: A Distillation-Oriented Trainer", ICCV 2023
(github.com/megvii-research/mdistiller: ``mdistiller/engine/dot.py``, its trainers ``DOT`` and ``CRDDOT`` in
``mdistiller/engine/trainer.py``, configs ``configs/cifar100/dot/*.yaml``).

DOT is an optimizer, not a loss: SGD with momentum in which the gradient of the task loss and the gradient
of the distillation loss each have a momentum buffer of their own, the distillation one with the larger
momentum (``beta + delta``) and the task one with the smaller (``beta - delta``), so that the distillation
loss, which plain SGD under-optimises by the paper's account, is driven harder. Any method whose loss terms
split into task and distillation terms can be trained by it.

- In kdbench: ``method.optimizer=dot`` on a method that offers it (KD, CRD, CRD+KD), with ``method.dot_delta``
  (``delta``, default 0.075). Both are modifiers: at their defaults (``sgd``, 0.075) they are not part of a
  run's identity; ``optimizer=dot`` is, and tables show ``KD (optimizer=dot)``. ``beta``, the learning rate
  and the weight decay are the schedule's (``schedule.momentum`` etc.); ``schedule.nesterov=true`` is
  refused (the authors' optimizer has no Nesterov form), and ``engine.optimizer_impl`` does not apply (one
  loop over the tensors). Initialisation stages (:class:`~kdbench.training.method.InitStage`) keep plain SGD.
- Which terms are which: ``Method.task_terms`` (``("ce",)``, the cross-entropy with the labels) are the task
  loss; every other term a method returns is the distillation loss. Each step runs two backward passes, as
  the authors' trainer: the distillation loss first (graph kept), its gradients set aside, then the task loss;
  a step costs about one more backward pass than SGD's.
- The update, exactly as the authors' code (``g_t``, ``g_d`` the task and distillation gradients of a
  parameter ``p``, ``wd`` the weight decay, ``v_t`` and ``v_d`` its two buffers):
  a parameter reached by both losses: ``v_t = (beta - delta) v_t + g_t + wd p`` and
  ``v_d = (beta + delta) v_d + g_d`` (the weight decay once, with the task gradient);
  a parameter reached by one loss only (CRD's embedding heads: distillation only; the student's classifier
  under CRD: task only) keeps that loss's buffer with the mean momentum ``((beta + delta) + (beta - delta)) / 2``
  (= ``beta``), the weight decay added to its gradient; then ``p -= lr * v_t`` and ``p -= lr * v_d``, in
  that order. A buffer starts as the first gradient it receives -- with ``wd p`` for the task buffer, without it
  for the distillation buffer of a distillation-only parameter (their code adds the decay after that first
  step; one step's decay, followed for parity).
- Paper vs code: the paper states the two momenta ``beta -/+ delta`` for the task and distillation gradients;
  the one-loss parameters' mean momentum, where the weight decay goes and the first step's buffers are the
  code's, which we follow. Their optimizer takes one parameter group, no dampening and no Nesterov; ours
  takes several groups (each with its own hyper-parameters) and refuses Nesterov in the schedule.
- Defaults (their ``configs/cifar100/dot/*.yaml``: resnet32x4->resnet8x4, vgg13->vgg8, resnet32x4->ShuffleV2):
  ``delta = 0.075`` with momentum 0.9 (so 0.825 for the task, 0.975 for distillation), weight decay 5e-4,
  batch 64, 240 epochs, lr 0.05 decayed x0.1 at 150/180/210 (0.01 for ShuffleV2) -- the CRD benchmark's
  schedule, which our ``schedule=crd`` and pair files already give -- and KD's mdistiller defaults (T=4,
  CE 0.1, KD 0.9 = ours). Tiny-ImageNet configs: 0.075; ImageNet: 0.09 (with KD at T=1, 0.5/0.5).
  Their ``CRDDOT`` trainer (task: CE; distillation: CRD's loss) has no CIFAR-100 config.
- Reported (their README, CIFAR-100, KD -> KD+DOT): resnet32x4->resnet8x4 73.33 -> 75.12, vgg13->vgg8
  72.98 -> 73.77, resnet32x4->ShuffleNetV2 74.45 -> 75.55. Tiny-ImageNet: ResNet18->MobileNetV2
  58.35 -> 64.01, ResNet18->ShuffleNetV2 62.26 -> 65.75; ImageNet: ResNet34->ResNet18 71.03 -> 71.72,
  ResNet50->MobileNetV1 70.50 -> 73.09. (The README gives no CRD+DOT number.)
- Checkpoints: both buffers are the optimizer's per-parameter state (``task_momentum``, ``distill_momentum``)
  and round-trip through ``state_dict``; the set-aside distillation gradients live only inside one step.
- Parity fixture: tests/data/parity/dot.json, from mdistiller at commit a08d46f
  (``mdistiller/engine/dot.py:DistillationOrientedTrainer``, driven as ``trainer.py:DOT.train_iter`` drives
  it): (1) a float64 toy model with parameters reached by both losses, by the task loss only and by the
  distillation loss only, fixed losses, weight decay and a learning rate changed between steps: parameters
  and both buffers after each of 4 steps; (2) KD (kdbench's step, float64 ``cnn_small`` student and teacher,
  weights stored) trained 3 steps by their optimizer on the ``ce`` and ``kd`` terms: the student's weights.
"""
from __future__ import annotations

from typing import Annotated, Iterable, Literal

import torch
from torch import Tensor

from kdbench.core.errors import KDBenchError
from kdbench.experiment.catalog import Modifier, Range

#: a method's optimizer: the schedule's SGD, or DOT on its task / distillation split
OptimizerChoice = Annotated[Literal["sgd", "dot"], Modifier()]
#: DOT's momentum gap ``delta`` (their CIFAR-100 and Tiny-ImageNet value)
DOT_DELTA = 0.075
DotDelta = Annotated[float, Range(ge=0, lt=1), Modifier()]
#: the loss terms that are the task's by default (``Method.task_terms``); every other term is distillation
TASK_TERMS: tuple[str, ...] = ("ce",)


class DistillationOrientedSGD(torch.optim.Optimizer):
    """SGD with one momentum buffer for the task gradient (``momentum - delta``) and one for the
    distillation gradient (``momentum + delta``); the update rule is the module's docstring.

    A step: the distillation loss's backward, :meth:`set_aside_distillation_grads`, ``zero_grad``, the task
    loss's backward, :meth:`step` (:func:`dot_step` does all of it)."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, delta: float = DOT_DELTA,
                 weight_decay: float = 0.0) -> None:
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr={lr} and weight_decay={weight_decay} must be >= 0")
        if not (0 <= momentum - delta and momentum + delta < 1):
            raise ValueError(f"DOT's momenta momentum -/+ delta = {momentum - delta:g}, {momentum + delta:g} "
                             "must lie in [0, 1)")
        super().__init__(params, dict(lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay))
        self._distill_grads: dict[Tensor, Tensor] = {}

    @torch.no_grad()
    def set_aside_distillation_grads(self) -> None:
        """Take the gradients now in ``.grad`` as the distillation loss's, and clear them (their ``step_kd``)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._distill_grads[p] = p.grad
                    p.grad = None

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Update with the task gradients now in ``.grad`` and the distillation gradients set aside."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distill, self._distill_grads = self._distill_grads, {}
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            m_task, m_distill = group["momentum"] - group["delta"], group["momentum"] + group["delta"]
            m_alone = (m_distill + m_task) / 2.0  # a parameter reached by one loss only (their arithmetic)
            for p in group["params"]:
                g_task, g_distill = p.grad, distill.pop(p, None)
                state = self.state[p]
                if g_task is not None:
                    d = g_task.add(p, alpha=wd) if wd != 0 else g_task
                    buf = state.get("task_momentum")
                    if buf is None:
                        state["task_momentum"] = buf = d.detach().clone()
                    else:
                        buf.mul_(m_task if g_distill is not None else m_alone).add_(d)
                    p.add_(buf, alpha=-lr)
                if g_distill is not None:
                    buf = state.get("distill_momentum")
                    if buf is None:  # their first step: the raw gradient, no weight decay even if task-less
                        state["distill_momentum"] = buf = g_distill.detach().clone()
                    elif g_task is not None:
                        buf.mul_(m_distill).add_(g_distill)
                    else:
                        buf.mul_(m_alone).add_(g_distill.add(p, alpha=wd) if wd != 0 else g_distill)
                    p.add_(buf, alpha=-lr)
        return loss


def split_losses(losses: dict[str, Tensor], task_terms: Iterable[str]) -> tuple[Tensor, Tensor]:
    """(the task loss, the distillation loss): the sums of the terms named in ``task_terms`` and of the others."""
    task_terms = tuple(task_terms)
    task = [v for k, v in losses.items() if k in task_terms]
    distill = [v for k, v in losses.items() if k not in task_terms]
    if not task or not distill:
        raise KDBenchError(f"DOT needs task terms {list(task_terms)} and distillation terms among the method's "
                           f"loss terms {sorted(losses)}")
    return sum(task), sum(distill)  # type: ignore[return-value]


def dot_step(optimizer, task: Tensor, distill: Tensor) -> None:
    """One DOT step as the authors' trainer takes it: the distillation loss's backward (graph kept), its
    gradients set aside, the task loss's backward, the update. ``optimizer`` is a
    :class:`DistillationOrientedSGD` or a data-parallel wrapper of one (``GradSync``: each backward's gradients
    are averaged over the processes before use)."""
    inner = getattr(optimizer, "inner", optimizer)
    optimizer.zero_grad(set_to_none=True)
    if distill.requires_grad:
        distill.backward(retain_graph=True)
        if inner is not optimizer:
            optimizer.sync_grads()
        inner.set_aside_distillation_grads()
    if task.requires_grad:
        task.backward()
    optimizer.step()


def is_dot(optimizer) -> bool:
    """Whether ``optimizer`` (or the one a data-parallel wrapper holds) is DOT."""
    return isinstance(getattr(optimizer, "inner", optimizer), DistillationOrientedSGD)
