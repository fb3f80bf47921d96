"""Datasets as device-resident tensors plus batch-level augmentation.

A dataset builder returns a :class:`DataBundle`: train/val/test splits already
decoded into tensors and static :class:`DatasetInfo`. Batches are cut from the
tensors on the training device, so the hot loop does no per-image Python work.
Every batch carries the sample index (CRD's memory bank needs it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor

from ..errors import KDBenchError
from ..seeding import epoch_permutation, generator

# (images, generator) -> images; runs on the batch's device.
Augment = Callable[[Tensor, torch.Generator | None], Tensor]


@dataclass
class Split:
    images: Tensor
    labels: Tensor
    indices: Tensor  # position in the training set for train samples; arange otherwise

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.labels) != n or len(self.indices) != n:
            raise ValueError("images, labels and indices must have the same length")

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device), self.indices.to(device))


@dataclass(frozen=True)
class DatasetInfo:
    """What methods and models may know about the data before training."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    num_train: int
    classes: tuple[str, ...] = ()
    has_indices: bool = True


@dataclass
class Batch:
    images: Tensor
    labels: Tensor
    indices: Tensor


@dataclass
class DataBundle:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    augment: Augment | None = None
    # Applied to every batch after augmentation (e.g. uint8 -> normalised float),
    # so splits can stay compact on the device.
    prepare: Callable[[Tensor], Tensor] | None = None
    extra: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "DataBundle":
        return DataBundle(self.info, self.train.to(device), self.val.to(device), self.test.to(device),
                          self.augment, self.prepare, self.extra)


def carve_validation(images: Tensor, labels: Tensor, fraction: float, seed: int,
                     what: str = "data.val_fraction") -> tuple[Split, Split]:
    """Split a training set into (train, val), stratified by class, with a fixed seed.

    The split depends only on ``seed`` (``data.split_seed``), not the run seed,
    so every run of a benchmark selects its epoch on the same held-out samples.
    """
    if not 0.0 <= fraction < 1.0:
        raise KDBenchError(f"{what} must be in [0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    val_idx = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_idx.append(idx[: int(round(fraction * len(idx)))])
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    if val_idx:
        is_val[torch.cat(val_idx)] = True
    tr, va = torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()
    train = Split(images[tr], labels[tr], torch.arange(len(tr)))
    val = Split(images[va], labels[va], torch.arange(len(va)))
    return train, val


def train_batches(data: DataBundle, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
    """Shuffled, augmented training batches; a function of (seed, epoch) only."""
    split = data.train
    perm = epoch_permutation(len(split), seed, epoch).to(split.images.device)
    aug_gen = generator(seed, "augment", epoch, device=split.images.device) if data.augment else None
    for start in range(0, len(perm), batch_size):
        idx = perm[start:start + batch_size]
        images = split.images[idx]
        if data.augment is not None:
            images = data.augment(images, aug_gen)
        if data.prepare is not None:
            images = data.prepare(images)
        yield Batch(images, split.labels[idx], split.indices[idx])


def eval_batches(data: DataBundle, split: Split, batch_size: int) -> Iterator[Batch]:
    for start in range(0, len(split), batch_size):
        sl = slice(start, start + batch_size)
        images = split.images[sl]
        if data.prepare is not None:
            images = data.prepare(images)
        yield Batch(images, split.labels[sl], split.indices[sl])
