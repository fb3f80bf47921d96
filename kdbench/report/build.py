"""Build and check the leaderboard folder: every file from records, written atomically, with a manifest."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from kdbench.core.errors import KDBenchError
from kdbench.experiment.records import atomic_write_bytes, write_json_atomic
from kdbench.experiment.results import runs_dir, valid_records
from kdbench.experiment.schema import validate_speed_record

from .frame import Setting, aggregate, runs_frame, settings
from .papers import PAPER_COLUMNS, load_reference, paper_comparison, survey_tables
from .plots import _slug, plots
from .render import Section, csv_rows, csv_safe, latex_table, markdown, page
from .speed import speed_tables
from .tables import COST_COLUMNS, MEMBER_COLUMNS, Table, benchmark, cost_table, members_table, runs_table

LEADERBOARD_VERSION = 3
MANIFEST_FORMAT = "kdbench-leaderboard"  # marks a folder as ours: only then are files its manifest lists removed



def setting_tables(agg, df, ref, setting: Setting, sid: str, compare_short: bool,
                   against: str | None = None) -> list[Table]:
    """The four tables of one setting, in page order (the paper comparison only where a paper matches)."""
    cap = setting.caption()
    out = [benchmark(agg, df, setting, sid, against), *survey_tables(agg, ref, setting, sid)]
    members = members_table(agg, setting)
    if members:
        out.append(Table(f"members-{sid}", "Every evaluated model: cohorts, branches, heads, ensembles", cap,
                         MEMBER_COLUMNS, members, note="The reported student is the first model a method "
                         "evaluates; the others are recorded beside it (same seeds, same test split)."))
    paper = paper_comparison(agg, ref, setting, compare_short)
    if paper:
        out.append(Table(f"paper-{sid}", "Against the papers' numbers", cap, PAPER_COLUMNS, paper))
    cost = cost_table(agg, setting)
    machines = sorted({h for r in cost for h in r["hardware"].split("; ")})
    note = ("Timing: a run is unsteady when one of its epochs took more than twice its median epoch time (a "
            "shared or paused machine); its s/epoch and images/s overstate the method's cost.")
    if len(machines) > 1:
        note = (f"s/epoch, images/s and memory come from {len(machines)} machines ({'; '.join(machines)}): compare "
                "them within one machine. " + note)
    out.append(Table(f"cost-{sid}", "Cost and calibration", cap, COST_COLUMNS, cost, note=note))
    return out


def load_speed(results_root: Path) -> list[dict[str, Any]]:
    """Speed records written by ``kdbench speed`` (results/speed/*.json), validated by the schema module."""
    out = []
    for path in sorted((Path(results_root) / "speed").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise KDBenchError(f"{path}: not valid JSON: {exc}") from None
        problems = validate_speed_record(rec)
        if problems:
            raise KDBenchError(f"{path}: not a valid speed record: {'; '.join(problems[:5])}")
        out.append(rec)
    return out


def _inputs_digest(results_root: Path, options: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps({"version": LEADERBOARD_VERSION, "options": options}, sort_keys=True).encode())
    for path in (sorted(runs_dir(results_root).glob("*.json")) + sorted((results_root / "reference").glob("*.csv"))
                 + sorted((results_root / "speed").glob("*.json"))):
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def render(results_root: str | Path, metric: str = "last", compare_short: bool = False,
           against: str | None = None) -> dict[str, bytes]:
    """Every output file of the leaderboard, by name (pure: writes nothing)."""
    import pandas as pd

    results_root = Path(results_root)
    records = [r for r in valid_records(results_root) if r["status"] == "completed"]  # failures: `kdbench status`
    if not records:
        raise KDBenchError(f"no records in {runs_dir(results_root)}: run `kdbench bench` or `kdbench run` first")
    df = runs_frame(records, metric)
    agg = aggregate(df)
    ref = load_reference(results_root)
    sections = []
    csvs: dict[str, list[dict[str, Any]]] = {"benchmark": [], "survey": [], "members": [], "paper_comparison": [],
                                             "cost": []}
    for s in settings(df, metric):
        slug = _slug(s.id)
        sec = Section(s, slug, setting_tables(agg, df, ref, s, slug, compare_short, against), plots(agg, df, s))
        sections.append(sec)
        for t in sec.tables:
            kind = t.id.rsplit("-" + slug, 1)[0].replace("paper", "paper_comparison")
            kind = "survey" if kind.startswith("survey-") else kind  # its three sections: one CSV
            rows = ([{"setting": s.id, **{c.key: r[c.key] for c in t.columns}} for r in t.rows]
                    if kind == "benchmark" else csv_rows(t, setting=s.id))
            csvs[kind] += rows
    speed, speed_history = speed_tables(load_speed(results_root))
    files: dict[str, bytes] = {name: data for sec in sections for name, data in sec.images.items()}

    def csv(rows) -> bytes:
        return csv_safe(pd.DataFrame(rows)).to_csv(index=False, lineterminator="\n").encode()

    for kind, rows in csvs.items():
        files[f"{kind}.csv"] = csv(rows)
    for sec in sections:  # each table as LaTeX (booktabs), for a paper
        for t in sec.tables:
            files[f"{t.id}.tex"] = latex_table(t).encode()
    files["aggregate.csv"] = csv_safe(agg).to_csv(index=False, lineterminator="\n").encode()
    runs = df.drop(columns=["curve"])
    files["runs.csv"] = csv_safe(runs).to_csv(index=False, lineterminator="\n").encode()
    files["speed.csv"] = csv(speed_history.rows)  # every measurement; the tables show the latest first
    extra = [runs_table(df), speed, speed_history]
    files["README.md"] = markdown(sections, [speed], metric).encode()
    files["index.html"] = page(sections, extra, {k: sorted(set(df[k])) for k in ("dataset", "pair", "scheme")},
                               metric).encode()
    return files


def _read_manifest(out: Path) -> dict[str, Any] | None:
    """The folder's manifest.json (None if absent); a damaged one is named with what to do."""
    path = out / "manifest.json"
    if not path.exists():
        return None
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise KDBenchError(f"{path} cannot be read ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("no file list")
    except ValueError as exc:
        if f'"format": "{MANIFEST_FORMAT}"' not in text:  # nothing says it is ours: never advise deleting it
            raise KDBenchError(f"{path} is not a manifest of `kdbench leaderboard` ({exc}): refusing to touch "
                               f"{out}/; give --out a new or empty folder") from None
        raise KDBenchError(f"{path} is damaged ({exc}; truncated?): delete {out}/ and rebuild it with "
                           f"`kdbench leaderboard --out {out}`") from None
    if not _is_ours(manifest, out):  # another tool's manifest.json: its file list is not ours
        raise KDBenchError(f"{path} was not written by `kdbench leaderboard` (no \"format\": \"{MANIFEST_FORMAT}\"): "
                           f"refusing to touch {out}/; give --out a new or empty folder (or delete an old "
                           "kdbench build and rebuild it)")
    return manifest


def _is_ours(manifest: dict[str, Any], out: Path) -> bool:
    """Our marker; or the exact shape of a manifest this command wrote before it had one (version 3) *and* the
    folder still holding every file it lists, byte for byte -- a shape alone is easy to share with another tool,
    and this answer decides which files a build may remove."""
    if manifest.get("format") == MANIFEST_FORMAT:
        return True
    hex64 = re.compile(r"[0-9a-f]{64}")
    if not (set(manifest) == {"version", "options", "inputs_sha256", "files"} and manifest["version"] == 3
            and isinstance(manifest["options"], dict)
            and set(manifest["options"]) == {"metric", "compare_short", "against"}
            and isinstance(manifest["inputs_sha256"], str) and hex64.fullmatch(manifest["inputs_sha256"]) is not None
            and manifest["files"]
            and all(isinstance(v, str) and hex64.fullmatch(v) for v in manifest["files"].values())):
        return False
    for name, digest in manifest["files"].items():
        path = out / name
        if "/" in name or not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
    return True


_TEMP = re.compile(r"\.(.+)\.[A-Za-z0-9_]+\.tmp")  # atomic_write_bytes's temp file of NAME: .NAME.XXXXXXXX.tmp


def build_leaderboard(results_root: str | Path, out: Path, metric: str = "last",
                      compare_short: bool = False, against: str | None = None) -> list[Path]:
    """Write every file of the leaderboard into ``out``, each atomically, the manifest last.

    ``out`` must be new, empty, or a folder this command wrote before (it has our manifest.json):
    only files that the previous manifest lists are ever removed, so pointing ``--out`` at docs/ or
    results/ cannot delete anything.
    """
    results_root, out = Path(results_root), Path(out)
    if out.exists() and not out.is_dir():
        raise KDBenchError(f"--out {out} is a file, not a folder")
    previous = _read_manifest(out) if out.is_dir() else None
    if out.is_dir():  # a killed build's temp files are ours (``.NAME.*.tmp`` of a file we write): gone first
        ours = {"manifest.json", *(previous or {}).get("files", {})}
        for p in out.iterdir():
            m = _TEMP.fullmatch(p.name)
            if m and p.is_file() and (m.group(1) in ours or previous is None and m.group(1) == "manifest.json"):
                p.unlink()
    if previous is None and out.is_dir() and any(out.iterdir()):
        raise KDBenchError(f"{out}/ is not empty and was not written by `kdbench leaderboard` (it has no "
                           "manifest.json): refusing to write into it; give --out a new or empty folder")
    options = {"metric": metric, "compare_short": compare_short, "against": against}
    files = render(results_root, metric, compare_short, against)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Claim the folder first: an interrupted build leaves a manifest that lists every file it may have
        # written, so the next build recognises the folder as its own and --check calls it unfinished.
        claimed = sorted({*(previous or {}).get("files", {}), *files})
        write_json_atomic(out / "manifest.json", {"format": MANIFEST_FORMAT, "version": LEADERBOARD_VERSION,
                                                  "options": options,
                                                  "unfinished": True, "files": {n: None for n in claimed}})
        for name in (previous or {}).get("files", {}):
            if name not in files and "/" not in name and (out / name).is_file():
                (out / name).unlink()  # ours, from an earlier build, no longer produced
        written = []
        for name, data in files.items():
            atomic_write_bytes(out / name, data)
            written.append(out / name)
        manifest = {"format": MANIFEST_FORMAT, "version": LEADERBOARD_VERSION, "options": options,
                    "inputs_sha256": _inputs_digest(results_root, options),
                    "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}}
        write_json_atomic(out / "manifest.json", manifest)
    except OSError as exc:
        raise KDBenchError(f"could not write the leaderboard to {out}/: {exc.strerror or exc} "
                           f"({exc.filename or out})") from None
    return written + [out / "manifest.json"]


def check_leaderboard(results_root: str | Path, out: Path, metric: str = "last",
                      compare_short: bool = False, against: str | None = None) -> list[str]:
    """Problems that make ``out`` untrustworthy: invalid records, stale, hand-edited or foreign files,
    or a build with other options than the ones asked for."""
    results_root, out = Path(results_root), Path(out)
    try:
        valid_records(results_root)
    except KDBenchError as exc:
        return [str(exc)]
    try:
        manifest = _read_manifest(out)
    except KDBenchError as exc:
        return [str(exc)]
    if manifest is None:
        return [f"{out}/manifest.json is missing: run `kdbench leaderboard`"]
    if manifest.get("unfinished"):
        return [f"{out}/ is an unfinished build (interrupted): run `kdbench leaderboard --out {out}` to finish it"]
    problems = []
    options = {"metric": metric, "compare_short": compare_short, "against": against}
    if manifest.get("options") != options:
        problems.append(f"{out}/ was built with {manifest.get('options')}, not {options}: run `kdbench leaderboard` "
                        "with the options to check")
    if manifest.get("inputs_sha256") != _inputs_digest(results_root, manifest.get("options", {})):
        problems.append(f"{out}/ is stale: {runs_dir(results_root)} or the reference numbers changed since it was "
                        "built; run `kdbench leaderboard`")
    for name, digest in manifest.get("files", {}).items():
        path = out / name
        if not path.exists():
            problems.append(f"{path} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{path} was changed after it was generated (a truncated file too): rebuild it with "
                            "`kdbench leaderboard`")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in manifest["files"] and p.name != "manifest.json")
    if foreign:
        problems.append(f"{out}/ holds files that `kdbench leaderboard` did not write: {', '.join(foreign)} "
                        "(generated folders hold generated files only)")
    return problems
