"""The one output structure and feature metadata every kdbench model shares.

Distillation methods read stage features, pre-activation features and the
pooled embedding; they build connectors (regressors, embeddings) from
:class:`FeatureSpec` before training, so the spec is static and computed once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn


@dataclass
class ModelOutput:
    """What ``model(x)`` returns for every kdbench model.

    ``features`` are the post-activation stage outputs, shallow to deep.
    ``preact_features`` are the same stages before their last non-linearity
    (as in the CRD benchmark's ``preact=True``), or ``None`` where a model has
    no such point. ``embedding`` is the pooled vector fed to the classifier.
    """

    logits: Tensor
    features: list[Tensor]
    embedding: Tensor
    preact_features: list[Tensor] | None = None


@dataclass(frozen=True)
class StageSpec:
    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class FeatureSpec:
    """Static shapes of a model's outputs for a given input size."""

    input_shape: tuple[int, int, int]
    stages: tuple[StageSpec, ...]
    embedding_dim: int
    num_classes: int
    has_preact: bool


class KDModel(nn.Module):
    """Base class: subclasses implement ``forward(x) -> ModelOutput``.

    A family may also split itself into a shared trunk and a tail -- the deepest stage and everything
    after it -- for methods that give a student several tails (ONE's branches): it names the tail's
    child modules in ``TAIL`` and implements :meth:`forward_trunk` and :meth:`forward_tail`, with
    ``forward_tail(forward_trunk(x)) == forward(x).logits``.
    """

    num_classes: int
    #: the child modules of the tail (empty: the family does not split)
    TAIL: ClassVar[tuple[str, ...]] = ()

    def forward(self, x: Tensor) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_trunk(self, x: Tensor) -> Tensor:
        """The input of the deepest stage."""
        raise NotImplementedError(f"{type(self).__name__} does not split into trunk and tail")

    def forward_tail(self, h: Tensor) -> Tensor:
        """The logits, from the deepest stage's input."""
        raise NotImplementedError(f"{type(self).__name__} does not split into trunk and tail")

    def drop_trunk(self) -> "KDModel":
        """This model reduced to its tail (in place): a branch that runs on another model's trunk."""
        for name, _ in list(self.named_children()):
            if name not in self.TAIL:
                delattr(self, name)
        return self

    @torch.no_grad()
    def feature_spec(self, input_shape: tuple[int, int, int]) -> FeatureSpec:
        """Shapes of every output for ``input_shape`` (C, H, W), by one dry forward.

        Runs in eval mode on a single zero image so BatchNorm statistics are
        untouched; the caller's train/eval mode is restored.
        """
        was_training = self.training
        self.eval()
        try:
            param = next(self.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            out = self(torch.zeros(1, *input_shape, device=device))
        finally:
            self.train(was_training)
        stages = tuple(StageSpec(f.shape[1], f.shape[2], f.shape[3]) for f in out.features)
        return FeatureSpec(
            input_shape=tuple(input_shape),
            stages=stages,
            embedding_dim=out.embedding.shape[1],
            num_classes=out.logits.shape[1],
            has_preact=out.preact_features is not None,
        )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass for one image (torch.utils.flop_counter; a multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu")
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
