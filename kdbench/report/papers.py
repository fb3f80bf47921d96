"""The papers' numbers beside ours: the survey's CIFAR tables (Gou et al. 2021), each paper's own table, and
where our protocol differs from the paper's."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kdbench.experiment.catalog import method_rank, survey_name, survey_teacher
from kdbench.experiment.schema import VANILLA

from .frame import Setting
from .tables import (
    SCHEME_ORDER,
    Column,
    Table,
    _arrow,
    _baseline,
    _network,
    _pair_label,
    display,
    untagged,
)

PAPER_EPOCHS = {"tian2020crd": 240, "zhao2022dkd": 240, "zhao2023dot": 240, "chen2021reviewkd": 240,
                "zhang2018dml": 200}
REFERENCE_DATASET = {"cifar100": "cifar100", "cifar10": "cifar10", "cifar10-jpg": "cifar10"}
# Training-set sizes of the papers' protocol (the whole official training set).
OFFICIAL_TRAIN = {"cifar100": 50_000, "cifar10": 50_000}


SURVEY = "gou2021survey"
SCHEMES_SHOWN = ("offline", "online", "self")


def survey_rows(ref, dataset: str | None, r):
    """The survey's rows for this method and architectures: same student, and the same teacher (offline),
    peer (online; ONE's teacher is the student's own branch ensemble) or none (self); the rows for an online
    cohort's teacher-side network are skipped (that network is a member of the same run). None where nothing
    can match: no dataset, no survey rows, or a hyper-parameter variant (never set beside a reported number)."""
    if dataset is None or ref.empty or "source" not in ref or untagged(r["label"]) != r["method"]:
        return None
    name = survey_name(r["method"])
    if not name:
        return None
    other = {"online": survey_teacher(r["method"], r["student"]) or r["peer"], "self": None}.get(
        r["scheme"], r["teacher"])
    hits = ref[(ref["source"] == SURVEY) & (ref["dataset"] == dataset) & (ref["method"] == name)
               & (ref["student"] == r["student"]) & ~ref["notes"].fillna("").str.contains("teacher-side")]
    return hits if other is None else hits[hits["teacher"] == other]


def survey_match(ref, dataset: str | None, r) -> dict[str, Any] | None:
    """The survey's numbers for this row (:func:`survey_rows`, the first where several match)."""
    hits = survey_rows(ref, dataset, r)
    if hits is None or hits.empty:
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


SURVEY_COLUMNS = [
    Column("scheme", "scheme"), Column("category", "knowledge"), Column("method", "method"),
    Column("network", "networks"), Column("teacher", "teacher"),
    Column("baseline", "student (vanilla)"), Column("distilled", "distilled", sort=lambda r: r["distilled_mean"]),
    Column("gain", "gain", sort=lambda r: r["gain_value"]),
    Column("survey_distilled", "survey: distilled"), Column(
        "survey_gain", "survey: gain", text=lambda r: "" if r["survey_gain"] is None else f"{r['survey_gain']:+.2f}"),
]

PAPER_COLUMNS = [
    Column("method", "method"), Column("network", "teacher → student"),
    Column("ours", "ours", sort=lambda r: r["ours_mean"]), Column("paper", "paper"), Column("source", "source"),
    Column("diff", "diff", text=lambda r: "" if r["diff"] is None else f"{r['diff']:+.2f}"),
    Column("flag", "flag"), Column("protocol", "protocol"),
]
