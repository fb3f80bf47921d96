"""``kdbench results migrate``: upgrade stored records to the current schema, in place, idempotently.

Version 1 -> 2 (run identity by structure): each record's stored config is rewritten to the
current layout (``data.source`` for where data lives, ``protocol`` with the precision that the
run actually used, milestones as fractions of the epochs), its experiment spec and run id are
computed from that config exactly as a new run's would be, and the file is renamed to the new
run id. Nothing is re-run and no metric changes; ``migrated_from`` keeps the old run id.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kdbench.core.errors import KDBenchError
from kdbench.experiment.identity import DATA_SOURCE_KEYS, RESOLVED_PRECISIONS
from kdbench.experiment.records import write_json_atomic
from kdbench.experiment.results import runs_dir, store_lock
from kdbench.experiment.schema import SCHEMA_VERSION, validate_record

log = logging.getLogger(__name__)

@dataclass
class Migration:
    migrated: list[tuple[str, str]] = field(default_factory=list)  # (old file, new file)
    current: int = 0
    problems: list[str] = field(default_factory=list)


def _config_v1_to_v2(cfg: dict[str, Any], precision: str) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    cfg.pop("bench", None)  # the suite group's earlier name (runtime: it never defined a run)
    data = cfg["data"]
    source = data.setdefault("source", {})
    for key in DATA_SOURCE_KEYS:
        if key in data:
            source[key] = data.pop(key)
    engine = cfg.get("engine") or {}
    engine.pop("amp", None)
    cfg["protocol"] = {"name": "kdbench", "precision": precision}
    for sched in (cfg["schedule"], cfg["teacher"]["schedule"]):
        epochs = int(sched["epochs"])
        sched["milestones"] = [int(m) / epochs for m in (sched.get("milestones") or [])]
    return cfg


def _precision_used(rec: dict[str, Any]) -> str:
    """The precision a version-1 run ran in: recorded by the engine, else what ``auto`` meant on its device."""
    amp = (rec.get("engine") or {}).get("amp") or (rec["config"].get("engine") or {}).get("amp")
    if amp in RESOLVED_PRECISIONS:
        return amp
    device = str((rec.get("environment") or {}).get("device") or "cpu")
    return "bf16" if device.startswith("cuda") else "fp32"


def migrate_record(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The version-2 form of a version-1 record (None if it is already current)."""
    from kdbench.experiment.catalog import METHODS
    from kdbench.experiment.identity import (
        experiment_id,
        experiment_spec,
        method_defaults_on_pair,
        run_id_from,
        type_config,
    )

    if rec.get("schema_version") == SCHEMA_VERSION:
        return None
    if rec.get("schema_version") != 1:
        raise KDBenchError(f"schema_version {rec.get('schema_version')!r} cannot be migrated")
    precision = _precision_used(rec)
    cfg = OmegaConf.create(_config_v1_to_v2(rec["config"], precision))
    type_config(cfg)
    uses_teacher = METHODS.get(str(cfg.method.name)).obj.uses_teacher
    spec = experiment_spec(cfg, precision, uses_teacher=uses_teacher)
    new = dict(rec)
    new["schema_version"] = SCHEMA_VERSION
    new["run_id"] = run_id_from(spec, int(rec["seed"]))
    new = {k: new[k] for k in ("schema_version", "run_id", "status", "kind", "created", "started")} | \
        {"experiment": {"id": experiment_id(spec), "spec": spec, "defaults": method_defaults_on_pair(cfg)}} | \
        {k: v for k, v in new.items() if k not in ("schema_version", "run_id", "status", "kind", "created",
                                                    "started")}
    if new.get("teacher"):
        new["teacher"] = {**new["teacher"], "source": new["teacher"].get("source", "trained")}
    new["config"] = OmegaConf.to_container(cfg, resolve=True)
    new["migrated_from"] = {"schema_version": 1, "run_id": rec["run_id"]}
    return new


def _new_name(old_name: str, old_id: str, new_id: str) -> str:
    """Keep the suffix of a repeated record (``<run_id>__<time>_<pid>_<n>.json``)."""
    return new_id + old_name[len(old_id):] if old_name.startswith(old_id) else f"{new_id}.json"


def migrate_store(results_root: str | Path, dry_run: bool = False) -> Migration:
    """Migrate every record under ``runs/``; a second call finds nothing to do."""
    folder = runs_dir(results_root)
    out = Migration()
    if not folder.is_dir():
        return out
    with store_lock(results_root):
        for path in sorted(folder.glob("*.json")):
            try:
                rec = json.loads(path.read_text())
                new = migrate_record(rec)
            except (OSError, json.JSONDecodeError, KDBenchError, KeyError, TypeError, ValueError) as exc:
                out.problems.append(f"{path.name}: {exc}")
                continue
            if new is None:
                out.current += 1
                continue
            target = folder / _new_name(path.name, rec["run_id"], new["run_id"])
            problems = validate_record(new, target.name)
            if problems:
                out.problems.append(f"{path.name}: the migrated record would be invalid: {problems[:3]}")
                continue
            out.migrated.append((path.name, target.name))
            if dry_run:
                continue
            try:
                write_json_atomic(target, new, overwrite=False)
            except FileExistsError:  # an earlier, interrupted migration wrote it: it must be the same record
                if json.loads(target.read_text()) != new:
                    out.problems.append(f"{path.name}: {target.name} exists with other content; left both")
                    continue
            path.unlink()
    return out
