"""How a run stops: on a signal (Ctrl-C, SIGTERM, a scheduler's requeue) after a checkpointed step, or on a
non-finite loss."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from kdbench.training.method import MAIN_STAGE

log = logging.getLogger(__name__)


class RunDiverged(Exception):
    """A loss became NaN or Inf: the run cannot continue. Carries where it happened (the epoch
    within its stage)."""

    def __init__(self, epoch: int, step: int, history: list[dict[str, Any]], stage: str = MAIN_STAGE) -> None:
        where = "" if stage == MAIN_STAGE else f" of the initialisation stage {stage!r}"
        super().__init__(f"the loss became non-finite at epoch {epoch + 1}{where}, step {step + 1}")
        self.epoch, self.step, self.history, self.stage = epoch, step, history, stage


class StopOnInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the current step, checkpoint it, stop.

    The same request again stops at once. Under torchrun the launcher forwards the
    signal to every process (a cluster's pre-emption SIGTERM too); the processes agree
    on the step to stop at -- at the steps where the progress bar reads the device
    anyway (every ``engine.log_every``) -- so every rank checkpoints the same step.

    SIGUSR1/SIGUSR2 are caught only where a Python handler already waits for them: submitit's
    "time limit near" signal, on which it requeues the job. The run checkpoints its step first, then
    :meth:`hand_over` gives the signal to that handler (which requeues and exits), so the requeued job
    resumes from this very step rather than from the last epoch.
    """

    def __init__(self) -> None:
        import signal
        import threading

        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
            for sig in (getattr(signal, "SIGUSR1", None), getattr(signal, "SIGUSR2", None)):
                if sig is not None and callable(signal.getsignal(sig)):
                    self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        import os
        import signal

        if self.requested and signum in (signal.SIGINT, signal.SIGTERM):  # asked twice: stop now
            self.restore()
            if signum == signal.SIGINT:
                signal.default_int_handler(signum, frame)
            os.kill(os.getpid(), signum)
            return
        if self.requested:
            return
        self.requested, self.signum = True, signum
        log.warning("%s: stopping after this step with a checkpoint%s", signal.Signals(signum).name,
                    " (send it again to stop at once)" if signum in (signal.SIGINT, signal.SIGTERM) else
                    ", then handing the signal on (a job scheduler's requeue)")

    def hand_over(self) -> None:
        """After the checkpoint: a caught SIGUSR1/2 goes to the handler it was meant for (submitit requeues
        the job and exits); for Ctrl-C and SIGTERM this does nothing. Restores the handlers."""
        import signal

        old = self._old.get(self.signum) if self.signum is not None else None
        self.restore()
        if self.signum not in (None, signal.SIGINT, signal.SIGTERM) and callable(old):
            old(self.signum, None)

    def now(self, device: torch.device, check_point: bool) -> bool:
        """Whether to stop after this step: alone, as soon as asked; under data parallelism, at
        check points only, and then if any process was asked."""
        from kdbench.compute import distributed as ddp

        if ddp.world() == 1:
            return self.requested
        if not check_point:
            return False
        flag = torch.tensor([float(self.requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.requested = bool(flag.item())
        return self.requested

    def restore(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class DivergenceWatch:
    """Per-step non-finite check without stalling the device.

    On CPU the check is immediate. On CUDA each step's flag is copied to the
    host asynchronously and read once the copy has landed (a step or two
    later), so the step that diverged is reported exactly without a host sync
    inside the step.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.stage = MAIN_STAGE
        self.pending: list[tuple[int, int, Tensor, Any]] = []

    def push(self, epoch: int, step: int, losses: dict[str, Tensor], history) -> None:
        finite = torch.isfinite(torch.stack([v.detach().float() for v in losses.values()]).sum())
        if not self.cuda:
            if not bool(finite):
                raise RunDiverged(epoch, step, history, self.stage)
            return
        flag = finite.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((epoch, step, flag, event))
        self.poll(history, wait=False)

    def poll(self, history, wait: bool) -> None:
        while self.pending and (wait or self.pending[0][3].query()):
            epoch, step, flag, event = self.pending.pop(0)
            event.synchronize()
            if not bool(flag):
                raise RunDiverged(epoch, step, history, self.stage)
