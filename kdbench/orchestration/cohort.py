"""Cohort training: the runs of one (pair, seed) trained in lockstep, on one thread of one process.

Every method of a (pair, seed) sees the same batches (data order and augmentation derive from the seed
alone), so a cohort cuts each batch once and runs the shared frozen teacher once per batch; each member
then takes its own step. The cohort is an execution strategy, not part of any run's identity: each
member is an ordinary run (``runner.run_steps``: its own lock, optimizer, checkpoints, record), a generator
that yields after every training step, and the cohort drives them in a fixed order, one step each. One
thread runs them all, so no member's thread pool idles (or spins) while the others step. A member's random
state (CRD's negatives, dropout) is saved when its step ends and restored before its next one, so on CPU
fp32 its record equals the solo run's (tested for every registered method). A member that fails or diverges
is recorded as such and leaves; the others go on. A member that needs other batches (an initialisation
stage's, a paired sampler's) draws its own from the same store and simply shares nothing; a member resumed
from a checkpoint skips to its step as it would alone.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

import torch
from omegaconf import open_dict

from kdbench.experiment.catalog import METHODS
from kdbench.orchestration.runner import run_steps
from kdbench.training.signals import StopOnInterrupt

log = logging.getLogger(__name__)


class Cohort:
    """The shared batch store, the shared teachers and the shared stop request of one cohort."""

    def __init__(self, size: int, stop: StopOnInterrupt) -> None:
        self.size, self.stop = size, stop
        self.store: dict[tuple, dict[str, Any]] = {}  # (batch size, paired, data epoch, seed) -> stream state
        self.teachers: dict[str, tuple[Any, dict[str, Any]]] = {}  # cache key -> (shared FrozenTeacher, costs)

    def batch(self, data, key: tuple, step: int):
        """The ``step``-th batch of the stream ``key``, cut once for every member that asks for it."""
        bs, paired, epoch, seed = key
        s = self.store.get(key)
        if s is None or step < s["next"] - 1 or step > s["next"]:
            # a new stream (or a member out of step with it, e.g. resumed): start it and skip to the step
            s = {"it": iter(data.train_batches(bs, seed, epoch, paired=paired)), "next": 0, "last": None}
            self.store[key] = s
            for _ in range(step):
                next(s["it"], None)
                s["next"] += 1
        if step == s["next"]:
            s["last"] = next(s["it"], None)
            s["next"] += 1
        return s["last"]


class Member:
    """One run's place in a cohort: its batches, its pacing (:class:`kdbench.training.engine.Pacer`) and the
    teachers it shares."""

    def __init__(self, cohort: Cohort) -> None:
        self.cohort = cohort
        self.stop, self.members = cohort.stop, cohort.size
        self.waited_s = 0.0  # while the other members stepped
        self.rng: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def waited(self) -> float:
        return self.waited_s

    def batches(self, data) -> Callable[..., Iterator]:
        """The training batches the engine asks for, from the cohort's store."""
        def source(batch_size: int, seed: int, epoch: int, paired: bool = False) -> Iterator:
            key = (batch_size, bool(paired), epoch, seed)
            step = 0
            while (batch := self.cohort.batch(data, key, step)) is not None:
                yield batch
                step += 1
        return source

    def shared_teacher(self, key: str, load: Callable[[], tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
        """The cohort's one frozen teacher for cache entry ``key`` (loaded by the first member that needs it,
        with its costs counted before the engine folds it), shared by every member distilling from it."""
        if key not in self.cohort.teachers:
            frozen, costs = load()
            frozen.share()
            self.cohort.teachers[key] = (frozen, costs)
        return self.cohort.teachers[key]

    def enter(self) -> None:
        """Before this member's step: its random streams, as it left them."""
        if self.rng is not None:
            torch.set_rng_state(self.rng[0])
            if self.rng[1]:
                torch.cuda.set_rng_state_all(self.rng[1])

    def leave(self) -> None:
        """After this member's step: keep its random streams for its next one."""
        self.rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def run_cohort(cfgs: list, data, workers: int = 1) -> list[dict[str, Any]]:
    """Train the runs ``cfgs`` (one pair and seed, one dataset) in lockstep; their records, in order. Ctrl-C,
    SIGTERM or a scheduler's requeue signal: every member checkpoints after its next step, then the cohort
    stops (and hands a requeue signal on)."""
    if any(getattr(METHODS.get(str(c.method.name)).obj, "reads_teacher_batchnorm", False) for c in cfgs):
        # a member that reads the teacher's BatchNorms (OFD's margins) may be built after another member's fast
        # path folded the shared teacher: the cohort's teacher stays unfolded (a runtime switch, not identity)
        for c in cfgs:
            with open_dict(c):
                c.engine.fold_teacher_bn = False
    stop = StopOnInterrupt()  # one catcher for every member
    cohort = Cohort(len(cfgs), stop)
    members = [Member(cohort) for _ in cfgs]
    steps = [run_steps(c, data=data, on_error="record", wait=True, workers=workers, member=m)
             for c, m in zip(cfgs, members)]
    results: list[Any] = [None] * len(cfgs)
    active = list(range(len(cfgs)))
    try:
        while active:
            for i in list(active):
                results[i] = _one_step(members[i], steps[i], [members[j] for j in active if j != i])
                if results[i] is not None:
                    active.remove(i)
            if stop.requested and active:
                log.warning("stopping the cohort: every member checkpoints after its next step")
    except KeyboardInterrupt:  # asked twice: stop at once
        for g in steps:
            g.close()
        stop.restore()
        raise
    if stop.requested and any(isinstance(r, KeyboardInterrupt) for r in results):
        stop.hand_over()  # every member has checkpointed: a requeue signal goes on to its scheduler
        raise KeyboardInterrupt("the cohort stopped; every member checkpointed its last step")
    stop.restore()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _one_step(member: Member, steps, others: list[Member]) -> Any:
    """One step of ``member``: None while it goes on, else its record (or what stopped it). The time it took is
    time the ``others`` waited."""
    t0 = time.perf_counter()
    member.enter()
    try:
        next(steps)
        return None
    except StopIteration as done:
        return done.value
    except KeyboardInterrupt as exc:
        if not exc.args:
            raise  # a second Ctrl-C (the handlers are restored): not a member's checkpointed stop
        member.stop.requested = True  # stopped inside its own set-up (a teacher it trains): the others stop too
        return exc
    except Exception as exc:  # noqa: BLE001 - raised by run_cohort once every member is done
        return exc
    finally:
        member.leave()
        dt = time.perf_counter() - t0
        for m in others:
            m.waited_s += dt
