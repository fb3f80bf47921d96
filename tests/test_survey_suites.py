"""The survey's own settings as suites (kdbench/conf/suite/survey-cifar10.yaml and survey-cifar100.yaml, Gou et al.,
IJCV 2021, Tables 5-6): every cell finds exactly the survey row the leaderboard sets beside it, and every row of
the table whose method kdbench runs is a cell, so a method registered later under a survey id shows here until
its rows join the suite."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from kdbench.experiment.catalog import METHODS, survey_name
from kdbench.experiment.identity import method_defaults_on_pair, method_spec
from kdbench.experiment.schema import VANILLA
from kdbench.report.papers import REFERENCE_DATASET, SURVEY, load_reference, survey_rows

SUITES = {"survey-cifar10": "cifar10", "survey-cifar100": "cifar100"}
ROOT = Path(__file__).resolve().parents[1]

# Survey ids that name another method than kdbench's method of that id: never a cell, never matched.
HOMONYMS = {"ctkd": "the survey's CTKD is Zhao et al. 2020a's collaborative teaching; kdbench's ctkd is Li et al. "
                    "2023's curriculum temperature"}


@functools.lru_cache(maxsize=None)
def _reference():
    ref = load_reference(ROOT / "results")
    return ref[ref["source"] == SURVEY]


@functools.lru_cache(maxsize=None)
def _suite(name: str):
    from kdbench.orchestration.suite import suite_configs

    return suite_configs([f"suite={name}", "suite.seeds=[0]"])  # the cells; seeds change none of them


def _row(cfg) -> dict:
    """The table row a run of ``cfg`` becomes, as far as matching the survey goes (kdbench/report/frame.py)."""
    method = str(cfg.method.name)
    peers = list(cfg.method.get("peers") or [])
    return {"label": method, "method": method, "scheme": METHODS.get(method).meta["scheme"],
            "student": str(cfg.pair.student), "teacher": str(cfg.pair.teacher),
            "peer": (peers[0] or str(cfg.pair.student)) if peers else None}


def _cells(name: str) -> list:
    return [c for c in _suite(name).cfgs if str(c.method.name) != VANILLA]


@pytest.mark.parametrize("name", SUITES)
def test_each_survey_cell_finds_exactly_one_survey_row(name):
    sc = _suite(name)
    assert sc.suite.overrides == ["protocol=paper"] and not sc.suite.get("method_overrides")
    dataset = SUITES[name]
    assert {str(c.data.name) for c in sc.cfgs} == {dataset} and REFERENCE_DATASET[dataset] == dataset
    assert all(c.protocol.name == "paper" and c.schedule.epochs == 240 for c in sc.cfgs)
    for cfg in _cells(name):
        # the method's defaults on its pair: the tables' label is the bare method, which a survey number may sit beside
        defaults = method_defaults_on_pair(cfg)
        assert all(defaults[k] == v for k, v in method_spec(cfg.method).items()), cfg.method
        hits = survey_rows(_reference(), dataset, _row(cfg))
        assert hits is not None and len(hits) == 1, (cfg.pair.name, cfg.method.name)
    # every pair runs the vanilla student: the baseline each gain is measured from
    assert {str(c.pair.name) for c in sc.cfgs if c.method.name == VANILLA} == {str(p) for p in sc.suite.pairs}


@pytest.mark.parametrize("name", SUITES)
def test_every_survey_row_whose_method_kdbench_runs_is_a_cell(name):
    ours = {survey_name(e.name): e.name for e in METHODS if e.name != VANILLA and survey_name(e.name) not in HOMONYMS}
    ref = _reference()
    rows = ref[(ref["dataset"] == SUITES[name]) & ref["method"].isin(list(ours))
               & ~ref["notes"].fillna("").str.contains("teacher-side")]
    covered = set()
    for cfg in _cells(name):
        hits = survey_rows(_reference(), SUITES[name], _row(cfg))
        covered |= set(hits.index)
    missing = [f"{r.method}: {r.teacher} -> {r.student}" for i, r in rows.iterrows() if i not in covered]
    assert not missing, f"survey rows kdbench could run but {name} leaves out: {missing}"
    assert len(covered) == len(_cells(name))  # and no two cells share a row


def _distinct_cells() -> list[tuple[str, str, str]]:
    return sorted({(name, str(c.pair.name), str(c.method.name)) for name in SUITES for c in _cells(name)})


@pytest.mark.slow
def test_every_survey_cell_takes_a_training_step():
    """Each (method, pair) of both suites builds from its composed config and takes one step on CPU: a finite
    loss whose gradient reaches the student (the contract tests cover only the CRD benchmark's pairs)."""
    import torch

    from kdbench.data import Batch, DatasetInfo
    from kdbench.method import MAIN_STAGE, build_method
    from kdbench.models import create_model

    for name, pair, method in _distinct_cells():
        cfg = next(c for c in _suite(name).cfgs if str(c.pair.name) == pair and str(c.method.name) == method)
        classes = {"cifar10": 10, "cifar100": 100}[SUITES[name]]
        torch.manual_seed(0)
        student = create_model(str(cfg.pair.student), num_classes=classes)
        cls = METHODS.get(method).obj
        teacher = create_model(str(cfg.pair.teacher), num_classes=classes).eval() if cls.uses_teacher else None
        labels = torch.arange(8) % classes
        m = build_method(cfg.method, student, DatasetInfo("tiny", classes, (3, 32, 32), 8), 0, teacher=teacher,
                         student_arch=str(cfg.pair.student), teacher_arch=str(cfg.pair.teacher), train_labels=labels)
        g = torch.Generator().manual_seed(1)
        batch = Batch(torch.randn(4, 3, 32, 32, generator=g), labels[:4], torch.arange(4))
        if m.paired_batches:  # CS-KD: a same-class partner per sample
            batch.pair_images, batch.pair_indices = torch.randn(4, 3, 32, 32, generator=g), torch.arange(4)
        m.train()
        for stage in [None, *m.init_stages()]:  # the main stage, then each initialisation stage (FSP's, FT's)
            m.stage = MAIN_STAGE if stage is None else stage.name
            out = m.step(batch, epoch=0)
            loss = sum(out.losses.values())
            assert torch.isfinite(loss), (pair, method, out.losses)
            m.zero_grad(set_to_none=True)
            loss.backward()
            trained = m.student if stage is None else m  # an initialisation stage may train helpers alone (FT's)
            assert any(p.grad is not None for p in trained.parameters()), (pair, method, stage)
