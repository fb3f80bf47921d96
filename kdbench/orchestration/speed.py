"""The speed harness: images/s, FLOPs, TFLOP/s and MFU of a full training step, beside a reference loop.

A *step* is everything the engine does per batch: cut and augment the batch,
teacher forward, student forward and backward, the method's losses and the
optimizer step. Each method is measured twice in the same process on the same
models and batch size: the engine's fast path, and a plain reference loop
(torchvision DataLoader with per-image transforms, fp32, ``.item()`` on the loss
every step, teacher forward under ``no_grad``, per-tensor SGD), so every speed-up
is a ratio measured side by side. Synthetic CIFAR-shaped images keep it
independent of any data set on disk.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from omegaconf import DictConfig, open_dict

from kdbench.compute.device import resolve_device, run_environment
from kdbench.core.errors import KDBenchError
from kdbench.core.overrides import given_keys
from kdbench.data import DatasetInfo, static_train_size
from kdbench.data.small import small_image_bundle
from kdbench.experiment.catalog import METHODS
from kdbench.experiment.identity import teacher_config
from kdbench.experiment.records import describe_fast_path, now_iso, speedup_range
from kdbench.models import seeded_model
from kdbench.orchestration.config import compose
from kdbench.training.fastpath import (
    apply_fast_path,
    build_optimizer,
    compile_context,
    resolve_fast_path,
    train_one_step,
)
from kdbench.training.method import build_method

log = logging.getLogger(__name__)

# Dense peak TFLOP/s by device name fragment: (bf16 tensor core, tf32/fp32 matmul).
PEAK_TFLOPS = {"H200": (989.0, 494.0), "H100": (989.0, 494.0), "A100": (312.0, 156.0)}
DEFAULT_PAIR = "cifar100/resnet32x4-resnet8x4"


def peak_tflops(device: torch.device, amp: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (bf16, fp32) in PEAK_TFLOPS.items():
        if key in name:
            return bf16 if amp == "bf16" else fp32
    return None


def _flops_per_image(method, batch, optimizer, autocast, channels_last) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_one_step(method, batch, 0, optimizer, autocast, channels_last)
    return counter.get_total_flops() / len(batch.labels)


@dataclass
class Measurement:
    images_per_s: float
    ms_per_step: float
    peak_memory_bytes: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _endless(data, batch_size: int, paired: bool = False):
    """Training batches, epoch after epoch, as the loop consumes them (pipeline cost included)."""
    epoch = 0
    while True:
        yield from data.train_batches(batch_size, 0, epoch, paired=paired)
        epoch += 1


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _measure(loop, device: torch.device, warmup: int, steps: int, batch_size: int) -> Measurement:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loop(warmup)  # compile, cuDNN autotuning, allocator warm-up: excluded
    _sync(device)
    t0 = time.perf_counter()
    loop(steps)
    _sync(device)
    dt = time.perf_counter() - t0
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        import resource

        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return Measurement(steps * batch_size / dt, 1000 * dt / steps, peak)


def _build(cfg: DictConfig, method_name: str, device: torch.device, n_images: int, pipeline: str):
    """Synthetic CIFAR-100-shaped data, the pair's models (random weights) and the method."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n_images) % 100
    data_cfg = compose(["dataset=cifar100", f"data.pipeline={pipeline}", "data.val_fraction=0"], check=False).data
    data = small_image_bundle(data_cfg, "synthetic-cifar100", images, labels, images[:8], labels[:8],
                              [str(i) for i in range(100)], [0.5] * 3, [0.25] * 3).to(device)
    cls = METHODS.get(method_name).obj
    run_cfg = compose([f"pair={cfg.pair.name}", f"method={method_name}"])
    # the architectures are the measured cfg's (it may override them); TF-KD self's teacher is the student's
    t_cfg = copy.deepcopy(cfg)
    with open_dict(t_cfg):
        t_cfg.method = run_cfg.method
    t_arch = str(teacher_config(t_cfg).pair.teacher)
    student = seeded_model(str(cfg.pair.student), 100, 3, 0, "student-init")
    teacher = seeded_model(t_arch, 100, 3, 0, "teacher-init").eval() if cls.uses_teacher else None
    # Per-sample state (CRD's memory banks) is sized for the pair's real training set, not
    # for the few synthetic images that feed the step: its cost depends on that size.
    n_train = max(static_train_size(cfg.data) or n_images, n_images)
    info = DatasetInfo("synthetic-cifar100", 100, (3, 32, 32), n_train)
    method = build_method(run_cfg.method, student, info, 0, teacher=teacher, student_arch=str(cfg.pair.student),
                          teacher_arch=t_arch, train_labels=(torch.arange(n_train) % 100).to(device))
    return data, method.to(device)


def _profile(loop, device: torch.device, steps: int = 3, rows: int = 15) -> str:
    """torch.profiler's table of the ops that take the step's time (self time, top rows)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        loop(steps)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def _measure_engine(cfg, method_name, device, fast, n_images, batch_size, steps, warmup, profile):
    """The engine's fast path; its models are freed on return, before the reference loop is built."""
    with compile_context(fast):
        data, method = _build(cfg, method_name, device, n_images, "device")
        apply_fast_path(method, fast)
        autocast = fast.autocast(device)
        opt = build_optimizer(method.trainable_parameters(), cfg.schedule, fast.optimizer_impl)
        method.train()
        stream = _endless(data, batch_size, method.paired_batches)

        def engine_loop(n: int) -> None:
            for _, batch in zip(range(n), stream):
                train_one_step(method, batch, 0, opt, autocast, fast.channels_last)

        first = next(data.train_batches(batch_size, 0, 1, paired=method.paired_batches))
        flops = _flops_per_image(method, first, opt, autocast, fast.channels_last)
        eng = _measure(engine_loop, device, warmup, steps, batch_size)
        return eng, flops, (_profile(engine_loop, device) if profile else None)


def measure_method(cfg: DictConfig, method_name: str, batch_size: int, steps: int, warmup: int,
                   reference: bool = True, profile: bool = False, repeats: int = 1) -> dict[str, Any]:
    """Fast path and reference loop for one method; returns a speed record.

    With ``repeats`` > 1 the two are measured in alternating rounds (engine, reference,
    engine, ...) and the record keeps every round: images/s are medians and the
    speed-up is the median of the per-round ratios, so a drift in the machine's speed
    during the measurement hits both sides of each ratio alike.
    """
    if repeats < 1:
        raise KDBenchError(f"speed.repeats must be at least 1, got {repeats}")
    device = resolve_device(str(cfg.engine.device))
    n_images = batch_size * (steps + warmup + 1)
    fast = resolve_fast_path(cfg.engine, device, str(cfg.protocol.precision))

    rounds: list[tuple[Measurement, Measurement | None]] = []
    table = None
    for i in range(repeats):
        eng, flops, t = _measure_engine(cfg, method_name, device, fast, n_images, batch_size, steps, warmup,
                                        profile and i == 0)
        table = table or t
        ref = _measure_reference(cfg, method_name, device, n_images, batch_size, steps, warmup) if reference else None
        rounds.append((eng, ref))
    eng_ips = statistics.median(e.images_per_s for e, _ in rounds)
    ms = statistics.median(e.ms_per_step for e, _ in rounds)
    peak_mem = max(e.peak_memory_bytes for e, _ in rounds)
    refs = [r for _, r in rounds if r is not None]
    ratios = [e.images_per_s / r.images_per_s for e, r in rounds if r is not None]
    peak = peak_tflops(device, fast.amp)
    achieved = flops * eng_ips / 1e12
    return {
        "kind": "speed", "schema_version": 1, "created": now_iso(),
        "pair": str(cfg.pair.name), "teacher": str(cfg.pair.teacher), "student": str(cfg.pair.student),
        "method": method_name, "batch_size": batch_size, "steps": steps, "warmup": warmup, "repeats": repeats,
        "engine": {**fast.as_dict(), "images_per_s": eng_ips, "ms_per_step": ms, "peak_memory_bytes": peak_mem},
        "reference": None if not refs else {
            "images_per_s": statistics.median(r.images_per_s for r in refs),
            "ms_per_step": statistics.median(r.ms_per_step for r in refs),
            "peak_memory_bytes": max(r.peak_memory_bytes for r in refs)},
        "speedup": statistics.median(ratios) if ratios else None,
        "rounds": [{"images_per_s": e.images_per_s, "reference_images_per_s": r.images_per_s if r else None}
                   for e, r in rounds],
        "flops_per_image": flops, "achieved_tflops": achieved,
        "mfu": None if peak is None else achieved / peak, "peak_tflops": peak,
        "environment": run_environment(device),
        "profile": table,
    }


COHORT_METHODS = ["kd", "fitnet", "at", "sp", "cc", "rkd", "pkt", "crd"]  # CRD-benchmark methods with a teacher


def _cohort_members(cfg: DictConfig, methods: list[str], device, fast, n_images: int) -> tuple[Any, list, Any]:
    """(data, [(method, optimizer)], the shared frozen teacher or None): every member built on the same data,
    those distilling from the pair's teacher sharing one frozen teacher, as `kdbench bench` shares it."""
    members, shared, data = [], None, None
    for m in methods:
        data, method = _build(cfg, m, device, n_images, "device")
        if method.teacher is not None and METHODS.get(m).obj.teacher_arch == "pair":
            shared = shared if shared is not None else method.teacher
            method.teacher = shared
        apply_fast_path(method, fast)
        method.train()
        members.append((method, build_optimizer(method.trainable_parameters(), cfg.schedule, fast.optimizer_impl)))
    return data, members, shared


def _timed(loop: Callable[[int], None], warmup: int, steps: int, device) -> float:
    """Seconds ``loop`` takes for ``steps`` steps after ``warmup`` untimed ones."""
    loop(warmup)
    _sync(device)
    t0 = time.perf_counter()
    loop(steps)
    _sync(device)
    return time.perf_counter() - t0


def measure_cohort(cfg: DictConfig, methods: list[str], batch_size: int, steps: int, warmup: int,
                   repeats: int = 1) -> dict[str, Any]:
    """The same methods trained one after another (each running the teacher) and as a cohort (one teacher
    forward per batch, shared), in alternating rounds on the same batches and models; a speed record
    whose reference is the solo side. Images/s count every member's images (member-images per second)."""

    if repeats < 1:
        raise KDBenchError(f"speed.repeats must be at least 1, got {repeats}")
    if len(methods) < 2:
        raise KDBenchError(f"a cohort needs at least two methods (speed.methods), got {methods}")
    device = resolve_device(str(cfg.engine.device))
    fast = resolve_fast_path(cfg.engine, device, str(cfg.protocol.precision))
    n_images = batch_size * (steps + warmup + 1)
    with compile_context(fast):
        data, members, shared = _cohort_members(cfg, methods, device, fast, n_images)
        autocast = fast.autocast(device)
        batches = list(zip(range(steps + warmup), _endless(data, batch_size)))

        def solo(n: int) -> None:  # one method after another, each running the teacher itself
            if shared is not None:
                shared._memo = None
            for method, opt in members:
                for _, batch in batches[:n]:
                    train_one_step(method, batch, 0, opt, autocast, fast.channels_last)

        def cohort(n: int) -> None:  # lockstep: each batch once, the shared teacher once per batch
            if shared is not None:
                shared.share()
            for _, batch in batches[:n]:
                for method, opt in members:
                    train_one_step(method, batch, 0, opt, autocast, fast.channels_last)

        rounds = [(_timed(solo, warmup, steps, device), _timed(cohort, warmup, steps, device))
                  for _ in range(repeats)]
        if shared is not None:
            shared._memo = None  # each member's own step, its teacher forward counted
        flops = statistics.fmean(_flops_per_image(method, batches[0][1], opt, autocast, fast.channels_last)
                                 for method, opt in members)
    images = len(members) * steps * batch_size
    solo_ips = statistics.median(images / s for s, _ in rounds)
    cohort_ips = statistics.median(images / c for _, c in rounds)
    achieved = flops * cohort_ips / 1e12
    peak = peak_tflops(device, fast.amp)
    return {
        "kind": "speed", "schema_version": 1, "created": now_iso(),
        "pair": str(cfg.pair.name), "teacher": str(cfg.pair.teacher), "student": str(cfg.pair.student),
        "method": "cohort-" + "+".join(methods), "batch_size": batch_size, "steps": steps, "warmup": warmup,
        "repeats": repeats, "mode": "cohort",
        "engine": {**fast.as_dict(), "images_per_s": cohort_ips, "ms_per_step": 1000 * statistics.median(
            c for _, c in rounds) / steps, "peak_memory_bytes": _peak_memory(device)},
        "reference": {"images_per_s": solo_ips, "ms_per_step": 1000 * statistics.median(s for s, _ in rounds) / steps,
                      "kind": "the same methods one after another (solo runs)"},
        "speedup": statistics.median(s / c for s, c in rounds),
        "rounds": [{"images_per_s": images / c, "reference_images_per_s": images / s} for s, c in rounds],
        "flops_per_image": flops, "flops_basis": "solo: each member's own step, its teacher forward included",
        "achieved_tflops": achieved, "mfu": None if peak is None else achieved / peak, "peak_tflops": peak,
        "environment": run_environment(device), "profile": None,
    }


def _measure_reference(cfg, method_name, device, n_images, batch_size, steps, warmup) -> Measurement:
    """The plain loop: DataLoader + PIL transforms, fp32, NCHW, .item() every step, per-tensor SGD."""
    data, method = _build(cfg, method_name, device, n_images, "dataloader")
    opt = build_optimizer(method.trainable_parameters(), cfg.schedule, "for_loop")
    method.train()
    stream = _endless(data, batch_size, method.paired_batches)
    losses: list[float] = []

    def loop(n: int) -> None:
        for _, batch in zip(range(n), stream):
            # the method's own update rule (DML: sequential), but fp32, NCHW and a per-step host sync
            out = method.train_step(batch, 0, opt, contextlib.nullcontext)
            losses.append(sum(out.losses.values()).item())

    return _measure(loop, device, warmup, steps, batch_size)


def run_speed(overrides: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    if "pair" not in given_keys(overrides):
        overrides = [f"pair={DEFAULT_PAIR}", *overrides]
    cfg = compose(overrides)
    if cfg.data.name not in ("cifar100", "cifar10", "cifar10-jpg"):
        raise KDBenchError(f"kdbench speed measures CIFAR-shaped pairs; {cfg.pair.name} is on {cfg.data.name}")
    if cfg.speed.get("cohort"):
        methods = list(cfg.speed.methods) or COHORT_METHODS
        log.info("speed: a cohort of %s on %s, batch %d, solo beside", ",".join(methods), cfg.pair.name,
                 cfg.speed.batch_size)
        return [measure_cohort(cfg, methods, int(cfg.speed.batch_size), int(cfg.speed.steps), int(cfg.speed.warmup),
                               int(cfg.speed.get("repeats", 1)))]
    methods = list(cfg.speed.methods) or METHODS.names()
    out = []
    for m in methods:
        log.info("speed: %s on %s, batch %d", m, cfg.pair.name, cfg.speed.batch_size)
        out.append(measure_method(cfg, m, int(cfg.speed.batch_size), int(cfg.speed.steps), int(cfg.speed.warmup),
                                  reference=bool(cfg.speed.reference), profile=bool(cfg.speed.get("profile")),
                                  repeats=int(cfg.speed.get("repeats", 1))))
    return out


def format_speed(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no measurements"
    r0 = rows[0]
    rounds = f" x {r0['repeats']} alternating rounds (medians)" if r0.get("repeats", 1) > 1 else ""
    lines = [f"{r0['pair']}, batch {r0['batch_size']}, {r0['steps']} timed steps after {r0['warmup']} warm-up"
             f"{rounds}, "
             f"{r0['environment']['hardware']}, engine: {describe_fast_path(r0['engine'])}",
             f"{'method':<8} {'ref img/s':>10} {'img/s':>9} {'speed-up':>8} {'ms/step':>8} {'GFLOP/img':>9} "
             f"{'TFLOP/s':>8} {'MFU':>6} {'peak MiB':>9}  ratio range"]
    for r in rows:
        ref = f"{r['reference']['images_per_s']:10.1f}" if r["reference"] else f"{'-':>10}"
        sp = f"{r['speedup']:7.2f}x" if r["speedup"] else f"{'-':>8}"
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else f"{'-':>6}"
        lines.append(f"{r['method']:<8} {ref} {r['engine']['images_per_s']:9.1f} {sp} "
                     f"{r['engine']['ms_per_step']:8.1f} {r['flops_per_image'] / 1e9:9.3f} "
                     f"{r['achieved_tflops']:8.3f} {mfu} {r['engine']['peak_memory_bytes'] / 2**20:9.0f}"
                     f"  {speedup_range(r)}")
    for r in rows:
        if r.get("profile"):
            lines += ["", f"profile of the {r['method']} step (torch.profiler, self time):", r["profile"]]
    return "\n".join(lines)


def speed_record_name(r: dict[str, Any]) -> str:
    hw = "".join(c if c.isalnum() else "-" for c in r["environment"]["hardware"]).strip("-")[:40]
    return (f"{r['pair'].replace('/', '_')}__{r['method']}__bs{r['batch_size']}__{r['engine']['amp']}__{hw}__"
            f"{r['created'][:19].replace(':', '')}.json")


