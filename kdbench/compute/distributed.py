"""Data-parallel training under ``torchrun`` (gloo on CPU, NCCL on GPUs), kept out of the methods.

``torchrun --nproc_per_node=N -m kdbench run ...`` starts N processes; each
trains on its shard of every epoch's shared permutation with a per-process
batch of ``schedule.batch_size / N``, so the *global* batch, learning rate and
schedule stay those of the config (the run is the same experiment on more
devices). To train with a larger global batch instead, raise
``schedule.batch_size`` and scale ``schedule.lr`` linearly with it (Goyal et
al., 2017, with warm-up for large factors). Gradients are averaged across
processes before every optimizer step; BatchNorm statistics stay per-process
during an epoch and are taken from rank 0 at each epoch start; rank 0
evaluates, writes checkpoints and records.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int


def init_from_env() -> DistInfo | None:
    """Join the process group torchrun describes in the environment (once); None outside torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
        atexit.register(_destroy_at_exit)
    return info()


def exit_process(code: int) -> None:
    """Exit with ``code``; under torchrun without the interpreter's finalisation.

    Even after ``shutdown()``, a torchrun worker occasionally died in its exit
    sequence ("terminate called without an active exception", SIGABRT: a C++
    thread destroyed during finalisation), which turned a finished run -- record written -- into a failed one.
    Everything kdbench writes is flushed and closed by then, so a worker skips
    finalisation.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import logging
        import sys

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


def _destroy_at_exit() -> None:
    # The last resort when a process leaves without shutdown() (an error, Ctrl-C): gloo's
    # threads must not outlive the interpreter, or the exit ends in SIGABRT.
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shutdown() -> None:
    """Leave the process group together: every rank waits at a barrier, then tears it down.

    Exiting with a live gloo group, or destroying it while a peer still talks
    to it, can abort the process at exit ("terminate called without an active
    exception", SIGABRT) even though the run itself succeeded.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def info() -> DistInfo | None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def world() -> int:
    d = info()
    return d.world if d else 1


def rank() -> int:
    d = info()
    return d.rank if d else 0


def is_main() -> bool:
    return rank() == 0


def stream(*purpose: object) -> tuple[object, ...]:
    """A random-stream purpose, made distinct per process only when there are several."""
    d = info()
    return (*purpose, f"rank{d.rank}") if d else purpose


def barrier() -> None:
    if info():
        dist.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    if info():
        dist.all_reduce(t)
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate equal-shaped tensors from every process along dim 0 (rank order)."""
    d = info()
    if not d:
        return t
    parts = [torch.empty_like(t) for _ in range(d.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def gather_objects(obj: object) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    d = info()
    if not d:
        return [obj]
    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, memory banks) to every process."""
    if info():
        for b in module.buffers():
            dist.broadcast(b, 0)


def shard(perm: Tensor) -> Tensor:
    """This process's share of a permutation, padded by wrap-around so every rank gets as many."""
    d = info()
    if not d:
        return perm
    n = -(-len(perm) // d.world) * d.world
    if n > len(perm):
        perm = torch.cat([perm, perm[: n - len(perm)]])
    return perm[d.rank::d.world]


class GradSync:
    """Wrap an optimizer: average the gradients of every parameter that has one, then step."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.inner = optimizer

    @property
    def param_groups(self) -> list[dict]:
        # Always the inner optimizer's own list: load_state_dict replaces it with a new one,
        # and a copy taken here would leave the learning rate of a resumed run unset.
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def sync_grads(self) -> None:
        """Average the gradients now in ``.grad`` over the processes (DOT calls it after each of its backwards)."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                g.copy_(synced)

    def step(self) -> None:
        self.sync_grads()
        self.inner.step()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state) -> None:
        self.inner.load_state_dict(state)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; a container's or taskset's limit included)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def apply_threads(setting: Any, workers: int = 1) -> None:
    """Set torch's intra-op threads as ``engine.threads`` resolves (:func:`resolve_threads`)."""
    import torch

    threads = resolve_threads(setting, workers)
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def resolve_threads(setting: Any, workers: int = 1) -> int | None:
    """The intra-op thread count for ``engine.threads``: a number as given; ``auto``: the available cores
    split over the processes sharing them (parallel launcher jobs, torchrun's local processes), at least
    one -- unless OMP_NUM_THREADS is set, which stands (None: leave torch's setting). Oversubscribed
    threads spin (docs/performance.md)."""
    if setting in (None, "auto"):
        if os.environ.get("OMP_NUM_THREADS"):
            return None
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        return max(1, available_cores() // max(1, workers * local))
    from kdbench.core.counts import positive_count

    return positive_count(setting, "engine.threads")
