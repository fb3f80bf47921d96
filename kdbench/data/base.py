"""Datasets as batch sources with one interface, two implementations.

:class:`TensorBundle` (the default for small images) keeps each split decoded
as a tensor on the training device and augments whole batches there: no
per-image Python work, no DataLoader workers. :class:`LoaderBundle` wraps
torch ``Dataset`` s with per-image transforms and a ``DataLoader`` (ImageNet,
and the reference path for small images). Both draw the training order from
:func:`kdbench.compute.seeding.epoch_permutation`, so for a seed every method and both
paths see the same samples in the same order. Every batch carries the sample
index (CRD's memory bank needs it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from kdbench.compute.seeding import class_partners, derive_seed, epoch_permutation, generator
from kdbench.core.errors import KDBenchError

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
    """A training or evaluation batch. With ``paired`` training batches (CS-KD) each sample ``i`` comes with
    ``pair_images[i]``, a sample of the same class (``pair_indices[i]`` in the training set)."""

    images: Tensor
    labels: Tensor
    indices: Tensor
    pair_images: Tensor | None = None
    pair_indices: Tensor | None = None


class DataBundle:
    """A dataset's three splits as batch iterators on one device."""

    info: DatasetInfo
    device: torch.device

    def split_len(self, split: str) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_labels(self) -> Tensor | None:  # pragma: no cover - abstract
        """Labels of the training split by sample index, on this bundle's device."""
        raise NotImplementedError

    def train_batches(self, batch_size: int, seed: int, epoch: int,
                      paired: bool = False) -> Iterator[Batch]:  # pragma: no cover
        """The epoch's batches in the shared order of (seed, epoch); with ``paired``, each sample also
        brings a same-class partner (:func:`kdbench.compute.seeding.class_partners`), augmented on its own."""
        raise NotImplementedError

    def partners(self, seed: int, epoch: int) -> Tensor:
        """Each training sample's same-class partner this epoch (needs the training labels)."""
        labels = self.train_labels()
        if labels is None:
            raise KDBenchError(f"dataset {self.info.name!r} cannot tell its training labels, which paired "
                               "(same-class) batches need")
        return class_partners(labels, seed, epoch)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:  # pragma: no cover
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "DataBundle":  # pragma: no cover
        raise NotImplementedError


class TensorBundle(DataBundle):
    """Device-resident splits; ``augment`` then ``prepare`` run on whole batches."""

    def __init__(self, info: DatasetInfo, train: Split, val: Split, test: Split,
                 augment: Augment | None = None, prepare: Callable[[Tensor], Tensor] | None = None) -> None:
        self.info, self.train, self.val, self.test = info, train, val, test
        self.augment = augment
        # Applied after augmentation (e.g. uint8 -> normalised float) so splits stay compact.
        self.prepare = prepare

    @property
    def device(self) -> torch.device:
        return self.train.images.device

    def split_len(self, split: str) -> int:
        return len(getattr(self, split))

    def train_labels(self) -> Tensor:
        return self.train.labels

    def to(self, device: torch.device | str) -> "TensorBundle":
        return TensorBundle(self.info, self.train.to(device), self.val.to(device), self.test.to(device),
                            self.augment, self.prepare)

    def train_batches(self, batch_size: int, seed: int, epoch: int, paired: bool = False) -> Iterator[Batch]:
        from kdbench.compute.distributed import shard, stream

        split = self.train
        perm = shard(epoch_permutation(len(split), seed, epoch)).to(self.device)  # this process's share
        aug_gen = generator(seed, *stream("augment", epoch), device=self.device) if self.augment else None
        # Partners are augmented from a stream of their own: the main images are exactly an unpaired run's.
        partners = self.partners(seed, epoch).to(self.device) if paired else None
        pair_gen = generator(seed, *stream("pair-augment", epoch), device=self.device) \
            if paired and self.augment else None
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            batch = Batch(self._images(split.images[idx], aug_gen), split.labels[idx], split.indices[idx])
            if partners is not None:
                batch.pair_indices = partners[idx]
                batch.pair_images = self._images(split.images[batch.pair_indices], pair_gen)
            yield batch

    def _images(self, images: Tensor, gen: torch.Generator | None) -> Tensor:
        if self.augment is not None:
            images = self.augment(images, gen)
        return images if self.prepare is None else self.prepare(images)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        s = getattr(self, split)
        for start in range(0, len(s), batch_size):
            sl = slice(start, start + batch_size)
            images = s.images[sl] if self.prepare is None else self.prepare(s.images[sl])
            yield Batch(images, s.labels[sl], s.indices[sl])


class _OrderSampler(torch.utils.data.Sampler):
    """The shared training order of (seed, epoch), for the DataLoader path."""

    def __init__(self, n: int, seed: int, epoch: int) -> None:
        self.n, self.seed, self.epoch = n, seed, epoch

    def __iter__(self):
        from kdbench.compute.distributed import shard

        return iter(shard(epoch_permutation(self.n, self.seed, self.epoch)).tolist())

    def __len__(self) -> int:
        from kdbench.compute.distributed import world

        return -(-self.n // world())


class _PairBatchSampler(torch.utils.data.Sampler):
    """Batches of the shared order, each followed by its samples' same-class partners (2 x batch indices)."""

    def __init__(self, order: _OrderSampler, partners: Tensor, batch_size: int) -> None:
        self.order, self.partners, self.batch_size = order, partners, batch_size

    def __iter__(self):
        idx = list(self.order)
        for start in range(0, len(idx), self.batch_size):
            chunk = idx[start:start + self.batch_size]
            yield chunk + self.partners[chunk].tolist()

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)


def _split_pairs(batches: Iterator[Batch]) -> Iterator[Batch]:
    """A loaded [samples; partners] batch as one Batch whose partners ride along."""
    for b in batches:
        half = len(b.labels) // 2
        yield Batch(b.images[:half], b.labels[:half], b.indices[:half], b.images[half:], b.indices[half:])


def _own_global_rng(loader, seed: int) -> Iterator:
    """Iterate ``loader`` with the global RNG swapped for a stream of its own.

    Per-image torchvision transforms in the main process (``workers=0``) draw
    from torch's global RNG; here they draw from a stream seeded with ``seed``
    and saved between batches, so they neither consume nor depend on what the
    method draws from the global RNG -- and a resumed epoch replays them exactly.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = torch.get_rng_state()
    it = iter(loader)
    while True:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(state)
            item = next(it, None)
            state = torch.get_rng_state()
        if item is None:
            return
        yield item


class LoaderBundle(DataBundle):
    """torch ``Dataset`` s yielding ``(image, label, index)`` with per-image transforms.

    Worker RNGs are seeded from (seed, epoch), so augmentation is reproducible.
    """

    def __init__(self, info: DatasetInfo, splits: dict[str, Any], workers: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.info, self.splits, self.workers = info, splits, int(workers)
        self.device = torch.device(device)

    def split_len(self, split: str) -> int:
        return len(self.splits[split])

    def train_labels(self) -> Tensor | None:
        ds = self.splits["train"]
        targets = getattr(ds.base, "targets", None) if isinstance(ds, IndexedDataset) else None
        if targets is None:
            return None
        t = torch.as_tensor(targets)
        return (t[ds.subset] if ds.subset is not None else t).to(self.device)

    def to(self, device: torch.device | str) -> "LoaderBundle":
        return LoaderBundle(self.info, self.splits, self.workers, device)

    def _loader(self, split: str, batch_size: int, sampler=None, seed: int = 0,
                batch_sampler=None) -> torch.utils.data.DataLoader:
        from kdbench.compute.distributed import world

        g = torch.Generator().manual_seed(seed)
        # Under torchrun the process runs the process group's threads (gloo, NCCL): a worker forked
        # from it can inherit a lock held by one of them and hang (seen under load on 2 cores), so
        # workers start from a forkserver, which is single-threaded.
        context = None
        if self.workers > 0 and world() > 1:
            import multiprocessing

            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["torch", "kdbench.data"])  # imported once, not per worker
        sizes = {"batch_sampler": batch_sampler} if batch_sampler is not None else \
            {"batch_size": batch_size, "sampler": sampler, "shuffle": False}
        return torch.utils.data.DataLoader(
            self.splits[split], **sizes,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", generator=g,
            persistent_workers=False, multiprocessing_context=context)

    def _batches(self, loader) -> Iterator[Batch]:
        nb = self.device.type == "cuda"
        for images, labels, indices in loader:
            yield Batch(images.to(self.device, non_blocking=nb), labels.to(self.device, non_blocking=nb),
                        indices.to(self.device, non_blocking=nb))

    def train_batches(self, batch_size: int, seed: int, epoch: int, paired: bool = False) -> Iterator[Batch]:
        n = len(self.splits["train"])
        from kdbench.compute.distributed import stream

        aug_seed = derive_seed(seed, *stream("augment", epoch))
        if paired:  # each batch loads its samples, then their partners, in one pass of the loader
            sampler = _PairBatchSampler(_OrderSampler(n, seed, epoch), self.partners(seed, epoch), batch_size)
            loader = self._loader("train", batch_size, seed=aug_seed, batch_sampler=sampler)
        else:
            loader = self._loader("train", batch_size, _OrderSampler(n, seed, epoch), aug_seed)
        batches = self._batches(loader if self.workers > 0 else _own_global_rng(loader, aug_seed))
        # (worker RNGs are seeded from the loader's generator)
        return _split_pairs(batches) if paired else batches

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        return self._batches(self._loader(split, batch_size))


class IndexedDataset(torch.utils.data.Dataset):
    """Wrap a dataset of ``(image, label)`` so items are ``(image, label, index)``."""

    def __init__(self, base, transform: Callable | None = None, indices: Tensor | None = None) -> None:
        self.base, self.transform = base, transform
        self.subset = indices

    def __len__(self) -> int:
        return len(self.subset) if self.subset is not None else len(self.base)

    def __getitem__(self, i: int):
        j = int(self.subset[i]) if self.subset is not None else i
        image, label = self.base[j]
        if self.transform is not None:
            image = self.transform(image)
        return image, label, i


def carve_validation(images: Tensor, labels: Tensor, fraction: float, seed: int,
                     what: str = "data.val_fraction") -> tuple[Split, Split]:
    """Split a training set into (train, val), stratified by class, with a fixed seed.

    The split depends only on ``seed`` (``data.split_seed``), not the run seed,
    so every run of a benchmark selects its epoch on the same held-out samples.
    """
    tr, va = stratified_split(labels, fraction, seed, what)
    return (Split(images[tr], labels[tr], torch.arange(len(tr))),
            Split(images[va], labels[va], torch.arange(len(va))))


def held_out_count(class_size: int, fraction: float) -> int:
    """How many of one class's samples a stratified split holds out (the one rounding rule)."""
    return int(round(fraction * class_size))


def stratified_split(labels: Tensor, fraction: float, seed: int,
                     what: str = "data.val_fraction") -> tuple[Tensor, Tensor]:
    """Index tensors (kept, held out), holding out ``fraction`` of each class."""
    if not 0.0 <= fraction < 1.0:
        raise KDBenchError(f"{what} must be in [0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        held[idx[: held_out_count(len(idx), fraction)]] = True
    return torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()
