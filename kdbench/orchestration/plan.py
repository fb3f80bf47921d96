"""Plans: every run of a suite with its state and its estimated cost, before anything trains."""
from __future__ import annotations

import logging
import statistics
from typing import Any

from omegaconf import DictConfig

from kdbench.core.errors import KDBenchError
from kdbench.data import static_train_size
from kdbench.experiment.identity import teacher_config
from kdbench.orchestration.suite import STATE_NOTES, SuiteConfigs, pair_teacher_config, run_state, suite_configs

log = logging.getLogger(__name__)


class FlopsPerImage:
    """Forward FLOPs per image of an architecture on a dataset's input shape, each measured once."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, tuple], int] = {}

    def __call__(self, arch: str, data: DictConfig) -> int:
        from kdbench.data import static_shape
        from kdbench.models import create_model, forward_flops

        classes, shape = static_shape(data) or (10, (3, 32, 32))  # FLOPs barely depend on the class count
        key = (arch, tuple(shape))
        if key not in self.cache:
            self.cache[key] = forward_flops(create_model(arch, classes, shape[0]), shape)
        return self.cache[key]


def measured_throughput(results_root) -> tuple[float | None, int]:
    """(training FLOP/s, records): the median over this store's completed records of the FLOPs a step
    does per image (3 x the student's forward, per cohort member, + the teacher's forward) times the
    images per second the record measured. What `kdbench plan` estimates unmeasured runs with."""
    from kdbench.experiment.results import counted_records

    rates = []
    for r in counted_records(results_root):
        if r.get("status") != "completed" or not (r.get("params") or {}).get("student_flops"):
            continue
        members = 1 + len(r["experiment"]["spec"]["method"].get("peers") or [])
        per_image = 3 * r["params"]["student_flops"] * members + (r["params"].get("teacher_flops") or 0)
        rates.append(per_image * r["timing"]["images_per_s"])
    return (statistics.median(rates) if rates else None), len(rates)


def plan_rows(overrides: list[str] | tuple[str, ...], flops_per_s: float | None = None,
              suite: SuiteConfigs | None = None) -> list[dict[str, Any]]:
    """Every run of the suite with its state, estimated FLOPs and time: from earlier records of the same
    pair and method on this store where there are some ("measured"), else from its FLOPs at
    ``flops_per_s`` (given, or the store's :func:`measured_throughput`)."""
    from kdbench.experiment.catalog import METHODS
    from kdbench.experiment.results import counted_records
    from kdbench.orchestration.runner import run_identity

    rows, flops = [], FlopsPerImage()
    configs = (suite or suite_configs(overrides)).cfgs
    speeds: dict[tuple[str, str], float] = {}
    if configs:
        for r in counted_records(configs[0].paths.results):
            if r.get("status") == "completed":
                speeds[(r["pair"]["name"], r["method"]["name"])] = r["timing"]["images_per_s"]
        if flops_per_s is None:
            flops_per_s = measured_throughput(configs[0].paths.results)[0]
    for cfg in configs:
        cls = METHODS.get(cfg.method.name).obj
        f_s = flops(str(cfg.pair.student), cfg.data)
        f_t = flops(str(teacher_config(cfg).pair.teacher), cfg.data) if cls.uses_teacher else 0
        per_image = 3 * f_s * (1 + len(cfg.method.get("peers") or [])) + f_t
        n_train = static_train_size(cfg.data)
        images = n_train * int(cfg.schedule.epochs) if n_train else None
        state, _ = run_state(cfg)
        ips = speeds.get((str(cfg.pair.name), str(cfg.method.name)))
        train_flops = per_image * images if images else None
        est, source = (images / ips, "measured") if images and ips else \
            ((train_flops / flops_per_s, "flops") if train_flops and flops_per_s else (None, None))
        rows.append({"pair": str(cfg.pair.name), "method": str(cfg.method.name), "seed": int(cfg.seed),
                     "run_id": run_identity(cfg), "state": state, "train_flops": train_flops,
                     "est_time_s": est, "est_source": source})
    return rows


def plan_teachers(overrides: list[str] | tuple[str, ...], flops_per_s: float | None = None,
                  suite: SuiteConfigs | None = None) -> list[dict[str, Any]]:
    """Every network the suite distils from -- each pair's teacher, TAKD's assistants (after their own
    teachers), TF-KD's student copies -- once, in the order a bench trains them: cached or to train, with
    the training FLOPs and time (from FLOPs) of those to train."""
    from kdbench.experiment.catalog import METHODS
    from kdbench.experiment.identity import assistant_training_config
    from kdbench.orchestration.teacher_cache import entry_key, find_teacher

    configs = (suite or suite_configs(overrides)).cfgs
    if configs and flops_per_s is None:
        flops_per_s = measured_throughput(configs[0].paths.results)[0]
    flops, seen, rows = FlopsPerImage(), set(), []

    def visit(cfg: DictConfig) -> None:
        t = teacher_config(cfg)
        if t.teacher.get("assistant") is not None:
            visit(assistant_training_config(t))  # its own teacher first
        key = entry_key(t)
        if key in seen:
            return
        seen.add(key)
        try:
            cached = find_teacher(t) is not None
        except KDBenchError:  # a pinned teacher missing from the cache cannot be trained by a bench
            cached = False
        n_train = static_train_size(t.data)
        per_image = 3 * flops(str(t.pair.teacher), t.data)
        if t.teacher.get("assistant") is not None:  # distilled: its teacher runs forward on every image
            per_image += flops(str(t.teacher.assistant.teacher), t.data)
        train_flops = per_image * n_train * int(t.teacher.schedule.epochs) if n_train and not cached else None
        rows.append({"pair": str(t.pair.name), "teacher": str(t.pair.teacher), "key": key,
                     "kind": "assistant" if t.teacher.get("assistant") is not None else "teacher",
                     "state": "cached" if cached else "to train", "train_flops": train_flops,
                     "est_time_s": train_flops / flops_per_s if train_flops and flops_per_s else None})

    for cfg in configs:
        visit(pair_teacher_config(cfg))
        if METHODS.get(str(cfg.method.name)).obj.uses_teacher:
            visit(cfg)
    return rows


def _estimate(r: dict[str, Any]) -> str:
    blank = "-" if r["state"] == "cached" else "?"
    fl = f"{r['train_flops'] / 1e12:9.2f} TFLOP" if r["train_flops"] else f"{blank:>15}"
    t = f"{r['est_time_s'] / 60:7.1f} min" if r["est_time_s"] else f"{'?' if r['train_flops'] else '':>11}"
    return f"  {fl}  {t}{'*' if r.get('est_source') == 'flops' else ' '}"


def format_plan(rows: list[dict[str, Any]], with_estimates: bool, teachers: list[dict[str, Any]] | None = None,
                throughput: tuple[float | None, str] | None = None) -> str:
    lines = []
    for t in teachers or []:
        est = _estimate(t) if with_estimates else ""
        lines.append(f"{t['state']:<15} {t['pair']:<32} {t['kind'] + ' ' + t['teacher']:<22}{est}  {t['key']}")
    for r in rows:
        est = _estimate(r) if with_estimates else ""
        lines.append(f"{r['state']:<15} {r['pair']:<32} {r['method']:<17} s{r['seed']:<3}{est}  {r['run_id']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(f"{len(rows)} runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines += [f"  {state}: {note}" for state, note in STATE_NOTES.items() if state in counts]
    if with_estimates:
        todo = [r for r in rows if r["state"] != "done"]
        measured = [r["est_time_s"] for r in todo if r["est_source"] == "measured"]
        by_flops = [r["est_time_s"] for r in todo if r["est_source"] == "flops"]
        unknown = len(todo) - len(measured) - len(by_flops)
        train = [t["est_time_s"] for t in teachers or [] if t["state"] == "to train"]
        rate, where = throughput or (None, "")
        from_flops = sum(by_flops) + sum(t or 0 for t in train)
        lines.append(f"estimated time of the remaining work: {(sum(measured) + from_flops) / 3600:.2f} h "
                     f"= {len(measured)} runs from the images/s of earlier records of the same pair and method "
                     f"({sum(measured) / 3600:.2f} h) + {len(by_flops)} runs (*) and {len(train)} teachers from "
                     f"their FLOPs ({from_flops / 3600:.2f} h)"
                     + (f" at {rate / 1e9:.1f} GFLOP/s ({where})" if rate else ": no throughput known (pass --gflops)")
                     + (f"; {unknown} runs unknown" if unknown else ""))
    return "\n".join(lines)
