"""An out-of-tree method installed as a package: `method=NAME` works with no extra flags."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

PLUGIN = '''
import torch.nn.functional as F

from kdbench.method import Method, StepOutput, register_method


@register_method("logit-mse", category="response", scheme="offline", description="a test plug-in")
class LogitMSE(Method):
    """Test plug-in: CE + weight * MSE between student and teacher logits."""

    def __init__(self, student, teacher, ctx, *, weight: float = 0.5) -> None:
        super().__init__(student, teacher, ctx)
        self.weight = weight

    def step(self, batch, epoch):
        t = self.teacher_forward(batch.images).logits
        s = self.student(batch.images).logits
        return StepOutput(s, {"ce": F.cross_entropy(s, batch.labels), "mse": self.weight * F.mse_loss(s, t)})
'''


def _install(site: Path) -> None:
    """What `pip install` leaves: the module and a dist-info with the `kdbench.methods` entry point."""
    site.mkdir(parents=True)
    (site / "kdbench_logit_mse.py").write_text(PLUGIN)
    info = site / "kdbench_logit_mse-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdbench-logit-mse\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdbench.methods]\nlogit-mse = kdbench_logit_mse\n")


def _kdbench(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()])}
    return subprocess.run([sys.executable, "-m", "kdbench", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_an_installed_plugin_method_runs_with_no_extra_flags(tmp_path):
    site = tmp_path / "site"
    _install(site)
    p = _kdbench(site, "run", *tiny_overrides(tmp_path, epochs=1), "method=logit-mse", "method.weight=0.25")
    assert p.returncode == 0, p.stderr[-2000:]
    (path,) = (tmp_path / "results" / "runs").glob("logit-mse__*.json")
    rec = json.loads(path.read_text())
    assert rec["method"]["name"] == "logit-mse" and rec["experiment"]["spec"]["method"]["weight"] == 0.25
    assert rec["experiment"]["defaults"] == {"name": "logit-mse", "weight": 0.5}  # read off the class
    show = _kdbench(site, "show", "method", "logit-mse")
    assert show.returncode == 0 and "Test plug-in" in show.stdout
    bad = _kdbench(site, "run", *tiny_overrides(tmp_path, epochs=1), "method=logit-mse", "method.wieght=1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
