"""Fold a frozen model's BatchNorm layers into the convolutions that feed them.

A teacher is evaluated in eval mode with fixed statistics, so every
``conv -> BatchNorm2d`` pair computes an affine map of the conv's output and
can be replaced by one conv with rescaled weights and a bias: same outputs up
to float rounding, one pass over each activation fewer. The pairs are found
by watching one forward pass, so it works for any architecture without
knowing its code; a conv
output that anything else also reads (a residual branch, a returned feature)
is left alone. The folded model is then checked against the original on a
random batch (every logit, feature map and embedding) and the fold is undone
if anything differs or the forward pass breaks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)


@dataclass
class _Fold:
    parent: nn.Module
    attr: str
    bn: nn.BatchNorm2d
    conv: nn.Conv2d
    weight: Tensor
    bias: nn.Parameter | None


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


@torch.no_grad()
def fold_batchnorm(model: nn.Module, input_shape: tuple[int, ...], rtol: float = 1e-3) -> int:
    """Fold, in place, every BatchNorm2d of the eval-mode ``model`` that reads only a conv's output.

    Returns how many were folded (0 when the check against the unfolded model
    fails, in which case the model is left exactly as it was).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (its BatchNorm statistics are fixed)")
    param = next(model.parameters(), None)
    if param is None:
        return 0
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(4, *input_shape, generator=g).to(param.device)
    reference = [t.clone() for t in _flat(model(x))]
    pairs = _pairs(model, x)
    parents = {id(child): (mod, name) for mod in model.modules() for name, child in mod.named_children()}
    done: list[_Fold] = []
    for conv, bn in pairs:
        parent, attr = parents[id(bn)]
        done.append(_Fold(parent, attr, bn, conv, conv.weight.detach().clone(), conv.bias))
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else torch.rsqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
        setattr(parent, attr, nn.Identity())
    try:
        folded = _flat(model(x))
        ok = len(folded) == len(reference) and all(
            a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=rtol * float(a.abs().max().clamp_min(1)))
            for a, b in zip(reference, folded))
    except Exception as exc:  # e.g. code that reads a BatchNorm module's attributes directly
        log.debug("BatchNorm folding broke the forward pass: %s", exc)
        ok = False
    if not ok:
        for f in reversed(done):
            f.conv.weight.copy_(f.weight)
            f.conv.bias = f.bias
            setattr(f.parent, f.attr, f.bn)
        log.warning("BatchNorm folding changed %s's outputs; kept it unfolded", type(model).__name__)
        return 0
    return len(done)
