"""Sweeps: idempotent runs, failure records, plan/status, Hydra multirun with real launchers."""
from __future__ import annotations

import re

import pytest

from kdbench import KDBenchError
from kdbench.cli import main
from kdbench.experiment.results import load_records
from kdbench.orchestration.config import compose
from kdbench.orchestration.plan import plan_rows
from kdbench.orchestration.runner import run
from kdbench.orchestration.suite import run_state
from tests.conftest import tiny_overrides


def test_diverged_run_writes_a_record_with_the_step_and_is_not_retried_unless_asked(make_cfg):
    cfg = make_cfg("method=vanilla", "schedule.lr=1e12")
    with pytest.raises(KDBenchError, match="diverged"):
        run(cfg)
    (rec,) = [s.record for s in load_records(cfg.paths.results)]
    assert rec["status"] == "diverged" and rec["error"]["epoch"] == 1 and rec["error"]["step"] >= 1
    assert run_state(cfg)[0] == "diverged"
    with pytest.raises(KDBenchError, match="retry_failed=true"):
        run(cfg)
    again = run(make_cfg("method=vanilla", "schedule.lr=1e12", "retry_failed=true"), on_error="record")
    assert again["status"] == "diverged"
    assert len(load_records(cfg.paths.results)) == 2


def test_exception_writes_a_failed_record_and_a_suite_continues(monkeypatch, tmp_path, teacher_cache, capsys):
    from kdbench.methods import kd as kd_module

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(kd_module, "kd_loss", broken)
    assert main(["-q", "bench", *tiny_overrides(tmp_path, epochs=1, teachers=teacher_cache), "suite.seeds=[0]"]) == 0
    recs = {s.record["method"]["name"]: s.record for s in load_records(tmp_path / "results")}
    assert recs["vanilla"]["status"] == "completed"
    assert recs["kd"]["status"] == "failed" and "boom" in recs["kd"]["error"]["message"]
    assert "RuntimeError" in recs["kd"]["error"]["traceback"]
    table = capsys.readouterr().out
    assert re.search(r"^kd +failed +0 *$", table, re.M), table  # no "nan ± nan" row
    assert "kd seed 0 failed: boom" in table


def test_the_bench_table_counts_completed_seeds_and_names_the_others():
    from kdbench.orchestration.bench import BenchResult, format_bench, summarise

    def rec(method, seed, top1=None, status="completed", message=""):
        r = {"method": {"name": method}, "seed": seed, "status": status}
        if status == "completed":
            r["metrics"] = {"primary_model": "student", "last": {"student": {"test": {"top1": top1}}}}
        else:
            r["error"] = {"type": "RunDiverged", "message": message}
        return r

    cfg = compose(["schedule.epochs=1"])
    recs = [rec("vanilla", 0, 50.0), rec("vanilla", 1, 52.0), rec("kd", 0, 55.0),
            rec("kd", 1, status="diverged", message="loss is nan at epoch 1, step 3"),
            rec("dkd", 0, status="diverged", message="loss is inf at epoch 1, step 1")]
    pair = summarise(cfg, 60.0, ["vanilla", "kd", "dkd", "at"], [0, 1], recs)
    rows = {r["method"]: r for r in pair.rows}
    assert rows["kd"]["n"] == 1 and rows["kd"]["mean"] == 55.0 and rows["kd"]["gain"] == pytest.approx(4.0)
    assert rows["dkd"]["mean"] is None and rows["at"]["mean"] is None
    text = format_bench(BenchResult("digits", [pair], recs, 1.0))
    assert "nan ±" not in text and "nan " not in text.split("not counted:")[0]
    assert re.search(r"^kd +55\.00 ± 0\.00 +1 +\+4\.00  \(1 failed\)$", text, re.M), text
    assert re.search(r"^dkd +failed +0", text, re.M) and re.search(r"^at +missing +0", text, re.M)
    assert "kd seed 1 diverged: loss is nan at epoch 1, step 3" in text
    assert "dkd seed 0 diverged: loss is inf at epoch 1, step 1" in text


def test_status_and_plan(tmp_path, capsys):
    ov = [*tiny_overrides(tmp_path, epochs=1), "suite.seeds=[0,1]"]
    rows = plan_rows(ov)
    assert [r["state"] for r in rows] == ["missing"] * 4
    assert all(r["train_flops"] > 0 for r in rows)
    run(compose([*ov, "method=vanilla", "seed=0"]))
    assert main(["status", *ov]) == 0
    out = capsys.readouterr().out
    assert "done 1" in out and "missing 3" in out
    assert main(["plan", *ov]) == 0
    assert "TFLOP" in capsys.readouterr().out


def test_interrupted_runs_show_as_interrupted_and_the_suite_resumes_them(tmp_path, teacher_cache):
    ov = [*tiny_overrides(tmp_path, epochs=3, teachers=teacher_cache), "method=kd", "seed=0"]

    class Killed(BaseException):
        pass

    def kill(epoch, step):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        run(compose(ov), on_step=kill)
    assert run_state(compose(ov))[0] == "interrupted"
    assert main(["-q", "bench", *tiny_overrides(tmp_path, epochs=3, teachers=teacher_cache), "suite.methods=[kd]",
                 "suite.seeds=[0]"]) == 0
    (rec,) = [s.record for s in load_records(tmp_path / "results")]
    assert rec["timing"]["resumed_from_epoch"] == 1


def test_grid_with_an_unknown_name_fails_before_any_run(tmp_path, capsys):
    assert main(["run", "-m", "method=kd,kdd", *tiny_overrides(tmp_path, epochs=1)]) == 2
    assert "Valid methods" in capsys.readouterr().err
    assert not (tmp_path / "results" / "runs").exists()
    assert main(["bench", *tiny_overrides(tmp_path, epochs=1), "suite.methods=[vanilla,nope]"]) == 2
    assert not (tmp_path / "results" / "runs").exists()


def test_missing_launcher_package_is_named(monkeypatch):
    import importlib.util

    from kdbench.orchestration.hydra_app import check_launcher

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if "joblib_launcher" in name else real(name, *a))
    with pytest.raises(KDBenchError, match="pip install hydra-joblib-launcher"):
        check_launcher(["hydra/launcher=local_parallel"])


def _sweep(tmp_path, *extra, seeds: str = "0,1") -> list[dict]:
    args = ["run", "-m", "method=vanilla,kd", f"seed={seeds}", *tiny_overrides(tmp_path, epochs=1), *extra]
    assert main(args) == 0
    return [s.record for s in load_records(tmp_path / "results")]


@pytest.mark.slow
def test_multirun_sweep_with_the_basic_launcher_is_idempotent(tmp_path, teacher_cache):
    recs = _sweep(tmp_path, f"paths.teachers={teacher_cache}")
    assert sorted((r["method"]["name"], r["seed"]) for r in recs) == [("kd", 0), ("kd", 1), ("vanilla", 0),
                                                                        ("vanilla", 1)]
    assert all(r["status"] == "completed" for r in recs)
    assert len(_sweep(tmp_path, f"paths.teachers={teacher_cache}")) == 4  # re-running the grid skips completed runs


@pytest.mark.slow
def test_multirun_in_parallel_trains_the_teacher_once(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    recs = _sweep(tmp_path, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2")
    assert len(recs) == 4 and all(r["status"] == "completed" for r in recs)
    teachers = [p for p in (tmp_path / "work" / "teachers").iterdir() if (p / "teacher.json").exists()]
    assert len(teachers) == 1
    assert len({r["teacher"]["hash"] for r in recs if r["teacher"]}) == 1
    assert not list((tmp_path / "work" / "teachers").glob("*.partial"))
    import os

    from kdbench.compute.distributed import available_cores

    if not os.environ.get("OMP_NUM_THREADS"):  # two jobs share the cores: each takes its half, not all of them
        assert {r["environment"]["torch_threads"] for r in recs} == {max(1, available_cores() // 2)}


def test_threads_split_the_available_cores_over_parallel_jobs(monkeypatch):
    from kdbench.compute.distributed import available_cores, resolve_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cores = available_cores()
    assert resolve_threads("auto") == cores and resolve_threads("auto", workers=cores * 4) == 1
    assert resolve_threads("auto", workers=2) == max(1, cores // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's processes on this node share the cores too
    assert resolve_threads("auto") == max(1, cores // 2)
    assert resolve_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resolve_threads("auto") is None  # the user's setting stands
    with pytest.raises(KDBenchError, match="engine.threads"):
        resolve_threads("many")


@pytest.mark.slow
def test_multirun_with_submitit_local_executor(tmp_path, teacher_cache):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    recs = _sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                  f"paths.teachers={teacher_cache}", seeds="0")
    assert len(recs) == 2 and all(r["status"] == "completed" for r in recs)


def test_plan_trains_teachers_first_and_estimates_unmeasured_work_from_flops(tmp_path, capsys):
    from kdbench.orchestration.plan import plan_teachers

    ov = [*tiny_overrides(tmp_path, epochs=1), "suite.methods=[vanilla,takd]", "suite.seeds=[0]"]
    teachers = plan_teachers(ov, flops_per_s=1e9)
    assert [(t["kind"], t["teacher"], t["state"]) for t in teachers] == [
        ("teacher", "cnn_wide", "to train"), ("assistant", "cnn_mid", "to train")]
    assert all(t["train_flops"] > 0 and t["est_time_s"] == pytest.approx(t["train_flops"] / 1e9) for t in teachers)
    rows = plan_rows(ov, flops_per_s=2e9)
    assert all(r["est_source"] == "flops" and r["est_time_s"] == pytest.approx(r["train_flops"] / 2e9) for r in rows)
    assert main(["plan", "--gflops", "2", *ov]) == 0
    out = capsys.readouterr().out
    assert "assistant cnn_mid" in out and "at 2.0 GFLOP/s (given)" in out
    assert out.index("teacher cnn_wide") < out.index("assistant cnn_mid") < out.index("vanilla")
    run(compose([*ov, "method=vanilla", "seed=0"]))  # the store now has a measured speed
    rows = {r["method"]: r for r in plan_rows(ov)}
    assert rows["vanilla"]["est_source"] == "measured"
    assert rows["takd"]["est_source"] == "flops"  # from the store's measured throughput
    assert main(["plan", "--gflops", "0", *ov]) == 2  # a usage error, one line


def test_a_suite_composes_once_per_run_but_the_seed_and_gets_what_each_run_would(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import kdbench.orchestration.suite as suite

    calls = []
    real = suite.compose
    monkeypatch.setattr(suite, "compose", lambda ov, *a, **k: calls.append(ov) or real(ov, *a, **k))
    sc = suite.suite_configs([*tiny_overrides(tmp_path), "suite.methods=[vanilla,kd]", "suite.seeds=[0,3,1]"])
    assert len(sc.cfgs) == 6 and len(calls) == 1 + 2  # the suite itself, then one per method
    for (_, ov), cfg in zip(sc.runs, sc.cfgs):
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(real(ov)), ov


# -- which cells a suite holds: `exclude` and `only` -------------------------------------------------------------

def _cells(s) -> list[tuple[str, str]]:
    from kdbench.core.overrides import override_value
    from kdbench.orchestration.suite import suite_runs

    return [(pair, override_value(next(o for o in ov if o.startswith("method=")))) for pair, ov in suite_runs(s, [])]


def _suite(**cells):
    from omegaconf import OmegaConf

    return OmegaConf.create({"name": "t", "pairs": ["cifar100/resnet56-resnet20", "cifar100/vgg13-vgg8"],
                             "methods": ["vanilla", "kd", "fsp"], "seeds": [0], "overrides": [], **cells})


def test_only_runs_each_method_it_names_on_its_pairs_and_exclude_drops_cells():
    from kdbench.orchestration.suite import check_cells

    a, b = "cifar100/resnet56-resnet20", "cifar100/vgg13-vgg8"
    s = _suite(only={"kd": [b], "takd": [a]}, exclude={"fsp": [a]})  # takd: not among the methods, not run
    check_cells(s)
    assert _cells(s) == [(a, "vanilla"), (b, "vanilla"), (b, "kd"), (b, "fsp")]
    assert len(_cells(_suite())) == 2 * 3  # neither: every pair x method


@pytest.mark.parametrize("key", ["only", "exclude"])
@pytest.mark.parametrize("cells,message", [
    ({"kdd": ["cifar100/vgg13-vgg8"]}, r"suite\.{key} \(suite 't'\): unknown method 'kdd'\. Did you mean 'kd'\?.*"
                                       r"Valid methods: .*vanilla"),
    ({"kd": ["cifar100/vgg13-vgg9"]}, r"suite\.{key}\.kd \(suite 't'\): unknown pair 'cifar100/vgg13-vgg9'\..*"
                                      r"Valid pairs: .*cifar100/vgg13-vgg8"),
    ({"kd": "cifar100/vgg13-vgg8"}, r"suite\.{key}\.kd must be a .*list of pairs"),
    (["kd"], r"suite\.{key} must be a mapping"),
])
def test_a_misspelt_name_in_only_or_exclude_is_one_clear_message(key, cells, message):
    from kdbench.orchestration.suite import check_cells

    with pytest.raises(KDBenchError, match=message.format(key=key)):
        check_cells(_suite(**{key: cells}))


def test_an_empty_only_is_refused_and_the_command_line_checks_a_suite_file(capsys):
    from kdbench.orchestration.suite import check_cells, load_suite

    with pytest.raises(KDBenchError, match="suite.only.kd must be a non-empty list"):
        check_cells(_suite(only={"kd": []}))
    check_cells(_suite(exclude={"kd": []}))  # excluding nothing is harmless
    with pytest.raises(KDBenchError, match="unknown pair 'cifar10/nope'"):
        load_suite(["suite=survey-cifar10", "suite.only.fsp=[cifar10/nope]"])
    assert main(["plan", "suite=survey-cifar10", "suite.only.sp=[cifar10/nope]"]) == 2
    assert "unknown pair 'cifar10/nope'" in capsys.readouterr().err


def test_a_pair_left_without_cells_is_no_part_of_the_suite():
    """Narrowing a cell-picked suite's methods on the command line leaves out the pairs none of them runs on (a
    bench goes pair by pair, teacher first); a suite with no cell at all says so."""
    from kdbench.orchestration.suite import suite_configs

    sc = suite_configs(["suite=survey-cifar10", "suite.methods=[fsp]", "suite.seeds=[0]"])
    assert list(sc.suite.pairs) == ["cifar10/resnet26-resnet8"] and len(sc.cfgs) == 1
    with pytest.raises(KDBenchError, match="has no run"):
        suite_configs(["suite=survey-cifar10", "suite.methods=[fsp]", "suite.pairs=[cifar10/resnet56-resnet20]"])
