"""A run's epochs: where each falls (initialisation stages first, then the schedule's) and the running
totals of one, kept on the device and summed over processes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdbench.core.errors import KDBenchError
from kdbench.training.method import MAIN_STAGE, InitStage


@dataclass
class Tally:
    """One process's running totals of an epoch, kept on the device (no host sync in the step)."""

    sums: dict[str, Tensor]
    correct: Tensor
    seen: int = 0
    first_step: int = 0
    time_before: float = 0.0
    no_logits: bool = False

    @classmethod
    def start(cls, device: torch.device, partial: dict[str, Any] | None) -> "Tally":
        if partial is None:
            return cls({}, torch.zeros((), device=device))
        from kdbench.compute import distributed as ddp

        mine = partial["ranks"][ddp.rank()]  # the rest of an epoch stopped by Ctrl-C
        torch.set_rng_state(mine["rng"])
        return cls({k: torch.tensor(v, device=device) for k, v in mine["sums"].items()},
                   torch.tensor(mine["correct"], device=device), mine["seen"], partial["step"], partial["time_s"])

    def add(self, out, batch) -> None:
        n = len(batch.labels)
        self.seen += n
        for k, v in out.losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float() * n
        if out.logits is not None:
            self.correct += (out.logits.detach().argmax(1) == batch.labels).sum()
        else:
            self.no_logits = True  # no student forward (an initialisation stage): accuracy not reported

    def share(self) -> dict[str, Any]:
        return {"seen": self.seen, "sums": {k: float(v) for k, v in self.sums.items()},
                "correct": float(self.correct), "rng": torch.get_rng_state()}

    def reduce(self, device: torch.device) -> None:
        """Totals over every process (a no-op for one)."""
        from kdbench.compute import distributed as ddp

        if ddp.world() == 1:
            return
        keys = sorted(self.sums)
        tot = ddp.all_reduce_sum(torch.stack([*(self.sums[k] for k in keys), self.correct.float(),
                                              torch.tensor(float(self.seen), device=device)]))
        self.sums = dict(zip(keys, tot[:len(keys)]))
        self.correct, self.seen = tot[len(keys)], int(tot[-1].item())


@dataclass(frozen=True)
class EpochPlan:
    """Where a run's n-th epoch falls: its stage, the epoch within the stage, its data epoch."""

    stage: InitStage | None  # None: the main stage (the schedule's epochs)
    local: int
    data_epoch: int  # main epochs use the schedule's epoch index, so every method sees the same
    #                  batches there; initialisation epochs draw their own streams (negative indices)

    @property
    def name(self) -> str:
        return self.stage.name if self.stage is not None else MAIN_STAGE


def plan_epochs(stages: list[InitStage], main_epochs: int) -> list[EpochPlan]:
    """The run's epochs in order: every initialisation stage's, then the schedule's."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names) or MAIN_STAGE in names:
        raise KDBenchError(f"initialisation stage names must be distinct and not {MAIN_STAGE!r}: {names}")
    plan: list[EpochPlan] = []
    for s in stages:
        if s.epochs < 0:
            raise KDBenchError(f"initialisation stage {s.name!r} has {s.epochs} epochs; it needs 0 or more")
        plan += [EpochPlan(s, j, -(len(plan) + j + 1)) for j in range(s.epochs)]
    return plan + [EpochPlan(None, k, k) for k in range(main_epochs)]
