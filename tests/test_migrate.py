"""`kdbench results migrate`: version-1 records (copies of committed ones) become current, idempotently."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from kdbench.cli import main
from kdbench.experiment.migrate import migrate_store
from kdbench.experiment.results import load_records
from kdbench.orchestration.config import compose
from kdbench.orchestration.runner import run_identity
from kdbench.report import build_leaderboard, check_leaderboard

V1 = Path(__file__).parent / "data" / "records-v1"  # copies of results/runs/ as committed before the change
COMMITTED = Path(__file__).resolve().parent.parent / "results" / "runs"


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    shutil.copytree(V1, root / "runs")
    return root


def test_version_1_records_are_refused_with_the_command_that_fixes_them(tmp_path):
    stored = load_records(_copy(tmp_path))
    assert stored and all(any("kdbench results migrate" in e for e in s.errors) for s in stored)


def test_migration_keeps_every_number_and_gives_todays_run_ids(tmp_path, capsys):
    root = _copy(tmp_path)
    before = {json.loads(p.read_text())["run_id"]: json.loads(p.read_text()) for p in (root / "runs").glob("*.json")}
    assert main(["results", "migrate", f"paths.results={root}"]) == 0
    assert f"{len(before)} record(s) migrated" in capsys.readouterr().out
    stored = load_records(root)
    assert len(stored) == len(before) and all(not s.errors for s in stored)
    for s in stored:
        new, old = s.record, before[s.record["migrated_from"]["run_id"]]
        assert new["metrics"] == old["metrics"] and new["history"] == old["history"] and new["seed"] == old["seed"]
        assert new["teacher"] is None or new["teacher"]["weights_sha256"] == old["teacher"]["weights_sha256"]
        assert s.path.name == f"{new['run_id']}.json"
        # The store that was migrated in the repository has the same run ids...
        assert (COMMITTED / s.path.name).exists()
    # ...and a fresh config of a committed digits run hashes to the migrated id (status finds it done).
    kd = next(s.record for s in stored if s.record["method"]["name"] == "kd")
    assert run_identity(compose(["suite=digits-all", "method=kd", "seed=0"])) == kd["run_id"]


def test_migration_is_idempotent_and_survives_an_interruption(tmp_path):
    root = _copy(tmp_path)
    first = migrate_store(root)
    assert first.migrated and not first.problems
    files = sorted(p.name for p in (root / "runs").glob("*.json"))
    again = migrate_store(root)
    assert not again.migrated and again.current == len(files) and not again.problems
    assert sorted(p.name for p in (root / "runs").glob("*.json")) == files
    # An interrupted run: the new file was written but the old one not yet removed.
    old = next(V1.glob("kd__*.json"))
    shutil.copy(old, root / "runs" / old.name)
    third = migrate_store(root)
    assert len(third.migrated) == 1 and not third.problems
    assert sorted(p.name for p in (root / "runs").glob("*.json")) == files


def test_the_leaderboard_builds_and_checks_after_migration(tmp_path):
    root = _copy(tmp_path)
    migrate_store(root)
    out = tmp_path / "lb"
    build_leaderboard(root, out)
    assert check_leaderboard(root, out) == []


def test_dry_run_writes_nothing(tmp_path, capsys):
    root = _copy(tmp_path)
    names = sorted(p.name for p in (root / "runs").glob("*.json"))
    assert main(["results", "migrate", "--dry-run", f"paths.results={root}"]) == 0
    assert "would migrate" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "runs").glob("*.json")) == names
