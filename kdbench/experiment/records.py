"""Result records: one JSON file per finished run, written whole or not at all.

Torch-free at import (the reporting layer reads records without the training stack).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes, overwrite: bool = True) -> None:
    """Write to a temp file in the same folder, fsync, then rename into place.

    With ``overwrite=False`` the final step is a hard link, which fails if the
    target exists, so two writers can never replace each other's record.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: records are shared files, like any other
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # raises FileExistsError instead of clobbering
    except OSError as exc:
        if exc.filename is None:  # a failed write(2) (a full disk) names no file: every message should
            raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, obj: Any, overwrite: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), overwrite)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


@lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the source tree kdbench runs from, if it is a git checkout."""
    src = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device: str | None = None, gpu: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Package versions and hardware, so every number says where it came from. What only torch knows (the
    device, its GPU name, torch's thread count) is passed in: :func:`kdbench.compute.device.run_environment`."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "packages": {p: v(p) for p in ("kdbench", "torch", "torchvision", "timm", "hydra-core", "numpy")},
        "device": device,
        "gpu": gpu,
    }
    env["hardware"] = env["gpu"] or f"CPU x{os.cpu_count()} ({env['cpu']})"
    return env


def describe_fast_path(e: dict[str, Any]) -> str:
    """One line naming a recorded fast path, e.g. "fp32, channels_last, teacher BN folded, foreach SGD"."""
    compiled = {True: "compiled", "all": "compiled", "teacher": "teacher compiled"}.get(e.get("compile"))
    parts = [e["amp"], "channels_last" if e.get("channels_last") else None,
             "teacher BN folded" if e.get("fold_teacher_bn") else None,
             "teacher inference_mode" if e.get("teacher_inference_mode") else None, compiled,
             f"{e['optimizer_impl']} SGD"]
    return ", ".join(p for p in parts if p)


def speedup_range(r: dict[str, Any]) -> str:
    """The lowest and highest per-round speed-up of a speed record, where it has several rounds."""
    ratios = [x["images_per_s"] / x["reference_images_per_s"] for x in r.get("rounds") or []
              if x.get("reference_images_per_s")]
    return f"{min(ratios):.2f}-{max(ratios):.2f}x" if len(ratios) > 1 else ""
