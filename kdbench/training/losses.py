"""Loss pieces that several methods share, written once.

Every response-based method compares two class distributions with a KL divergence; they differ only in
how the targets are softened, whether the target is a constant, how the result is reduced (each authors'
code has its own) and whether it is scaled by T^2. :func:`soft_kl` takes those as arguments, so a method
states its form in one call, and two methods that compute the same quantity do it with the same arithmetic.
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

#: how a KL divergence is reduced:
#: ``batchmean`` summed over classes, averaged over the batch (the KL per sample, averaged: Hinton's KD);
#: ``mean`` averaged over every element, batch x classes (old ``nn.KLDivLoss()``'s default, TF-KD's code);
#: ``per_sample`` summed over classes, one value per sample (B,)
Reduction = Literal["batchmean", "mean", "per_sample"]


def kl_divergence(log_q: Tensor, target: Tensor, *, reduction: Reduction = "batchmean",
                  log_target: bool = True) -> Tensor:
    """KL(p || q) of rows of class distributions: ``log_q`` holds log q, ``target`` log p (``log_target``)
    or p itself (the form of code that passes probabilities; PyTorch then takes p log p as 0 where p = 0).

    Log-space targets keep vanishing probabilities exact, which is why it is the default."""
    if reduction == "batchmean":
        return F.kl_div(log_q, target, reduction="batchmean", log_target=log_target)
    if reduction == "mean":  # written out: PyTorch's "mean" is announced to become "batchmean"
        return F.kl_div(log_q, target, reduction="sum", log_target=log_target) / log_q.numel()
    if reduction == "per_sample":
        return F.kl_div(log_q, target, reduction="none", log_target=log_target).sum(1)
    raise ValueError(f"reduction must be batchmean, mean or per_sample, got {reduction!r}")


def soft_kl(student_logits: Tensor, target_logits: Tensor, temperature: float = 1.0, *,
            reduction: Reduction = "batchmean", t_squared: bool = True, detach_target: bool = False,
            log_target: bool = True) -> Tensor:
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), the temperature-softened KL of distillation.

    ``t_squared`` scales by T^2 (Hinton et al., Sec. 2: it keeps the soft targets' gradients on the hard
    targets' scale); a method that folds T^2 into its own weight passes False. ``detach_target`` makes the
    target a constant where it would otherwise carry gradient (a branch ensemble, a partner's prediction, a peer).
    ``log_target=False`` hands the target to the KL as probabilities, as code written that way does.
    """
    t = temperature
    target = target_logits.detach() if detach_target else target_logits
    log_q = F.log_softmax(student_logits / t, dim=1)
    p = F.log_softmax(target / t, dim=1) if log_target else F.softmax(target / t, dim=1)
    kl = kl_divergence(log_q, p, reduction=reduction, log_target=log_target)
    return kl * t * t if t_squared else kl


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): each row's z-score, ``(z - mean) / (eps + std)`` with
    the unbiased std, as the authors' code computes it. A softmax of it at a base temperature T is a softmax of
    the raw logits at a per-sample temperature T * std, so teacher and student need not match in scale."""
    mean = logits.mean(dim=-1, keepdim=True)
    return (logits - mean) / (eps + logits.std(dim=-1, keepdim=True))
