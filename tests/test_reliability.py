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
                                 "+schedule.epoch=1", "engine.device=gpu0", "engine.compile=maybe"])
def test_a_config_error_is_one_message_and_stores_nothing(capsys, tmp_path, bad):
    assert main(["run", *tiny_overrides(tmp_path), "method=kd", bad]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("kdbench: error:")
    assert not (tmp_path / "results" / "runs").exists() or not list((tmp_path / "results" / "runs").iterdir())


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


def test_ctrl_c_outside_training_does_not_claim_a_checkpoint(monkeypatch, capsys):
    import kdbench.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "dispatch", interrupted)
    assert main(["list", "methods"]) == 130
    err = capsys.readouterr().err
    assert "nothing was changed" in err and "checkpoint" not in err
