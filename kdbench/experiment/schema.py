"""The result-record schema, version 2, and its validator.

Documented field by field in docs/record-schema.md. The validator names every
bad field by its path, so ``kdbench results validate`` can say exactly what is
wrong with which file; the leaderboard refuses invalid records instead of
skipping them.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from kdbench.experiment.identity import PROTOCOLS, RESOLVED_PRECISIONS

SCHEMA_VERSION = 2
STATUSES = ("completed", "failed", "diverged")
# Knowledge categories and training schemes (Gou et al. 2021): the one list, used by the method
# registry and the records' validator.
CATEGORIES = ("none", "response", "feature", "relation")
SCHEMES = ("offline", "online", "self", "none")
VANILLA = "vanilla"  # the method without distillation: every table's baseline
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")

Check = Callable[[Any, str, list], None]


def _num(lo: float | None = None, hi: float | None = None, nullable: bool = False) -> Check:
    def check(v, path, errs):
        if v is None and nullable:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            errs.append(f"{path}: expected a number, got {type(v).__name__}")
        elif v != v or v in (float("inf"), float("-inf")) or (lo is not None and v < lo) or (hi is not None and v > hi):
            errs.append(f"{path}: {v} is outside [{lo}, {hi}]")
    return check


def _int(lo: int | None = None, nullable: bool = False) -> Check:
    def check(v, path, errs):
        if v is None and nullable:
            return
        if isinstance(v, bool) or not isinstance(v, int):
            errs.append(f"{path}: expected an integer, got {type(v).__name__}")
        elif lo is not None and v < lo:
            errs.append(f"{path}: {v} is below {lo}")
    return check


def _str(pattern: re.Pattern | None = None, choices: tuple | None = None, nullable: bool = False) -> Check:
    def check(v, path, errs):
        if v is None and nullable:
            return
        if not isinstance(v, str):
            errs.append(f"{path}: expected a string, got {type(v).__name__}")
        elif choices is not None and v not in choices:
            errs.append(f"{path}: {v!r} is not one of {', '.join(choices)}")
        elif pattern is not None and not pattern.match(v):
            errs.append(f"{path}: {v!r} is not in the expected format")
    return check


def _obj(fields: dict[str, Check], nullable: bool = False, extra: Check | None = None) -> Check:
    def check(v, path, errs):
        if v is None and nullable:
            return
        if not isinstance(v, dict):
            errs.append(f"{path}: expected an object, got {type(v).__name__}")
            return
        for name, sub in fields.items():
            if name not in v:
                errs.append(f"{path}.{name}: missing")
            else:
                sub(v[name], f"{path}.{name}", errs)
        if extra is not None:
            extra(v, path, errs)
    return check


def _list(item: Check, min_len: int = 0) -> Check:
    def check(v, path, errs):
        if not isinstance(v, list):
            errs.append(f"{path}: expected a list, got {type(v).__name__}")
            return
        if len(v) < min_len:
            errs.append(f"{path}: expected at least {min_len} entries")
        for i, x in enumerate(v):
            item(x, f"{path}[{i}]", errs)
    return check


PCT = _num(0, 100)
SPLIT_METRICS = _obj({"top1": PCT, "top5": PCT, "loss": _num(0)})
TEST_METRICS = _obj({"top1": PCT, "top5": PCT, "loss": _num(0), "ece": PCT,
                     "teacher_agreement": _num(0, 100, nullable=True),
                     "kl_teacher_student": _num(None, None, nullable=True)})


def _epoch_summary(nullable: bool) -> Check:
    def models(v, path, errs):
        names = [k for k in v if k != "epoch"]
        if not names:
            errs.append(f"{path}: no model metrics")
        for k in names:
            _obj({"val": lambda x, p, e: None if x is None else SPLIT_METRICS(x, p, e), "test": TEST_METRICS})(
                v[k], f"{path}.{k}", errs)
    return _obj({"epoch": _int(1)}, nullable=nullable, extra=models)


EXPERIMENT = _obj({
    "id": _str(_HEX16),
    "spec": _obj({
        "protocol": _obj({"name": _str(choices=PROTOCOLS), "precision": _str(choices=RESOLVED_PRECISIONS)}),
        "data": _obj({"name": _str()}),
        "pair": _obj({"name": _str(), "teacher": _str(), "student": _str()}),
        "method": _obj({"name": _str()}),
        "schedule": _obj({"epochs": _int(1)}),
        "teacher": _obj({}, nullable=True),
    }),
    # "defaults" (optional): the method's defaults on the pair, for row labels; not part of the id
})

# What every record says about which run it is, completed or not (the runner writes these fields for both).
_RUN = {
    "schema_version": _int(1),
    "run_id": _str(),
    "kind": _str(choices=("student",)),
    "created": _str(_ISO),
    "started": _str(_ISO),
    "experiment": EXPERIMENT,
    "method": _obj({"name": _str(), "category": _str(choices=CATEGORIES), "scheme": _str(choices=SCHEMES)}),
    "pair": _obj({"name": _str(), "teacher": _str(), "student": _str()}),
    "seed": _int(),
    "schedule": _obj({"name": _str(), "epochs": _int(1)}),
}
# Where it ran, and what the user noted.
_PROVENANCE = {
    "environment": _obj({"hardware": _str(), "packages": _obj({"torch": _str()})}),
    "git": _obj({"commit": _str(nullable=True)}),
    "note": _str(),
    "config": _obj({}),
}

RECORD = _obj({
    **_RUN,
    "status": _str(choices=STATUSES[:1]),
    "dataset": _obj({"name": _str(), "num_train": _int(1), "num_val": _int(0), "num_test": _int(1),
                     "num_classes": _int(2)}),
    "metrics": _obj({"primary_model": _str(), "last": _epoch_summary(False), "selected": _epoch_summary(True)}),
    "teacher": _obj({"weights_sha256": _str(_HEX64), "hash": _str(), "arch": _str(),
                     "test_top1": _num(0, 100, nullable=True)}, nullable=True),
    "params": _obj({"student": _int(1), "teacher": _int(1, nullable=True), "extra_trainable": _int(0),
                    "student_flops": _int(0), "teacher_flops": _int(0, nullable=True)}),
    "fairness": _obj({"student_init_sha256": _str(_HEX64), "data_order_sha256": _str(_HEX64)}),
    "timing": _obj({"wall_time_s": _num(0), "train_time_s": _num(0), "epoch_time_s": _num(0),
                    "images_per_s": _num(0)}),
    "memory": _obj({"bytes": _int(0), "kind": _str()}),
    "history": _list(_obj({"epoch": _int(1)}), min_len=1),
    **_PROVENANCE,
})


# A run that did not finish: what was known, and where and why it stopped.
FAILED_RECORD = _obj({
    **_RUN,
    "status": _str(choices=STATUSES[1:]),
    "dataset": _obj({"name": _str()}),
    "error": _obj({"type": _str(), "message": _str(), "epoch": _int(1, nullable=True),
                   "step": _int(1, nullable=True)}),
    "history": _list(_obj({"epoch": _int(1)})),
    **_PROVENANCE,
})


def _finite(v: Any, path: str, errs: list) -> None:
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        errs.append(f"{path}: {v} is not a number a record may hold")
    elif isinstance(v, dict):
        for k, x in v.items():
            _finite(x, f"{path}.{k}", errs)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _finite(x, f"{path}[{i}]", errs)


# the name of a stored record (kdbench.experiment.results.add_record): the run id, an optional suffix of its own
RECORD_FILE = re.compile(r"[A-Za-z0-9_.+-]+\.json")


def _identity_errors(record: dict[str, Any], filename: str | None) -> list[str]:
    """The run id, experiment id and name fields must all follow from the stored experiment and seed."""
    from kdbench.experiment.identity import experiment_id, run_id_from

    errs = []
    spec = record["experiment"]["spec"]
    if record["experiment"]["id"] != experiment_id(spec):
        errs.append("experiment.id: does not match experiment.spec (edited after it was written?)")
    expected = run_id_from(spec, record["seed"])
    if record["run_id"] != expected:
        errs.append(f"run_id: {record['run_id']!r} does not follow from experiment.spec and seed (expected "
                    f"{expected!r})")
    if record["method"]["name"] != spec["method"]["name"]:
        errs.append(f"method.name: {record['method']['name']!r} differs from experiment.spec.method.name")
    if record["pair"]["name"] != spec["pair"]["name"]:
        errs.append(f"pair.name: {record['pair']['name']!r} differs from experiment.spec.pair.name")
    if filename is not None:
        stem = filename[:-5] if filename.endswith(".json") else filename
        if stem != record["run_id"] and not stem.startswith(record["run_id"] + "__"):
            errs.append(f"run_id: {record['run_id']!r} does not match the file name {filename!r}")
        elif not RECORD_FILE.fullmatch(filename):  # what the store counts, a bundle must carry and import
            errs.append(f"file name {filename!r}: a record is stored as RUN_ID.json or RUN_ID__SUFFIX.json with "
                        "letters, digits and _.+- only; rename it")
    return errs


def validate_record(record: Any, filename: str | None = None) -> list[str]:
    """Every problem with ``record`` as 'field.path: what is wrong'; empty when valid."""
    errs: list[str] = []
    if isinstance(record, dict) and record.get("schema_version") == 1:
        return ["schema_version: 1 is the format before run identity by structure; run `kdbench results migrate` "
                "to upgrade the store (tested; idempotent)"]
    if isinstance(record, dict) and record.get("schema_version") not in (None, SCHEMA_VERSION):
        return [f"schema_version: {record.get('schema_version')!r} is not supported (this kdbench reads "
                f"{SCHEMA_VERSION})"]
    failed = isinstance(record, dict) and record.get("status") in STATUSES[1:]
    _finite(record, "record", errs)  # JSON has no NaN or Infinity: the store refuses them anywhere
    (FAILED_RECORD if failed else RECORD)(record, "record", errs)
    errs = [e.replace("record.", "", 1) if e.startswith("record.") else e for e in errs]
    if errs:
        return errs
    errs = _identity_errors(record, filename)
    peers = record["experiment"]["spec"]["method"].get("peers")
    if peers is not None and (not isinstance(peers, list) or not all(p is None or isinstance(p, str) for p in peers)):
        errs.append("experiment.spec.method.peers: expected a list of architecture names or nulls")
    if not failed:
        errs += _primary_model_errors(record)
        errs += [] if errs else _consistency_errors(record)
    return errs


def _consistency_errors(record: dict[str, Any]) -> list[str]:
    """A completed record must agree with itself: its history is the schedule's epochs, its final and selected
    metrics are the rows of that history the runner picks, and its facts repeat the experiment's."""
    spec, history, metrics = record["experiment"]["spec"], record["history"], record["metrics"]
    epochs, primary = spec["schedule"]["epochs"], metrics["primary_model"]
    errs = []
    if record["schedule"]["epochs"] != epochs:
        errs.append(f"schedule.epochs: {record['schedule']['epochs']} differs from the experiment's {epochs}")
    if [row["epoch"] for row in history] != list(range(1, epochs + 1)):
        errs.append(f"history: its epochs are not 1..{epochs} of the schedule")
        return errs
    if record["dataset"]["name"] != spec["data"]["name"]:
        errs.append(f"dataset.name: {record['dataset']['name']!r} differs from the experiment's")
    if (record["teacher"] is None) != (spec["teacher"] is None):
        errs.append("teacher: " + ("missing, but the experiment distils from one" if record["teacher"] is None
                                   else "given, but the experiment has no teacher"))
    models = [k for k in metrics["last"] if k != "epoch"]

    def row_summary(i: int) -> dict[str, Any]:
        row = history[i]
        return {"epoch": row["epoch"], **{m: {"val": (row.get(m) or {}).get("val"), "test": (row.get(m) or {}).get(
            "test")} for m in models}}

    if metrics["last"] != row_summary(epochs - 1):
        errs.append(f"metrics.last: differs from the history's last epoch ({epochs})")
    val = [(row.get(primary) or {}).get("val") for row in history]
    if all(isinstance(v, dict) and isinstance(v.get("top1"), (int, float)) for v in val):
        best = max(range(epochs), key=lambda i: (val[i]["top1"], -i))  # the runner's rule: earliest on ties
        expected = row_summary(best)
    else:
        expected = None
    if metrics["selected"] != expected:
        errs.append("metrics.selected: is not the history's epoch of best validation top-1 "
                    f"({'none: no validation split' if expected is None else expected['epoch']})")
    return errs


def _primary_model_errors(record: dict[str, Any]) -> list[str]:
    """Everything the tables read of the primary model must be there: last, selected and every history row."""
    primary = record["metrics"]["primary_model"]
    errs = []
    if primary not in record["metrics"]["last"]:
        errs.append(f"metrics.last: no metrics for the primary model {primary!r}")
    selected = record["metrics"]["selected"]
    if selected is not None and primary not in selected:
        errs.append(f"metrics.selected: no metrics for the primary model {primary!r}")
    for i, row in enumerate(record["history"]):
        test = row.get(primary, {}).get("test") if isinstance(row.get(primary), dict) else None
        if not isinstance(test, dict):
            errs.append(f"history[{i}].{primary}.test: missing")
        else:
            _num(0, 100)(test.get("top1"), f"history[{i}].{primary}.test.top1", errs)
    return errs


# Speed records (`kdbench speed`, results/speed/*.json): what the leaderboard's speed table reads.
SPEED_RECORD = _obj({
    "kind": _str(choices=("speed",)),
    "created": _str(_ISO),
    "pair": _str(), "method": _str(), "batch_size": _int(1),  # "repeats" came later: 1 when absent
    "engine": _obj({"amp": _str(), "optimizer_impl": _str(), "images_per_s": _num(0), "peak_memory_bytes": _int(0)}),
    "reference": _obj({"images_per_s": _num(0)}, nullable=True),
    "speedup": _num(0, nullable=True),
    "flops_per_image": _num(0), "achieved_tflops": _num(0), "mfu": _num(0, 1, nullable=True),
    "environment": _obj({"hardware": _str()}),
})


def validate_speed_record(record: Any) -> list[str]:
    """Every problem with a speed record as 'field.path: what is wrong'; empty when valid."""
    errs: list[str] = []
    _finite(record, "record", errs)
    SPEED_RECORD(record, "record", errs)
    return [e.replace("record.", "", 1) if e.startswith("record.") else e for e in errs]
