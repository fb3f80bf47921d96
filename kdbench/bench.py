"""The default benchmark: teacher, then every bench method over every bench seed, as one table."""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

from .config import compose
from .runner import load_data, run
from .teacher import ensure_teacher

log = logging.getLogger(__name__)


@dataclass
class BenchResult:
    pair: str
    dataset: str
    epochs: int
    seeds: list[int]
    teacher_top1: float | None
    rows: list[dict[str, Any]]  # method, mean, std, n, gain
    records: list[dict[str, Any]]
    wall_time_s: float


def run_bench(overrides: list[str] | tuple[str, ...] = ()) -> BenchResult:
    """Run ``bench.methods`` x ``bench.seeds`` on the configured pair (teacher first, once)."""
    t0 = time.time()
    base = compose(overrides)
    data = load_data(base)
    teacher = ensure_teacher(base, data)
    records: list[dict[str, Any]] = []
    for seed in base.bench.seeds:
        for method in base.bench.methods:
            cfg = compose([*overrides, f"method={method}", f"seed={seed}"])
            records.append(run(cfg, data=data))
    by_method: dict[str, list[float]] = {}
    for rec in records:
        by_method.setdefault(rec["method"]["name"], []).append(rec["metrics"]["last"]["student"]["test"]["top1"])
    base_mean = statistics.fmean(by_method["vanilla"]) if "vanilla" in by_method else None
    rows = []
    for method in base.bench.methods:
        accs = by_method[method]
        mean = statistics.fmean(accs)
        rows.append({"method": method, "mean": mean, "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "n": len(accs), "gain": None if base_mean is None or method == "vanilla" else mean - base_mean})
    return BenchResult(pair=str(base.pair.name), dataset=str(base.data.name), epochs=int(base.schedule.epochs),
                       seeds=list(base.bench.seeds), teacher_top1=teacher.test_top1, rows=rows, records=records,
                       wall_time_s=time.time() - t0)


def format_bench(res: BenchResult) -> str:
    """Plain-text table: teacher accuracy, each method's mean +- std (sample std), gain over vanilla."""
    lines = [f"{res.pair} on {res.dataset}: test top-1 (%) at the last epoch, {res.epochs} epochs, "
             f"seeds {','.join(map(str, res.seeds))} (mean ± sample std)",
             f"{'model':<10} {'top-1':>16} {'n':>3} {'gain':>7}",
             f"{'teacher':<10} {res.teacher_top1:>16.2f} {1:>3} {'':>7}"]
    for r in res.rows:
        gain = "" if r["gain"] is None else f"{r['gain']:+.2f}"
        lines.append(f"{r['method']:<10} {r['mean']:>8.2f} ± {r['std']:<5.2f} {r['n']:>3} {gain:>7}")
    lines.append(f"wall time {res.wall_time_s:.0f} s")
    return "\n".join(lines)
