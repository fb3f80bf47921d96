"""Benches: a suite run in this process, teachers first, a pair's runs one after another or as a cohort; one
table per pair."""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from kdbench.core.errors import KDBenchError
from kdbench.data import load_data
from kdbench.experiment.schema import VANILLA
from kdbench.orchestration.plan import FlopsPerImage
from kdbench.orchestration.runner import run
from kdbench.orchestration.suite import pair_teacher_config, suite_configs
from kdbench.orchestration.teacher import ensure_teacher

log = logging.getLogger(__name__)


@dataclass
class PairResult:
    pair: str
    dataset: str
    epochs: int
    seeds: list[int]
    teacher_top1: float | None
    rows: list[dict[str, Any]]  # method, mean, std, n, gain (None: no completed seed), failed (reasons)


@dataclass
class BenchResult:
    suite: str
    pairs: list[PairResult]
    records: list[dict[str, Any]]
    wall_time_s: float


def run_bench(overrides: list[str] | tuple[str, ...] = ()) -> BenchResult:
    """Run the configured suite (``suite=NAME``; default ``digits``)."""
    t0 = time.time()
    sc = suite_configs(overrides)
    s = sc.suite
    configs = [(pair, cfg) for (pair, _), cfg in zip(sc.runs, sc.cfgs)]
    records: list[dict[str, Any]] = []
    results = []
    for pair in s.pairs:
        cfgs = [c for p, c in configs if p == pair]
        data = load_data(cfgs[0])
        teacher = ensure_teacher(pair_teacher_config(cfgs[0]), data)  # teachers first, once per pair
        ensure_run_teachers(cfgs, data)  # then the other networks the methods distil from (assistants, ...)
        # Failures are recorded and the grid goes on; interrupted runs resume from their checkpoints.
        pair_records = run_pair(cfgs, data)
        records += pair_records
        results.append(summarise(cfgs[0], teacher.test_top1, list(s.methods), list(s.seeds), pair_records))
    return BenchResult(str(s.name), results, records, time.time() - t0)


def run_pair(cfgs: list[DictConfig], data, workers: int = 1) -> list[dict[str, Any]]:
    """A pair's runs: with ``bench.cohort`` (the default) each seed's runs in one lockstep cohort
    (:mod:`kdbench.orchestration.cohort`: one batch and one teacher forward per step for all of them; the records are
    the solo runs'), else one after another. Records in the suite's order. ``workers``: processes sharing
    this machine's cores (a parallel launcher's jobs)."""
    import functools

    run_ = functools.partial(run, workers=workers)
    if not use_cohort(cfgs[0], data.device) or len(cfgs) == 1:
        return [run_(cfg, data=data, on_error="record", wait=True) for cfg in cfgs]
    from kdbench.orchestration.cohort import run_cohort

    out: dict[int, dict[str, Any]] = {}
    size = cohort_size(cfgs[0], data.device)
    for seed in dict.fromkeys(int(c.seed) for c in cfgs):
        idx = [i for i, c in enumerate(cfgs) if int(c.seed) == seed]
        for part in range(0, len(idx), size):  # a group larger than fits is split
            chunk = idx[part:part + size]
            recs = run_cohort([cfgs[i] for i in chunk], data, workers) if len(chunk) > 1 else \
                [run_(cfgs[chunk[0]], data=data, on_error="record", wait=True)]
            out.update(zip(chunk, recs))
    return [out[i] for i in range(len(cfgs))]


COHORT_MIN_TEACHER_FLOPS = 100e6


def use_cohort(cfg: DictConfig, device) -> bool:
    """``bench.cohort``: true, false, or ``auto`` -- on CUDA, or where the pair's teacher forward is at least
    100 MFLOP per image: the shared forward is what a cohort saves, and a small teacher (the digits pair's,
    5 MFLOP) saves too little to show (docs/performance.md)."""
    setting = cfg.get("bench", {}).get("cohort", "auto")
    if setting in (True, False):
        return setting
    if setting != "auto":
        raise KDBenchError(f"bench.cohort={setting!r} is not one of: auto, true, false")
    if getattr(device, "type", "cpu") == "cuda":
        return True
    return FlopsPerImage()(str(cfg.pair.teacher), cfg.data) >= COHORT_MIN_TEACHER_FLOPS


def cohort_size(cfg: DictConfig, device) -> int:
    """How many runs one cohort may hold: ``bench.cohort_max`` if a number; ``auto``: every run on CPU, and on
    CUDA as many as 80 % of the free memory holds at the largest peak any earlier record of this pair
    measured (2 GiB each when none has)."""
    import torch

    setting = cfg.get("bench", {}).get("cohort_max", "auto")
    if setting != "auto":
        from kdbench.core.counts import positive_count

        return positive_count(setting, "bench.cohort_max")
    if getattr(device, "type", "cpu") != "cuda":
        return 1 << 30
    from kdbench.experiment.results import counted_records

    peaks = [r["memory"]["bytes"] for r in counted_records(cfg.paths.results)
             if r.get("status") == "completed" and r["pair"]["name"] == str(cfg.pair.name)
             and str(r["memory"].get("kind", "")).startswith("cuda")]
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(0.8 * free // max(max(peaks, default=0), 2 << 30)))


def ensure_run_teachers(cfgs: list[DictConfig], data) -> None:
    """Every distinct network the runs distil from -- TF-KD's student copies, TAKD's assistants (each
    after its own teacher) -- found or trained once, before any student, in the order first needed."""
    from kdbench.experiment.catalog import METHODS
    from kdbench.orchestration.teacher_cache import entry_key

    seen: set[str] = set()
    for cfg in cfgs:
        if not METHODS.get(str(cfg.method.name)).obj.uses_teacher:
            continue
        key = entry_key(cfg)
        if key not in seen:
            seen.add(key)
            ensure_teacher(cfg, data)


def summarise(cfg: DictConfig, teacher_top1, methods, seeds, records) -> PairResult:
    """Each method's mean over its completed seeds; the seeds that failed or diverged are listed with the
    reason, never averaged (a diverged run has no accuracy to average)."""
    by_method: dict[str, list[float]] = {}
    failures: dict[str, list[str]] = {}
    for rec in records:
        name = rec["method"]["name"]
        if rec["status"] != "completed":
            err = rec.get("error") or {}
            failures.setdefault(name, []).append(f"seed {rec.get('seed', '?')} {rec['status']}: "
                                                 f"{err.get('message') or err.get('type') or 'no reason given'}")
            continue
        by_method.setdefault(name, []).append(
            rec["metrics"]["last"][rec["metrics"]["primary_model"]]["test"]["top1"])
    base_mean = statistics.fmean(by_method[VANILLA]) if VANILLA in by_method else None
    rows = []
    for method in methods:
        accs, failed = by_method.get(method), failures.get(method, [])
        if not accs:
            rows.append({"method": method, "mean": None, "std": None, "n": 0, "gain": None, "failed": failed})
            continue
        mean = statistics.fmean(accs)
        rows.append({"method": method, "mean": mean, "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "n": len(accs), "gain": None if base_mean is None or method == VANILLA else mean - base_mean,
                     "failed": failed})
    return PairResult(str(cfg.pair.name), str(cfg.data.name), int(cfg.schedule.epochs), seeds, teacher_top1, rows)


def format_bench(res: BenchResult) -> str:
    """Plain-text tables: teacher accuracy, each method's mean ± sample std over its completed seeds, gain
    over vanilla; a method with no completed seed shows as failed, and every failed seed's reason follows."""
    lines = []
    for p in res.pairs:
        teacher = f"{p.teacher_top1:>16.2f}" if p.teacher_top1 is not None else f"{'n/a':>16}"
        lines += [f"{p.pair} on {p.dataset}: test top-1 (%) at the last epoch, {p.epochs} epochs, "
                  f"seeds {','.join(map(str, p.seeds))} (mean ± sample std)",
                  f"{'model':<10} {'top-1':>16} {'n':>3} {'gain':>7}",
                  f"{'teacher':<10} {teacher} {1:>3} {'':>7}"]
        reasons = []
        for r in p.rows:
            gain = "" if r["gain"] is None else f"{r['gain']:+.2f}"
            failed = r.get("failed") or []
            if r["mean"] is None:
                cell = "failed" if failed else "missing"
                lines.append(f"{r['method']:<10} {cell:>16} {0:>3} {'':>7}")
            else:
                more = f"  ({len(failed)} failed)" if failed else ""
                lines.append(f"{r['method']:<10} {r['mean']:>8.2f} ± {r['std']:<5.2f} {r['n']:>3} {gain:>7}{more}")
            reasons += [f"  {r['method']} {f}" for f in failed]
        if reasons:
            lines += ["not counted:", *reasons]
        lines.append("")
    lines.append(f"suite {res.suite}: {len(res.records)} runs, wall time {res.wall_time_s:.0f} s")
    return "\n".join(lines)


# -- plan and status ---------------------------------------------------------------------
