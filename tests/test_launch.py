"""Suites through Hydra launchers: teachers as first stages, students in parallel jobs, requeue on a timeout."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.experiment.results import load_records
from kdbench.orchestration.config import compose
from kdbench.orchestration.runner import run
from tests.conftest import tiny_overrides
from tests.test_cohort import _same

ROOT = Path(__file__).resolve().parents[1]


def _records(root: Path) -> dict[tuple[str, int], dict]:
    return {(s.record["method"]["name"], s.record["seed"]): s.record for s in load_records(root / "results")}


@pytest.fixture
def stages(monkeypatch):
    """What each stage handed the launcher: [(stage name, [job labels])]."""
    import kdbench.orchestration.launch as launch

    seen: list[tuple[str, list[str]]] = []
    real = launch._launch

    def spy(launcher, jobs, first, what):
        seen.append((what, [j.label for j in jobs]))
        return real(launcher, jobs, first, what)

    monkeypatch.setattr(launch, "_launch", spy)
    return seen


@pytest.mark.slow
def test_a_suite_through_the_basic_launcher_trains_teachers_first_and_records_what_bench_does(tmp_path, stages):
    suite = ["suite.methods=[vanilla,kd,takd]", "suite.seeds=[0,1]"]
    assert main(["-q", "bench", "hydra/launcher=basic", *tiny_overrides(tmp_path / "l", epochs=1), *suite]) == 0
    assert [(what, len(jobs)) for what, jobs in stages] == [
        ("networks to distil from, depth 0", 1), ("networks to distil from, depth 1", 1), ("students", 6)]
    assert stages[0][1] == ["teacher cnn_wide of digits/cnn_wide-cnn_small"]
    assert stages[1][1] == ["assistant cnn_mid of digits/cnn_wide-cnn_small"]
    assert main(["-q", "bench", *tiny_overrides(tmp_path / "b", epochs=1), *suite]) == 0  # in one process
    launched, benched = _records(tmp_path / "l"), _records(tmp_path / "b")
    assert len(launched) == 6
    for key, rec in benched.items():
        _same(launched[key], rec)
    stages.clear()  # again: every teacher cached, every run done -- nothing to launch
    assert main(["-q", "bench", "hydra/launcher=basic", *tiny_overrides(tmp_path / "l", epochs=1), *suite]) == 0
    assert stages == []


@pytest.mark.slow
def test_cohort_jobs_hold_one_seed_each_and_record_what_solo_runs_do(tmp_path, stages, teacher_cache):
    suite = ["suite.methods=[vanilla,kd,crd]", "suite.seeds=[0,1]", "bench.cohort=true",
             f"paths.teachers={teacher_cache}"]
    assert main(["-q", "bench", "hydra/launcher=basic", *tiny_overrides(tmp_path / "l", epochs=1), *suite]) == 0
    assert stages[-1] == ("students", ["cohort vanilla+kd+crd s0 on digits/cnn_wide-cnn_small",
                                       "cohort vanilla+kd+crd s1 on digits/cnn_wide-cnn_small"])
    assert main(["-q", "bench", *tiny_overrides(tmp_path / "b", epochs=1), *suite, "bench.cohort=false"]) == 0
    launched, solo = _records(tmp_path / "l"), _records(tmp_path / "b")
    assert len(launched) == 6 and all(r["engine"]["cohort"]["members"] == 3 for r in launched.values())
    for key, rec in solo.items():
        _same(launched[key], rec)


def test_a_chain_of_assistants_is_trained_one_level_per_stage(tmp_path):
    from kdbench.orchestration.launch import plan_suite

    plan = plan_suite([*tiny_overrides(tmp_path, epochs=1), "suite.methods=[takd,tf-kd-self]", "suite.seeds=[0]",
                       "+suite.method_overrides.takd.assistants=[cnn_mid,cnn_small]"])
    assert [[j.label for j in stage] for stage in plan.teacher_stages] == [
        ["teacher cnn_wide of digits/cnn_wide-cnn_small", "teacher cnn_small of digits/cnn_wide-cnn_small"],
        ["assistant cnn_mid of digits/cnn_wide-cnn_small"],
        ["assistant cnn_small of digits/cnn_wide-cnn_small"]]
    assert [j.label for j in plan.student_jobs] == ["takd s0 on digits/cnn_wide-cnn_small",
                                                    "tf-kd-self s0 on digits/cnn_wide-cnn_small"]


def test_a_bad_launcher_setting_is_one_message(tmp_path, capsys):
    assert main(["bench", "hydra/launcher=basic", "hydra.launcher.nope=1", *tiny_overrides(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdbench: error: invalid launcher setting") and "Traceback" not in err
    assert not (tmp_path / "results").exists()


@pytest.mark.usefixtures("default_signals", "teacher_cache")  # the handlers it relies on (restored after)
def test_a_requeue_signal_is_handed_on_after_the_step_is_checkpointed(make_cfg):
    """submitit's time-limit signal (SIGUSR2, with its handler installed) stops the run after a checkpointed
    step, then reaches submitit's handler; the requeued run resumes to the uninterrupted record."""
    cfg = make_cfg("method=kd", "seed=0", epochs=3)
    calls = []

    def scheduler(signum, frame):  # stands for submitit's handler: it would requeue the job and exit
        calls.append((signum, sorted(p.name for p in Path(cfg.paths.runs).rglob("checkpoint.pt"))))
        raise SystemExit(3)

    def send(epoch, step):
        if epoch == 1 and step == 2:
            os.kill(os.getpid(), signal.SIGUSR2)

    old = signal.signal(signal.SIGUSR2, scheduler)
    try:
        with pytest.raises(BaseException) as stopped:
            run(cfg, on_step=send)
        assert stopped.type is SystemExit  # the scheduler's handler ran (not Ctrl-C's KeyboardInterrupt)
        assert calls == [(signal.SIGUSR2, ["checkpoint.pt"])]  # the checkpoint was on disk first
        assert signal.getsignal(signal.SIGUSR2) is scheduler and signal.getsignal(signal.SIGINT) is \
            signal.default_int_handler
        resumed = run(make_cfg("method=kd", "seed=0", "resume=true", epochs=3))
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert resumed["timing"]["resumed_from_epoch"] == 1
    _same(resumed, run(make_cfg("method=kd", "seed=0", f"paths.results={cfg.paths.results}-solo",
                                f"paths.work={cfg.paths.work}-solo", epochs=3)))


def _tasks(tag: str) -> list[int]:
    """The pids of submitit_local's task processes whose command line mentions ``tag``."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "submitit.core._submit" in cmd and tag in cmd:
                out.append(int(p.name))
    return out


@pytest.mark.slow
@pytest.mark.usefixtures("default_signals")  # installs the handlers it relies on, restores them
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds submitit's task processes through /proc")
def test_a_suite_through_submitit_local_resumes_a_job_after_a_simulated_timeout(tmp_path):
    """The acceptance test: the teacher is trained once in its own job, then the students run in parallel jobs;
    one is sent submitit's time-limit signal mid-run, is requeued by submitit and finishes from its checkpoint."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    epochs = 15  # the signal goes out when the first epoch's checkpoint appears: 14 epochs are left
    over = [*tiny_overrides(tmp_path, epochs=epochs), "teacher.schedule.epochs=1", "teacher.schedule.milestones=[0.5]",
            "suite.methods=[vanilla,kd]", "suite.seeds=[0]", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "-q", "bench", *over], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kd_run = compose([*[o for o in over if not o.startswith("hydra")], "method=kd", "seed=0"])
    ckpt = Path(kd_run.paths.runs)
    signalled = False
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if not signalled and any(p.name == "checkpoint.pt" and "kd__" in str(p) for p in ckpt.rglob("checkpoint.pt")):
            for pid in _tasks(str(tmp_path)):
                os.kill(pid, signal.SIGUSR2)  # what submitit's controller sends when the time limit nears
            signalled = True
        time.sleep(0.05)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert signalled
    recs = _records(tmp_path)
    assert set(recs) == {("vanilla", 0), ("kd", 0)} and all(r["status"] == "completed" for r in recs.values())
    kd = recs[("kd", 0)]
    assert kd["timing"]["resumed_from_epoch"] >= 1, "the kd job was requeued and resumed from its checkpoint"
    logs = "".join(p.read_text() for p in tmp_path.rglob(".submitit/*/*_log.out"))
    assert "Requeued job" in logs and "kd s0 resuming from epoch" in logs
    teachers = [p for p in (tmp_path / "work" / "teachers").iterdir() if (p / "teacher.json").exists()]
    assert len(teachers) == 1
    # uninterrupted, with the same teacher and as many threads as the job had
    solo = [o for o in over if not o.startswith(("hydra", "suite"))]
    _same(kd, run(compose([*solo, "method=kd", "seed=0", "engine.threads=1", f"paths.results={tmp_path / 'solo'}",
                           f"paths.runs={tmp_path / 'solo-runs'}"])))


def test_the_slurm_preset_requeues_on_a_time_limit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from kdbench.orchestration.launch import _launcher

    launcher, cfg = _launcher([], ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    assert type(launcher).__name__ == "SlurmLauncher"
    assert launcher.params["max_num_timeout"] >= 1 and launcher.params["gpus_per_node"] == 1
    assert launcher.params["signal_delay_s"] > 0  # USR2 that long before the limit: the engine checkpoints on it
