"""The leaderboard's tables, each declared once: rows (dicts, also the CSV rows) and the columns
that the Markdown and HTML renderers share (header, display text, sort value)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kdbench.experiment.catalog import display_name, method_rank, survey_name, survey_teacher
from kdbench.experiment.records import describe_fast_path, speedup_range
from kdbench.experiment.schema import VANILLA

from .frame import Setting

SCHEME_ORDER = {"offline": 0, "online": 1, "self": 2, "none": 3}
# How each method is shown -- display name, row order, the survey's name for it -- is declared where the
# method registers (``register_method``) and read from the catalog when a table is built; records of a
# method not registered here keep their id and follow the registered ones, alphabetically.


def untagged(label: str) -> str:
    """A row label without its ``[teacher 1a2b3c4d]`` tag: the method and any hyper-parameter variant."""
    return label.split(" [teacher ", 1)[0]


def display(label: str, method: str) -> str:
    """A row label with the method's display name in place of its id: ``KD (temperature=1)``."""
    name = display_name(method)
    return name + label[len(method):] if label.startswith(method) else label


# Schedules of the papers whose numbers we compare against (CIFAR experiments).
PAPER_EPOCHS = {"tian2020crd": 240, "zhao2022dkd": 240, "zhao2023dot": 240, "chen2021reviewkd": 240,
                "zhang2018dml": 200}
REFERENCE_DATASET = {"cifar100": "cifar100", "cifar10": "cifar10", "cifar10-jpg": "cifar10"}
# Training-set sizes of the papers' protocol (the whole official training set).
OFFICIAL_TRAIN = {"cifar100": 50_000, "cifar10": 50_000}


def fmt(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Column:
    """One column: ``key`` in the row dicts, its ``header``, how its cell reads, and its sort value."""

    key: str
    header: str
    text: Callable[[dict[str, Any]], str] | None = None  # default: fmt(row[key])
    sort: Callable[[dict[str, Any]], Any] | None = None  # default: row[key] when it is a number

    def cell(self, row: dict[str, Any]) -> str:
        return self.text(row) if self.text is not None else fmt(row.get(self.key))

    def sort_value(self, row: dict[str, Any]) -> Any:
        v = self.sort(row) if self.sort is not None else row.get(self.key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass
class Table:
    """A table of one setting (or of the whole store): what the three renderers need and nothing else."""

    id: str
    title: str
    caption: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    filters: tuple[str, ...] = ("pair", "scheme")  # row keys the page's filters read (data-* attributes)
    note: str = ""
    best: Callable[[dict[str, Any], Column], bool] = field(default=lambda row, col: False)
    collapsed: bool = False  # on the page: folded under its title, one click away


def _num(key: str, header: str, nd: int) -> Column:
    return Column(key, header, text=lambda r: fmt(r.get(key), nd))


def _arrow(gain: float) -> str:
    return "↑" if gain > 0 else "↓" if gain < 0 else ""


def _pair_label(agg_row) -> str:
    return f"{agg_row['teacher']} → {agg_row['student']}"


def _network(agg_row) -> str:
    """The networks a scheme trains: teacher → student (offline), the cohort (online), the student (self)."""
    if agg_row["scheme"] == "online":
        peer = agg_row.get("peer")
        return f"{agg_row['student']} ⇄ {peer}" if isinstance(peer, str) and peer else str(agg_row["student"])
    return str(agg_row["student"]) if agg_row["scheme"] == "self" else _pair_label(agg_row)


def _baseline(a, row) -> float | None:
    """The vanilla student's mean for ``row``: same pair and the same experiment but for the method."""
    base = a[(a["pair"] == row["pair"]) & (a["method"] == VANILLA) & (a["baseline_key"] == row["baseline_key"])]
    return float(base["mean"].iloc[0]) if len(base) else None


def _teacher_rows(a, df, setting: Setting, pairs: list[str]) -> list[dict[str, Any]]:
    """One row per teacher (by weights); a single "Teacher" row when every pair had one."""
    d = df[(df["setting"] == setting.id) & df["counted"] & (df["teacher_sha"] != "")]
    shas = sorted(set(d["teacher_sha"]))
    many = any(d[d["pair"] == p]["teacher_sha"].nunique() > 1 for p in pairs)
    rows = []
    for sha in (shas if many else [None]):
        row: dict[str, Any] = {"method": f"Teacher {sha[:8]}" if sha else "Teacher", "scheme": "", "_best": set(),
                               "_values": {}}
        for p in pairs:
            t = d[(d["pair"] == p) & ((d["teacher_sha"] == sha) if sha else True)]["teacher_acc"].dropna()
            row[p] = f"{t.iloc[0]:.2f}" if len(t) else ""
            row["_values"][p] = float(t.iloc[0]) if len(t) else None
        rows.append(row)
    return rows


def _against_mark(a, row, against: str | None) -> str:
    """" ↑"/" ↓" for ``row`` against ``against``'s default cell on the same pair and teacher ("" for the
    reference itself, vanilla, or where it has no such cell)."""
    if not against or row["method"] == VANILLA or untagged(row["label"]) == against:
        return ""
    ref = a[(a["pair"] == row["pair"]) & (a["method"] == against) & (a["teacher_sha"] == row["teacher_sha"])
            & (a["label"].map(untagged) == against)]
    if not len(ref):
        return ""
    arrow = _arrow(float(row["mean"]) - float(ref["mean"].iloc[0]))
    return f" {arrow}" if arrow else ""


def benchmark_table(agg, df, setting: Setting, against: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows = teacher(s), vanilla, then methods and their variants; columns = pairs (CRD benchmark layout).

    The header holds pair ids (CSV columns); pages show them as "teacher → student".
    """
    a = agg[agg["setting"] == setting.id]
    pairs = sorted(a["pair"].unique())
    header = ["method"] + pairs
    rows: list[dict[str, Any]] = _teacher_rows(a, df, setting, pairs)
    method_of = dict(zip(a["label"], a["method"]))
    labels = sorted(set(a["label"]), key=lambda lab: (method_rank(method_of[lab]), lab))
    best = {}
    for p in pairs:
        cand = a[(a["pair"] == p) & (a["method"] != VANILLA)]
        if len(cand):
            best[p] = cand["mean"].max()
    for lab in labels:
        row: dict[str, Any] = {"method": display(lab, method_of[lab]),
                               "scheme": "", "_best": set(), "_values": {}}
        for p in pairs:
            hit = a[(a["pair"] == p) & (a["label"] == lab)]
            if len(hit):
                row[p] = hit["cell"].iloc[0] + _against_mark(a, hit.iloc[0], against)
                row["scheme"] = hit["scheme"].iloc[0]
                row["_values"][p] = float(hit["mean"].iloc[0])
                if hit["method"].iloc[0] != VANILLA and hit["mean"].iloc[0] == best.get(p):
                    row["_best"].add(p)
            else:
                row[p] = ""
                row["_values"][p] = None
        rows.append(row)
    return header, rows


SURVEY = "gou2021survey"
SCHEMES_SHOWN = ("offline", "online", "self")


def survey_match(ref, dataset: str | None, r) -> dict[str, Any] | None:
    """The survey's row for this method and architectures: same student, and the same teacher (offline),
    peer (online; ONE's teacher is the student's own branch ensemble) or none (self). Never a
    hyper-parameter variant; the survey's rows for an online cohort's teacher-side network are skipped."""
    if dataset is None or ref.empty or "source" not in ref or untagged(r["label"]) != r["method"]:
        return None  # a hyper-parameter variant is never set beside a reported number
    name = survey_name(r["method"])
    other = {"online": survey_teacher(r["method"], r["student"]) or r["peer"], "self": None}.get(
        r["scheme"], r["teacher"])
    hits = ref[(ref["source"] == SURVEY) & (ref["dataset"] == dataset) & (ref["method"] == name)
               & (ref["student"] == r["student"]) & ~ref["notes"].fillna("").str.contains("teacher-side")]
    if other is not None:
        hits = hits[hits["teacher"] == other]
    if hits.empty:
        return None
    h = hits.iloc[0]
    num = lambda v: None if v != v else float(v)  # noqa: E731  (NaN -> None)
    base, dist = num(h["student_baseline_acc"]), num(h["distilled_acc"])
    return {"survey_baseline": base, "survey_distilled": dist,
            "survey_gain": None if base is None or dist is None else round(dist - base, 2)}


def survey_table(agg, setting: Setting, ref=None) -> list[dict[str, Any]]:
    """Grouped by scheme and knowledge category, as the survey's Tables 5-6: gain over the vanilla student
    marked ↑/↓, and the survey's reported numbers beside ours where method and architectures match."""
    import pandas as pd

    ref = pd.DataFrame() if ref is None else ref
    a = agg[agg["setting"] == setting.id]
    out = []
    for _, r in a[a["method"] != VANILLA].iterrows():
        b = _baseline(a, r)
        gain = None if b is None else round(r["mean"] - b, 2)
        survey = survey_match(ref, REFERENCE_DATASET.get(setting.dataset), r) or {
            "survey_baseline": None, "survey_distilled": None, "survey_gain": None}
        out.append({"scheme": r["scheme"], "category": r["category"], "method": display(r["label"], r["method"]),
                    "method_id": r["method"],
                    "pair": r["pair"], "network": _network(r), "teacher": r["teacher_acc"],
                    "baseline": b, "distilled": r["cell"], "distilled_mean": r["mean"],
                    "gain": "" if gain is None else f"{gain:+.2f} {_arrow(gain)}".strip(),
                    "gain_value": gain, **survey})
    out.sort(key=lambda x: (SCHEME_ORDER.get(x["scheme"], 9), method_rank(x["method_id"]), x["method"], x["pair"]))
    return out


def survey_tables(agg, ref, setting: Setting, sid: str) -> list[Table]:
    """The survey-style table in its three sections -- offline, online, self -- each present (an empty
    section says so), like the survey's Tables 5 and 6."""
    rows = survey_table(agg, setting, ref)
    titles = {"offline": "Offline distillation (a pretrained teacher)",
              "online": "Online distillation (teacher and student trained together)",
              "self": "Self-distillation (no separate teacher network)"}
    note = ("Survey: the number Gou et al. (IJCV 2021, Tables 5-6) report for the same method and architectures, "
            "each from its own paper's protocol (typically 200-300 epochs on the full training set), so it is a "
            "reference point, not a same-protocol comparison.")
    out = []
    for scheme in SCHEMES_SHOWN:
        mine = [r for r in rows if r["scheme"] == scheme]
        out.append(Table(f"survey-{scheme}-{sid}", f"By training scheme: {titles[scheme]}", setting.caption(),
                         SURVEY_COLUMNS, mine, note=note if mine else f"No {scheme} method was run in this setting."))
    return out


def load_reference(results_root: Path):
    import pandas as pd

    files = sorted((Path(results_root) / "reference").glob("*.csv"))
    if not files:
        return pd.DataFrame(columns=["source", "dataset", "method", "teacher", "student", "distilled_acc"])
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def protocol_gaps(setting: Setting, paper_epochs: int | None, ref_dataset: str) -> list[str]:
    """Why our setting is not the paper's: each difference in protocol, training set, length, precision, metric."""
    gaps = []
    if setting.protocol != "paper":
        gaps.append(f"protocol {setting.protocol}")
    full = OFFICIAL_TRAIN.get(ref_dataset)
    if full is not None and setting.num_train != full:
        gaps.append(f"{setting.num_train:,} vs {full:,} training images")
    if paper_epochs is None:
        gaps.append("paper schedule unknown")
    elif setting.epochs != paper_epochs:
        gaps.append(f"{setting.epochs} vs {paper_epochs} epochs")
    if setting.precision != "fp32":
        gaps.append(f"{setting.precision} vs fp32")
    if setting.metric != "last":
        gaps.append("validation-selected vs last-epoch accuracy")
    return gaps


def paper_comparison(agg, ref, setting: Setting, compare_short: bool) -> list[dict[str, Any]]:
    """Our mean next to each paper's number for the same dataset, method, teacher and student -- only where
    the protocol matches the paper's (else the row says why not, and ``compare_short`` shows ours anyway).
    Hyper-parameter variants are never set beside a paper's number."""
    ref_ds = REFERENCE_DATASET.get(setting.dataset)
    if ref_ds is None or ref.empty:
        return []
    a = agg[(agg["setting"] == setting.id) & (agg["label"] == agg["method"])]
    out = []
    for _, r in a.iterrows():
        other = r["peer"] if r["scheme"] == "online" else r["teacher"]
        hits = ref[(ref["dataset"] == ref_ds) & (ref["method"] == r["method"]) & (ref["teacher"] == other)
                   & (ref["student"] == r["student"]) & ref["distilled_acc"].notna()]
        for _, h in hits.iterrows():
            gaps = protocol_gaps(setting, PAPER_EPOCHS.get(h["source"]), ref_ds)
            shown = not gaps or compare_short
            diff = round(r["mean"] - float(h["distilled_acc"]), 2) if shown else None
            flags = []
            if shown and r["n"] < 3:
                flags.append("n<3")
            if shown and (r["std"] is None or abs(diff) > 2 * r["std"]):
                flags.append("|diff|>2std")
            out.append({"method": display(r["method"], r["method"]), "method_id": r["method"], "pair": r["pair"],
                        "network": _pair_label(r), "scheme": r["scheme"],
                        "ours": r["cell"] if shown else "", "ours_mean": r["mean"] if shown else None,
                        "paper": float(h["distilled_acc"]), "source": h["source"], "diff": diff,
                        "flag": ", ".join(flags), "protocol": "same as the paper" if not gaps else
                        ("not comparable: " if not compare_short else "differs: ") + "; ".join(gaps)})
    return out


def _in_order(a):
    """Aggregate rows by pair, then in the table's method order."""
    keys = [(p, method_rank(m), lab) for p, m, lab in zip(a["pair"], a["method"], a["label"])]
    return a.iloc[sorted(range(len(a)), key=keys.__getitem__)]


def members_table(agg, setting: Setting) -> list[dict[str, Any]]:
    """Every model a method evaluates besides the student it reports: an online cohort's other members,
    ONE's branches and gated ensemble, BYOT's heads and ensemble -- each labelled, never pooled with the
    student's cell."""
    a = agg[agg["setting"] == setting.id]
    out = []
    for _, r in _in_order(a).iterrows():
        for name, text in (r["members"] or {}).items():
            out.append({"method": display(r["label"], r["method"]), "method_id": r["method"], "pair": r["pair"],
                        "network": _network(r), "scheme": r["scheme"],
                        "model": name, "student": r["cell"], "top1": text})
    return out


def cost_table(agg, setting: Setting) -> list[dict[str, Any]]:
    a = agg[agg["setting"] == setting.id]
    return [{"method": display(r["label"], r["method"]), "method_id": r["method"], "pair": r["pair"],
             "network": _pair_label(r), "scheme": r["scheme"],
             "epoch_time_s": r["epoch_time_s"], "images_per_s": r["images_per_s"],
             "peak_memory_mib": r["peak_memory_mib"], "memory_kind": r["memory_kind"],
             "extra_params": r["extra_params"], "ece": r["ece"], "agreement": r["agreement"], "kl": r["kl"],
             "hardware": r["hardware"],
             "timing": (f"{r['unsteady']} of {r['n']} runs unsteady" if r["unsteady"] else "steady")
             + (f"; in a cohort of {r['cohort']} (one teacher forward for all)" if r["cohort"] else "")}
            for _, r in _in_order(a).iterrows()]




# -- the tables, declared once ------------------------------------------------------------

def benchmark(agg, df, setting: Setting, sid: str, against: str | None = None) -> Table:
    header, rows = benchmark_table(agg, df, setting, against)
    labels = {r["pair"]: _pair_label(r) for _, r in agg.iterrows()}
    cols = [Column("method", "method")] + [
        Column(p, labels.get(p, p), text=lambda r, p=p: r[p], sort=lambda r, p=p: r["_values"].get(p))
        for p in header[1:]]
    note = "Bold: best distilled student per pair."
    if against:
        note += (f" ↑/↓: above/below {display_name(against)} (default hyper-parameters) on the same "
                 "pair and teacher, as the CRD table marks them against KD.")
    return Table(f"benchmark-{sid}", "Benchmark table", setting.caption(), cols, rows,
                 note=note, best=lambda r, c: c.key in r["_best"],
                 filters=("scheme",))


SURVEY_COLUMNS = [
    Column("scheme", "scheme"), Column("category", "knowledge"), Column("method", "method"),
    Column("network", "networks"), Column("teacher", "teacher"),
    Column("baseline", "student (vanilla)"), Column("distilled", "distilled", sort=lambda r: r["distilled_mean"]),
    Column("gain", "gain", sort=lambda r: r["gain_value"]),
    Column("survey_distilled", "survey: distilled"), Column(
        "survey_gain", "survey: gain", text=lambda r: "" if r["survey_gain"] is None else f"{r['survey_gain']:+.2f}"),
]

MEMBER_COLUMNS = [
    Column("method", "method"), Column("network", "networks"), Column("student", "student (reported)"),
    Column("model", "other evaluated model"), Column("top1", "its top-1"),
]

PAPER_COLUMNS = [
    Column("method", "method"), Column("network", "teacher → student"),
    Column("ours", "ours", sort=lambda r: r["ours_mean"]), Column("paper", "paper"), Column("source", "source"),
    Column("diff", "diff", text=lambda r: "" if r["diff"] is None else f"{r['diff']:+.2f}"),
    Column("flag", "flag"), Column("protocol", "protocol"),
]

COST_COLUMNS = [
    Column("method", "method"), Column("network", "teacher → student"), _num("epoch_time_s", "s/epoch", 3),
    _num("images_per_s", "images/s", 0),
    Column("peak_memory_mib", "peak memory (MiB)",
           text=lambda r: f"{fmt(r['peak_memory_mib'], 0)} ({r['memory_kind']})"),
    Column("extra_params", "extra params", text=lambda r: f"{r['extra_params']:,}"), Column("ece", "ECE (%)"),
    Column("agreement", "agreement w/ teacher (%)"), _num("kl", "KL(t‖s)", 4),
    Column("hardware", "measured on"), Column("timing", "timing"),
]

RUN_COLUMNS = [
    Column("run_id", "run"), Column("dataset", "dataset"), Column("pair", "pair"), Column("label", "method"),
    Column("seed", "seed"), Column("epochs", "epochs"), Column("acc", "top-1", text=lambda r: f"{r['acc']:.2f}"),
    Column("counted", "counted", text=lambda r: "yes" if r["counted"] else "no: a newer run of this seed counts"),
    Column("hardware", "hardware"), Column("date", "date"), Column("note", "note"),
]

def _raw(key: str, header: str) -> Column:
    return Column(key, header, text=lambda r: "" if r.get(key) is None else str(r[key]))


SPEED_COLUMNS = [_raw(k, h) for k, h in (
    ("pair", "pair"), ("method", "method"), ("batch", "batch"), ("hardware", "hardware"), ("engine", "engine"),
    ("ref_images_per_s", "reference img/s"), ("images_per_s", "img/s"), ("speedup", "speed-up"),
    ("rounds", "rounds"), ("speedup_range", "speed-up range"), ("gflop_per_image", "GFLOP/img"),
    ("tflops", "TFLOP/s"), ("mfu_pct", "MFU (%)"), ("peak_memory_mib", "peak MiB"), ("date", "date"))]


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


def runs_table(df) -> Table:
    rows = df.sort_values("run_id").to_dict("records")
    return Table("runs", "All runs", "every completed record in results/runs/", RUN_COLUMNS, rows,
                 filters=("dataset", "pair", "scheme"))


def speed_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        e = r["engine"]
        rows.append({
            "pair": r["pair"], "method": r["method"], "batch": r["batch_size"],
            "hardware": f"{r['environment']['hardware']}, {r['environment'].get('torch_threads')} threads"
            if r["environment"].get("gpu") is None else r["environment"]["hardware"],
            "engine": describe_fast_path(e),
            "ref_images_per_s": round(r["reference"]["images_per_s"], 1) if r.get("reference") else None,
            "images_per_s": round(e["images_per_s"], 1),
            "speedup": round(r["speedup"], 2) if r.get("speedup") else None,
            "rounds": r.get("repeats", 1), "speedup_range": speedup_range(r) or None,
            "gflop_per_image": round(r["flops_per_image"] / 1e9, 3),
            "tflops": round(r["achieved_tflops"], 3),
            "mfu_pct": round(100 * r["mfu"], 1) if r.get("mfu") is not None else None,
            "peak_memory_mib": round(e["peak_memory_bytes"] / 2**20), "date": r["created"][:10]})
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["hardware"], rows[i]["pair"], rows[i]["batch"],
                                                    rows[i]["method"], records[i]["created"]))
    return [rows[i] for i in order]


def latest_speed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest measurement per machine, pair, batch, engine and method (rows sorted oldest first)."""
    latest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        latest[(r["hardware"], r["pair"], r["batch"], r["engine"], r["method"])] = r
    return [r for r in rows if latest[(r["hardware"], r["pair"], r["batch"], r["engine"], r["method"])] is r]


def speed_tables(records: list[dict[str, Any]]) -> list[Table]:
    """The latest measurement per engine and method, and every measurement (folded on the page)."""
    rows = speed_rows(records)
    note = ("Full training steps (data, teacher forward, student forward and backward, losses, optimizer) from "
            "`kdbench speed`; reference = plain loop measured side by side.")
    return [Table("speed", "Training speed", "kdbench speed: the latest measurement per machine, engine and method",
                  SPEED_COLUMNS, latest_speed_rows(rows), filters=("pair",), note=note),
            Table("speed-history", "Training speed: every measurement", "kdbench speed: all measurements, oldest "
                  "first", SPEED_COLUMNS, rows, filters=("pair",), collapsed=True)]
