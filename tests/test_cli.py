"""The command line: listings, error messages without tracebacks, the default bench on a reduced setting."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kdbench.cli import main
from tests.conftest import tiny_overrides

METHOD_LINES = ["kd", "[response, offline]", "vanilla", "dml", "[response, online]", "crd+kd"]


@pytest.mark.parametrize("what,expect", [("methods", METHOD_LINES),
                                         ("models", ["cnn_small", "cnn_wide"]),
                                         ("datasets", ["digits", "imagefolder"]),
                                         ("pairs", ["digits/cnn_wide-cnn_small", "cnn_wide -> cnn_small"])])
def test_list(capsys, what, expect):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    for e in expect:
        assert e in out


def test_show_method_prints_the_card(capsys):
    assert main(["show", "method", "kd"]) == 0
    out = capsys.readouterr().out
    assert "Hinton" in out and "T=4" in out


@pytest.mark.parametrize("args,message", [
    (["run", "method=kdd"], "Did you mean 'kd'? Valid methods:"),
    (["run", "pair=digits/nope"], "cifar100/vgg13-mobilenetv2, cifar100/vgg13-shufflenetv2, cifar100/vgg13-vgg8"),
    (["run", "pair.student=resnet9000"], "Valid models:"),
    (["run", "seed=="], "Error parsing override"),
    (["show", "method", "kdd"], "Did you mean 'kd'? Valid methods: ab, at, byot, "),  # every name, sorted
    (["run", "dataset=imagefolder", "pair.datasets=[imagefolder]", "data.source.root=/no/such/dir"], "/no/such/dir"),
])
def test_user_errors_exit_2_with_a_message(capsys, tmp_path, args, message):
    assert main([*args, f"paths.work={tmp_path}"] if args[0] == "run" else args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_error_through_the_real_entry_point_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    p = subprocess.run([sys.executable, "-m", "kdbench", "run", "method=nope", f"paths.work={tmp_path}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "vanilla" in p.stderr


def test_bench_reduced_setting_prints_the_table(capsys, tmp_path, teacher_cache):
    assert main(["-q", "bench", *tiny_overrides(tmp_path, teachers=teacher_cache), "suite.seeds=[0,1]"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert {"teacher", "vanilla", "kd"} <= set(lines)
    assert "±" in lines["vanilla"] and lines["kd"].split()[-1].startswith(("+", "-"))
    records = list((tmp_path / "results" / "runs").glob("*.json"))
    assert len(records) == 4  # 2 methods x 2 seeds; the teacher lives in the cache
    kinds = {json.loads(r.read_text())["method"]["name"] for r in records}
    assert kinds == {"vanilla", "kd"}


def test_teacher_train_list_show(capsys, tmp_path):
    ov = tiny_overrides(tmp_path)
    assert main(["-q", "teacher", "train", *ov]) == 0
    line = capsys.readouterr().out.strip()
    h = line.split()[0]
    assert main(["teacher", "list", *ov]) == 0
    assert h in capsys.readouterr().out
    assert main(["teacher", "show", h[:8], *ov]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["hash"] == h and shown["weights"]["sha256"] and shown["spec"]["arch"] == "cnn_wide"


def test_version_is_the_installed_packages(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"kdbench {version('kdbench')}"
