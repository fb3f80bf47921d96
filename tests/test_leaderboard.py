"""The leaderboard: numbers come from records; stale or invalid inputs fail the check."""
from __future__ import annotations

import copy
import csv
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest

from kdbench import KDBenchError
from kdbench.cli import main
from kdbench.report import build_leaderboard, check_leaderboard, render
from tests.conftest import write_records
from tests.helpers import relabel, set_top1

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"


def _store(tmp_path, records, reference=True) -> Path:
    root = write_records(tmp_path / "results", records)
    if reference:
        shutil.copytree(REFERENCE, root / "reference")
    return root


def _acc(r):
    return r["metrics"]["last"]["student"]["test"]["top1"]


def _csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_cells_are_mean_and_sample_std_of_the_records(real_records, tmp_path):
    files = render(_store(tmp_path, real_records))
    agg = {(r["method"]): r for r in _csv(files["aggregate.csv"])}
    for method in ("vanilla", "kd", "dml"):
        accs = [_acc(r) for r in real_records if r["method"]["name"] == method]
        assert float(agg[method]["mean"]) == pytest.approx(statistics.fmean(accs), abs=0.006)
        assert float(agg[method]["std"]) == pytest.approx(statistics.stdev(accs), abs=0.006)
        assert agg[method]["n"] == "3" and "†" not in agg[method]["cell"]
    bench = _csv(files["benchmark.csv"])
    assert [r["method"] for r in bench][:2] == ["Teacher", "Student (vanilla)"]
    survey = {r["method_id"]: r for r in _csv(files["survey.csv"])}
    gain = float(agg["kd"]["mean"]) - float(agg["vanilla"]["mean"])
    assert float(survey["kd"]["gain_value"]) == pytest.approx(gain, abs=0.011)
    assert survey["dml"]["scheme"] == "online" and survey["kd"]["scheme"] == "offline"
    page = files["index.html"].decode()
    for scheme in ("offline", "online", "self"):  # the survey's three sections, the empty one included
        assert f'id="survey-{scheme}-' in page
    md = files["README.md"].decode()
    assert "No self method was run in this setting." in md
    members = _csv(files["members.csv"])  # DML's peer, beside (never pooled with) the reported student
    peer = [r["metrics"]["last"]["peer1"]["test"]["top1"] for r in real_records if r["method"]["name"] == "dml"]
    assert [(m["method"], m["model"]) for m in members] == [("DML", "peer1")]
    assert members[0]["top1"].startswith(f"{statistics.fmean(peer):.2f} ± {statistics.stdev(peer):.2f} (n=3)")
    assert "digits, 2 epochs" in md and "seeds 0,1,2" in md and "hardware:" in md


def test_fewer_than_three_seeds_are_marked_and_best_is_bold(real_records, tmp_path):
    two = [r for r in real_records if r["seed"] != 2]
    files = render(_store(tmp_path, two))
    assert all("(n=2)†" in r["cell"] for r in _csv(files["aggregate.csv"]))
    agg = {r["method"]: float(r["mean"]) for r in _csv(files["aggregate.csv"])}
    best = max(("kd", "dml"), key=lambda m: agg[m])
    row = next(line for line in files["README.md"].decode().splitlines() if line.startswith(f"| {best.upper()} |"))
    assert "**" in row


def test_selected_metric_uses_the_validation_selected_epoch(real_records, tmp_path):
    files = render(_store(tmp_path, real_records), metric="selected")
    agg = {r["method"]: r for r in _csv(files["aggregate.csv"])}
    accs = [r["metrics"]["selected"]["student"]["test"]["top1"] for r in real_records if r["method"]["name"] == "kd"]
    assert float(agg["kd"]["mean"]) == pytest.approx(statistics.fmean(accs), abs=0.006)
    assert "validation" in files["README.md"].decode()


def _as_crd_setting(records, epochs: int, **kw):
    """The same runs relabelled as resnet56 -> resnet20 on CIFAR-100 (to exercise the paper join)."""
    return [relabel(r, dataset="cifar100", pair="cifar100/resnet56-resnet20", teacher="resnet56",
                    student="resnet20", epochs=epochs, **kw) for r in records]


def _as_paper_protocol(records, epochs: int = 240):
    return _as_crd_setting(records, epochs, protocol="paper", num_train=50_000)


def test_paper_comparison_joins_the_reference_and_flags(real_records, tmp_path):
    files = render(_store(tmp_path, _as_paper_protocol(real_records)))
    rows = {(r["method_id"], r["source"]): r for r in _csv(files["paper_comparison.csv"])}
    kd = rows[("kd", "tian2020crd")]
    assert float(kd["paper"]) == 70.66 and ("kd", "zhao2022dkd") in rows  # DKD re-lists the same KD number
    assert float(kd["diff"]) == pytest.approx(float(kd["ours_mean"]) - 70.66, abs=0.011)
    assert kd["protocol"] == "same as the paper"
    agg = {r["method"]: r for r in _csv(files["aggregate.csv"])}
    expect_flag = abs(float(kd["diff"])) > 2 * float(agg["kd"]["std"])
    assert ("|diff|>2std" in kd["flag"]) == expect_flag and "n<3" not in kd["flag"]
    assert not any(m == "vanilla" for m, _ in rows)


def test_our_number_is_set_beside_a_papers_only_when_the_protocol_matches(real_records, tmp_path):
    # kdbench's own protocol on a subset, 240 epochs: listed with the reasons, our number left out.
    (kd, *_) = [r for r in _csv(render(_store(tmp_path / "a", _as_crd_setting(real_records, 240)))
                                ["paper_comparison.csv"]) if r["method_id"] == "kd"]
    assert kd["ours"] == "" and kd["diff"] == ""
    assert "protocol kdbench" in kd["protocol"] and "1,295 vs 50,000 training images" in kd["protocol"]
    # The paper protocol but a shorter schedule: still not compared unless asked, and then labelled.
    root = _store(tmp_path / "b", _as_paper_protocol(real_records, 30))
    (kd, *_) = [r for r in _csv(render(root)["paper_comparison.csv"]) if r["method_id"] == "kd"]
    assert kd["ours"] == "" and kd["protocol"] == "not comparable: 30 vs 240 epochs"
    (kd, *_) = [r for r in _csv(render(root, compare_short=True)["paper_comparison.csv"]) if r["method_id"] == "kd"]
    assert kd["ours"] and kd["diff"] and kd["protocol"] == "differs: 30 vs 240 epochs"
    # bf16 is not the papers' arithmetic.
    bf16 = _as_paper_protocol(real_records)
    for r in bf16:
        r["experiment"]["spec"]["protocol"]["precision"] = "bf16"
    (kd, *_) = [r for r in _csv(render(_store(tmp_path / "c", [relabel(r) for r in bf16]))["paper_comparison.csv"])
                if r["method_id"] == "kd"]
    assert kd["ours"] == "" and "bf16 vs fp32" in kd["protocol"]


def test_settings_are_never_pooled(real_records, tmp_path):
    other = _as_crd_setting(real_records, 240)
    files = render(_store(tmp_path, real_records + other))
    settings = {r["setting"] for r in _csv(files["aggregate.csv"])}
    assert settings == {"digits-2ep-1295train-kdbench-fp32", "cifar100-240ep-1295train-kdbench-fp32"}


def _kd(rows):
    return [r for r in rows if r["method"] == "kd"]


def test_a_hyper_parameter_variant_gets_its_own_row(real_records, tmp_path):
    """`kdbench run method=kd method.temperature=1 seed=0` once pooled into the T=4 cell."""
    (t1,) = [relabel(r, temperature=1.0) for r in real_records if r["method"]["name"] == "kd" and r["seed"] == 0]
    files = render(_store(tmp_path, real_records + [t1]))
    agg = {r["label"]: r for r in _csv(files["aggregate.csv"])}
    assert agg["kd"]["n"] == "3" and agg["kd"]["seeds"] == "0,1,2"
    assert agg["kd (temperature=1)"]["n"] == "1"
    assert "KD (temperature=1)" in files["README.md"].decode() and "KD (temperature=1)" in files["index.html"].decode()
    assert {r["method"] for r in _csv(files["benchmark.csv"])} >= {"KD", "KD (temperature=1)"}


def test_repeats_of_a_seed_count_once_and_the_newest_wins(real_records, tmp_path):
    """`force=true` twice once gave seeds 0,0,0 and n=3."""
    (kd0,) = [r for r in real_records if r["method"]["name"] == "kd" and r["seed"] == 0]
    again = []
    for i, acc in enumerate((11.0, 12.0)):
        r = copy.deepcopy(kd0)
        r["created"] = f"2099-01-0{i + 1}T00:00:00+00:00"
        set_top1(r, acc)
        again.append(r)
    files = render(_store(tmp_path, real_records + again))
    (kd,) = _kd(_csv(files["aggregate.csv"]))
    accs = sorted(r["metrics"]["last"]["student"]["test"]["top1"] for r in real_records
                  if r["method"]["name"] == "kd" and r["seed"] != 0) + [12.0]
    assert kd["n"] == "3" and kd["seeds"] == "0,1,2" and kd["repeats_not_counted"] == "2"
    assert float(kd["mean"]) == pytest.approx(statistics.fmean(accs), abs=0.006)
    assert kd["cell"].endswith("‡")
    runs = _kd(_csv(files["runs.csv"]))
    assert sorted(r["counted"] for r in runs if r["seed"] == "0") == ["False", "False", "True"]


def test_students_of_different_teachers_are_never_pooled(real_records, tmp_path):
    """A teacher re-trained elsewhere has the same cache hash but other weights."""
    other = []
    for r in real_records:
        if r["teacher"]:
            r = copy.deepcopy(r)
            r["teacher"]["weights_sha256"] = "f" * 64
            r["teacher"]["test_top1"] = 12.5
            other.append(r)
    files = render(_store(tmp_path, real_records + other))
    kd = {r["label"]: r for r in _kd(_csv(files["aggregate.csv"]))}
    assert len(kd) == 2 and all(r["n"] == "3" for r in kd.values())
    assert any(lab.endswith("[teacher ffffffff]") for lab in kd)
    teachers = [r for r in _csv(files["benchmark.csv"]) if r["method"].startswith("Teacher")]
    assert len(teachers) == 2 and "12.50" in {v for t in teachers for v in t.values()}


def test_check_passes_then_fails_when_stale_or_invalid(real_records, tmp_path, capsys):
    root = _store(tmp_path, real_records[:6])
    out = tmp_path / "leaderboard"
    build_leaderboard(root, out)
    assert check_leaderboard(root, out) == []
    assert main(["leaderboard", "--check", "--out", str(out), f"paths.results={root}"]) == 0
    write_records(root, real_records[6:])  # new results arrive
    assert any("stale" in p for p in check_leaderboard(root, out))
    assert main(["leaderboard", "--check", "--out", str(out), f"paths.results={root}"]) == 1
    build_leaderboard(root, out)
    assert check_leaderboard(root, out) == []
    bad = copy.deepcopy(real_records[0])
    bad["seed"] = None
    (root / "runs" / f"{bad['run_id']}.json").write_text(json.dumps(bad))
    problems = check_leaderboard(root, out)
    assert problems and "seed" in problems[0]
    with pytest.raises(KDBenchError, match="invalid result records"):
        build_leaderboard(root, out)


def test_hand_edits_are_detected(real_records, tmp_path):
    root = _store(tmp_path, real_records)
    out = tmp_path / "lb"
    build_leaderboard(root, out)
    (out / "benchmark.csv").write_text("method\nmine\n")
    assert any("changed after it was generated" in p for p in check_leaderboard(root, out))


def test_plots_are_pngs_and_never_degenerate(real_records, tmp_path):
    files = render(_store(tmp_path / "a", real_records))
    pngs = [n for n in files if n.endswith(".png")]
    assert any(n.startswith("gain_") for n in pngs) and any(n.startswith("curves_") for n in pngs)
    assert all(files[n][:8] == b"\x89PNG\r\n\x1a\n" for n in pngs)
    # every method shares one student: accuracy vs student cost would be one x value, so it is not drawn
    assert not any(n.startswith("cost_") for n in pngs)
    # a second student (another pair): now there is something to plot
    other = [relabel(r, pair="digits/cnn_wide-cnn_wide", student="cnn_wide") for r in real_records]
    for r in other:
        r["params"]["student"] *= 40
    assert any(n.startswith("cost_") for n in render(_store(tmp_path / "c", real_records + other)))
    # no vanilla run: no gain plot rather than an empty one
    files = render(_store(tmp_path / "b", [r for r in real_records if r["method"]["name"] != "vanilla"]))
    assert not any(n.startswith("gain_") for n in files) and any(n.startswith("curves_") for n in files)


def test_record_fields_are_escaped_in_the_page(real_records, tmp_path):
    recs = copy.deepcopy(real_records)
    recs[0]["note"] = "<script>alert(1)</script>"
    page = render(_store(tmp_path, recs))["index.html"].decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_speed_records_become_a_table(real_records, tmp_path):
    from kdbench.orchestration.config import compose
    from kdbench.orchestration.speed import measure_method

    root = _store(tmp_path, real_records)
    r = measure_method(compose(["pair=cifar100/resnet56-resnet20", "pair.teacher=resnet8", "pair.student=resnet8"]),
                       "kd", batch_size=4, steps=1, warmup=0)
    (root / "speed").mkdir()
    (root / "speed" / "kd.json").write_text(json.dumps(r))
    files = render(root)
    (row,) = _csv(files["speed.csv"])
    assert row["method"] == "kd" and float(row["images_per_s"]) == pytest.approx(r["engine"]["images_per_s"], abs=0.06)
    assert "## Training speed" in files["README.md"].decode() and 'id="speed"' in files["index.html"].decode()
    out = tmp_path / "lb"
    build_leaderboard(root, out)
    newer = {**r, "created": "2099" + r["created"][4:]}  # the same measurement, a later year
    newer["engine"] = {**r["engine"], "images_per_s": r["engine"]["images_per_s"] * 2}
    (root / "speed" / "kd2.json").write_text(json.dumps(newer))
    assert any("stale" in p for p in check_leaderboard(root, out))
    files = render(root)
    assert len(_csv(files["speed.csv"])) == 2  # the history keeps both
    page = files["index.html"].decode()
    latest = page.split('id="speed"', 1)[1].split("</table>", 1)[0]
    assert latest.count("<tr data-pair") == 1 and f"{newer['engine']['images_per_s']:.1f}" in latest
    assert '<details><summary><h2>Training speed: every measurement' in page


def test_cost_rows_say_where_and_how_steadily_they_were_measured(real_records, tmp_path):
    # KD's runs given three epochs to judge steadiness by
    recs = [relabel(r, epochs=3) if r["method"]["name"] == "kd" else copy.deepcopy(r) for r in real_records]
    for r in recs:  # steady epochs by construction: the real runs' own times vary with the machine's load
        for row in r["history"]:
            row["time_s"] = 1.0
    kd = [r for r in recs if r["method"]["name"] == "kd"]
    kd[0]["history"][1]["time_s"] = 10 * kd[0]["history"][0]["time_s"] + 1  # an epoch paused or shared
    kd[1]["environment"]["hardware"] = "Other CPU x8"
    rows = {r["method_id"]: r for r in _csv(render(_store(tmp_path, recs))["cost.csv"])}
    assert rows["kd"]["timing"] == "1 of 3 runs unsteady" and rows["vanilla"]["timing"] == "steady"
    assert "Other CPU x8" in rows["kd"]["hardware"] and ";" in rows["kd"]["hardware"]
    md = render(_store(tmp_path / "b", recs))["README.md"].decode()
    assert "come from 2 machines" in md


def test_out_never_deletes_files_it_did_not_write(real_records, tmp_path):
    """`--out docs` once deleted docs/record-schema.md; `--out results/reference` the paper numbers."""
    root = _store(tmp_path, real_records)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "record-schema.md").write_text("mine")
    (docs / "numbers.csv").write_text("a,b\n")
    with pytest.raises(KDBenchError, match="not empty and was not written"):
        build_leaderboard(root, docs)
    assert sorted(p.name for p in docs.iterdir()) == ["numbers.csv", "record-schema.md"]
    assert main(["leaderboard", "--out", str(docs), f"paths.results={root}"]) == 2
    # A folder we generated: a later build removes only what the old manifest listed.
    out = tmp_path / "lb"
    build_leaderboard(root, out)
    (out / "notes.md").write_text("someone's notes")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["old_plot.png"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "old_plot.png").write_bytes(b"old")
    build_leaderboard(root, out)
    assert (out / "notes.md").read_text() == "someone's notes" and not (out / "old_plot.png").exists()
    assert any("did not write: notes.md" in p for p in check_leaderboard(root, out))


def test_a_foreign_manifest_is_not_taken_for_ours(real_records, tmp_path):
    """Another tool's manifest.json once made `--out` delete the files it named."""
    root, site = _store(tmp_path, real_records), tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("theirs")
    (site / "manifest.json").write_text(json.dumps({"version": 3, "files": {"index.html": "0" * 64}}))
    with pytest.raises(KDBenchError, match="not written by `kdbench leaderboard`"):
        build_leaderboard(root, site)
    assert (site / "index.html").read_text() == "theirs"
    old = tmp_path / "old"  # a build of ours from before the marker: its files all as it wrote them
    build_leaderboard(root, old)
    m = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({k: m[k] for k in ("version", "options", "inputs_sha256",
                                                                      "files")} | {"version": 3}))
    build_leaderboard(root, old)
    assert check_leaderboard(root, old) == []
    assert any("not written by" in p for p in check_leaderboard(root, site))


def test_an_interrupted_build_is_finished_by_the_next(real_records, tmp_path, monkeypatch):
    """An interrupted first `--out NEW` used to leave a folder the next build refused as not its own."""
    import kdbench.report.build as build

    root, out, written = _store(tmp_path, real_records), tmp_path / "new", []
    real_write = build.atomic_write_bytes

    def ctrl_c_on_third(path, data, *a):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, data, *a)

    monkeypatch.setattr(build, "atomic_write_bytes", ctrl_c_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_leaderboard(root, out)
    monkeypatch.setattr(build, "atomic_write_bytes", real_write)
    assert any("unfinished build" in p for p in check_leaderboard(root, out))
    build_leaderboard(root, out)  # recognised as ours, finished
    assert check_leaderboard(root, out) == []
    assert "unfinished" not in json.loads((out / "manifest.json").read_text())


def test_a_damaged_manifest_says_to_rebuild(real_records, tmp_path):
    root = _store(tmp_path, real_records)
    out = tmp_path / "lb"
    build_leaderboard(root, out)
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:60])  # truncated
    (problem,) = check_leaderboard(root, out)
    assert "damaged" in problem and "rebuild" in problem
    with pytest.raises(KDBenchError, match="rebuild"):
        build_leaderboard(root, out)


def test_a_foreign_manifest_is_never_advised_away_nor_taken_by_its_shape(real_records, tmp_path):
    """Hostile round 2: another tool's unreadable manifest.json got "damaged: delete OUT/" advice, and one of our
    old (version 3) shape was taken as ours, so a build removed the files it listed."""
    root = _store(tmp_path, real_records)
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text("not json at all")
    (problem,) = check_leaderboard(root, site)
    assert "not a manifest of `kdbench leaderboard`" in problem and "delete" not in problem
    theirs = {"version": 3, "options": {"metric": "last", "compare_short": False, "against": None},
              "inputs_sha256": "a" * 64, "files": {"index.html": "b" * 64}}
    (site / "index.html").write_text("theirs")
    (site / "manifest.json").write_text(json.dumps(theirs))
    with pytest.raises(KDBenchError, match="not written by `kdbench leaderboard`"):
        build_leaderboard(root, site)
    assert (site / "index.html").read_text() == "theirs"
    old = tmp_path / "old"  # a build of ours from before the marker: its files all as it wrote them
    build_leaderboard(root, old)
    m = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({k: m[k] for k in ("version", "options", "inputs_sha256",
                                                                      "files")} | {"version": 3}))
    build_leaderboard(root, old)
    assert check_leaderboard(root, old) == []


def test_check_honours_the_options_it_is_asked_for(real_records, tmp_path):
    root = _store(tmp_path, real_records)
    out = tmp_path / "lb"
    build_leaderboard(root, out, metric="selected")
    assert check_leaderboard(root, out, metric="selected") == []
    assert any("was built with" in p for p in check_leaderboard(root, out))
    assert any("was built with" in p for p in check_leaderboard(root, out, metric="selected", compare_short=True))


def test_files_are_replaced_whole_or_not_at_all(real_records, tmp_path, monkeypatch):
    """A crash once left a truncated index.html."""
    import os

    import kdbench.experiment.records as records

    root = _store(tmp_path, real_records)
    out = tmp_path / "lb"
    build_leaderboard(root, out)
    before = (out / "index.html").read_bytes()
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("index.html"):
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(records.os, "replace", crash)
    recs = copy.deepcopy(real_records)
    recs[0]["note"] = "changed"
    root2 = _store(tmp_path / "other", recs)
    with pytest.raises(KDBenchError, match="No space left"):
        build_leaderboard(root2, out)
    assert (out / "index.html").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _mutate(rec, rng):
    """Delete one field or replace one value with another type (a hand-edited or foreign record)."""
    rec = copy.deepcopy(rec)
    paths = [p for p in _paths(rec) if p[0] not in ("config", "environment", "git", "method_report")]
    path = rng.choice(paths)
    parent = rec
    for k in path[:-1]:
        parent = parent[k]
    if rng.random() < 0.4 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice([None, "x", -1, 1e9, [], {}, {"student": {}}, True, float("nan"), 3])
    return rec


def test_any_record_the_validator_accepts_renders_and_any_it_rejects_is_named(real_records, tmp_path,
                                                                               monkeypatch):
    """Records that `results validate` accepted once crashed `kdbench leaderboard`."""
    import random

    import kdbench.report.build as lb
    from kdbench.experiment.schema import validate_record

    monkeypatch.setattr(lb, "plots", lambda *a, **k: {})  # the data path is under test, not matplotlib
    rng = random.Random(0)
    accepted = rejected = 0
    for i in range(150):
        bad = _mutate(rng.choice(real_records), rng)
        errors = validate_record(bad, f"{bad.get('run_id')}.json" if isinstance(bad.get("run_id"), str) else None)
        if errors:
            rejected += 1
            assert all(":" in e and e.split(":")[0].strip() for e in errors), errors  # "field.path: what"
            continue
        accepted += 1
        root = tmp_path / f"s{i}"
        (root / "runs").mkdir(parents=True)
        (root / "runs" / f"{bad['run_id']}.json").write_text(json.dumps(bad))
        lb.render(root)  # must not raise
    assert accepted > 10 and rejected > 50


def test_notes_cannot_inject_html_or_spreadsheet_formulas(real_records, tmp_path):
    recs = copy.deepcopy(real_records)
    recs[0]["note"] = '=HYPERLINK("http://x","y")'
    recs[1]["note"] = "<img src=x onerror=alert(1)>"
    files = render(_store(tmp_path, recs))
    notes = {r["note"] for r in _csv(files["runs.csv"])}
    assert "'=HYPERLINK(\"http://x\",\"y\")" in notes and not any(n.startswith("=") for n in notes)
    md = files["README.md"].decode()
    assert "<img src=x" not in md


# One text per output format's special characters: HTML, Markdown links and images, a spreadsheet formula,
# mathtext (an unbalanced one would crash matplotlib), LaTeX, table pipes and a newline.
HOSTILE = '=HYPERLINK("http://x") <b>bold</b> ![i](http://x/i.png) [a](javascript:alert(1)) $\\frac{$ %&_#{}~^ |\n'


def test_nothing_from_a_record_is_live_in_any_output(real_records, tmp_path):
    """A dataset name, a hardware string, a note or a hyper-parameter value from a record is inert in the
    Markdown, HTML, LaTeX, CSV and figures (it once was live HTML in README.md, a formula in the CSVs, a
    matplotlib crash)."""
    import csv
    import io

    recs = [relabel(r, dataset="cifar10" + HOSTILE, mode=HOSTILE) if r["method"]["name"] == "kd"
            else copy.deepcopy(r) for r in real_records]
    for r in recs:
        r["environment"]["hardware"] = HOSTILE
        r["note"] = HOSTILE
    files = render(_store(tmp_path, recs))
    md = files["README.md"].decode()
    for live in ("<b>", "[a](javascript", "![i](http://x/i.png)"):  # escaped, they read \[a\](...
        assert live not in md, live
    page = files["index.html"].decode()
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    for name, data in files.items():
        if name.endswith(".csv"):
            for row in csv.reader(io.StringIO(data.decode())):
                for cell in row:
                    assert not cell.startswith(("=", "@")) and not (cell[:1] in "+-" and cell[1:2].isalpha()), \
                        (name, cell)
        if name.endswith(".tex"):
            assert "$\\frac{$" not in data.decode()  # the record's mathtext is escaped, never typeset
    assert any(n.endswith(".png") for n in files)  # the figures rendered with the hostile labels


def test_names_of_any_length_make_file_names_that_can_be_written(real_records, tmp_path):
    """Hostile round 2: a 257-character dataset name made a figure's file name too long to write. Two long names
    that share their first characters still get files of their own."""
    long = "d" * 300
    recs = [relabel(r, dataset=long + suffix) if r["method"]["name"] in ("kd", "vanilla") else copy.deepcopy(r)
            for suffix in ("a", "b") for r in real_records]
    out = tmp_path / "lb"
    build_leaderboard(_store(tmp_path, recs), out)
    names = [p.name for p in out.iterdir()]
    assert max(len(n.encode()) for n in names) <= 255
    gains = [n for n in names if n.startswith("gain_" + "d" * 60)]
    assert len(gains) == 2, names


def test_the_reporting_layer_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, kdbench.report; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).returncode == 0


def test_the_page_assets_are_package_files():
    from importlib import resources

    assets = resources.files("kdbench.report") / "assets"
    assert (assets / "page.css").read_text().startswith("body{") and "sortable" in (assets / "page.js").read_text()


@pytest.mark.parametrize("row,dataset,expected", [
    ({"method": "one", "scheme": "online", "student": "resnet32", "peer": None, "teacher": "resnet110"},
     "cifar100", (68.82, 73.39)),
    ({"method": "tf-kd-self", "scheme": "self", "student": "resnet18", "peer": None, "teacher": "resnet18"},
     "cifar100", (75.87, 77.10)),
    ({"method": "dml", "scheme": "online", "student": "resnet32", "peer": "resnet32", "teacher": "resnet56"},
     "cifar10", (92.47, 92.80)),  # the student's row, not the survey's teacher-side one (92.68)
    ({"method": "ft", "scheme": "offline", "student": "resnet20", "peer": None, "teacher": "resnet56"},
     "cifar10", (92.22, 93.15)),
    ({"method": "ft", "scheme": "offline", "student": "resnet20", "peer": None, "teacher": "resnet110"},
     "cifar10", None),  # another teacher: no match
    ({"method": "one", "scheme": "online", "student": "resnet32", "peer": None, "teacher": "resnet110",
      "label": "one (branches=4)"}, "cifar100", None),  # a variant is never set beside a reported number
])
def test_survey_numbers_stand_beside_ours_only_for_the_same_method_and_networks(row, dataset, expected):
    import pandas as pd

    from kdbench.report.papers import load_reference, survey_match

    ref = load_reference(REFERENCE.parent)
    got = survey_match(ref, dataset, pd.Series({"label": row["method"], **row}))
    if expected is None:
        assert got is None
    else:
        assert (got["survey_baseline"], got["survey_distilled"]) == expected
        assert got["survey_gain"] == pytest.approx(expected[1] - expected[0], abs=0.006)


def _tex_shape(tex: str) -> None:
    """LaTeX parsed for shape: environments nest and close, braces balance (escaped ones aside), and every
    tabular row has as many cells as the column spec."""
    import re

    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{([^}]*)\}", tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, name
    assert not stack
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    body = tex.split("\\toprule", 1)[1].split("\\bottomrule", 1)[0]
    rows = [ln for ln in body.splitlines() if ln.strip().endswith("\\\\")]
    assert rows
    for ln in rows:
        assert len(re.split(r"(?<!\\)&", ln)) == len(spec), ln


def test_methods_are_in_the_crd_tables_order_with_display_names_and_every_table_has_latex(real_records, tmp_path):
    files = render(_store(tmp_path, real_records))
    bench = [r["method"] for r in _csv(files["benchmark.csv"])]
    assert bench[:4] == ["Teacher", "Student (vanilla)", "KD", "DML"]  # CRD order: offline rows, then online
    tex = {n: d.decode() for n, d in files.items() if n.endswith(".tex")}
    kinds = {n.split("-digits")[0] for n in tex}
    assert {"benchmark", "survey-offline", "survey-online", "survey-self", "members", "cost"} <= kinds
    for name, t in tex.items():
        _tex_shape(t)
        assert "\\toprule" in t and "\\caption{" in t, name
    table = tex[next(n for n in tex if n.startswith("benchmark"))]
    assert any(ln.startswith("KD & ") for ln in table.splitlines()) and "$\\pm$" in table
    from kdbench.report.render import tex_escape

    assert tex_escape("crd+kd_x & 5% {a} #1 ~ ^") == r"crd+kd\_x \& 5\% \{a\} \#1 \textasciitilde{} \textasciicircum{}"


def test_against_kd_marks_each_cell_up_or_down_as_the_crd_table_does(real_records, tmp_path):
    variants = [relabel(r, temperature=1.0) for r in real_records if r["method"]["name"] == "kd"]
    for r in variants:  # a variant that is clearly below KD on every seed
        set_top1(r, r["metrics"]["last"]["student"]["test"]["top1"] - 5)
    files = render(_store(tmp_path, real_records + variants), against="kd")
    rows = {r["method"]: r for r in _csv(files["benchmark.csv"])}
    pair = "digits/cnn_wide-cnn_small"
    assert rows["KD (temperature=1)"][pair].endswith(" ↓")
    assert not rows["KD"][pair].endswith(("↑", "↓")) and not rows["Student (vanilla)"][pair].endswith(("↑", "↓"))
    assert "as the CRD table marks them against KD" in files["README.md"].decode()
    plain = {r["method"]: r for r in _csv(render(_store(tmp_path / "plain", real_records + variants))["benchmark.csv"])}
    assert not plain["KD (temperature=1)"][pair].endswith("↓")


def test_a_backslash_cannot_unescape_a_link_and_csv_headers_are_inert():
    """Hostile round 2: a record's ``\\[x](url)`` became a live link (the escape's own backslash was escaped
    away); a pair name such as ``=HYPERLINK(...)`` reached a CSV header, where tables name columns by pair."""
    import pandas as pd

    from kdbench.report.render import _md_escape, csv_safe

    assert _md_escape("\\[bh](http://e.x/bh)") == "\\\\\\[bh\\](http://e.x/bh)"  # \\ then \[: no link
    out = csv_safe(pd.DataFrame({"=HYPERLINK(\"http://x\")": [1], "+cmd-2+3": ["=1+1"], "cifar100/a-b": [2.0]}))
    assert list(out.columns) == ["'=HYPERLINK(\"http://x\")", "'+cmd-2+3", "cifar100/a-b"]
    assert out.iloc[0, 1] == "'=1+1" and out.iloc[0, 2] == 2.0


def test_a_killed_builds_temp_files_never_block_or_stain_the_next_build(real_records, tmp_path):
    """Hostile round 2: a kill during the first build's claim left only ``.manifest.json.*.tmp`` and the next
    build refused the folder as foreign; a stale ``.index.html.*.tmp`` failed ``--check`` forever."""
    root = _store(tmp_path, real_records)
    first = tmp_path / "first"
    first.mkdir()
    (first / ".manifest.json.k1ll3d.tmp").write_text("{")
    build_leaderboard(root, first)
    assert check_leaderboard(root, first) == []
    (first / ".index.html.k1ll3d.tmp").write_text("half")
    build_leaderboard(root, first)
    assert check_leaderboard(root, first) == [] and not (first / ".index.html.k1ll3d.tmp").exists()
    (first / ".notes.txt.x1.tmp").write_text("not ours")  # a temp of a file we never wrote stays, and is named
    build_leaderboard(root, first)
    assert any(".notes.txt.x1.tmp" in p for p in check_leaderboard(root, first))
