"""Records -> frames: one row per run, row labels, cells and settings (pandas; no torch).

Every cell pools runs of one experiment (``experiment.id``) and one teacher (by the sha256 of
its weights), one run per seed -- see docs/protocol.md. Settings (dataset, epochs, training-set
size, protocol, precision) are never pooled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kdbench.core.errors import KDBenchError

MARK_FEW = "†"
MARK_REPEAT = "‡"


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
            "unsteady": _unsteady([h.get("time_s") for h in r["history"]]),
            "cohort": _cohort_size(r.get("engine")),
            # every other evaluated model (DML's peers, ONE's branches and ensemble, BYOT's heads and ensemble)
            "members": {name: (m["test"]["top1"] if metric == "last" else
                               (sel[name]["test"]["top1"] if sel and name in sel else None))
                        for name, m in r["metrics"]["last"].items()
                        if isinstance(m, dict) and name != primary and "test" in m},
            "_spec": spec, "_defaults": r["experiment"].get("defaults"),
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
    return df.drop(columns=["_spec", "_defaults"])


def _cohort_size(engine: Any) -> int:
    """How many runs trained in lockstep with this one (records before cohorts, or solo runs: 0)."""
    cohort = engine.get("cohort") if isinstance(engine, dict) else None
    members = cohort.get("members") if isinstance(cohort, dict) else None
    return members if isinstance(members, int) and not isinstance(members, bool) and members > 0 else 0


UNSTEADY = 2.0  # an epoch that took this many times the run's median epoch time


def _unsteady(times: list[Any]) -> bool:
    """Whether a run's epoch times say the machine was shared or paused: one epoch > 2x the median."""
    t = sorted(float(x) for x in times if isinstance(x, (int, float)) and x > 0)
    return len(t) >= 3 and t[-1] > UNSTEADY * t[len(t) // 2]


def _baseline_key(spec: dict[str, Any]) -> str:
    """What a vanilla run must share with a distilled one to be its baseline: the experiment minus
    the method and the teacher (same data, protocol, pair, schedule)."""
    from kdbench.core.hashing import digest

    return digest({k: v for k, v in spec.items() if k not in ("method", "teacher")})[:16]


def setting_id(dataset: str, epochs: int, num_train: int, protocol: str = "kdbench", precision: str = "fp32") -> str:
    return f"{dataset}-{epochs}ep-{num_train}train-{protocol}-{precision}"


# -- row labels: hyper-parameter variants and teachers ------------------------------------

def _leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _value_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def row_labels(df) -> list[str]:
    """A row name per run: the method id, then what differs from the method's defaults on the pair as
    the records state them (``kd (temperature=1)``; other differing settings when a cell holds several),
    then the teacher when one (setting, pair) was distilled from more than one teacher
    (``[teacher 1a2b3c4d]``)."""
    labels: dict[tuple[str, str], str] = {}
    for (setting, pair, method), g in df.groupby(["setting", "pair", "method"], sort=False):
        specs = {e: s for e, s in zip(g["experiment"], g["_spec"])}
        recorded = [d for d in g["_defaults"] if isinstance(d, dict)]
        defaults = recorded[-1] if recorded else None  # from the newest record that says
        flat = {e: _leaves({k: v for k, v in s.items() if k not in ("teacher", "protocol")}) for e, s in specs.items()}
        keys = sorted(set().union(*flat.values()))
        varying = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1]
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
            "n": c.n, "cell": c.text() + (MARK_REPEAT if repeats else ""),
            "seeds": ",".join(str(s) for s in sorted(g["seed"])),
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
            "hardware": "; ".join(sorted(set(g["hardware"]))), "unsteady": int(g["unsteady"].sum()),
            "cohort": int(g["cohort"].max()),
            "members": {name: cell([m.get(name) for m in g["members"]]).text()
                        for name in sorted({k for m in g["members"] for k in m})
                        if any(m.get(name) is not None for m in g["members"])},
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
