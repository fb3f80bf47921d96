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
