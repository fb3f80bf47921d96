"""Suites: a grid of pairs x methods x seeds, teachers first, one table per pair."""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdbench.core.errors import KDBenchError
from kdbench.data import load_data, static_train_size
from kdbench.experiment.identity import teacher_config
from kdbench.experiment.schema import VANILLA
from kdbench.orchestration.config import compose
from kdbench.orchestration.runner import run
from kdbench.orchestration.teacher import ensure_teacher

log = logging.getLogger(__name__)


@dataclass
class PairResult:
    pair: str
    dataset: str
    epochs: int
    seeds: list[int]
    teacher_top1: float | None
    rows: list[dict[str, Any]]  # method, mean, std, n, gain


@dataclass
class BenchResult:
    suite: str
    pairs: list[PairResult]
    records: list[dict[str, Any]]
    wall_time_s: float


def load_suite(overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """The suite named on the command line (``suite=NAME``, ``suite.KEY=...``), default ``digits``."""
    from kdbench.experiment.identity import SEED

    own = [o for o in overrides if o.lstrip("+").split("=", 1)[0].split(".", 1)[0] == "suite"]
    s = compose(own, check=False).suite
    for key in ("pairs", "methods", "seeds"):
        if not OmegaConf.is_list(s.get(key)) or not len(s[key]):
            raise KDBenchError(f"suite.{key} must be a non-empty list (suite {s.get('name')!r})")
    s.seeds = [SEED(x, "suite.seeds[]") for x in s.seeds]
    return s


def suite_runs(s: DictConfig, overrides: list[str] | tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """(pair, overrides) for every run of the suite, in order: pair, then seed, then method; without the
    cells ``exclude: {METHOD: [PAIR, ...]}`` leaves out.

    The suite's own overrides come first, so the command line wins over them.
    """
    out = []
    exclude = s.get("exclude") or {}
    for pair in s.pairs:
        for seed in s.seeds:
            for method in s.methods:
                if str(pair) in (exclude.get(str(method)) or []):
                    continue  # a cell the suite leaves out (a method that cannot serve the pair)
                # Suites resume interrupted runs from their checkpoints (the command line may say otherwise).
                out.append((str(pair), [*s.overrides, f"pair={pair}", "resume=true", *overrides,
                                        f"method={method}", f"seed={seed}"]))
    return out


@dataclass
class SuiteConfigs:
    suite: DictConfig
    runs: list[tuple[str, list[str]]]  # (pair, overrides), as :func:`suite_runs`
    cfgs: list[DictConfig]  # each run's config, in the same order


def suite_configs(overrides: list[str] | tuple[str, ...]) -> SuiteConfigs:
    """The suite's runs, every one composed (a bad name anywhere fails before anything runs). Runs that
    differ only in their seed are composed once and copied with the seed set -- no other key derives from
    it -- since one Hydra composition costs about 0.1 s and the CRD suite has 564 runs."""
    import copy

    s = load_suite(overrides)
    runs = suite_runs(s, overrides)
    memo: dict[tuple[str, ...], DictConfig] = {}
    cfgs = []
    for _, ov in runs:
        key = tuple(ov[:-1])  # suite_runs puts the seed last
        if key not in memo:
            memo[key] = compose(ov)
            cfgs.append(memo[key])
            continue
        cfg = copy.deepcopy(memo[key])
        cfg.seed = int(ov[-1].split("=", 1)[1])
        cfgs.append(cfg)
    return SuiteConfigs(s, runs, cfgs)


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
            recs = run_cohort([cfgs[i] for i in chunk], data, run_) if len(chunk) > 1 else \
                [run_(cfgs[chunk[0]], data=data, on_error="record", wait=True)]
            out.update(zip(chunk, recs))
    return [out[i] for i in range(len(cfgs))]


COHORT_MIN_TEACHER_FLOPS = 100e6


def use_cohort(cfg: DictConfig, device) -> bool:
    """``bench.cohort``: true, false, or ``auto`` -- on CUDA, or where the pair's teacher forward is at least
    100 MFLOP per image. Each member runs in a thread with its own OpenMP pool, and on CPU the hand-over
    after every step costs about a millisecond: a loss for the digits pair's 5-MFLOP teacher, a gain from
    resnet56 up (measured in docs/performance.md)."""
    setting = cfg.get("bench", {}).get("cohort", "auto")
    if setting in (True, False):
        return setting
    if setting != "auto":
        raise KDBenchError(f"bench.cohort={setting!r} is not one of: auto, true, false")
    if getattr(device, "type", "cpu") == "cuda":
        return True
    return _Flops()(str(cfg.pair.teacher), cfg.data) >= COHORT_MIN_TEACHER_FLOPS


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
    from kdbench.experiment.results import load_records

    peaks = [r["memory"]["bytes"] for st in load_records(cfg.paths.results) if (r := st.record)
             and r.get("status") == "completed" and r["pair"]["name"] == str(cfg.pair.name)
             and str(r["memory"].get("kind", "")).startswith("cuda")]
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(0.8 * free // max(max(peaks, default=0), 2 << 30)))


def distils_from(cfg: DictConfig) -> list[DictConfig]:
    """The networks a run distils from, root first: configs whose :func:`~kdbench.orchestration.teacher.ensure_teacher`
    yields each one. One entry for a pair teacher or a student copy; a TAKD chain lists every assistant after
    the network it learns from. Empty for a method without a teacher."""
    from kdbench.experiment.catalog import METHODS
    from kdbench.experiment.identity import assistant_training_config, teacher_config

    if not METHODS.get(str(cfg.method.name)).obj.uses_teacher:
        return []

    def chain(c: DictConfig) -> list[DictConfig]:
        t = teacher_config(c)
        return [c] if t.teacher.get("assistant") is None else [*chain(assistant_training_config(t)), c]

    return chain(cfg)


def pair_teacher_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` as a method that distils from the pair's own teacher would see it (the teacher a table
    reports), whatever network ``cfg``'s method distils from."""
    import copy

    from omegaconf import open_dict

    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.method = OmegaConf.create({"name": VANILLA})
    return out


def ensure_run_teachers(cfgs: list[DictConfig], data) -> None:
    """Every distinct network the runs distil from -- TF-KD's student copies, TAKD's assistants (each
    after its own teacher) -- found or trained once, before any student, in the order first needed."""
    from kdbench.experiment.catalog import METHODS
    from kdbench.orchestration.teacher import teacher_key

    seen: set[str] = set()
    for cfg in cfgs:
        if not METHODS.get(str(cfg.method.name)).obj.uses_teacher:
            continue
        key = teacher_key(cfg)
        if key not in seen:
            seen.add(key)
            ensure_teacher(cfg, data)


def summarise(cfg: DictConfig, teacher_top1, methods, seeds, records) -> PairResult:
    by_method: dict[str, list[float]] = {}
    for rec in records:
        if rec["status"] != "completed":
            continue
        by_method.setdefault(rec["method"]["name"], []).append(
            rec["metrics"]["last"][rec["metrics"]["primary_model"]]["test"]["top1"])
    base_mean = statistics.fmean(by_method[VANILLA]) if VANILLA in by_method else None
    rows = []
    for method in methods:
        accs = by_method.get(method)
        if not accs:
            rows.append({"method": method, "mean": float("nan"), "std": float("nan"), "n": 0, "gain": None})
            continue
        mean = statistics.fmean(accs)
        rows.append({"method": method, "mean": mean, "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "n": len(accs), "gain": None if base_mean is None or method == VANILLA else mean - base_mean})
    return PairResult(str(cfg.pair.name), str(cfg.data.name), int(cfg.schedule.epochs), seeds, teacher_top1, rows)


def format_bench(res: BenchResult) -> str:
    """Plain-text tables: teacher accuracy, each method's mean ± sample std, gain over vanilla."""
    lines = []
    for p in res.pairs:
        teacher = f"{p.teacher_top1:>16.2f}" if p.teacher_top1 is not None else f"{'n/a':>16}"
        lines += [f"{p.pair} on {p.dataset}: test top-1 (%) at the last epoch, {p.epochs} epochs, "
                  f"seeds {','.join(map(str, p.seeds))} (mean ± sample std)",
                  f"{'model':<10} {'top-1':>16} {'n':>3} {'gain':>7}",
                  f"{'teacher':<10} {teacher} {1:>3} {'':>7}"]
        for r in p.rows:
            gain = "" if r["gain"] is None else f"{r['gain']:+.2f}"
            lines.append(f"{r['method']:<10} {r['mean']:>8.2f} ± {r['std']:<5.2f} {r['n']:>3} {gain:>7}")
        lines.append("")
    lines.append(f"suite {res.suite}: {len(res.records)} runs, wall time {res.wall_time_s:.0f} s")
    return "\n".join(lines)


# -- plan and status ---------------------------------------------------------------------

STATE_NOTES = {
    "other-teacher": "completed only with a teacher whose weights differ from the cached one: not done for this "
                     "teacher (bench re-runs it)",
    "teacher-unknown": "completed, but the teacher is not in this cache: a bench would train it and re-run the "
                       "student unless the new weights are the same",
}


def _teacher_sha(cfg: DictConfig) -> str | None:
    """The weights sha256 of the teacher ``cfg`` would use, if it is in the cache (nothing is trained)."""
    from kdbench.orchestration.teacher import find_teacher

    try:
        entry = find_teacher(cfg)
    except KDBenchError:  # a pinned teacher that is not cached
        return None
    return None if entry is None else entry.meta["weights"]["sha256"]


def run_state(cfg: DictConfig) -> tuple[str, dict[str, Any] | None]:
    """(state, last record): done | other-teacher | teacher-unknown | failed | diverged | running |
    interrupted | missing. A run that uses a teacher is done only for the teacher it was distilled from."""
    from kdbench.core.locks import is_locked
    from kdbench.experiment.catalog import METHODS
    from kdbench.experiment.results import completed_records, records_of_run
    from kdbench.orchestration.runner import RunPaths

    paths = RunPaths.of(cfg)
    recs = records_of_run(cfg.paths.results, paths.run_id)
    done = completed_records(recs)
    if done and METHODS.get(str(cfg.method.name)).obj.uses_teacher:
        sha = _teacher_sha(cfg)
        if sha is None:
            return "teacher-unknown", done[-1]
        mine = [r for r in done if (r.get("teacher") or {}).get("weights_sha256") == sha]
        if not mine:
            return "other-teacher", done[-1]
        done = mine
    if done:
        return "done", done[-1]
    if is_locked(paths.lock):
        return "running", None
    if recs:
        return recs[-1]["status"], recs[-1]
    if paths.checkpoint.exists():
        return "interrupted", None
    return "missing", None


class _Flops:
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
    from kdbench.experiment.results import load_records

    rates = []
    for st in load_records(results_root):
        r = st.record
        if not r or r.get("status") != "completed" or not (r.get("params") or {}).get("student_flops"):
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
    from kdbench.experiment.results import load_records
    from kdbench.orchestration.runner import run_identity

    rows, flops = [], _Flops()
    configs = (suite or suite_configs(overrides)).cfgs
    speeds: dict[tuple[str, str], float] = {}
    if configs:
        for st in load_records(configs[0].paths.results):
            r = st.record
            if r and r.get("status") == "completed":
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
    from kdbench.orchestration.teacher import find_teacher, teacher_key

    configs = (suite or suite_configs(overrides)).cfgs
    if configs and flops_per_s is None:
        flops_per_s = measured_throughput(configs[0].paths.results)[0]
    flops, seen, rows = _Flops(), set(), []

    def visit(cfg: DictConfig) -> None:
        t = teacher_config(cfg)
        if t.teacher.get("assistant") is not None:
            visit(assistant_training_config(t))  # its own teacher first
        key = teacher_key(t)
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
