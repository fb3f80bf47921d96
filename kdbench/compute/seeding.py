"""Derived seeds: every random stream of a run is a pure function of (seed, purpose).

This is what makes runs comparable across methods (same student initialisation,
same data order for a given seed) and resumable bit-for-bit (an epoch's
randomness does not depend on what ran before it).
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed from ``seed`` and a purpose path, stable across Python runs."""
    key = "/".join([str(int(seed))] + [str(p) for p in purpose]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *purpose: object, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *purpose))
    return g


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of epoch ``epoch``: shared by every method for this seed."""
    return torch.randperm(n, generator=generator(seed, "data-order", epoch))


def class_groups(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample indices grouped by class: ``(order, counts, starts)`` where ``order`` lists the samples
    class by class (in index order within a class), ``counts[c]`` is class c's size and ``starts[c]``
    where its block begins in ``order``. The one grouping behind every same-class draw (CS-KD's
    partners, CRD's relaxed positives and other-class negatives), on the labels' device."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    return order, counts, starts


def class_partners(labels: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """For every training sample, a sample of its own class drawn uniformly (itself included, as in
    CS-KD's sampler), fresh each epoch: a pure function of (labels, seed, epoch), so both data
    pipelines, every process and a resumed epoch pair the same samples."""
    labels = labels.detach().cpu().long()
    order, counts, starts = class_groups(labels)
    u = torch.rand(len(labels), generator=generator(seed, "class-partner", epoch), dtype=torch.float64)
    pick = (u * counts[labels]).long().clamp_max(counts[labels] - 1)
    return order[starts[labels] + pick]


def data_order_digest(n: int, seed: int, epochs: int) -> str:
    """sha256 over every epoch's permutation: equal digests mean identical data order."""
    h = hashlib.sha256()
    for epoch in range(epochs):
        h.update(epoch_permutation(n, seed, epoch).numpy().tobytes())
    return h.hexdigest()


def state_dict_digest(module: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over a module's parameters and buffers (or a state dict's tensors), in name order."""
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()
