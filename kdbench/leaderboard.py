"""From result records to comparison tables, plots and a static page -- never by hand.

Reporting protocol: every cell is mean ± sample std over seeds with n shown
(n < 3 marked †); the table says whether it shows the last-epoch test accuracy
(default, as the CRD benchmark reports) or the validation-selected one; runs
on different datasets or schedules are never pooled: each (dataset, epochs,
training-set size) is its own *setting* with its own captioned tables.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import describe_fast_path
from .errors import KDBenchError
from .records import write_json_atomic
from .results import runs_dir, valid_records
from .speed import speedup_range

LEADERBOARD_VERSION = 3
SCHEME_ORDER = {"offline": 0, "online": 1, "self": 2, "none": 3}
CATEGORY_ORDER = {"response": 0, "feature": 1, "relation": 2, "none": 3}
# Schedules of the papers whose numbers we compare against (CIFAR experiments).
PAPER_EPOCHS = {"tian2020crd": 240, "zhao2022dkd": 240, "zhao2023dot": 240, "chen2021reviewkd": 240,
                "zhang2018dml": 200}
REFERENCE_DATASET = {"cifar100": "cifar100", "cifar10": "cifar10", "cifar10-jpg": "cifar10"}
MARK_FEW = "†"
MARK_REPEAT = "‡"
# Training-set sizes of the papers' protocol (the whole official training set).
OFFICIAL_TRAIN = {"cifar100": 50_000, "cifar10": 50_000}


# -- records -> a frame ------------------------------------------------------------------

def runs_frame(records: list[dict[str, Any]], metric: str = "last"):
    """One row per run with every number the tables need.

    Repeats of one run (same experiment, seed and teacher weights, e.g. after ``force=true``)
    stay in the frame with ``counted=False`` except the newest; only counted rows reach a cell.
    """
    import pandas as pd

    rows = []
    for r in records:
        primary = r["metrics"]["primary_model"]
        last = r["metrics"]["last"][primary]["test"]
        sel = r["metrics"]["selected"]
        sel_acc = sel[primary]["test"]["top1"] if sel else None
        spec = r["experiment"]["spec"]
        peers = list((spec["method"].get("peers") or []))
        rows.append({
            "dataset": r["dataset"]["name"], "num_train": r["dataset"]["num_train"],
            "num_test": r["dataset"]["num_test"],
            "epochs": r["schedule"]["epochs"], "pair": r["pair"]["name"],
            "protocol": spec["protocol"]["name"], "precision": spec["protocol"]["precision"],
            "teacher": r["pair"]["teacher"], "student": r["pair"]["student"],
            "peer": (peers[0] or r["pair"]["student"]) if peers else None,
            "method": r["method"]["name"], "category": r["method"]["category"], "scheme": r["method"]["scheme"],
            "experiment": r["experiment"]["id"], "baseline_key": _baseline_key(spec),
            "teacher_sha": (r["teacher"] or {}).get("weights_sha256") or "",
            "seed": r["seed"],
            "acc": last["top1"] if metric == "last" else sel_acc,
            "acc_last": last["top1"], "acc_selected": sel_acc, "top5": last["top5"], "ece": last["ece"],
            "agreement": last["teacher_agreement"], "kl": last["kl_teacher_student"],
            "epoch_time_s": r["timing"]["epoch_time_s"], "images_per_s": r["timing"]["images_per_s"],
            "peak_memory_mib": r["memory"]["bytes"] / 2**20, "memory_kind": r["memory"]["kind"],
            "extra_params": r["params"]["extra_trainable"], "student_params": r["params"]["student"],
            "student_flops": r["params"]["student_flops"],
            "teacher_acc": r["teacher"]["test_top1"] if r["teacher"] else None,
            "hardware": r["environment"]["hardware"], "created": r["created"], "date": r["created"][:10],
            "note": r["note"], "run_id": r["run_id"],
            "curve": [h[primary]["test"]["top1"] for h in r["history"]],
            "_spec": spec,
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if df["acc"].isna().any():
        raise KDBenchError("--metric selected needs a validation split in every run; some runs have none "
                           "(data.val_fraction=0, as under protocol=paper)")
    df["setting"] = [setting_id(*k) for k in zip(df["dataset"], df["epochs"], df["num_train"], df["protocol"],
                                                   df["precision"])]
    df = df.sort_values(["created", "run_id"], kind="stable").reset_index(drop=True)
    df["counted"] = ~df.duplicated(["experiment", "seed", "teacher_sha"], keep="last")  # sorted by time: newest wins
    df["label"] = row_labels(df)
    return df.drop(columns=["_spec"])


def _baseline_key(spec: dict[str, Any]) -> str:
    """What a vanilla run must share with a distilled one to be its baseline: the experiment minus
    the method and the teacher (same data, protocol, pair, schedule)."""
    from .config import digest

    return digest({k: v for k, v in spec.items() if k not in ("method", "teacher")})[:16]


def setting_id(dataset: str, epochs: int, num_train: int, protocol: str = "kdbench", precision: str = "fp32") -> str:
    return f"{dataset}-{epochs}ep-{num_train}train-{protocol}-{precision}"


def _csv_text(s: str) -> str:
    """Free text for a CSV cell: a leading = + - @ would make spreadsheets run it as a formula."""
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


# -- row labels: hyper-parameter variants and teachers ------------------------------------

def _leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def method_defaults(method: str, pair: str) -> dict[str, Any] | None:
    """A built-in method's hyper-parameters on a pair as its config files give them (no Hydra, no torch)."""
    from importlib import resources

    from omegaconf import OmegaConf

    conf = resources.files("kdbench.conf")

    def load(name: str, depth: int = 0) -> dict[str, Any] | None:
        path = conf / "method" / f"{name}.yaml"
        if not path.is_file() or depth > 5:
            return None
        own = OmegaConf.to_container(OmegaConf.create(path.read_text()))
        out: dict[str, Any] = {}
        for parent in own.pop("defaults", None) or []:  # a method file's defaults list names other methods
            if isinstance(parent, str) and parent != "_self_":
                out.update(load(parent, depth + 1) or {})
        return {**out, **own}

    d = load(method)
    if d is None:
        return None
    pair_file = conf / "pair" / f"{pair}.yaml"
    if pair_file.is_file():
        spec = OmegaConf.create(pair_file.read_text()).get("pair") or {}
        d.update(OmegaConf.to_container(spec.get("method_overrides", {}).get(method) or OmegaConf.create({})))
    return d


def _value_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def row_labels(df) -> list[str]:
    """A row name per run: the method id, then what differs from the method's defaults on the pair
    (``kd (temperature=1)``; other differing settings when a cell holds several), then the teacher when
    one (setting, pair) was distilled from more than one teacher (``[teacher 1a2b3c4d]``)."""
    labels: dict[tuple[str, str], str] = {}
    for (setting, pair, method), g in df.groupby(["setting", "pair", "method"], sort=False):
        specs = {e: s for e, s in zip(g["experiment"], g["_spec"])}
        flat = {e: _leaves({k: v for k, v in s.items() if k not in ("teacher", "protocol")}) for e, s in specs.items()}
        keys = sorted(set().union(*flat.values()))
        varying = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1]
        defaults = method_defaults(method, pair)
        for e, f in flat.items():
            parts = []
            for k, v in f.items():
                if k.startswith("method.") and k != "method.name":
                    name = k[len("method."):]
                    if defaults is not None and name in defaults and defaults[name] != v and \
                            not (isinstance(v, float) and isinstance(defaults[name], (int, float))
                                 and float(defaults[name]) == v):
                        parts.append(f"{name}={_value_text(v)}")
                    elif (defaults is None or name not in defaults) and k in varying:
                        parts.append(f"{name}={_value_text(v)}")
                elif k in varying and not k.startswith("method."):
                    parts.append(f"{k}={_value_text(v)}")
            labels[(setting, e)] = method + (f" ({', '.join(parts)})" if parts else "")
    tagged = df[df["teacher_sha"] != ""].groupby(["setting", "pair"])["teacher_sha"].nunique()
    many = {k for k, n in tagged.items() if n > 1}
    out = []
    for setting, pair, e, sha in zip(df["setting"], df["pair"], df["experiment"], df["teacher_sha"]):
        label = labels[(setting, e)]
        out.append(f"{label} [teacher {sha[:8]}]" if sha and (setting, pair) in many else label)
    return out


# -- aggregation -------------------------------------------------------------------------

@dataclass
class Cell:
    mean: float
    std: float | None  # None when n == 1
    n: int

    def text(self) -> str:
        std = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.mean:.2f}{std} (n={self.n}){MARK_FEW if self.n < 3 else ''}"


def cell(values) -> Cell:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return Cell(mean, std, n)


def aggregate(df):
    """Mean, sample std and n (distinct seeds) per cell: one experiment and one teacher's weights on a pair;
    repeats of a seed count once (the newest)."""
    import pandas as pd

    out = []
    counted = df[df["counted"]]
    for (setting, pair, _, _), g in counted.groupby(["setting", "pair", "experiment", "teacher_sha"], sort=True):
        c = cell(g["acc"])
        first = g.iloc[0]
        repeats = int(df[(df["experiment"] == first["experiment"]) & (df["teacher_sha"] == first["teacher_sha"])
                         & ~df["counted"]].shape[0])
        out.append({
            "setting": setting, "dataset": first["dataset"], "epochs": int(first["epochs"]),
            "num_train": int(first["num_train"]), "protocol": first["protocol"], "precision": first["precision"],
            "pair": pair, "teacher": first["teacher"],
            "student": first["student"], "peer": first["peer"], "method": first["method"], "label": first["label"],
            "experiment": first["experiment"], "baseline_key": first["baseline_key"],
            "teacher_sha": first["teacher_sha"], "category": first["category"],
            "scheme": first["scheme"], "mean": round(c.mean, 2), "std": None if c.std is None else round(c.std, 2),
            "n": c.n, "cell": c.text() + (MARK_REPEAT if repeats else ""), "seeds": ",".join(str(s) for s in sorted(g["seed"])),
            "repeats_not_counted": repeats,
            "top5": round(float(g["top5"].mean()), 2), "ece": round(float(g["ece"].mean()), 2),
            "agreement": None if g["agreement"].isna().all() else round(float(g["agreement"].mean()), 2),
            "kl": None if g["kl"].isna().all() else round(float(g["kl"].mean()), 4),
            "teacher_acc": None if g["teacher_acc"].isna().all() else round(float(g["teacher_acc"].mean()), 2),
            "epoch_time_s": round(float(g["epoch_time_s"].mean()), 3),
            "images_per_s": round(float(g["images_per_s"].mean()), 1),
            "peak_memory_mib": round(float(g["peak_memory_mib"].max()), 1), "memory_kind": first["memory_kind"],
            "extra_params": int(g["extra_params"].max()), "student_params": int(first["student_params"]),
            "student_flops": int(first["student_flops"]),
        })
    return pd.DataFrame(out)


@dataclass
class Setting:
    id: str
    dataset: str
    epochs: int
    num_train: int
    num_test: int
    protocol: str
    precision: str
    seeds: list[int]
    hardware: list[str]
    dates: tuple[str, str]
    metric: str
    teachers: list[str]

    def caption(self) -> str:
        what = ("test top-1 (%) at the last epoch" if self.metric == "last"
                else "test top-1 (%) at the epoch selected on the validation split")
        return (f"protocol {self.protocol} ({self.precision}); {self.dataset}, {self.num_train:,} training / "
                f"{self.num_test:,} test images, {self.epochs} epochs, seeds {','.join(map(str, self.seeds))}; "
                f"{what}, mean ± sample std over distinct seeds (n; {MARK_FEW} = fewer than 3; {MARK_REPEAT} = a "
                f"repeated run of a seed was not counted, see runs.csv); teacher weights: "
                f"{', '.join(self.teachers) or 'none'}; hardware: {'; '.join(self.hardware)}; "
                f"runs from {self.dates[0]} to {self.dates[1]}")


def settings(df, metric: str) -> list[Setting]:
    out = []
    for sid, g in df[df["counted"]].groupby("setting", sort=True):
        teachers = sorted({f"{sha[:8]} ({acc:.2f} %)" if acc == acc and acc is not None else sha[:8]
                           for sha, acc in zip(g["teacher_sha"], g["teacher_acc"]) if sha})
        out.append(Setting(sid, g["dataset"].iloc[0], int(g["epochs"].iloc[0]), int(g["num_train"].iloc[0]),
                           int(g["num_test"].max()), g["protocol"].iloc[0], g["precision"].iloc[0],
                           sorted(set(int(s) for s in g["seed"])), sorted(set(g["hardware"])),
                           (min(g["date"]), max(g["date"])), metric, teachers))
    return out


# -- the tables ----------------------------------------------------------------------------

def _pair_label(agg_row) -> str:
    return f"{agg_row['teacher']} → {agg_row['student']}"


def _baseline(a, row) -> float | None:
    """The vanilla student's mean for ``row``: same pair and the same experiment but for the method."""
    base = a[(a["pair"] == row["pair"]) & (a["method"] == "vanilla") & (a["baseline_key"] == row["baseline_key"])]
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


def benchmark_table(agg, df, setting: Setting) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows = teacher(s), vanilla, then methods and their variants; columns = pairs (CRD benchmark layout).

    The header holds pair ids (CSV columns); pages show them as "teacher → student".
    """
    a = agg[agg["setting"] == setting.id]
    pairs = sorted(a["pair"].unique())
    header = ["method"] + pairs
    rows: list[dict[str, Any]] = _teacher_rows(a, df, setting, pairs)
    labels = sorted(set(a["label"]), key=lambda lab: (not lab.startswith("vanilla"), lab))
    best = {}
    for p in pairs:
        cand = a[(a["pair"] == p) & (a["method"] != "vanilla")]
        if len(cand):
            best[p] = cand["mean"].max()
    for lab in labels:
        vanilla = lab == "vanilla"
        row: dict[str, Any] = {"method": "Student (vanilla)" if vanilla else lab, "scheme": "",
                               "_best": set(), "_values": {}}
        for p in pairs:
            hit = a[(a["pair"] == p) & (a["label"] == lab)]
            if len(hit):
                row[p] = hit["cell"].iloc[0]
                row["scheme"] = hit["scheme"].iloc[0]
                row["_values"][p] = float(hit["mean"].iloc[0])
                if hit["method"].iloc[0] != "vanilla" and hit["mean"].iloc[0] == best.get(p):
                    row["_best"].add(p)
            else:
                row[p] = ""
                row["_values"][p] = None
        rows.append(row)
    return header, rows


def survey_table(agg, setting: Setting) -> list[dict[str, Any]]:
    """Grouped by scheme and knowledge category; gain over the vanilla student marked ↑/↓."""
    a = agg[agg["setting"] == setting.id]
    out = []
    for _, r in a[a["method"] != "vanilla"].iterrows():
        b = _baseline(a, r)
        gain = None if b is None else round(r["mean"] - b, 2)
        out.append({"scheme": r["scheme"], "category": r["category"], "method": r["label"],
                    "pair": r["pair"], "network": _pair_label(r), "teacher": r["teacher_acc"],
                    "baseline": b, "distilled": r["cell"], "distilled_mean": r["mean"],
                    "gain": "" if gain is None else f"{gain:+.2f} {'↑' if gain > 0 else '↓' if gain < 0 else ''}".strip(),
                    "gain_value": gain})
    out.sort(key=lambda x: (SCHEME_ORDER.get(x["scheme"], 9), CATEGORY_ORDER.get(x["category"], 9), x["method"],
                            x["pair"]))
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
            out.append({"method": r["method"], "pair": r["pair"], "network": _pair_label(r), "scheme": r["scheme"],
                        "ours": r["cell"] if shown else "", "ours_mean": r["mean"] if shown else None,
                        "paper": float(h["distilled_acc"]), "source": h["source"], "diff": diff,
                        "flag": ", ".join(flags), "protocol": "same as the paper" if not gaps else
                        ("not comparable: " if not compare_short else "differs: ") + "; ".join(gaps)})
    return out


def cost_table(agg, setting: Setting) -> list[dict[str, Any]]:
    a = agg[agg["setting"] == setting.id]
    return [{"method": r["label"], "pair": r["pair"], "network": _pair_label(r), "scheme": r["scheme"],
             "epoch_time_s": r["epoch_time_s"], "images_per_s": r["images_per_s"],
             "peak_memory_mib": r["peak_memory_mib"], "memory_kind": r["memory_kind"],
             "extra_params": r["extra_params"], "ece": r["ece"], "agreement": r["agreement"], "kl": r["kl"]}
            for _, r in a.sort_values(["pair", "label"]).iterrows()]


# -- plots -------------------------------------------------------------------------------

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plots(agg, df, setting: Setting) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = agg[agg["setting"] == setting.id]
    out: dict[str, bytes] = {}
    pairs = sorted(a["pair"].unique())
    # 1. gain over the vanilla student per method, error bars = the method's std over seeds
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 3.2), squeeze=False)
    for ax, p in zip(axes[0], pairs):
        rows = a[(a["pair"] == p) & (a["method"] != "vanilla")].sort_values("label")
        bases = [_baseline(a, r) for _, r in rows.iterrows()]
        keep = [b is not None for b in bases]
        if any(keep):
            rows = rows[keep]
            gains = rows["mean"] - [b for b in bases if b is not None]
            ax.bar(rows["label"], gains, yerr=rows["std"].fillna(0), capsize=3,
                   color=["tab:green" if g >= 0 else "tab:red" for g in gains])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(p, fontsize=9)
        ax.set_ylabel("gain over vanilla (points)")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.suptitle(f"{setting.dataset}, {setting.epochs} epochs: gain over the vanilla student", fontsize=10)
    out[f"gain_{_slug(setting.id)}.png"] = _png(fig)
    # 2. accuracy vs student size and FLOPs
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for m, g in a.groupby("label"):
        axes[0].errorbar(g["student_params"] / 1e6, g["mean"], yerr=g["std"].fillna(0), fmt="o", label=m, capsize=2)
        axes[1].errorbar(g["student_flops"] / 1e6, g["mean"], yerr=g["std"].fillna(0), fmt="o", label=m, capsize=2)
    axes[0].set_xlabel("student parameters (M)")
    axes[1].set_xlabel("student forward MFLOPs per image")
    for ax in axes:
        ax.set_ylabel("test top-1 (%)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{setting.dataset}, {setting.epochs} epochs: accuracy vs student cost", fontsize=10)
    out[f"cost_{_slug(setting.id)}.png"] = _png(fig)
    # 3. test-accuracy curves per epoch, one figure per pair
    d = df[(df["setting"] == setting.id) & df["counted"]]
    for p in pairs:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for m, g in d[d["pair"] == p].groupby("label"):
            curves = [c for c in g["curve"]]
            length = min(len(c) for c in curves)
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(length)]
            ax.plot(range(1, length + 1), mean, label=f"{m} (n={len(curves)})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{p}, {setting.dataset}: mean test accuracy per epoch", fontsize=9)
        ax.legend(fontsize=7)
        out[f"curves_{_slug(setting.id)}_{_slug(p)}.png"] = _png(fig)
    return out


# -- rendering -----------------------------------------------------------------------------

def _pair_labels(agg, header: list[str]) -> list[str]:
    labels = {r["pair"]: _pair_label(r) for _, r in agg.iterrows()}
    return [labels.get(h, h) for h in header]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    # Markdown renders raw HTML: text from records (notes) is escaped like the page escapes it.
    esc = lambda s: html.escape(str(s), quote=False).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


PAPER_HEADER = ["method", "teacher → student", "ours", "paper", "source", "diff", "flag", "protocol"]


@dataclass
class Report:
    setting: Setting
    bench_labels: list[str]
    bench_header: list[str]
    bench_rows: list[dict[str, Any]]
    survey: list[dict[str, Any]]
    paper: list[dict[str, Any]]
    cost: list[dict[str, Any]]
    images: dict[str, bytes]


def render_markdown(reports: list[Report], metric: str) -> str:
    parts = ["# kdbench leaderboard", "",
             "Generated by `kdbench leaderboard` from the records in `results/runs/`; do not edit by hand "
             "(`kdbench leaderboard --check` fails when this folder is stale). "
             f"Accuracy: {'last-epoch' if metric == 'last' else 'validation-selected'} test top-1. "
             f"Open `index.html` for sortable, filterable tables.", ""]
    for rep in reports:
        s = rep.setting
        parts += [f"## {s.dataset}, {s.epochs} epochs ({s.num_train:,} training images), protocol {s.protocol} "
                  f"({s.precision})", "", f"*{s.caption()}*", ""]
        parts += ["### Benchmark table", "",
                  _md_table(rep.bench_labels, [[r["method"]] + [f"**{r[p]}**" if p in r["_best"] else r[p]
                                                                for p in rep.bench_header[1:]]
                                               for r in rep.bench_rows]),
                  "", "Bold: best distilled student per pair.", ""]
        parts += ["### By training scheme and knowledge type", "",
                  _md_table(["scheme", "knowledge", "method", "teacher → student", "teacher", "student (vanilla)",
                             "distilled", "gain"],
                            [[r["scheme"], r["category"], r["method"], r["network"], _fmt(r["teacher"]),
                              _fmt(r["baseline"]), r["distilled"], r["gain"]] for r in rep.survey]), ""]
        if rep.paper:
            parts += ["### Against the papers' numbers", "",
                      _md_table(PAPER_HEADER, [[r["method"], r["network"], r["ours"], _fmt(r["paper"]), r["source"],
                                                "" if r["diff"] is None else f"{r['diff']:+.2f}", r["flag"],
                                                r["protocol"]] for r in rep.paper]), ""]
        parts += ["### Cost and calibration", "",
                  _md_table(["method", "teacher → student", "s/epoch", "images/s", "peak memory (MiB)",
                             "extra params", "ECE (%)", "agreement w/ teacher (%)", "KL(t‖s)"],
                            [[r["method"], r["network"], _fmt(r["epoch_time_s"], 3), _fmt(r["images_per_s"], 0),
                              f"{_fmt(r['peak_memory_mib'], 0)} ({r['memory_kind']})", f"{r['extra_params']:,}",
                              _fmt(r["ece"]), _fmt(r["agreement"]), _fmt(r["kl"], 4)] for r in rep.cost]), ""]
        parts += [f"![{name}]({name})" for name in rep.images] + [""]
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:right}th{background:#f2f2f2;cursor:pointer}
td:first-child,th:first-child{text-align:left}td.best{font-weight:bold;background:#e8f5e9}caption{caption-side:top;
text-align:left;font-style:italic;font-size:12px;padding:4px 0}img{max-width:100%;margin:4px 0}.filters{margin:1em 0}
.filters label{margin-right:1.2em}"""

_JS = """(function(){
function val(td){var v=td.getAttribute('data-value');if(v!==null&&v!==''&&!isNaN(parseFloat(v)))return parseFloat(v);
var t=td.textContent.trim();var n=parseFloat(t);return isNaN(n)?t.toLowerCase():n;}
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
var table=th.closest('table'),body=table.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th);
var asc=th.getAttribute('data-order')!=='asc';table.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-order');});
th.setAttribute('data-order',asc?'asc':'desc');var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var x=val(a.cells[i]),y=val(b.cells[i]);if(typeof x!==typeof y){x=String(x);y=String(y);}
return (x<y?-1:x>y?1:0)*(asc?1:-1);});rows.forEach(function(r){body.appendChild(r);});});});
function apply(){var f={};document.querySelectorAll('.filters select').forEach(function(s){f[s.name]=s.value;});
document.querySelectorAll('[data-dataset]').forEach(function(el){var show=true;
['dataset','pair','scheme'].forEach(function(k){var v=el.getAttribute('data-'+k);if(f[k]&&v!==null&&v!==''&&v!==f[k])show=false;});
el.style.display=show?'':'none';});}
document.querySelectorAll('.filters select').forEach(function(s){s.addEventListener('change',apply);});})();"""


def _td(text: Any, value: Any = None, cls: str = "") -> str:
    attrs = f' data-value="{html.escape(str(value))}"' if value is not None else ""
    attrs += f' class="{cls}"' if cls else ""
    return f"<td{attrs}>{html.escape(str(text))}</td>"


def _table(cls_id: str, caption: str, header: list[str], body_rows: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return (f'<table class="sortable" id="{html.escape(cls_id)}"><caption>{html.escape(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body_rows)}</tbody></table>")


def _tr(attrs: dict[str, str], cells: list[str]) -> str:
    a = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in attrs.items())
    return f"<tr{a}>{''.join(cells)}</tr>"


def render_html(reports: list[Report], df, metric: str) -> str:
    opts = {k: sorted(set(df[k])) for k in ("dataset", "pair", "scheme")}
    selects = "".join(
        f'<label>{k}: <select name="{k}"><option value="">all</option>'
        + "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in vals)
        + "</select></label>" for k, vals in opts.items())
    body = [f'<h1>kdbench leaderboard</h1><p>Generated by <code>kdbench leaderboard</code> from result records. '
            f'Accuracy: {"last-epoch" if metric == "last" else "validation-selected"} test top-1. '
            f'Click a column header to sort.</p><div class="filters">{selects}</div>']
    for rep in reports:
        s = rep.setting
        sid = _slug(s.id)
        sec = [f'<section data-dataset="{html.escape(s.dataset)}" id="setting-{sid}">'
               f"<h2>{html.escape(s.dataset)}, {s.epochs} epochs ({s.num_train:,} training images), protocol "
               f"{html.escape(s.protocol)} ({html.escape(s.precision)})</h2>"]
        rows = []
        for r in rep.bench_rows:
            cells = [_td(r["method"])] + [_td(r[p], r["_values"].get(p), "best" if p in r["_best"] else "")
                                          for p in rep.bench_header[1:]]
            rows.append(_tr({"scheme": r["scheme"]}, cells))
        sec.append("<h3>Benchmark table</h3>" + _table(f"benchmark-{sid}", s.caption(), rep.bench_labels, rows))
        rows = [_tr({"pair": r["pair"], "scheme": r["scheme"]},
                    [_td(r["scheme"]), _td(r["category"]), _td(r["method"]), _td(r["network"]),
                     _td(_fmt(r["teacher"]), r["teacher"]), _td(_fmt(r["baseline"]), r["baseline"]),
                     _td(r["distilled"], r["distilled_mean"]), _td(r["gain"], r["gain_value"])])
                for r in rep.survey]
        sec.append("<h3>By training scheme and knowledge type</h3>" + _table(
            f"survey-{sid}", s.caption(), ["scheme", "knowledge", "method", "teacher → student", "teacher",
                                           "student (vanilla)", "distilled", "gain"], rows))
        if rep.paper:
            rows = [_tr({"pair": r["pair"], "scheme": r["scheme"]},
                        [_td(r["method"]), _td(r["network"]), _td(r["ours"], r["ours_mean"]),
                         _td(_fmt(r["paper"]), r["paper"]), _td(r["source"]),
                         _td("" if r["diff"] is None else f"{r['diff']:+.2f}", r["diff"]),
                         _td(r["flag"]), _td(r["protocol"])]) for r in rep.paper]
            sec.append("<h3>Against the papers' numbers</h3>" + _table(f"paper-{sid}", s.caption(), PAPER_HEADER, rows))
        rows = [_tr({"pair": r["pair"], "scheme": r["scheme"]},
                    [_td(r["method"]), _td(r["network"]), _td(_fmt(r["epoch_time_s"], 3), r["epoch_time_s"]),
                     _td(_fmt(r["images_per_s"], 0), r["images_per_s"]),
                     _td(f"{_fmt(r['peak_memory_mib'], 0)} ({r['memory_kind']})", r["peak_memory_mib"]),
                     _td(f"{r['extra_params']:,}", r["extra_params"]), _td(_fmt(r["ece"]), r["ece"]),
                     _td(_fmt(r["agreement"]), r["agreement"]), _td(_fmt(r["kl"], 4), r["kl"])])
                for r in rep.cost]
        sec.append("<h3>Cost and calibration</h3>" + _table(
            f"cost-{sid}", s.caption(), ["method", "teacher → student", "s/epoch", "images/s", "peak memory (MiB)",
                                         "extra params", "ECE (%)", "agreement w/ teacher (%)", "KL(t‖s)"], rows))
        for name, data in rep.images.items():
            sec.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')
        sec.append("</section>")
        body.append("".join(sec))
    runs = [_tr({"dataset": r["dataset"], "pair": r["pair"], "scheme": r["scheme"]},
                [_td(r["run_id"]), _td(r["dataset"]), _td(r["pair"]), _td(r["label"]), _td(r["seed"], r["seed"]),
                 _td(r["epochs"], r["epochs"]), _td(f"{r['acc']:.2f}", r["acc"]),
                 _td("yes" if r["counted"] else "no: a newer run of this seed counts"), _td(r["hardware"]),
                 _td(r["date"]), _td(r["note"])])
            for r in df.sort_values("run_id").to_dict("records")]
    body.append('<section data-dataset=""><h2>All runs</h2>' + _table(
        "runs", "every completed record in results/runs/", ["run", "dataset", "pair", "method", "seed", "epochs",
                                                             "top-1", "counted", "hardware", "date", "note"], runs)
        + "</section>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>kdbench leaderboard</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}<script>{_JS}</script></body></html>")


# -- build and check -----------------------------------------------------------------------

def load_speed(results_root: Path) -> list[dict[str, Any]]:
    """Speed records written by ``kdbench speed`` (results/speed/*.json)."""
    out = []
    for path in sorted((Path(results_root) / "speed").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise KDBenchError(f"{path}: not valid JSON: {exc}") from None
        missing = [k for k in ("pair", "method", "batch_size", "engine", "flops_per_image", "environment")
                   if k not in rec]
        if rec.get("kind") != "speed" or missing:
            raise KDBenchError(f"{path}: not a speed record (missing {missing})")
        out.append(rec)
    return out


def speed_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


SPEED_HEADER = ["pair", "method", "batch", "hardware", "engine", "reference img/s", "img/s", "speed-up",
                "rounds", "speed-up range", "GFLOP/img", "TFLOP/s", "MFU (%)", "peak MiB", "date"]
SPEED_KEYS = ["pair", "method", "batch", "hardware", "engine", "ref_images_per_s", "images_per_s", "speedup",
              "rounds", "speedup_range", "gflop_per_image", "tflops", "mfu_pct", "peak_memory_mib", "date"]


def _inputs_digest(results_root: Path, options: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps({"version": LEADERBOARD_VERSION, "options": options}, sort_keys=True).encode())
    for path in (sorted(runs_dir(results_root).glob("*.json")) + sorted((results_root / "reference").glob("*.csv"))
                 + sorted((results_root / "speed").glob("*.json"))):
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def render(results_root: str | Path, metric: str = "last", compare_short: bool = False) -> dict[str, bytes]:
    """Every output file of the leaderboard, by name (pure: writes nothing)."""
    import pandas as pd

    results_root = Path(results_root)
    records = [r for r in valid_records(results_root) if r["status"] == "completed"]  # failures: `kdbench status`
    if not records:
        raise KDBenchError(f"no records in {runs_dir(results_root)}: run `kdbench bench` or `kdbench run` first")
    df = runs_frame(records, metric)
    agg = aggregate(df)
    ref = load_reference(results_root)
    reports, files = [], {}
    bench_csv, survey_csv, paper_csv, cost_csv = [], [], [], []
    for s in settings(df, metric):
        header, rows = benchmark_table(agg, df, s)
        rep = Report(s, _pair_labels(agg, header), header, rows, survey_table(agg, s), paper_comparison(agg, ref, s, compare_short),
                     cost_table(agg, s), plots(agg, df, s))
        reports.append(rep)
        files.update(rep.images)
        for r in rows:
            bench_csv.append({"setting": s.id, "method": r["method"], **{p: r[p] for p in header[1:]}})
        survey_csv += [{"setting": s.id, **{k: v for k, v in r.items()}} for r in rep.survey]
        paper_csv += [{"setting": s.id, **r} for r in rep.paper]
        cost_csv += [{"setting": s.id, **r} for r in rep.cost]

    def csv(rows) -> bytes:
        return pd.DataFrame(rows).to_csv(index=False, lineterminator="\n").encode()

    files["benchmark.csv"] = csv(bench_csv)
    files["survey.csv"] = csv(survey_csv)
    files["paper_comparison.csv"] = csv(paper_csv)
    files["cost.csv"] = csv(cost_csv)
    files["aggregate.csv"] = agg.to_csv(index=False, lineterminator="\n").encode()
    runs = df.drop(columns=["curve"])
    runs["note"] = [_csv_text(n) for n in runs["note"]]
    files["runs.csv"] = runs.to_csv(index=False, lineterminator="\n").encode()
    speed = speed_table(load_speed(results_root))
    files["speed.csv"] = csv(speed)
    md = render_markdown(reports, metric)
    page = render_html(reports, df, metric)
    if speed:
        md += "\n## Training speed\n\n*Full training steps (data, teacher forward, student forward and backward, " \
              "losses, optimizer) from `kdbench speed`; reference = plain loop measured side by side.*\n\n" + \
              _md_table(SPEED_HEADER, [[str(r[k] if r[k] is not None else "")  # rounded in speed_table
                                        for k in SPEED_KEYS] for r in speed]) + "\n"
        rows = [_tr({"pair": r["pair"]}, [_td(r[k] if r[k] is not None else "", r[k] if isinstance(r[k], (int, float))
                                               else None) for k in SPEED_KEYS]) for r in speed]
        page = page.replace("</body>", '<section data-dataset=""><h2>Training speed</h2>'
                            + _table("speed", "kdbench speed: images/s of full training steps, reference loop beside",
                                     SPEED_HEADER, rows) + "</section></body>", 1)
    files["README.md"] = md.encode()
    files["index.html"] = page.encode()
    return files


def _read_manifest(out: Path) -> dict[str, Any] | None:
    """The folder's manifest.json (None if absent); a damaged one is named with what to do."""
    path = out / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("no file list")
    except (OSError, ValueError) as exc:
        raise KDBenchError(f"{path} is damaged ({exc}; truncated?): delete {out}/ and rebuild it with "
                           f"`kdbench leaderboard --out {out}`") from None
    return manifest


def build_leaderboard(results_root: str | Path, out: Path, metric: str = "last",
                      compare_short: bool = False) -> list[Path]:
    """Write every file of the leaderboard into ``out``, each atomically, the manifest last.

    ``out`` must be new, empty, or a folder this command wrote before (it has our manifest.json):
    only files that the previous manifest lists are ever removed, so pointing ``--out`` at docs/ or
    results/ cannot delete anything.
    """
    from .records import atomic_write_bytes

    results_root, out = Path(results_root), Path(out)
    if out.exists() and not out.is_dir():
        raise KDBenchError(f"--out {out} is a file, not a folder")
    previous = _read_manifest(out) if out.is_dir() else None
    if previous is None and out.is_dir() and any(out.iterdir()):
        raise KDBenchError(f"{out}/ is not empty and was not written by `kdbench leaderboard` (it has no "
                           "manifest.json): refusing to write into it; give --out a new or empty folder")
    options = {"metric": metric, "compare_short": compare_short}
    files = render(results_root, metric, compare_short)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in (previous or {}).get("files", {}):
            if name not in files and "/" not in name and (out / name).is_file():
                (out / name).unlink()  # ours, from an earlier build, no longer produced
        written = []
        for name, data in files.items():
            atomic_write_bytes(out / name, data)
            written.append(out / name)
        manifest = {"version": LEADERBOARD_VERSION, "options": options,
                    "inputs_sha256": _inputs_digest(results_root, options),
                    "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}}
        write_json_atomic(out / "manifest.json", manifest)
    except OSError as exc:
        raise KDBenchError(f"could not write the leaderboard to {out}/: {exc.strerror or exc} "
                           f"({exc.filename or out})") from None
    return written + [out / "manifest.json"]


def check_leaderboard(results_root: str | Path, out: Path, metric: str = "last",
                      compare_short: bool = False) -> list[str]:
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
    problems = []
    options = {"metric": metric, "compare_short": compare_short}
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
