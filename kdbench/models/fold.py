"""Fold a frozen model's BatchNorm layers into the convolutions that feed them.

A teacher is evaluated in eval mode with fixed statistics, so every
``conv -> BatchNorm2d`` pair computes an affine map of the conv's output and
can be replaced by one conv with rescaled weights and a bias: same outputs up
to float rounding, one pass over each activation fewer. The pairs are found
by watching one forward pass, so it works for any architecture without
knowing its code; a conv
output that anything else also reads (a residual branch, a returned feature)
is left alone. The folded model is then checked against the original on a
random batch (every logit, feature map and embedding) -- on a float64 copy on
the CPU, so the verdict does not depend on the device's rounding -- and the
model is left untouched if anything differs or the forward pass breaks.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)


def _flat(out) -> list[Tensor]:
    return [out.logits, *out.features, out.embedding, *(out.preact_features or [])]


class _Uses(TorchFunctionMode):
    """Count, per tensor, the torch calls that read it outside the BatchNorm that normalises it."""

    def __init__(self) -> None:
        super().__init__()
        self.outside: dict[int, int] = {}
        self.inside_bn: list[int] = []  # ids of the inputs of the BatchNorms now running

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for a in pytree.tree_leaves((args, kwargs or {})):
            if isinstance(a, Tensor) and id(a) in self.outside and id(a) not in self.inside_bn:
                self.outside[id(a)] += 1
        return func(*args, **(kwargs or {}))


def _pairs(model: nn.Module, x: Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) where the BatchNorm's input is a conv's output that nothing else reads.

    Watched on one forward pass: which conv produced each BatchNorm's input, and
    whether that tensor is read anywhere else (a residual branch, a returned
    feature) -- then folding would change those other uses, so the pair is skipped.
    """
    produced: dict[int, tuple[nn.Conv2d, Tensor]] = {}
    seen: list[tuple[nn.Conv2d | None, nn.BatchNorm2d, int]] = []
    uses = _Uses()

    def after_conv(mod, _inp, out):
        produced[id(out)] = (mod, out)  # keeps the tensor alive so its id stays unique
        uses.outside[id(out)] = 0

    def before_bn(mod, inp):
        conv = produced.get(id(inp[0]))
        seen.append((conv[0] if conv else None, mod, id(inp[0])))
        uses.inside_bn.append(id(inp[0]))

    def after_bn(_mod, _inp, _out):
        uses.inside_bn.pop()

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(after_conv))
        elif type(m) is nn.BatchNorm2d:  # subclasses (e.g. timm's BatchNormAct2d) do more than normalise
            hooks += [m.register_forward_pre_hook(before_bn), m.register_forward_hook(after_bn)]
    try:
        with uses:
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    returned = {id(t) for t in _flat(out)}
    convs = [c for c, _, _ in seen]
    bns = [b for _, b, _ in seen]
    return [(c, b) for c, b, t in seen
            if c is not None and convs.count(c) == 1 and bns.count(b) == 1 and uses.outside[t] == 0
            and t not in returned and b.track_running_stats and b.running_mean is not None]


def _fold_into(parent: nn.Module, attr: str, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Rescale ``conv`` (and give it a bias) so that it computes ``bn(conv(x))``; the BatchNorm becomes
    an Identity. The arithmetic is done in float64 and rounded once to the weights' dtype."""
    w = conv.weight
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.double()
    shift = (bn.bias.double() if bn.affine else 0) - bn.running_mean.double() * scale
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    w.copy_(w.double() * scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias.to(device=w.device, dtype=w.dtype), requires_grad=False)
    setattr(parent, attr, nn.Identity())


def _foldable(model: nn.Module, input_shape: tuple[int, ...], rtol: float) -> list[tuple[str, str]]:
    """Names of the (conv, BatchNorm) pairs of ``model`` that fold without changing its outputs.

    Found and checked on a float64 copy on the CPU, so the verdict depends on the model's structure
    only: on CUDA, TF32 convolutions (cuDNN's default) and bf16 weights round far more than a fold
    does, and a check on the device refused every GPU fold. The copy is folded in place and thrown
    away; an empty list means that some output changed or the folded forward pass broke.
    """
    probe = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    x = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = [t.clone() for t in _flat(probe(x))]
    names = {id(m): n for n, m in probe.named_modules()}
    parents = {id(child): (mod, attr) for mod in probe.modules() for attr, child in mod.named_children()}
    pairs = _pairs(probe, x)
    for conv, bn in pairs:
        _fold_into(*parents[id(bn)], conv, bn)
    try:
        folded = _flat(probe(x))
    except Exception as exc:  # e.g. forward code that reads a BatchNorm module's attributes directly
        log.debug("BatchNorm folding broke the forward pass: %s", exc)
        return []
    ok = len(folded) == len(reference) and all(
        a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=rtol * float(a.abs().max().clamp_min(1)))
        for a, b in zip(reference, folded))
    return [(names[id(c)], names[id(b)]) for c, b in pairs] if ok else []


@torch.no_grad()
def fold_batchnorm(model: nn.Module, input_shape: tuple[int, ...], rtol: float = 1e-6) -> int:
    """Fold, in place, every BatchNorm2d of the eval-mode ``model`` that reads only a conv's output.

    Returns how many were folded: 0 when the check (on a float64 copy, see ``_foldable``) finds an
    output that changes, in which case ``model`` is not touched at all.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (its BatchNorm statistics are fixed)")
    if next(model.parameters(), None) is None:
        return 0
    try:
        pairs = _foldable(model, input_shape, rtol)
    except Exception as exc:  # a model that cannot run in float64 on the CPU: keep it as it is
        log.warning("BatchNorm folding skipped: %s's float64 check failed (%s)", type(model).__name__, exc)
        return 0
    if not pairs:
        log.warning("BatchNorm folding changed %s's outputs; kept it unfolded", type(model).__name__)
        return 0
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        parent_name, _, attr = bn_name.rpartition(".")
        _fold_into(modules[parent_name], attr, modules[conv_name], modules[bn_name])
    return len(pairs)
