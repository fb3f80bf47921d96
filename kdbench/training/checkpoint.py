"""A run between epochs: what a checkpoint holds, written whole or not at all, and read back without ever
running code from the file."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdbench.core.errors import KDBenchError
from kdbench.experiment.records import atomic_write_bytes
from kdbench.training.method import MAIN_STAGE, Method

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunState:
    """A run between epochs: what a checkpoint holds and a resume restores. ``epoch`` counts finished
    epochs of every stage (initialisation stages first). ``partial`` is set when Ctrl-C stopped an
    epoch midway: every process's share of it (sums, images, random state). ``optimizer`` is the
    state of the optimizer of stage ``optimizer_stage`` when loaded from a checkpoint."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time: float = 0.0
    images_seen: int = 0
    partial: dict[str, Any] | None = None
    init_history: list[dict[str, Any]] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    optimizer_stage: str = MAIN_STAGE

    def save(self, path: Path, method: Method, optimizer, epoch: int, partial: dict[str, Any] | None = None,
             stage: str = MAIN_STAGE) -> None:
        state = {"owner": Path(path).parent.name,  # the run id (or teacher key) whose folder it was written in
                 "epoch": epoch, "method": method.checkpoint_state(), "optimizer": optimizer.state_dict(),
                 "optimizer_stage": stage, "init_history": self.init_history,
                 "history": self.history, "train_time": self.train_time, "images_seen": self.images_seen}
        save_checkpoint(path, {**state, "partial": partial} if partial is not None else state)

    @classmethod
    def load(cls, path: Path, method: Method, device: torch.device, n_proc: int) -> "RunState":
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            if not isinstance(state, dict) or not {"method", "optimizer", "history", "epoch"} <= set(state):
                raise ValueError("not a kdbench checkpoint")
        except Exception as exc:  # truncated, foreign, or refused by weights_only: never run code from a file
            raise KDBenchError(f"the checkpoint {path} cannot be read ({type(exc).__name__}; truncated or "
                               "not written by kdbench): delete it to start this run over, or pass force=true"
                               ) from None
        owner, here = state.get("owner"), Path(path).parent.name
        if owner != here:  # written for another run and copied here, or naming none: never resumed
            whose = f"belongs to {owner}" if owner is not None else \
                "names no run (its owner was removed, or an older kdbench wrote it)"
            raise KDBenchError(f"the checkpoint {path} {whose}, not to {here}: resuming it could record another "
                               f"run's training under this run's id (the id holds the experiment's digest); delete "
                               f"it to start {here} over")
        method.load_checkpoint_state(state["method"])
        partial = state.get("partial")  # stopped mid-epoch (Ctrl-C): continue at the next step
        if partial is not None and len(partial["ranks"]) != n_proc:
            raise KDBenchError(f"{path} stopped mid-epoch with {len(partial['ranks'])} process(es); "
                               f"resume it with as many (torchrun --nproc_per_node={len(partial['ranks'])})")
        return cls(state["epoch"], state["history"], state["train_time"], state["images_seen"], partial,
                   state.get("init_history", []), state["optimizer"], state.get("optimizer_stage", MAIN_STAGE))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Written whole or not at all; a full disk or read-only folder stops the run without a failure
    record (it is not the run's fault): free space and resume."""
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise KDBenchError(f"could not write the checkpoint {path}: {exc.strerror or exc}; the previous checkpoint "
                           "is intact: make room (or fix permissions) and run again with resume=true") from None
