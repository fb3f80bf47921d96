"""The results store: schema validation, never-overwrite under concurrency, export and import."""
from __future__ import annotations

import copy
import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import pytest

from kdbench import KDBenchError
from kdbench.cli import main
from kdbench.experiment.results import (
    add_record,
    counted_records,
    export_bundle,
    import_bundle,
    load_records,
    runs_dir,
    valid_records,
)
from kdbench.experiment.schema import validate_record
from tests.conftest import write_records
from tests.helpers import relabel, set_top1


def test_real_records_are_valid(real_records):
    assert len(real_records) == 9
    for r in real_records:
        assert validate_record(r) == []
        last = r["metrics"]["last"]["student"]["test"]
        assert 0 <= last["ece"] <= 100
        if r["method"]["name"] == "kd":
            assert 0 <= last["teacher_agreement"] <= 100 and last["kl_teacher_student"] >= 0
        else:
            assert last["teacher_agreement"] is None
        assert r["params"]["student_flops"] > 0 and r["memory"]["bytes"] > 0
        assert r["timing"]["epoch_time_s"] > 0


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r.pop("seed"), "seed: missing"),
    (lambda r: r["metrics"]["last"]["student"]["test"].update(top1=120.0), "metrics.last.student.test.top1"),
    (lambda r: r["method"].update(scheme="sideways"), "method.scheme"),
    (lambda r: r["fairness"].update(student_init_sha256="abc"), "fairness.student_init_sha256"),
    (lambda r: r.update(schema_version=99), "schema_version"),
    (lambda r: r["timing"].update(images_per_s="fast"), "timing.images_per_s"),
])
def test_validation_names_the_bad_field(real_records, mutate, field):
    r = copy.deepcopy(real_records[0])
    mutate(r)
    problems = validate_record(r)
    assert any(field in p for p in problems), problems


def _claim_top1(r, value):
    r["metrics"]["last"]["student"]["test"]["top1"] = value


@pytest.mark.parametrize("mutate,field", [
    (lambda r: _claim_top1(r, 99.99), "metrics.last: differs from the history's last epoch"),
    (lambda r: r["metrics"]["selected"].update(epoch=3 - r["metrics"]["selected"]["epoch"]), "metrics.selected"),
    (lambda r: r["history"].pop(), "history: its epochs are not"),
    (lambda r: r["schedule"].update(epochs=r["schedule"]["epochs"] + 1), "schedule.epochs"),
    (lambda r: r.update(teacher=None), "teacher: missing"),
    (lambda r: r["dataset"].update(name="cifar10"), "dataset.name"),
])
def test_a_record_that_contradicts_its_own_history_is_invalid(real_records, mutate, field):
    kd = next(r for r in real_records if r["method"]["name"] == "kd")
    r = copy.deepcopy(kd)
    assert len(r["history"]) == 2  # the mutations assume the fixture's two epochs
    mutate(r)
    problems = validate_record(r)
    assert any(field in p for p in problems), problems


def test_an_imported_record_whose_metrics_contradict_its_history_is_refused(real_records, tmp_path):
    r = copy.deepcopy(real_records[0])
    _claim_top1(r, 99.99)
    bundle = _bundle(tmp_path / "b.tar.gz", {f"records/{r['run_id']}.json": json.dumps(r).encode()})
    with pytest.raises(KDBenchError, match="metrics.last: differs from the history"):
        import_bundle(bundle, tmp_path / "store")
    assert not (tmp_path / "store" / "runs").exists() or not list((tmp_path / "store" / "runs").glob("*.json"))


def test_validate_command_names_each_bad_file_and_field(real_records, tmp_path, capsys):
    root = write_records(tmp_path / "results", real_records[:3])
    bad = copy.deepcopy(real_records[3])
    bad["dataset"]["num_test"] = -1
    (root / "runs" / f"{bad['run_id']}.json").write_text(json.dumps(bad))
    (root / "runs" / "broken.json").write_text("{not json")
    assert main(["results", "validate", f"paths.results={root}"]) == 1
    out = capsys.readouterr().out
    assert f"{bad['run_id']}.json" in out and "dataset.num_test" in out
    assert "broken.json" in out and "not valid JSON" in out
    with pytest.raises(KDBenchError, match="dataset.num_test"):
        valid_records(root)


def test_file_name_must_match_run_id(real_records, tmp_path):
    r = real_records[0]
    assert validate_record(r, "someone-else.json")
    assert validate_record(r, f"{r['run_id']}__20261127T000000_1_0.json") == []


def _writer(args):
    root, record, i = args
    rec = copy.deepcopy(record)
    if i % 2:  # half the writers race for the same run id
        rec["note"] = f"writer {i}"
    else:
        rec = relabel(rec, seed=100 + i)
    return str(add_record(root, rec))


@pytest.mark.slow
def test_eight_processes_writing_at_once_lose_no_record(real_records, tmp_path):
    root = tmp_path / "results"
    ctx = mp.get_context("spawn")
    with ctx.Pool(8) as pool:
        paths = pool.map(_writer, [(root, real_records[0], i) for i in range(8)])
    assert len(set(paths)) == 8
    stored = load_records(root)
    assert len(stored) == 8 and all(not s.errors for s in stored)
    assert sorted(s.record["note"] for s in stored if s.record["note"]) == [f"writer {i}" for i in (1, 3, 5, 7)]
    assert not list((root / "runs").glob(".*tmp"))  # no temp files left behind


def test_add_record_never_overwrites(real_records, tmp_path):
    root = tmp_path / "results"
    a = add_record(root, real_records[0])
    b = add_record(root, real_records[0])
    assert a != b and a.exists() and b.exists()
    with pytest.raises(KDBenchError, match="invalid record"):
        add_record(root, {"run_id": "x"})


def test_export_then_import_round_trip(real_records, tmp_path, capsys):
    src = write_records(tmp_path / "mine", real_records)
    bundle = tmp_path / "bundle.tar.gz"
    assert main(["results", "export", str(bundle), f"paths.results={src}"]) == 0
    dst = tmp_path / "store"
    assert main(["results", "import", str(bundle), f"paths.results={dst}"]) == 0
    assert "added 9 record(s)" in capsys.readouterr().out
    got = sorted(json.dumps(s.record, sort_keys=True) for s in load_records(dst))
    assert got == sorted(json.dumps(r, sort_keys=True) for r in real_records)
    assert import_bundle(bundle, dst) == []  # importing again adds nothing


def test_import_refuses_a_bundle_with_an_invalid_record(real_records, tmp_path):
    src = write_records(tmp_path / "mine", real_records[:2])
    bundle = export_bundle(src, tmp_path / "b.tar.gz")
    # tamper: rewrite one record inside the bundle
    import io
    import tarfile

    with tarfile.open(bundle) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    name = next(n for n in members if n.startswith("records/"))
    rec = json.loads(members[name])
    rec["seed"] = "zero"
    members[name] = json.dumps(rec).encode()
    with tarfile.open(bundle, "w:gz") as tar:
        for n, data in members.items():
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(KDBenchError, match="checksum does not match"):
        import_bundle(bundle, tmp_path / "store")
    assert not (tmp_path / "store" / "runs").exists() or not list((tmp_path / "store" / "runs").glob("*.json"))


def _bundle(path, members: dict[str, bytes], manifest: dict | None = None, extra: dict[str, bytes] | None = None):
    """A bundle whose manifest lists ``members`` (or is ``manifest`` verbatim), plus unlisted ``extra`` members."""
    import hashlib
    import io
    import tarfile

    if manifest is None:
        manifest = {"format": "kdbench-results-bundle", "version": 1,
                    "records": {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}}
    files = {**members, **(extra or {}), "manifest.json": json.dumps(manifest).encode()}
    with tarfile.open(path, "w:gz") as tar:
        for n, data in files.items():
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _rec_bytes(rec) -> bytes:
    return json.dumps(rec).encode()


def test_a_stores_repeats_of_a_run_import_into_an_empty_store(real_records, tmp_path):
    """A store with a force=true repeat once could not be imported anywhere: the bundle conflicted with itself."""
    again = set_top1(copy.deepcopy(real_records[0]), 50.0)
    again["created"] = "2099-01-01T00:00:00+00:00"
    bundle = export_bundle(write_records(tmp_path / "mine", [*real_records, again]), tmp_path / "b.tar.gz")
    runs = tmp_path / "work" / "runs"  # as `kdbench results import` calls it: holding each run's lock, once
    assert len(import_bundle(bundle, tmp_path / "store", runs)) == len(real_records) + 1
    assert import_bundle(bundle, tmp_path / "store", runs) == []


@pytest.mark.parametrize("junk", ['[1]', '{"status": "completed", "run_id": "RUN"}'])
def test_a_file_in_the_store_that_is_not_a_record_neither_breaks_nor_blocks_an_import(real_records, tmp_path, junk):
    bundle = export_bundle(write_records(tmp_path / "mine", real_records[:2]), tmp_path / "b.tar.gz")
    store = runs_dir(tmp_path / "store")
    store.mkdir(parents=True)
    (store / f"{real_records[0]['run_id']}.json").write_text(junk.replace("RUN", real_records[0]["run_id"]))
    assert len(import_bundle(bundle, tmp_path / "store", tmp_path / "work" / "runs")) == 2
    assert {r["run_id"] for r in counted_records(tmp_path / "store")} == {r["run_id"] for r in real_records[:2]}


def test_what_the_store_counts_exports_and_imports_and_an_odd_file_name_is_named(real_records, tmp_path):
    """Hostile round 2: a record under an odd name (RUN__my copy!.json) was counted and exported, and the bundle
    then did not import. One rule for the store and the bundle: such a file is named as not a valid record."""
    store = write_records(tmp_path / "mine", real_records[:2])
    ok, odd = (runs_dir(store) / f"{real_records[1]['run_id']}{s}.json" for s in ("__copy_2", "__my copy!"))
    (runs_dir(store) / f"{real_records[1]['run_id']}.json").rename(ok)
    shutil.copy(ok, odd)
    (bad,) = [s for s in load_records(store) if s.errors]
    assert bad.path == odd and "rename it" in bad.errors[0]
    odd.unlink()
    bundle = export_bundle(store, tmp_path / "b.tar.gz")
    assert len(import_bundle(bundle, tmp_path / "store", tmp_path / "work" / "runs")) == 2


def test_import_never_races_a_run_that_is_training_here(real_records, tmp_path):
    """Importing run X while a local bench trained X once kept one of the two records silently."""
    from kdbench.core.locks import file_lock

    bundle = export_bundle(write_records(tmp_path / "mine", real_records[:2]), tmp_path / "b.tar.gz")
    runs = tmp_path / "work" / "runs"
    with file_lock(runs / f"{real_records[1]['run_id']}.lock"):  # what a training run holds
        with pytest.raises(KDBenchError, match=f"being trained here by another process \\({real_records[1]['run_id']}"):
            import_bundle(bundle, tmp_path / "store", runs)
        assert load_records(tmp_path / "store") == []
    assert len(import_bundle(bundle, tmp_path / "store", runs)) == 2  # once that run has ended


def test_import_refuses_a_changed_copy_of_a_stored_run(real_records, tmp_path):
    """A bundle once changed a stored KD run's top-1 to 100.0 and moved the table's mean."""
    store = write_records(tmp_path / "store", real_records)
    forged = copy.deepcopy(real_records[0])
    set_top1(forged, 100.0)
    bundle = _bundle(tmp_path / "b.tar.gz", {f"records/{forged['run_id']}.json": _rec_bytes(forged)})
    with pytest.raises(KDBenchError, match="conflicts with records"):
        import_bundle(bundle, store)
    assert len(load_records(store)) == len(real_records)


@pytest.mark.parametrize("run_id", ["evil_trav", "..", "", "../../etc/x"])
def test_import_refuses_renamed_records(real_records, tmp_path, run_id):
    rec = copy.deepcopy(real_records[0])
    rec["run_id"] = run_id
    bundle = _bundle(tmp_path / "b.tar.gz", {f"records/{run_id or 'x'}.json": _rec_bytes(rec)})
    with pytest.raises(KDBenchError, match="was not imported"):
        import_bundle(bundle, tmp_path / "store")
    assert not (tmp_path / "store" / "runs").exists() or not list((tmp_path / "store" / "runs").iterdir())


def _import(args):
    bundle, store = args
    return len(import_bundle(bundle, store))


def test_two_imports_of_one_bundle_at_once_add_each_record_once(real_records, tmp_path):
    src = write_records(tmp_path / "mine", real_records)
    bundle = export_bundle(src, tmp_path / "b.tar.gz")
    store = tmp_path / "store"
    with mp.get_context("spawn").Pool(2) as pool:
        added = pool.map(_import, [(bundle, store)] * 2)
    assert sorted(added) == [0, len(real_records)]
    assert len(load_records(store)) == len(real_records)


class _Killed(BaseException):
    """Stands for kill -9: nothing of the importing process's own clean-up runs after it."""


def test_an_import_killed_while_publishing_is_finished_by_the_next_read(real_records, tmp_path, monkeypatch):
    import kdbench.experiment.results as results

    bundle = export_bundle(write_records(tmp_path / "mine", real_records[:4]), tmp_path / "b.tar.gz")
    store, real_link, moved = tmp_path / "store", os.link, []

    def dies_after_two(src, dst, **kw):
        if Path(dst).parent.name == "runs":  # publishing (staging writes use links too, into the stage)
            if len(moved) == 2:
                raise _Killed
            moved.append(dst)
        real_link(src, dst, **kw)

    monkeypatch.setattr(results.os, "link", dies_after_two)
    with pytest.raises(_Killed):
        import_bundle(bundle, store)
    monkeypatch.setattr(results.os, "link", real_link)
    assert len(list((store / "runs").glob("*.json"))) == 2 and (store / ".import-journal.json").exists()
    stored = load_records(store)  # any command that reads the store finishes the import first
    assert sorted(s.record["run_id"] for s in stored) == sorted(r["run_id"] for r in real_records[:4])
    assert all(not s.errors for s in stored)
    assert not (store / ".import-journal.json").exists() and not list(store.glob(".import-*"))
    assert import_bundle(bundle, store) == []  # all of it is there


def test_ctrl_c_while_publishing_waits_for_the_last_record_and_says_so(real_records, tmp_path, monkeypatch):
    import signal

    import kdbench.experiment.results as results

    bundle = export_bundle(write_records(tmp_path / "mine", real_records[:3]), tmp_path / "b.tar.gz")
    real_link, sent = os.link, []

    def ctrl_c_on_first(src, dst, **kw):
        if not sent and Path(dst).parent.name == "runs":  # the first record moved into the store
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        real_link(src, dst, **kw)

    monkeypatch.setattr(results.os, "link", ctrl_c_on_first)
    with pytest.raises(KeyboardInterrupt, match=r"after the import finished: 3 record\(s\) were added"):
        import_bundle(bundle, tmp_path / "store")
    assert len(load_records(tmp_path / "store")) == 3


def test_an_import_that_cannot_stage_changes_nothing(real_records, tmp_path, monkeypatch):
    import errno

    import kdbench.experiment.results as results

    store = write_records(tmp_path / "store", real_records[:1])
    bundle = export_bundle(write_records(tmp_path / "mine", real_records[1:4]), tmp_path / "b.tar.gz")
    real_write, writes = results.write_json_atomic, []

    def full_disk_on_second(path, obj, overwrite=True):
        writes.append(path)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, obj, overwrite)

    monkeypatch.setattr(results, "write_json_atomic", full_disk_on_second)
    with pytest.raises(KDBenchError, match="nothing was imported.*No space left"):
        import_bundle(bundle, store)
    assert [s.record["run_id"] for s in load_records(store)] == [real_records[0]["run_id"]]
    assert not list(store.glob(".import-*")) and not (store / ".import-journal.json").exists()


def test_import_reads_only_listed_members_and_caps_their_size(real_records, tmp_path, monkeypatch):
    import tarfile

    import kdbench.experiment.results as results

    rec = real_records[0]
    name = f"records/{rec['run_id']}.json"
    bundle = _bundle(tmp_path / "b.tar.gz", {name: _rec_bytes(rec)}, extra={"records/huge.json": b"0" * (4 << 20)})
    read = []
    real_extract = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or real_extract(self, m))
    assert len(import_bundle(bundle, tmp_path / "store")) == 1
    assert sorted(read) == ["manifest.json", name]
    monkeypatch.setattr(results, "MAX_RECORD_BYTES", 1000)
    with pytest.raises(KDBenchError, match="more than a record can be"):
        import_bundle(bundle, tmp_path / "store2")


@pytest.mark.parametrize("manifest", [b'{"format": "kdbench-res', b'[1, 2]', b'{"format": "other", "records": {}}'])
def test_a_broken_manifest_is_named(tmp_path, manifest):
    import io
    import tarfile

    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    with pytest.raises(KDBenchError, match="manifest.json"):
        import_bundle(path, tmp_path / "store")


def test_infinity_is_not_a_number_a_record_may_hold(real_records, tmp_path):
    store = write_records(tmp_path / "store", real_records[:1])
    path = next((store / "runs").glob("*.json"))
    path.write_text(path.read_text().replace('"wall_time_s": ', '"wall_time_s": Infinity, "x": ', 1))
    (bad,) = load_records(store)
    assert bad.errors and "Infinity" in bad.errors[0]
    rec = copy.deepcopy(real_records[0])
    rec["timing"]["wall_time_s"] = float("inf")
    assert any("wall_time_s" in e for e in validate_record(rec))


def test_export_into_an_existing_path_is_refused(real_records, tmp_path):
    src = write_records(tmp_path / "mine", real_records[:1])
    (tmp_path / "out").mkdir()
    with pytest.raises(KDBenchError, match="exists"):
        export_bundle(src, tmp_path / "out")
    assert main(["results", "export", str(tmp_path / "out"), f"paths.results={src}"]) == 2


def test_records_are_readable_by_others_like_any_file(real_records, tmp_path):
    old = os.umask(0o022)
    try:
        path = add_record(tmp_path / "results", real_records[0])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone would leave 0600
