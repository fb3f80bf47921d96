"""Hydra's own entry point, for sweeps (``kdbench run -m method=kd,fitnet seed=0,1,2``), and the one job
function of suites handed to a launcher (``kdbench bench hydra/launcher=...``, :mod:`kdbench.orchestration.launch`).

Multirun goes through Hydra so its sweepers and launchers work unchanged:
the basic launcher (sequential), hydra-joblib-launcher (local processes),
hydra-submitit-launcher (SLURM, or its local executor), hydra-ray-launcher.
Each job composes its config, runs idempotently (completed runs are skipped,
interrupted ones resume) and writes its own record; a failing job writes a
failure record and the sweep continues.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from kdbench.core.overrides import override_key, override_value

log = logging.getLogger("kdbench")


def job(cfg: DictConfig) -> dict[str, Any] | None:
    """One job: a run of a sweep, or one of the jobs a suite hands a launcher (``bench.job``: ``run``,
    ``pair-teacher`` / ``teacher`` -- train a network the run distils from --, or ``cohort``)."""
    from hydra.core.hydra_config import HydraConfig

    from kdbench.core.errors import KDBenchError
    from kdbench.orchestration.config import finalize
    from kdbench.orchestration.runner import run

    overrides = list(HydraConfig.get().overrides.task)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        OmegaConf.resolve(cfg)
        cfg = finalize(cfg, overrides)
        if multirun:
            cfg.resume = True if "resume=false" not in overrides else cfg.resume
        kind = str(cfg.bench.job)
        if kind in ("teacher", "pair-teacher"):
            return _teacher_job(cfg, kind)
        if kind == "cohort":
            return _cohort_job(cfg, overrides)
        if kind != "run":
            raise KDBenchError(f"bench.job={kind!r} is not one of: run, teacher, pair-teacher, cohort")
        rec = run(cfg, on_error="record" if multirun else "raise", workers=_parallel_jobs() if multirun else 1)
    except KDBenchError as exc:
        log.error("%s", exc)
        if not multirun:
            raise SystemExit(2) from None
        return None
    return _outcome(rec)


hydra_task = hydra.main(config_path="pkg://kdbench.conf", config_name="config", version_base="1.3")(job)


def _outcome(rec: dict[str, Any]) -> dict[str, Any]:
    top1 = rec["metrics"]["last"][rec["metrics"]["primary_model"]]["test"]["top1"] if rec["status"] == "completed" \
        else None
    log.info("%s: %s%s", rec["run_id"], rec["status"], f", test top-1 {top1:.2f}" if top1 is not None else "")
    return {"run_id": rec["run_id"], "status": rec["status"], "top1": top1}


def _teacher_job(cfg: DictConfig, kind: str) -> dict[str, Any]:
    """Train (or find) the pair's teacher, or the network at ``bench.depth`` of what the run distils from."""
    from kdbench.compute.distributed import apply_threads
    from kdbench.data import load_data
    from kdbench.orchestration.suite import distils_from, pair_teacher_config
    from kdbench.orchestration.teacher import ensure_teacher

    chain = [pair_teacher_config(cfg)] if kind == "pair-teacher" else distils_from(cfg)
    target = chain[int(cfg.bench.depth)]
    apply_threads(cfg.engine.threads, workers=_parallel_jobs())  # as a run sets them
    entry = ensure_teacher(target, load_data(target))
    log.info("%s %s: test top-1 %s", entry.arch, entry.hash,
             f"{entry.test_top1:.2f}" if entry.test_top1 is not None else "n/a")
    return {"teacher": entry.hash, "top1": entry.test_top1}


def _cohort_job(cfg: DictConfig, overrides: list[str]) -> list[dict[str, Any]]:
    """The runs of ``bench.members`` (methods; the rest of the config as given) as one lockstep cohort."""
    from kdbench.data import load_data
    from kdbench.orchestration.bench import run_pair
    from kdbench.orchestration.config import compose

    base = [o for o in overrides if override_key(o) not in ("method", "bench.job", "bench.members")]
    cfgs = [compose([*base, f"method={m}"]) for m in cfg.bench.members]
    return [_outcome(r) for r in run_pair(cfgs, load_data(cfgs[0]), workers=_parallel_jobs())]


def _parallel_jobs() -> int:
    """How many of this sweep's jobs run at once on this machine: joblib's ``n_jobs`` (-1: every core);
    1 for the sequential launcher and for cluster launchers (one job per allocation)."""
    from hydra.core.hydra_config import HydraConfig

    from kdbench.compute.distributed import available_cores

    launcher = HydraConfig.get().launcher
    n = launcher.get("n_jobs") if launcher is not None and "joblib" in str(launcher.get("_target_", "")) else None
    if n is None:
        return 1
    n = int(n)
    return available_cores() if n < 0 else max(1, n)


LAUNCHER_PACKAGES = {  # hydra/launcher option -> (module to import, package to install)
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "local_parallel": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
}


def check_launcher(args: list[str]) -> None:
    """A launcher that is not installed: say which package to install, before anything runs."""
    import importlib.util

    from kdbench.core.errors import KDBenchError

    for a in args:
        key, value = override_key(a), override_value(a)
        if key == "hydra/launcher" and value in LAUNCHER_PACKAGES:
            module, package = LAUNCHER_PACKAGES[value]
            if importlib.util.find_spec(module.split(".")[0]) is None or \
                    importlib.util.find_spec(module) is None:
                raise KDBenchError(f"launcher {value!r} needs the package {package}: pip install {package}")


def launch(args: list[str]) -> int:
    """Run Hydra's entry point with ``args`` (``-m`` included) as its command line."""
    from kdbench.core.errors import KDBenchError
    from kdbench.orchestration.config import check_names

    modes = {"--cfg", "-c", "--info", "-i", "--run", "-r", "--shell-completion", "-sc", "--hydra-help", "--help", "-h"}
    clash = sorted(modes & set(args))
    if clash:
        raise KDBenchError(f"{' '.join(clash)} does not combine with -m (a sweep runs jobs): print one run's config "
                           "with `kdbench config OVERRIDES`")
    from kdbench.training.method import register_method_configs

    check_launcher(args)
    register_method_configs()
    check_names([a for a in args if not a.startswith("-") and not a.startswith("hydra")])
    argv = sys.argv
    sys.argv = ["kdbench", *args]
    try:
        hydra_task()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0
