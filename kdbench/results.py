"""The results store: ``results/runs/*.json``, one record per run, validated, never overwritten.

Also the contributor workflow: ``export`` writes a bundle (records with their
resolved configs and environments, plus a manifest) and ``import`` validates a
bundle and adds its records.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import KDBenchError
from .records import environment, now_iso, write_json_atomic
from .schema import validate_record


@dataclass
class StoredRecord:
    path: Path
    record: dict[str, Any] | None
    errors: list[str]


def runs_dir(results_root: str | Path) -> Path:
    return Path(results_root) / "runs"


def add_record(results_root: str | Path, record: dict[str, Any]) -> Path:
    """Store ``record`` as ``runs/<run_id>.json``; never overwrite: a taken name gets a unique suffix."""
    problems = validate_record(record)
    if problems:
        raise KDBenchError(f"refusing to store an invalid record for {record.get('run_id')!r}: {problems[:5]}")
    folder = runs_dir(results_root)
    names = [f"{record['run_id']}.json"] + [
        f"{record['run_id']}__{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}_{i}.json" for i in range(100)]
    for name in names:
        try:
            write_json_atomic(folder / name, record, overwrite=False)
            return folder / name
        except FileExistsError:
            continue
    raise KDBenchError(f"could not find a free record name for {record['run_id']} in {folder}")


def records_of_run(results_root: str | Path, run_id: str) -> list[dict[str, Any]]:
    """Every stored record of one run identity, oldest first (a failed try, then its retry...)."""
    folder = runs_dir(results_root)
    paths = [folder / f"{run_id}.json", *sorted(folder.glob(f"{run_id}__*.json"))]
    out = []
    for p in paths:
        if p.exists():
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
    return sorted(out, key=lambda r: r.get("created", ""))


def completed_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "completed"]


def load_records(results_root: str | Path) -> list[StoredRecord]:
    """Every ``*.json`` under ``runs/``, parsed and validated (sorted by file name)."""
    out = []
    for path in sorted(runs_dir(results_root).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            out.append(StoredRecord(path, None, [f"not valid JSON: {exc}"]))
            continue
        out.append(StoredRecord(path, rec, validate_record(rec, path.name)))
    return out


def valid_records(results_root: str | Path) -> list[dict[str, Any]]:
    """All records, or a :class:`KDBenchError` naming every invalid file and field."""
    stored = load_records(results_root)
    bad = [s for s in stored if s.errors]
    if bad:
        raise KDBenchError("invalid result records (fix or remove them):\n" + format_problems(bad))
    return [s.record for s in stored]


def format_problems(bad: list[StoredRecord]) -> str:
    lines = []
    for s in bad:
        lines.append(f"{s.path}:")
        lines += [f"  - {e}" for e in s.errors[:20]]
        if len(s.errors) > 20:
            lines.append(f"  - ... {len(s.errors) - 20} more")
    return "\n".join(lines)


def export_bundle(results_root: str | Path, out: str | Path) -> Path:
    """A .tar.gz with every record (each carries its resolved config), the exporter's environment and a manifest."""
    records = valid_records(results_root)
    if not records:
        raise KDBenchError(f"no records to export in {runs_dir(results_root)}")
    out = Path(out)
    files = {f"records/{Path(s.path).name}": s.path.read_bytes() for s in load_records(results_root)}
    manifest = {"format": "kdbench-results-bundle", "version": 1, "created": now_iso(),
                "exporter_environment": environment(None),
                "records": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    files["manifest.json"] = json.dumps(manifest, indent=2).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    return out


def import_bundle(bundle: str | Path, results_root: str | Path) -> list[Path]:
    """Validate every record of a bundle first; then add them (records already present are skipped)."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise KDBenchError(f"no bundle at {bundle}")
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as exc:
        raise KDBenchError(f"{bundle} is not a kdbench results bundle: {exc}") from None
    if "manifest.json" not in members:
        raise KDBenchError(f"{bundle} has no manifest.json: not a kdbench results bundle")
    manifest = json.loads(members["manifest.json"])
    problems, records = [], []
    for name, digest in manifest.get("records", {}).items():
        data = members.get(name)
        if data is None:
            problems.append(f"{name}: listed in the manifest but missing")
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"{name}: checksum does not match the manifest")
            continue
        try:
            rec = json.loads(data)
        except json.JSONDecodeError as exc:
            problems.append(f"{name}: not valid JSON: {exc}")
            continue
        problems += [f"{name}: {e}" for e in validate_record(rec, Path(name).name)]
        records.append(rec)
    if problems:
        raise KDBenchError(f"{bundle} was not imported; its records have problems:\n  - " + "\n  - ".join(problems))
    existing = {json.dumps(s.record, sort_keys=True) for s in load_records(results_root) if s.record}
    added = []
    for rec in records:
        if json.dumps(rec, sort_keys=True) not in existing:
            added.append(add_record(results_root, rec))
    return added
