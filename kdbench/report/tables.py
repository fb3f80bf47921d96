"""The leaderboard's tables, each declared once: rows (dicts, also the CSV rows) and the columns
that the Markdown and HTML renderers share (header, display text, sort value)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from kdbench.experiment.catalog import display_name, method_rank
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


MEMBER_COLUMNS = [
    Column("method", "method"), Column("network", "networks"), Column("student", "student (reported)"),
    Column("model", "other evaluated model"), Column("top1", "its top-1"),
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

def runs_table(df) -> Table:
    rows = df.sort_values("run_id").to_dict("records")
    return Table("runs", "All runs", "every completed record in results/runs/", RUN_COLUMNS, rows,
                 filters=("dataset", "pair", "scheme"))


