"""Cohort training: the runs of one (pair, seed) trained in lockstep in one process.

Every method of a (pair, seed) sees the same batches (data order and augmentation derive from the seed
alone), so a cohort cuts each batch once and runs the shared frozen teacher once per batch; each member
then takes its own step. The cohort is an execution strategy, not part of any run's identity: each
member is an ordinary run (``runner.run``: its own lock, optimizer, checkpoints, record) in a thread of
its own, and the members take turns in a fixed order, one step each, so exactly one runs at a time. A
member's random state (CRD's negatives, dropout) is saved when it hands over its turn and restored when it
gets it back, so on CPU fp32 its record equals the solo run's (tested for every registered method). A
member that fails or diverges is recorded as such and leaves; the others go on. A member that needs other
batches (an initialisation stage's, a paired sampler's) draws its own from the same store and simply shares
nothing; a member resumed from a checkpoint skips to its step as it would alone.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator

import torch

log = logging.getLogger(__name__)


class Cohort:
    """Turns, the shared batch store and the shared teachers of one cohort."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.order: list[int] = []  # active members, in turn order
        self.turn: int | None = None  # the member whose turn it is
        self.rng: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self.wait_s: dict[int, float] = {}
        self.loops: dict[int, Any] = {}
        self.store: dict[tuple, dict[str, Any]] = {}  # (batch size, paired, data epoch, seed) -> stream state
        self.teachers: dict[str, tuple[Any, dict[str, Any]]] = {}  # cache key -> (shared FrozenTeacher, costs)
        self.stop_requested = False
        self.finished: list[int] = []  # members that left

    # -- turns ----------------------------------------------------------------------------------
    def join(self, n: int) -> "Member":
        with self.cond:
            self.order.append(n)
            self.wait_s[n] = 0.0
            if self.turn is None:
                self.turn = n
        return Member(self, n)

    def _wait_turn(self, n: int) -> None:
        t0 = time.perf_counter()
        with self.cond:
            self.cond.wait_for(lambda: self.turn == n)
        self.wait_s[n] += time.perf_counter() - t0
        state = self.rng.pop(n, None)
        if state is not None:  # this member's random streams, as it left them
            torch.set_rng_state(state[0])
            if state[1]:
                torch.cuda.set_rng_state_all(state[1])

    def _next_after(self, n: int) -> int | None:
        i = self.order.index(n)
        rest = self.order[i + 1:] + self.order[:i + 1]
        return rest[0] if rest else None

    def _hand_over(self, n: int) -> None:
        """Save this member's random state and give the turn to the next member."""
        self.rng[n] = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
        with self.cond:
            self.turn = self._next_after(n)
            self.cond.notify_all()

    def leave(self, n: int) -> None:
        """A member is done (finished, failed or stopped): the turn passes on without it."""
        with self.cond:
            nxt = self._next_after(n)
            self.order.remove(n)
            self.finished.append(n)
            if self.turn == n:
                self.turn = nxt if nxt != n else None
            self.loops.pop(n, None)
            self.cond.notify_all()

    def request_stop(self) -> None:
        """Ctrl-C: every member checkpoints after its next step and stops (as a solo run would)."""
        self.stop_requested = True
        for loop in list(self.loops.values()):
            loop.stop.requested = True

    # -- batches --------------------------------------------------------------------------------
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
    """One run's place in a cohort: what ``fit`` attaches to its loop."""

    def __init__(self, cohort: Cohort, n: int) -> None:
        self.cohort, self.n = cohort, n

    def start(self) -> None:
        """Wait for the first turn (the run then prepares and trains only in its turns)."""
        self.cohort._wait_turn(self.n)

    def leave(self) -> None:
        self.cohort.leave(self.n)

    def attach(self, loop) -> None:
        self.cohort.loops[self.n] = loop
        if self.cohort.stop_requested:
            loop.stop.requested = True
        loop.batch_source = self._batches(loop.data)
        loop.cohort_size = len(self.cohort.order) + len(self.cohort.finished)
        loop.waited = lambda: self.cohort.wait_s[self.n]

    def _batches(self, data) -> Callable[..., Iterator]:
        def source(batch_size: int, seed: int, epoch: int, paired: bool = False) -> Iterator:
            key = (batch_size, bool(paired), epoch, seed)
            step = 0
            while True:
                batch = self.cohort.batch(data, key, step)
                if batch is None:
                    return  # the epoch is over: this member evaluates and goes on in its turn
                yield batch
                self.cohort._hand_over(self.n)  # after this member's step: the next member's turn
                self.cohort._wait_turn(self.n)
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


def run_cohort(cfgs: list, data, run: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """Train the runs ``cfgs`` (one pair and seed, one dataset) in lockstep; their records, in order."""
    cohort = Cohort()
    members = [cohort.join(i) for i in range(len(cfgs))]
    results: list[Any] = [None] * len(cfgs)

    def work(i: int) -> None:
        member = members[i]
        try:
            member.start()
            results[i] = run(cfgs[i], data=data, on_error="record", wait=True, cohort=member)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            results[i] = exc
        finally:
            member.leave()

    threads = [threading.Thread(target=work, args=(i,), name=f"kdbench-cohort-{i}", daemon=True)
               for i in range(len(cfgs))]
    from kdbench.training.signals import StopOnInterrupt

    stop = StopOnInterrupt()  # the signals reach this (main) thread: Ctrl-C, SIGTERM, a scheduler's requeue signal
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
                if stop.requested and not cohort.stop_requested:
                    log.warning("stopping the cohort: every member checkpoints after its next step")
                    cohort.request_stop()
    except KeyboardInterrupt:  # asked twice
        cohort.request_stop()
        for t in threads:
            t.join()
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
