"""Shared fixtures: configs pointed at a temporary store, with tiny schedules."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kdbench.orchestration.config import compose


def pytest_configure(config) -> None:
    """Under pytest-xdist (``make test`` runs one worker per core) each worker computes on one thread, and so do
    the runs and subprocesses it starts (``engine.threads=auto`` leaves a set OMP_NUM_THREADS standing): several
    processes each taking every core oversubscribe them, and torch's waiting threads then spin."""
    if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get("OMP_NUM_THREADS"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def tiny_overrides(tmp: Path, epochs: int = 2, teachers: Path | None = None) -> list[str]:
    """A tiny run writing under ``tmp``; its teachers under ``teachers`` if given (the session's shared cache,
    the ``teacher_cache`` fixture), else under ``tmp``."""
    return [
        f"paths.results={tmp / 'results'}",
        f"paths.work={tmp / 'work'}",
        *([f"paths.teachers={teachers}"] if teachers is not None else []),
        "engine.progress=false",
        f"schedule.epochs={epochs}",
        f"schedule.milestones=[{max(epochs - 1, 1) / epochs}]",
        f"teacher.schedule.epochs={epochs}",
        f"teacher.schedule.milestones=[{max(epochs - 1, 1) / epochs}]",
    ]


@pytest.fixture(scope="session")
def teacher_cache(tmp_path_factory) -> Path:
    """One teacher cache for the whole session: each tiny teacher (a recipe: pair, epochs, seed) is trained once,
    by the first test that needs it, and read by the others. A test opts in by requesting it (as an argument or
    ``@pytest.mark.usefixtures("teacher_cache")``): ``make_cfg`` then points ``paths.teachers`` here. Only for
    tests that read teachers: one that deletes, damages, lists or counts cached teachers, or checks that a
    teacher is trained, keeps its own cache under tmp_path (the default)."""
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture
def make_cfg(tmp_path: Path, request):
    """``make_cfg(*overrides, epochs=2)``: a resolved config writing under tmp_path (its teachers in the
    session's shared cache if the test requested ``teacher_cache``)."""
    teachers = request.getfixturevalue("teacher_cache") if "teacher_cache" in request.fixturenames else None

    def make(*overrides: str, epochs: int = 2):
        return compose([*tiny_overrides(tmp_path, epochs, teachers), *overrides])

    return make


def _dispositions() -> dict:
    import signal

    names = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
    return {getattr(signal, n): signal.getsignal(getattr(signal, n)) for n in names if hasattr(signal, n)}


@pytest.fixture(autouse=True)
def _signal_handlers_left_as_found():
    """Every test leaves the process's signal handlers as it found them (a handler left installed once turned a
    later Ctrl-C into a flag nobody read); one that does not is an error here, and the handlers are put back."""
    import signal

    before = _dispositions()
    yield
    after = _dispositions()
    changed = {signal.Signals(s).name: (before[s], after[s]) for s in before if after[s] != before[s]}
    for sig, handler in before.items():
        if after[sig] != handler and handler is not None:
            signal.signal(sig, handler)
    assert not changed, f"signal handlers left changed (before, after): {changed}"


@pytest.fixture
def default_signals():
    """The signal dispositions a test that sends or expects signals relies on, as a fresh Python at a prompt has
    them: Ctrl-C raises KeyboardInterrupt, SIGTERM, SIGUSR1 and SIGUSR2 do their default. A suite started in the
    background (``make test &``, nohup, some CI runners) inherits SIGINT ignored, and subprocesses inherit what
    the test process has. Whatever was there before is put back afterwards."""
    import signal

    wanted = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    wanted.update({getattr(signal, n): signal.SIG_DFL for n in ("SIGUSR1", "SIGUSR2") if hasattr(signal, n)})
    before = {sig: signal.getsignal(sig) for sig in wanted}
    for sig, handler in wanted.items():
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:  # None: installed outside Python, cannot be put back from here
                signal.signal(sig, handler)


@pytest.fixture(scope="session")
def real_records(tmp_path_factory, teacher_cache):
    """Records of real tiny runs (vanilla, kd, dml x seeds 0, 1, 2 on digits, 2 epochs), made once."""
    from kdbench.data import load_data
    from kdbench.experiment.results import load_records
    from kdbench.orchestration.runner import run

    tmp = tmp_path_factory.mktemp("records")
    data = None
    for seed in (0, 1, 2):
        for method in ("vanilla", "kd", "dml"):
            cfg = compose([*tiny_overrides(tmp, teachers=teacher_cache), f"method={method}", f"seed={seed}"])
            data = data or load_data(cfg)
            run(cfg, data=data)
    return [s.record for s in load_records(tmp / "results")]


def write_records(root: Path, records) -> Path:
    """Store records as files under ``root/runs`` (a results store) and return ``root``; a repeated run id
    gets the store's ``__<n>`` suffix, as ``force=true`` would give it."""
    import json

    (root / "runs").mkdir(parents=True, exist_ok=True)
    for r in records:
        path = root / "runs" / f"{r['run_id']}.json"
        n = 0
        while path.exists():
            path = root / "runs" / f"{r['run_id']}__20990101T000000_0_{n}.json"
            n += 1
        path.write_text(json.dumps(r))
    return root
