"""Live curves: per-epoch numbers handed to experiment trackers while a run trains (off by default).

``engine.track=[tensorboard]`` writes TensorBoard event files under ``paths.work/tensorboard/RUN_ID``;
any other tracker registers under a name (``@register_tracker``, or the ``kdbench.trackers``
entry-point group) and gets the same calls. Trackers are runtime only: they never change a run's id,
record or arithmetic, and a tracker that fails to start is named before training begins.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Protocol

from omegaconf import DictConfig

from kdbench.core.errors import KDBenchError
from kdbench.core.registry import Registry, load_plugins

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log_epoch(self, step: int, stage: str, row: dict[str, Any]) -> None:
        """One finished epoch: ``step`` counts every epoch of the run (1-based, initialisation stages first);
        ``row`` is the epoch's history row (lr, time_s, images_per_s, train_loss, train_top1 and, in the
        main stage, each evaluated model's val/test metrics)."""

    def close(self) -> None: ...


def _load() -> None:
    load_plugins("kdbench.trackers")


TRACKERS: Registry[Callable[[str, DictConfig], Tracker]] = Registry("tracker", loader=_load)


def register_tracker(name: str, description: str = ""):
    """Decorator for a factory ``(run_id, cfg) -> Tracker``."""
    return TRACKERS.register(name, description)


def scalars(stage: str, row: dict[str, Any]) -> dict[str, float]:
    """An epoch row as flat, finite scalars: ``loss/TERM``, ``lr``, ``images_per_s``, ``train/top1``,
    ``MODEL/SPLIT/METRIC`` (initialisation stages prefixed with their name)."""
    out: dict[str, float] = {f"loss/{k}": v for k, v in row.get("train_loss", {}).items()}
    out.update({"lr": row.get("lr"), "images_per_s": row.get("images_per_s"), "train/top1": row.get("train_top1")})
    for name, value in row.items():
        if isinstance(value, dict) and name != "train_loss":
            for split, metrics in value.items():
                for key, v in (metrics or {}).items():
                    out[f"{name}/{split}/{key}"] = v
    prefix = "" if stage == "main" else f"{stage}/"
    return {prefix + k: float(v) for k, v in out.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


@register_tracker("tensorboard", "TensorBoard event files under paths.work/tensorboard/RUN_ID")
class TensorBoardTracker:
    def __init__(self, run_id: str, cfg: DictConfig) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise KDBenchError("engine.track=[tensorboard] needs the tensorboard package: pip install "
                               "'kdbench[track]' (or pip install tensorboard)") from None
        self.dir = Path(cfg.paths.work) / "tensorboard" / run_id
        self.writer = SummaryWriter(str(self.dir))

    def log_epoch(self, step: int, stage: str, row: dict[str, Any]) -> None:
        for k, v in scalars(stage, row).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Trackers:
    """The run's trackers as one ``on_epoch`` callback; a tracker that fails while logging is reported once and
    dropped (training goes on)."""

    def __init__(self, run_id: str, cfg: DictConfig) -> None:
        names = [str(n) for n in (cfg.engine.get("track") or [])]
        self.active: list[tuple[str, Tracker]] = [(n, TRACKERS.get(n).obj(run_id, cfg)) for n in names]

    def __call__(self, step: int, stage: str, row: dict[str, Any]) -> None:
        for name, tracker in list(self.active):
            try:
                tracker.log_epoch(step, stage, row)
            except Exception as exc:  # a tracker must never cost a run
                log.warning("tracker %s failed (%s: %s); it is off for the rest of this run", name,
                            type(exc).__name__, exc)
                self.active.remove((name, tracker))

    def close(self) -> None:
        for _, tracker in self.active:
            try:
                tracker.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
