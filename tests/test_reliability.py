"""Faults and bad input: one clear message, nothing lost, no record for what is not the run's fault."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from kdbench import KDBenchError
from kdbench.cli import main
from kdbench.experiment.results import load_records, records_of_run
from kdbench.orchestration.runner import run
from tests.conftest import tiny_overrides


def _records(cfg) -> list:
    return [s.record for s in load_records(cfg.paths.results)]


@pytest.mark.parametrize("bad", ["schedule.batch_size=0", "method.temperature=abc", "schedule.lr=abc", "seed=abc",
                                 "seed=[1,2]", "schedule.epochs=abc", "schedule.epochs=0", "schedule.epochs=-1",
                                 "+schedule.epoch=1", "engine.device=gpu0", "engine.compile=maybe",
                                 # runtime keys are typed too: each of these used to fail mid-run, store a
                                 # failed record under the real run id and so block the corrected command
                                 "engine.eval_batch_size=0", "engine.log_every=abc", "engine.threads=0",
                                 "engine.keep_model=maybe", "bench.cohort=maybe", "resume=maybe", "speed.steps=0",
                                 "method.kd_weight=-1", "method.temperature=0",
                                 "engine.track=[bogus]"])  # hostile round 2: refused only after data and teacher
def test_a_config_error_is_one_message_and_stores_nothing(capsys, tmp_path, bad):
    assert main(["run", *tiny_overrides(tmp_path), "method=kd", bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("kdbench: error:")
    assert not (tmp_path / "results" / "runs").exists() or not list((tmp_path / "results" / "runs").iterdir())


@pytest.mark.parametrize("method,bad", [("dml", "method.peers=5"), ("takd", "method.assistants=7")])
def test_a_list_hyper_parameter_that_is_not_a_list_is_one_message(capsys, tmp_path, method, bad):
    """Hostile round 2: these were TypeError tracebacks from inside the method."""
    assert main(["run", *tiny_overrides(tmp_path), f"method={method}", bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "must be a list" in err


@pytest.mark.parametrize("command", [["run", "method=kd"], ["results", "import", "b.tar.gz"], ["status"]])
def test_a_store_or_work_folder_that_is_a_file_is_refused_up_front(capsys, tmp_path, command):
    """Hostile round 2: `paths.results=FILE` trained the run and failed only when writing its record."""
    (tmp_path / "file").write_text("not a folder")
    for key, value in (("paths.results", tmp_path / "file"), ("paths.work", tmp_path / "file" / "w")):
        assert main([*command, *tiny_overrides(tmp_path), f"{key}={value}"]) == 2
        err = capsys.readouterr().err
        assert f"{key}=" in err and "a file, not a folder" in err and "Traceback" not in err
    assert not (tmp_path / "work").exists()  # no teacher trained, nothing written


def test_a_method_count_out_of_range_is_refused_before_anything_runs(capsys, tmp_path):
    assert main(["run", *tiny_overrides(tmp_path), "method=crd", "method.nce_k=-5"]) == 2
    err = capsys.readouterr().err
    assert "method.nce_k=-5 must be >= 1" in err and "Traceback" not in err
    assert not (tmp_path / "work" / "teachers").exists()  # refused before a teacher trained


@pytest.mark.usefixtures("teacher_cache")
def test_a_failure_before_the_first_training_step_never_blocks_the_run(make_cfg, monkeypatch):
    from kdbench.training import engine

    cfg = make_cfg("method=kd", epochs=1)
    original = engine._Loop._restore

    def broken(self, resume):
        raise RuntimeError("the data pipeline could not start")

    monkeypatch.setattr(engine._Loop, "_restore", broken)
    with pytest.raises(RuntimeError, match="could not start"):
        run(cfg)
    assert _records(cfg) == []  # set-up failed: nothing stored
    monkeypatch.setattr(engine._Loop, "_restore", original)
    assert run(cfg)["status"] == "completed"  # the same command, no retry_failed=true needed


@pytest.mark.usefixtures("teacher_cache")
def test_a_failure_in_training_is_recorded_and_the_setup_failure_of_a_suite_is_shown(make_cfg, monkeypatch):
    from kdbench.training import engine

    cfg = make_cfg("method=kd", epochs=1)
    monkeypatch.setattr(engine._Loop, "_restore", lambda self, resume: (_ for _ in ()).throw(OSError("no")))
    rec = run(cfg, on_error="record")
    assert rec["status"] == "failed" and rec["error"]["message"] == "no" and _records(cfg) == []

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.undo()
    monkeypatch.setattr(engine, "train_one_step", boom)  # fails inside the first step: training, recorded
    assert run(cfg, on_error="record")["status"] == "failed"
    assert [r["status"] for r in _records(cfg)] == ["failed"]


@pytest.mark.usefixtures("teacher_cache")
def test_a_corrupt_checkpoint_is_named_and_stores_no_failure(make_cfg, tmp_path):
    cfg = make_cfg("method=kd", "resume=true", epochs=1)
    from kdbench.orchestration.runner import run_identity

    ckpt = Path(cfg.paths.runs) / run_identity(cfg) / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x80\x02not a checkpoint")
    for extra in ({}, {"retry_failed": True}):
        for k, v in extra.items():
            cfg[k] = v
        with pytest.raises(KDBenchError, match="delete it to start this run over, or pass force=true"):
            run(cfg)
    assert not _records(cfg)  # a damaged file is not a failed run: nothing blocks the run id


@pytest.mark.usefixtures("teacher_cache")
def test_another_runs_checkpoint_is_never_resumed(make_cfg):
    """A checkpoint of seed 1 copied into seed 0's folder was resumed and recorded under seed 0's id."""
    import shutil

    from kdbench.orchestration.runner import run_identity

    other = make_cfg("method=kd", "seed=1", "engine.keep_checkpoint=true", epochs=1)
    run(other)
    cfg = make_cfg("method=kd", "seed=0", "resume=true", epochs=1)
    mine = Path(cfg.paths.runs) / run_identity(cfg)
    mine.mkdir(parents=True)
    shutil.copy(Path(other.paths.runs) / run_identity(other) / "checkpoint.pt", mine / "checkpoint.pt")
    with pytest.raises(KDBenchError, match=f"belongs to {run_identity(other)}, not to {run_identity(cfg)}"):
        run(cfg)
    assert [r["seed"] for r in _records(cfg)] == [1]
    # hostile round 2: the same checkpoint with its owner removed was resumed
    import torch

    state = torch.load(mine / "checkpoint.pt", weights_only=True)
    del state["owner"]
    torch.save(state, mine / "checkpoint.pt")
    with pytest.raises(KDBenchError, match="names no run"):
        run(cfg)
    assert [r["seed"] for r in _records(cfg)] == [1]


@pytest.mark.parametrize("value", [float("nan"), 3e38])
def test_a_teacher_of_nan_or_overflowing_weights_is_not_imported(make_cfg, tmp_path, capsys, value):
    """NaN weights, and (hostile round 2) finite weights so large that float32 overflows in the forward."""
    from kdbench.data import load_data
    from kdbench.orchestration.teacher import ensure_teacher

    cfg = make_cfg("method=kd", epochs=1)
    state = torch.load(ensure_teacher(cfg, load_data(cfg)).path / "model.pt", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], value)
    torch.save(state, tmp_path / "bad.pt")
    assert main(["teacher", "import", str(tmp_path / "bad.pt"), "--arch", str(cfg.pair.teacher), "--dataset",
                 "digits", "--no-eval", f"paths.work={tmp_path / 'other'}"]) == 2
    err = capsys.readouterr().err
    assert "not finite" in err and "Traceback" not in err
    assert key in err if value != value else "3e+38" in err
    assert not list((tmp_path / "other").rglob("teacher.json"))


@pytest.mark.parametrize("how", ["absolute", "parent", "symlink"])
def test_teacher_weights_outside_their_entry_are_never_read(make_cfg, how):
    from kdbench.data import load_data
    from kdbench.orchestration.teacher import ensure_teacher
    from kdbench.orchestration.teacher_cache import find_teacher, load_teacher

    cfg = make_cfg("method=kd", epochs=1)
    entry = ensure_teacher(cfg, load_data(cfg))
    meta = json.loads((entry.path / "teacher.json").read_text())
    if how == "symlink":
        (entry.path / "link.pt").symlink_to("/dev/zero")
    meta["weights"]["file"] = {"absolute": "/dev/zero", "parent": "../model.pt", "symlink": "link.pt"}[how]
    (entry.path / "teacher.json").write_text(json.dumps(meta))
    with pytest.raises(KDBenchError, match="not a file (of|inside)"):
        load_teacher(find_teacher(cfg), torch.device("cpu"))


def test_a_diverging_teacher_is_one_message_and_caches_nothing(make_cfg, capsys, tmp_path):
    ov = ["method=kd", "teacher.schedule.lr=1e12", "engine.progress=false", f"paths.work={tmp_path / 'w'}",
          "teacher.schedule.epochs=1", "teacher.schedule.milestones=[1.0]"]
    assert main(["teacher", "train", *ov]) == 2
    err = capsys.readouterr().err
    assert "diverged while training" in err and "teacher.schedule.lr" in err and "Traceback" not in err
    assert not list((tmp_path / "w").rglob("teacher.json")) and not list((tmp_path / "w").rglob("*.partial"))


def test_a_read_only_store_is_one_message(monkeypatch, capsys, tmp_path):
    import errno

    import kdbench.experiment.results as results

    def read_only(root):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(root) / ".store.lock"))

    monkeypatch.setattr(results, "store_lock", read_only)
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(b"")
    monkeypatch.setattr(results, "_read_bundle", lambda b: ({"records": {}}, {}))
    assert main(["results", "import", str(bundle), f"paths.results={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and ".store.lock" in err and "Traceback" not in err


def _failing(errno: int, text: str):
    def write(path, *args, **kwargs):
        raise OSError(errno, text, str(path))
    return write


def test_a_full_disk_while_checkpointing_stores_no_failure(make_cfg, monkeypatch):
    import kdbench.training.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", _failing(28, "No space left on device"))
    cfg = make_cfg("method=vanilla", epochs=1)
    with pytest.raises(KDBenchError, match="No space left on device.*resume=true"):
        run(cfg)
    assert not _records(cfg)


def test_a_store_that_cannot_be_written_is_named(make_cfg, monkeypatch):
    import kdbench.experiment.results as results

    monkeypatch.setattr(results, "write_json_atomic", _failing(30, "Read-only file system"))
    with pytest.raises(KDBenchError, match="could not write the record .*Read-only file system"):
        run(make_cfg("method=vanilla", epochs=1))


@pytest.mark.parametrize("content", [os.urandom(256), b"code pickle"])
def test_unreadable_teacher_weights_say_what_to_do(make_cfg, capsys, content):
    from kdbench.core.hashing import file_sha256
    from kdbench.data import load_data
    from kdbench.orchestration.teacher import ensure_teacher
    from kdbench.orchestration.teacher_cache import load_teacher

    cfg = make_cfg("method=kd", epochs=1)
    entry = ensure_teacher(cfg, load_data(cfg))
    weights = entry.path / "model.pt"
    if content == b"code pickle":
        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))
        torch.save({"w": Evil()}, weights)
    else:
        weights.write_bytes(content)
    meta = json.loads((entry.path / "teacher.json").read_text())
    meta["weights"]["sha256"] = file_sha256(weights)  # the checksum matches: the content is the problem
    (entry.path / "teacher.json").write_text(json.dumps(meta))
    from kdbench.orchestration.teacher_cache import read_entry

    with pytest.raises(KDBenchError) as info:
        load_teacher(read_entry(entry.path), torch.device("cpu"))
    assert "delete" in str(info.value) and "weights_only=False" not in str(info.value)
    assert "pwned" not in capsys.readouterr().out


def test_a_truncated_teacher_json_does_not_break_the_listing(make_cfg, capsys):
    from kdbench.data import load_data
    from kdbench.orchestration.teacher import ensure_teacher

    cfg = make_cfg("method=kd", epochs=1)
    entry = ensure_teacher(cfg, load_data(cfg))
    (entry.path / "teacher.json").write_text('{"arch": "cnn_wi')
    assert main(["teacher", "list", f"paths.work={cfg.paths.work}"]) == 0
    with pytest.raises(KDBenchError, match="damaged.*delete"):
        run(cfg)


def test_a_run_finished_by_another_process_meanwhile_is_not_trained_again(make_cfg, monkeypatch, tmp_path):
    """The window between "is there a record?" and taking the run's lock: checked again under the lock."""
    import kdbench.orchestration.runner as runner

    cfg = make_cfg("method=vanilla", epochs=1)
    other = make_cfg("method=vanilla", f"paths.results={tmp_path / 'elsewhere'}", epochs=1)
    done = run(other)
    real = runner._prior_outcome
    calls = []

    def racy(cfg_, run_id, *a):
        out = real(cfg_, run_id, *a)
        if not calls:  # the other process writes its record right after our first look
            calls.append(run_id)
            src = Path(other.paths.results) / "runs" / f"{run_id}.json"
            (Path(cfg_.paths.results) / "runs").mkdir(parents=True, exist_ok=True)
            shutil.copy(src, Path(cfg_.paths.results) / "runs" / src.name)
        return out

    monkeypatch.setattr(runner, "_prior_outcome", racy)
    rec = run(cfg)
    assert rec["created"] == done["created"] and len(records_of_run(cfg.paths.results, rec["run_id"])) == 1


def test_a_suite_waits_for_a_run_that_another_process_holds(make_cfg):
    from kdbench.core.locks import file_lock
    from kdbench.orchestration.runner import run_identity

    cfg = make_cfg("method=vanilla", epochs=1)
    lock = Path(cfg.paths.runs) / f"{run_identity(cfg)}.lock"
    held = threading.Event()

    def hold():
        with file_lock(lock):
            held.set()
            time.sleep(1.5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    with pytest.raises(KDBenchError, match="running in another process"):
        run(cfg)
    rec = run(cfg, wait=True)
    t.join()
    assert rec["status"] == "completed"


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "kdbench", *args], capture_output=True, text=True, env=env,
                          timeout=180, **kw)


def test_a_closed_pipe_is_not_an_error():
    p = subprocess.run(f"{sys.executable} -m kdbench list pairs | head -1", shell=True, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120)
    assert p.stdout.count("\n") == 1 and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


def test_overrides_may_follow_a_commands_options(tmp_path):
    p = _cli("teacher", "import", str(tmp_path / "missing.pth"), "--arch", "resnet8", "--dataset", "cifar10",
             f"paths.work={tmp_path}")
    assert p.returncode == 2 and "no checkpoint file at" in p.stderr and "unrecognized" not in p.stderr


def test_print_config_with_a_sweep_is_a_message(tmp_path):
    p = _cli("run", "-m", "method=kd", "--cfg", "hydra", f"paths.work={tmp_path}")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "kdbench config" in p.stderr


@pytest.mark.parametrize("content", ['{"status": "completed"}', "[1, 2]", "{not json", '{"status": "failed"}'])
def test_a_file_that_is_not_a_valid_record_is_not_the_runs_outcome(make_cfg, caplog, content):
    """A file is not trusted by its name: status, bench and run skip it with a warning naming it."""
    from kdbench.orchestration.runner import run_identity
    from kdbench.orchestration.suite import run_state

    cfg = make_cfg("method=vanilla", epochs=1)
    runs = Path(cfg.paths.results) / "runs"
    runs.mkdir(parents=True)
    (runs / f"{run_identity(cfg)}.json").write_text(content)
    assert run_state(cfg)[0] == "missing"
    assert "is not a valid record" in caplog.text and run_identity(cfg) in caplog.text
    assert run(cfg)["status"] == "completed"  # neither skipped as done nor blocked as failed
    assert run_state(cfg)[0] == "done"


@pytest.mark.parametrize("argv,said,expected", [
    (["list", "methods"], None, "nothing was changed"),
    (["run", "method=kd"], None, "no training step was under way"),
    (["run", "method=kd"], "stopped after epoch 1, step 3; checkpoint x/checkpoint.pt",
     "stopped after epoch 1, step 3; checkpoint x/checkpoint.pt (resume=true continues)"),
    (["results", "import", "b.tar.gz"], None, "nothing was imported"),
    (["results", "import", "b.tar.gz"], "interrupted after the import finished: 3 record(s) were added to r",
     "interrupted after the import finished: 3 record(s) were added to r"),
    (["results", "export", "b.tar.gz"], None, "no bundle was written"),
    (["leaderboard", "--out", "x"], None, "marked unfinished"),
    (["leaderboard", "--check"], None, "nothing was changed"),
    (["teacher", "import", "t.pth", "--arch", "resnet8", "--dataset", "cifar10"], None, "whole or not at all"),
])
def test_ctrl_c_messages_say_what_is_true(monkeypatch, capsys, argv, said, expected):
    import kdbench.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt(*([said] if said else []))

    monkeypatch.setattr(cli, "dispatch", interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.startswith("kdbench: interrupted; ") and expected in err, err
    if argv[0] not in ("run", "bench"):
        assert "checkpoint" not in err


def test_no_eval_import_of_a_digits_teacher(make_cfg, tmp_path, capsys):
    """kdbench's own digits checkpoint (1 input channel) used to be refused: 3 channels were assumed."""
    from kdbench.data import load_data
    from kdbench.orchestration.teacher import ensure_teacher

    cfg = make_cfg("method=kd", epochs=1)
    trained = ensure_teacher(cfg, load_data(cfg))
    assert main(["teacher", "import", str(trained.path / "model.pt"), "--arch", str(cfg.pair.teacher),
                 "--dataset", "digits", "--no-eval", f"paths.work={tmp_path / 'other'}"]) == 0
    out = capsys.readouterr().out
    (entry,) = [p for p in (tmp_path / "other" / "teachers").iterdir() if (p / "teacher.json").exists()]
    meta = json.loads((entry / "teacher.json").read_text())
    assert meta["input_shape"] == trained.meta["input_shape"] and meta["input_shape"][0] == 1, out
    assert meta["metrics"]["test_top1"] is None  # not evaluated, as asked


def test_concurrent_imports_of_one_teacher_both_succeed(make_cfg, tmp_path, monkeypatch):
    """Two `teacher import`s of one checkpoint at once: one stores it, the other finds it (no
    FileNotFoundError); the import's writes never run side by side."""
    import kdbench.orchestration.teacher as teacher
    from kdbench.data import load_data
    from kdbench.orchestration.teacher import ensure_teacher, import_teacher

    cfg = make_cfg("method=kd", epochs=1)
    weights = ensure_teacher(cfg, load_data(cfg)).path / "model.pt"
    target = make_cfg("method=kd", "paths.teachers=" + str(tmp_path / "imported"))
    inside, both_inside, real_meta = threading.Barrier(2, timeout=3), [], teacher._imported_meta

    def meet_inside(*a, **k):
        try:
            inside.wait()
            both_inside.append(True)  # two imports in the critical section at once
        except threading.BrokenBarrierError:
            pass
        return real_meta(*a, **k)

    monkeypatch.setattr(teacher, "_imported_meta", meet_inside)
    results, errors = [], []

    def one():
        try:
            results.append(import_teacher(weights, str(cfg.pair.teacher), target, None))
        except BaseException as exc:  # noqa: BLE001 -- any error of either import fails the test
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and not both_inside
    assert len({r.hash for r in results}) == 1 and len(results) == 2
    assert [p.name for p in (tmp_path / "imported").iterdir() if p.is_dir()] == [results[0].hash]


def test_ctrl_c_outside_training_does_not_claim_a_checkpoint(monkeypatch, capsys):
    import kdbench.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "dispatch", interrupted)
    assert main(["list", "methods"]) == 130
    err = capsys.readouterr().err
    assert "nothing was changed" in err and "checkpoint" not in err


@pytest.mark.parametrize("damage", [lambda m: m["weights"].pop("sha256"), lambda m: m.pop("spec"),
                                    lambda m: m.pop("source"), lambda m: m.update(metrics=[])])
def test_a_damaged_teacher_json_is_one_message_and_list_skips_it(tmp_path, damage):
    """Hostile round 2: each of these was a KeyError or TypeError traceback from `run` or `teacher list`."""
    import json

    from kdbench.orchestration.teacher_cache import list_teachers, read_entry

    entry = tmp_path / "0123456789abcdef"
    entry.mkdir()
    meta = {"schema_version": 1, "hash": entry.name, "source": "trained", "arch": "cnn_wide", "dataset": "digits",
            "spec": {"seed": 0, "schedule": {"epochs": 1}}, "metrics": {"test_top1": 90.0},
            "weights": {"file": "model.pt", "sha256": "0" * 64}, "created": "2026-12-03T00:00:00+00:00"}
    (entry / "teacher.json").write_text(json.dumps(meta))
    assert read_entry(entry).arch == "cnn_wide" and len(list_teachers(tmp_path)) == 1
    damage(meta)
    (entry / "teacher.json").write_text(json.dumps(meta))
    with pytest.raises(KDBenchError, match="teacher.json is damaged"):
        read_entry(entry)
    assert list_teachers(tmp_path) == []


def test_an_unknown_tracker_is_refused_when_the_config_is_composed():
    """Hostile round 2: engine.track=[bogus] was refused only after data loaded and the teacher was trained, and
    not at all for a run already done."""
    from kdbench.orchestration.config import compose

    with pytest.raises(KDBenchError, match="unknown tracker 'bogus'. Valid trackers: tensorboard"):
        compose(["engine.track=[bogus]"])


def test_whether_a_lock_is_held_is_asked_without_write_access(tmp_path, monkeypatch):
    """Hostile round 2: `status` failed on a read-only work folder, since asking whether a run is locked opened
    (and created) the lock file read-write. Asking now only reads; here every write-access open is refused."""
    from kdbench.core import locks

    held, free, absent = tmp_path / "held.lock", tmp_path / "free.lock", tmp_path / "absent.lock"
    free.touch()
    with locks.file_lock(held):
        real_open = os.open

        def read_only_disk(path, flags, *a):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(30, "Read-only file system", str(path))
            return real_open(path, flags, *a)

        monkeypatch.setattr(locks.os, "open", read_only_disk)
        assert locks.is_locked(held) and not locks.is_locked(free) and not locks.is_locked(absent)
    assert not absent.exists()


def test_a_full_disk_is_reported_with_the_file_it_could_not_write(tmp_path, monkeypatch, capsys):
    """Hostile round 2: a write(2) that fails for lack of space names no file, so `run` (its config.yaml) and
    `eval --out` said "No space left on device" and nothing else."""
    import errno

    from kdbench.experiment import records

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full)
    target = tmp_path / "out" / "m.json"
    with pytest.raises(OSError) as info:
        records.write_json_atomic(target, {"a": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list((tmp_path / "out").iterdir()) == []  # nor a temp file left
