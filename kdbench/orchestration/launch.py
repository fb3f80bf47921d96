"""Suites through a Hydra launcher: ``kdbench bench hydra/launcher=submitit_slurm suite=...``.

A suite runs in stages, each one batch of jobs handed to the launcher, the next starting when the last has
finished: first every network the suite distils from that the cache lacks, by depth (each pair's teacher and
TF-KD's student copies, then each level of TAKD's assistants, which learn from the level above), then the
students -- one job per run, or with ``bench.cohort=true`` one per (pair, seed) cohort. So no student job holds
a GPU while it waits on a teacher's lock. Completed runs get no job. Every job is the ordinary idempotent,
resumable run (resume=true): a job that a scheduler requeues at its time limit (submitit's signal, which the
engine meets with a checkpoint of the current step) continues where it stopped.

The launcher is Hydra's own plugin (basic, joblib, submitit, ray), instantiated as ``kdbench run -m`` would
and handed explicit per-job overrides, since a suite's jobs are not a Cartesian product.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from kdbench.core.errors import KDBenchError
from kdbench.core.overrides import given_keys, override_key
from kdbench.experiment.pairs import CONFIG_MODULE
from kdbench.orchestration.bench import BenchResult, summarise
from kdbench.orchestration.suite import distils_from, pair_teacher_config, run_state, suite_configs

log = logging.getLogger(__name__)


def wants_launcher(overrides: list[str] | tuple[str, ...]) -> bool:
    """Whether a bench goes through a Hydra launcher: the command line picks one (``hydra/launcher=...``)."""
    return "hydra/launcher" in given_keys(overrides)


def split_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(the experiment's overrides, Hydra's own: ``hydra/...`` and ``hydra.*``)."""
    own = [o for o in overrides if override_key(o).startswith(("hydra/", "hydra."))]
    return [o for o in overrides if o not in own], own


@dataclass
class Job:
    overrides: list[str]
    label: str
    runs: tuple[int, ...] = ()  # the suite runs a student job trains (indices into SuitePlan.cfgs)


@dataclass
class SuitePlan:
    suite: Any
    cfgs: list[DictConfig]
    teacher_stages: list[list[Job]]  # the networks the cache lacks, by depth
    needs: list[list[DictConfig]]  # per run: every network it distils from (pair teacher for a table included)
    student_jobs: list[Job]
    done: int


def plan_suite(overrides: list[str] | tuple[str, ...]) -> SuitePlan:
    """The stages a launcher runs for the suite ``overrides`` name (Hydra's own overrides left out)."""
    from kdbench.experiment.identity import teacher_config
    from kdbench.orchestration.teacher_cache import entry_key, find_teacher

    sc = suite_configs(overrides)  # every name checked before anything is launched
    s, runs, cfgs = sc.suite, sc.runs, sc.cfgs
    stages: dict[int, list[Job]] = {}
    seen: set[str] = set()
    needs: list[list[DictConfig]] = []

    def want(c: DictConfig, depth: int, ov: list[str], job: list[str], label: str) -> None:
        key = entry_key(c)
        if key in seen:
            return
        seen.add(key)
        if find_teacher(c) is None:  # a pinned teacher missing from the cache says so here
            stages.setdefault(depth, []).append(Job([*ov, *job], label))

    for cfg, (pair, ov) in zip(cfgs, runs):
        top = pair_teacher_config(cfg)
        want(top, 0, ov, ["bench.job=pair-teacher"], f"teacher {top.pair.teacher} of {pair}")
        chain = distils_from(cfg)
        for depth, c in enumerate(chain):
            t = teacher_config(c)
            kind = "assistant" if t.teacher.get("assistant") is not None else "teacher"
            want(c, depth, ov, ["bench.job=teacher", f"bench.depth={depth}"], f"{kind} {t.pair.teacher} of {pair}")
        needs.append([top, *chain])
    todo = [(i, cfg, ov) for i, (cfg, (_, ov)) in enumerate(zip(cfgs, runs)) if run_state(cfg)[0] != "done"]
    return SuitePlan(s, cfgs, [stages[d] for d in sorted(stages)], needs, _student_jobs(todo),
                     len(cfgs) - len(todo))


def _student_jobs(todo: list[tuple[int, DictConfig, list[str]]]) -> list[Job]:
    """One job per run; with ``bench.cohort=true`` one per (pair, seed) cohort of at most ``bench.cohort_max``
    runs (``auto``: all of them), since a launcher job cannot know its device before it starts."""
    import torch

    from kdbench.orchestration.bench import cohort_size

    if not todo or todo[0][1].bench.cohort is not True:
        return [Job(ov, f"{c.method.name} s{c.seed} on {c.pair.name}", (i,)) for i, c, ov in todo]
    groups: dict[tuple[str, int], list[tuple[int, DictConfig, list[str]]]] = {}
    for i, c, ov in todo:
        groups.setdefault((str(c.pair.name), int(c.seed)), []).append((i, c, ov))
    size = cohort_size(todo[0][1], torch.device("cpu"))  # auto: no limit (the job's device is unknown here)
    jobs = []
    for (pair, seed), members in groups.items():
        for k in range(0, len(members), size):
            part = members[k:k + size]
            names = [str(c.method.name) for _, c, _ in part]
            listed = ",".join(f"'{n}'" for n in names)
            jobs.append(Job([*part[0][2], "bench.job=cohort", f"bench.members=[{listed}]"],
                            f"cohort {'+'.join(names)} s{seed} on {pair}", tuple(i for i, _, _ in part)))
    return jobs


def _launcher(task_overrides: list[str], hydra_overrides: list[str]):
    """Hydra's launcher plugin as ``kdbench run -m`` instantiates it, for explicit job lists."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from hydra.types import HydraContext, RunMode
    from omegaconf.errors import OmegaConfBaseException

    from kdbench.orchestration.hydra_app import job
    from kdbench.training.method import register_method_configs

    register_method_configs()
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2("kdbench", create_config_search_path(f"pkg://{CONFIG_MODULE}"))
    try:
        cfg = hydra.compose_config("config", overrides=[*task_overrides, *hydra_overrides, "hydra.mode=MULTIRUN"],
                                   with_log_configuration=False, run_mode=RunMode.MULTIRUN)
        launcher = Plugins.instance().instantiate_launcher(
            config=cfg, task_function=job, hydra_context=HydraContext(config_loader=hydra.config_loader,
                                                                      callbacks=Callbacks(cfg)))
    except (HydraException, OmegaConfBaseException, ImportError) as exc:
        raise KDBenchError(f"invalid launcher setting: {str(exc).splitlines()[0]}") from None
    return launcher, cfg


def _launch(launcher, jobs: list[Job], first: int, what: str) -> int:
    """One stage: its jobs handed to the launcher, which returns when all have ended. Failures are logged
    (a failed run has its record; the suite goes on)."""
    from hydra.core.utils import JobStatus

    log.info("%s: %d job%s", what, len(jobs), "" if len(jobs) == 1 else "s")
    for n, j in enumerate(jobs, first):
        log.info("  #%d %s", n, j.label)
    try:
        rets = launcher.launch([j.overrides for j in jobs], initial_job_idx=first)
    except Exception as exc:  # noqa: BLE001 - e.g. submitit: a job out of requeues; the records tell the rest
        log.error("%s: the launcher reported: %s", what, exc)
        return first + len(jobs)
    for n, (j, r) in enumerate(zip(jobs, rets), first):
        if r.status == JobStatus.FAILED:
            log.error("job #%d (%s) failed: %s", n, j.label, r._return_value)
        elif r._return_value is None:
            log.error("job #%d (%s) stopped with an error (see its log)", n, j.label)
    return first + len(jobs)


def launch_suite(overrides: list[str] | tuple[str, ...]) -> BenchResult:
    """Run the suite through the launcher the command line names; the bench's tables from the store."""
    from kdbench.orchestration.hydra_app import check_launcher
    from kdbench.orchestration.teacher_cache import find_teacher

    t0 = time.time()
    task, hydra_ov = split_overrides(overrides)
    check_launcher(hydra_ov)
    plan = plan_suite(task)
    launcher, _ = _launcher(task, hydra_ov)
    n = 0
    for depth, stage in enumerate(plan.teacher_stages):
        n = _launch(launcher, stage, n, f"networks to distil from, depth {depth}")
    ready = {i for i, needs in enumerate(plan.needs) if all(find_teacher(c) is not None for c in needs)}
    students = [j for j in plan.student_jobs if ready.issuperset(j.runs)]
    for j in plan.student_jobs:
        if not ready.issuperset(j.runs):
            log.error("%s: not launched, a network it distils from was not trained (see the jobs above)", j.label)
    if plan.done:
        log.info("%d runs already done: no job", plan.done)
    if students:
        _launch(launcher, students, n, "students")
    records, results = [], []
    for pair in plan.suite.pairs:
        cfgs = [c for c in plan.cfgs if str(c.pair.name) == str(pair)]
        recs = [rec for c in cfgs if (st := run_state(c))[0] in ("done", "failed", "diverged") and (rec := st[1])]
        records += recs
        entry = find_teacher(pair_teacher_config(cfgs[0]))
        results.append(summarise(cfgs[0], entry.test_top1 if entry else None, list(plan.suite.methods),
                                  list(plan.suite.seeds), recs))
    return BenchResult(str(plan.suite.name), results, records, time.time() - t0)
