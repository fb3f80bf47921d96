"""The guides in docs/ are run: their code blocks load, their commands succeed and do what the text says."""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.method import METHODS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _block(text: str, marker: str) -> str:
    """The fenced block that follows ``<!-- guide:MARKER -->``."""
    m = re.search(rf"<!-- guide:{marker} -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"no block marked guide:{marker}"
    return m.group(1)


@pytest.fixture
def guide_method(tmp_path):
    text = (DOCS / "adding-a-method.md").read_text()
    module = tmp_path / "logit_match.py"
    module.write_text(_block(text, "method"))
    spec = importlib.util.spec_from_file_location("guide_logit_match", module)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # registers the method
    try:
        yield text, mod
    finally:
        METHODS._entries.pop("logit-match", None)


def test_adding_a_method_guide_runs_as_written(guide_method, tmp_path, capsys):
    text, mod = guide_method
    assert "logit-match" in METHODS.names()
    paths = [f"paths.results={tmp_path / 'results'}", f"paths.work={tmp_path / 'work'}", "engine.progress=false"]
    commands = [shlex.split(line) for line in _block(text, "commands").splitlines() if line.strip()]
    assert commands and all(c[0] == "kdbench" for c in commands)
    for argv in commands:
        extra = paths if argv[1] in ("run", "show") else []
        assert main([*argv[1:], *extra]) == 0, argv
    out = capsys.readouterr().out
    assert "logit-match" in out and "Ba & Caruana" in out  # listed, and its card shown
    records = sorted((tmp_path / "results" / "runs").glob("logit-match__*.json"))
    assert len(records) == 2, "the weight=0.5 run is another experiment"
    # the method passes the contract the guide promises on a CIFAR pair: one finite step, gradients everywhere
    from tests.test_methods import _batch, _build

    m, labels = _build("logit-match", "cifar100/resnet32x4-resnet8x4")
    m.train()
    out = m.step(_batch(labels), 0)
    loss = sum(out.losses.values())
    loss.backward()
    assert torch.isfinite(loss) and set(out.losses) == {"ce", "mse"}
    assert all(p.grad is not None for p in m.trainable_parameters())


def _commands(text: str, marker: str, **subs: str) -> list[list[str]]:
    lines = [ln for ln in _block(text, marker).splitlines() if ln.strip()]
    out = []
    for ln in lines:
        for k, v in subs.items():
            ln = ln.replace(k, v)
        argv = shlex.split(ln)
        assert argv[0] == "kdbench", ln
        out.append(argv[1:])
    return out


@pytest.mark.slow
def test_importing_teachers_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    import torchvision

    from kdbench.models import create_model
    from tests.helpers import write_cifar_pickles

    for cls in (torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100):  # generated batches carry no md5
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    write_cifar_pickles(tmp_path / "data", 100, per_class=2, test_per_class=1)
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet32x4", num_classes=100).state_dict(), "epoch": 240},
               tmp_path / "ckpt_epoch_240.pth")  # RepDistiller's format
    monkeypatch.chdir(tmp_path)
    paths = [f"paths.data={tmp_path / 'data'}", f"paths.work={tmp_path / 'work'}",
             f"paths.results={tmp_path / 'results'}"]
    text = (DOCS / "importing-teachers.md").read_text()
    first, *rest = _commands(text, "import")
    assert main([*first, *paths]) == 0
    key = capsys.readouterr().out.split()[0]
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    tiny = ["schedule.epochs=1", "schedule.batch_size=50", "data.val_fraction=0"]
    for argv in _commands(text, "import", HASH=key)[1:]:
        assert main([*argv, *paths, *(tiny if argv[0] == "run" else [])]) == 0, argv
    out = capsys.readouterr().out
    assert "imported from ckpt_epoch_240.pth" in out and f'"hash": "{key}"' in out
    (record,) = (tmp_path / "results" / "runs").glob("kd__cifar100_resnet32x4-resnet8x4__*.json")
    import json

    assert json.loads(record.read_text())["teacher"]["hash"] == key


def test_reading_a_table_guide_runs_as_written(real_records, tmp_path, monkeypatch, capsys):
    import shutil

    from tests.conftest import write_records

    root = write_records(tmp_path / "results", real_records)
    shutil.copytree(Path(__file__).resolve().parents[1] / "results" / "reference", root / "reference")
    monkeypatch.chdir(tmp_path)
    for argv in _commands((DOCS / "reading-a-table.md").read_text(), "leaderboard"):
        assert main([*argv, f"paths.results={root}"]) == 0, argv
    assert "is up to date" in capsys.readouterr().out
    assert (tmp_path / "leaderboard-vs-kd" / "README.md").exists()
    assert any(p.suffix == ".tex" for p in (tmp_path / "leaderboard").iterdir())
    assert "validation" in (tmp_path / "leaderboard-selected" / "README.md").read_text()


@pytest.mark.slow
def test_cluster_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    """The CRD-on-a-cluster guide: its imports on checkpoints in the authors' format, its plan over the whole
    suite, its bench with Hydra's in-process launcher instead of SLURM on a one-pair cut of the suite, its table."""
    import shutil

    import torchvision

    from kdbench.models import create_model
    from tests.helpers import write_cifar_pickles

    for cls in (torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    write_cifar_pickles(tmp_path / "data", 100, per_class=2, test_per_class=1)
    shutil.copytree(DOCS.parent / "results" / "reference", tmp_path / "results" / "reference")
    monkeypatch.chdir(tmp_path)
    text = (DOCS / "cluster.md").read_text()
    paths = [f"paths.data={tmp_path / 'data'}", f"paths.work={tmp_path / 'work'}",
             f"paths.results={tmp_path / 'results'}", "engine.progress=false"]
    for argv in _commands(text, "cluster-import"):
        ckpt, arch = Path(argv[2]), argv[argv.index("--arch") + 1]
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save({"model": create_model(arch, num_classes=100).state_dict(), "epoch": 240}, ckpt)
        assert main([*argv, *paths]) == 0, argv
        ckpt.unlink()  # a resnet50 is 95 MB
    capsys.readouterr()
    (plan,) = _commands(text, "cluster-plan")
    one = ["suite.pairs=[cifar100/resnet32x4-shufflenetv1]"]  # of 13 (test_methods checks the whole suite)
    assert main([*plan, *paths, *one]) == 0
    out = capsys.readouterr().out
    assert out.count("cached ") == 1 and "to train" not in out
    assert "42 runs: missing 42" in out  # 15 methods x 3 seeds, less FSP's N/A on this pair
    rows = [line.split() for line in out.splitlines() if line.startswith("missing ")]
    assert "fsp" not in {r[2] for r in rows} and "crd+kd" in {r[2] for r in rows}
    (bench,) = _commands(text, "cluster-bench")
    assert "hydra/launcher=slurm" in bench
    local = [a for a in bench if not a.startswith("hydra")] + ["hydra/launcher=basic"]  # no SLURM here
    cut = ["suite.pairs=[cifar100/resnet56-resnet20]", "suite.methods=[vanilla,kd,at]", "suite.seeds=[0]",
           "schedule.epochs=1", "schedule.batch_size=50"]
    assert main(["-q", *local, *paths, *cut]) == 0
    out = capsys.readouterr().out
    assert "cifar100/resnet56-resnet20" in out and "3 runs" in out
    (table,) = _commands(text, "cluster-table")
    assert main([*table, *paths]) == 0
    page = (tmp_path / "leaderboard" / "README.md").read_text()
    assert "AT" in page and "70.55" in page and "not comparable" in page  # the CRD table's AT cell, labelled
