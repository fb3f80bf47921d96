"""Initialisation stages (AB, FT, FSP, FitNets' paper form): trained first, recorded, resumable."""
from __future__ import annotations

import copy

import pytest
import torch

from kdbench import KDBenchError
from kdbench.data import load_data
from kdbench.method import MAIN_STAGE, InitStage, build_method
from kdbench.models import seeded_model
from kdbench.orchestration.runner import run
from kdbench.training.engine import fit
from kdbench.training.epochs import plan_epochs


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


def test_plan_puts_init_stages_first_with_their_own_data_streams():
    a, b = InitStage("a", 2, ()), InitStage("b", 1, ())
    plan = plan_epochs([a, b], 3)
    assert [(p.name, p.local) for p in plan] == [("a", 0), ("a", 1), ("b", 0), (MAIN_STAGE, 0), (MAIN_STAGE, 1),
                                                  (MAIN_STAGE, 2)]
    # the main stage's epochs keep the schedule's data order (the same batches as every other method)
    assert [p.data_epoch for p in plan] == [-1, -2, -3, 0, 1, 2]
    with pytest.raises(KDBenchError, match="distinct"):
        plan_epochs([a, InitStage("a", 1, ())], 1)
    with pytest.raises(KDBenchError, match="main"):
        plan_epochs([InitStage(MAIN_STAGE, 1, ())], 1)


def _fitnet(cfg):
    data = load_data(cfg)
    info = data.info
    student = seeded_model("cnn_small", info.num_classes, info.input_shape[0], 0, "student-init")
    teacher = seeded_model("cnn_wide", info.num_classes, info.input_shape[0], 0, "teacher-init")
    return build_method(cfg.method, student, info, 0, teacher=teacher), data


def test_paper_fitnet_trains_only_hint_helpers_in_its_first_stage(make_cfg, tmp_path):
    cfg = make_cfg("method=fitnet", "method.stages=2", "method.init_epochs=2", epochs=2)
    method, data = _fitnet(cfg)
    start = copy.deepcopy(method.state_dict())
    snaps = {}

    def snap(n, step):
        if step == 0 or n not in snaps:
            snaps[n] = {k: v.clone() for k, v in method.state_dict().items()}

    steps = []
    res = fit(method, data, cfg.schedule, cfg.engine, 0, tmp_path / "run", resume=False,
              on_step=lambda n, s: (steps.append((n, method.stage)), snap(n, s)))
    assert [s for _, s in steps[:1]] == ["hint"] and steps[-1][1] == MAIN_STAGE
    assert method.stage == MAIN_STAGE  # reset after training
    after_hint = snaps[2]  # state after the first main-stage step; compare the stage-1 end via the regressor
    end = method.state_dict()
    # stage 1 moved the regressor; the classifier (past the guided layer) and the teacher never moved in it
    cls = [k for k in start if k.startswith("student.") and "fc" in k]
    assert cls, "the digits student's classifier is named fc"
    assert all(torch.equal(start[k], snaps[1][k]) for k in cls)
    assert any(not torch.equal(start[k], snaps[1][k]) for k in start if k.startswith("regressor."))
    # the main stage trains the student alone: the regressor keeps its stage-1 weights
    assert all(torch.equal(after_hint[k], end[k]) for k in end if k.startswith("regressor.") and "running" not in k
               and "num_batches" not in k)
    assert any(not torch.equal(start[k], end[k]) for k in cls)
    assert [r["stage"] for r in res.init_history] == ["hint", "hint"] and len(res.history) == 2
    assert set(res.init_history[0]["train_loss"]) == {"hint"} and set(res.history[0]["train_loss"]) == {"ce", "kd"}
    assert res.init_stages == [{"name": "hint", "epochs": 2, "lr": float(cfg.schedule.lr)}]


@pytest.mark.usefixtures("teacher_cache")
@pytest.mark.parametrize("kill_at", [(1, 3), (2, 0)], ids=["inside-stage-1", "first-main-step"])
def test_a_run_killed_in_or_after_an_init_stage_resumes_exactly(make_cfg, tmp_path, kill_at):
    over = ("method=fitnet", "method.stages=2", "method.init_epochs=2")
    full = run(make_cfg(*over, epochs=2))
    other = f"paths.results={tmp_path / 'other'}"

    def kill(n, step):
        if (n, step) == kill_at:
            raise _Killed

    with pytest.raises(_Killed):
        run(make_cfg(*over, other, epochs=2), on_step=kill)
    resumed = run(make_cfg(*over, other, "resume=true", epochs=2))
    assert resumed["timing"]["resumed_from_epoch"] == kill_at[0]
    assert resumed["metrics"]["last"] == full["metrics"]["last"]
    drop = ("time_s", "images_per_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])
    assert strip(resumed["init_history"]) == strip(full["init_history"])
    assert full["schedule"]["init_stages"][0]["epochs"] == 2 and full["schedule"]["epochs"] == 2
