"""The results store: ``results/runs/*.json``, one record per run, validated, never overwritten.

Also the contributor workflow: ``export`` writes a bundle (records with their
resolved configs and environments, plus a manifest) and ``import`` validates a
bundle and adds its records.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.core.errors import KDBenchError
from kdbench.core.locks import deferred_interrupts, file_lock
from kdbench.experiment.records import environment, now_iso, read_json, write_json_atomic
from kdbench.experiment.schema import RECORD_FILE, validate_record

log = logging.getLogger(__name__)


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
        except OSError as exc:  # full disk, read-only store: nothing was written
            raise KDBenchError(f"could not write the record {folder / name}: {exc.strerror or exc}") from None
    raise KDBenchError(f"could not find a free record name for {record['run_id']} in {folder}")


def records_of_run(results_root: str | Path, run_id: str) -> list[dict[str, Any]]:
    """Every stored record of one run identity, oldest first (a failed try, then its retry...): what ``run``
    and ``bench`` ask before training a run. An invalid file is named in a warning and not the run's outcome."""
    recover_store(results_root)
    folder = runs_dir(results_root)
    paths = [folder / f"{run_id}.json", *sorted(folder.glob(f"{run_id}__*.json"))]
    out = []
    for p in paths:
        if p.exists():
            try:
                rec = json.loads(p.read_text(), parse_constant=_refuse_constant)
            except (OSError, ValueError) as exc:
                _not_counted(p, [f"not valid JSON: {exc}"])
                continue
            errors = validate_record(rec, p.name)
            if errors:
                _not_counted(p, errors)
                continue
            out.append(rec)
    return sorted(out, key=lambda r: r.get("created", ""))


def _not_counted(path: Path, errors: list[str]) -> None:
    """A file in the store that is not a valid record is never taken as a run's outcome: named, and skipped."""
    log.warning("%s is not a valid record (%s): not counted; `kdbench results validate` lists every problem",
                path, errors[0])


def counted_records(results_root: str | Path) -> list[dict[str, Any]]:
    """Every valid record of the store; each invalid file is named in a warning and skipped: what ``status``,
    ``plan``, ``eval`` and cohort sizing read (one bad file neither stops them nor counts as a run)."""
    out = []
    for s in load_records(results_root):
        if s.errors:
            _not_counted(s.path, s.errors)
        else:
            out.append(s.record)
    return out


def completed_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "completed"]


def load_records(results_root: str | Path) -> list[StoredRecord]:
    """Every ``*.json`` under ``runs/``, parsed and validated, invalid ones with their errors (sorted by file
    name): what ``results validate``, ``doctor`` and import read, to show or check every file."""
    recover_store(results_root)
    out = []
    for path in sorted(runs_dir(results_root).glob("*.json")):
        try:
            rec = json.loads(path.read_text(), parse_constant=_refuse_constant)
        except (OSError, ValueError) as exc:
            out.append(StoredRecord(path, None, [f"not valid JSON: {exc}"]))
            continue
        out.append(StoredRecord(path, rec, validate_record(rec, path.name)))
    return out


def valid_records(results_root: str | Path) -> list[dict[str, Any]]:
    """All records, or a :class:`KDBenchError` naming every invalid file and field: what ``leaderboard`` and
    ``results export`` read, so that a published table or bundle never silently leaves a record out."""
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


BUNDLE_FORMAT = "kdbench-results-bundle"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest lists names and digests: far below this
MAX_RECORD_BYTES = 32 << 20    # a record with its history and config is ~10-100 KB
_MEMBER = re.compile(r"^records/" + RECORD_FILE.pattern + "$")  # a stored record's name (schema.RECORD_FILE)


def store_lock(results_root: str | Path):
    """The store's lock: one import (or migration) at a time."""
    return file_lock(Path(results_root) / ".store.lock")


def export_bundle(results_root: str | Path, out: str | Path) -> Path:
    """A .tar.gz with every record (each carries its resolved config), the exporter's environment and a manifest."""
    out = Path(out)
    if out.exists():
        kind = "a folder" if out.is_dir() else "a file"
        raise KDBenchError(f"{out} exists ({kind}): give the bundle a new file name, e.g. {out / 'results.tar.gz'}"
                           if out.is_dir() else f"{out} exists ({kind}): give the bundle a new file name")
    records = valid_records(results_root)
    if not records:
        raise KDBenchError(f"no records to export in {runs_dir(results_root)}")
    files = {f"records/{Path(s.path).name}": s.path.read_bytes() for s in load_records(results_root)}
    manifest = {"format": BUNDLE_FORMAT, "version": 1, "created": now_iso(),
                "exporter_environment": environment(None),
                "records": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    files["manifest.json"] = json.dumps(manifest, indent=2).encode()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tmp, "w:gz") as tar:
            for name, data in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, out)
    except OSError as exc:
        raise KDBenchError(f"could not write {out}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _read_bundle(bundle: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, listed members): the manifest is read first and only the members it lists, each capped."""
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}
            m = members.get("manifest.json")
            if m is None or not m.isfile():
                raise KDBenchError(f"{bundle} has no manifest.json: not a kdbench results bundle")
            if m.size > MAX_MANIFEST_BYTES:
                raise KDBenchError(f"{bundle}: manifest.json is {m.size:,} bytes; refusing to read it")
            try:
                manifest = json.loads(tar.extractfile(m).read())
            except (ValueError, UnicodeDecodeError) as exc:
                raise KDBenchError(f"{bundle}: manifest.json is not valid JSON ({exc}): re-export the bundle") from None
            if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT or \
                    not isinstance(manifest.get("records"), dict):
                raise KDBenchError(f"{bundle}: manifest.json is not a {BUNDLE_FORMAT} manifest (format and a "
                                   "`records` map of name -> sha256 expected): re-export the bundle")
            data: dict[str, bytes] = {}
            for name in manifest["records"]:
                member = members.get(name)
                if not isinstance(name, str) or not _MEMBER.match(name) or member is None or not member.isfile():
                    continue  # reported as missing by the caller
                if member.size > MAX_RECORD_BYTES:
                    raise KDBenchError(f"{bundle}: {name} is {member.size:,} bytes, more than a record can be; "
                                       "refusing to read it")
                data[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise KDBenchError(f"{bundle} is not a kdbench results bundle: {exc}") from None
    return manifest, data


def _bundle_records(bundle: Path) -> list[dict[str, Any]]:
    """Every record the bundle's manifest lists, each checked against its digest and validated; or one error
    naming every problem."""
    if not bundle.is_file():
        raise KDBenchError(f"no bundle at {bundle}")
    manifest, members = _read_bundle(bundle)
    problems, records = [], []
    for name, digest in manifest["records"].items():
        data = members.get(name)
        if data is None:
            problems.append(f"{name}: listed in the manifest but missing (or not records/<name>.json)")
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"{name}: checksum does not match the manifest")
            continue
        try:
            rec = json.loads(data, parse_constant=_refuse_constant)
        except ValueError as exc:
            problems.append(f"{name}: not valid JSON: {exc}")
            continue
        problems += [f"{name}: {e}" for e in validate_record(rec, Path(name).name)]
        records.append(rec)
    if problems:
        raise KDBenchError(f"{bundle} was not imported; its records have problems:\n  - " + "\n  - ".join(problems))
    return records


def import_bundle(bundle: str | Path, results_root: str | Path, runs: str | Path | None = None) -> list[Path]:
    """Validate every record of a bundle first; then add them all, or nothing.

    Records already in the store (the same content) are skipped. A record whose run id the store
    holds with other content is a conflict and the bundle is refused: importing must never change
    a table cell that local runs filled. One import runs at a time (the store's lock).
    """
    bundle = Path(bundle)
    records = _bundle_records(bundle)
    with store_lock(results_root):
        if Path(results_root).is_dir():
            _recover_locked(Path(results_root))
        existing: dict[str, set[str]] = {}
        for s in load_records(results_root):
            if s.errors:  # not a record (a JSON list, a bare status): neither a conflict nor a reason to refuse
                _not_counted(s.path, s.errors)
            else:
                existing.setdefault(str(s.record.get("run_id")), set()).add(_canonical(s.record))
        new, conflicts, seen = [], [], set()
        for rec in records:
            text = _canonical(rec)
            have = existing.get(rec["run_id"], set())
            if text in have or text in seen:
                continue
            if have:
                conflicts.append(f"{rec['run_id']}: the store holds this run (same experiment and seed) with other "
                                 "content")
                continue
            seen.add(text)  # the bundle's own repeats of a run (force=true) come from one store: all kept
            new.append(rec)
        if conflicts:
            raise KDBenchError(f"{bundle} was not imported; it conflicts with records in {runs_dir(results_root)} "
                               "(a run id is one experiment and seed: keep one record of it):\n  - "
                               + "\n  - ".join(conflicts))
        with contextlib.ExitStack() as held:  # each new run's lock (``runs``: paths.runs), as a training run holds it
            ids = list(dict.fromkeys(rec["run_id"] for rec in new))  # a run's repeats share its one lock
            busy = [i for i in ids if runs is not None and not held.enter_context(
                file_lock(Path(runs) / f"{i}.lock", blocking=False))]
            if busy:
                raise KDBenchError(f"{bundle} was not imported: {len(busy)} of its runs are being trained here by "
                                   f"another process ({', '.join(busy[:5])}{' ...' if len(busy) > 5 else ''}); "
                                   "import it when they have ended (their records and the bundle's are then "
                                   "compared: the same content is skipped, other content is a conflict)")
            return _publish(Path(results_root), new)


# An import is staged in a folder of its own beside runs/, then published under a journal: killed while
# staging, nothing was added (the next command removes the stage); killed while publishing, the next command
# that reads the store finishes it. Ctrl-C and SIGTERM wait for the publishing renames.
_JOURNAL = ".import-journal.json"
_STAGE = ".import-stage-"  # never matches the journal


def _publish(root: Path, records: list[dict[str, Any]]) -> list[Path]:
    if not records:
        return []
    journaled = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=_STAGE, dir=root))
    except OSError as exc:
        raise KDBenchError(f"nothing was imported: could not stage the records in {root}: {exc.strerror or exc}"
                           ) from None
    try:
        names = []
        for i, rec in enumerate(records):
            names.append(f"{rec['run_id']}__import{i}.json")
            write_json_atomic(stage / names[-1], rec, overwrite=False)
        runs_dir(root).mkdir(parents=True, exist_ok=True)
        with deferred_interrupts() as caught:
            write_json_atomic(root / _JOURNAL, {"stage": stage.name, "files": names})
            journaled = True
            added = _finish_import(root)
    except OSError as exc:
        if journaled:
            raise KDBenchError(f"the import stopped while adding its records ({exc.strerror or exc}); the next "
                               f"kdbench command that reads {root} finishes it") from None
        raise KDBenchError(f"nothing was imported: could not write to {root} ({exc.strerror or exc}); the store "
                           "is as it was") from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt("nothing was imported: interrupted before the records were added") from None
    finally:
        if not journaled:
            shutil.rmtree(stage, ignore_errors=True)
    if caught:
        raise KeyboardInterrupt(f"interrupted after the import finished: {len(added)} record(s) were added to "
                                f"{runs_dir(root)}")
    return added


def _finish_import(root: Path) -> list[Path]:
    """Move a journaled import's staged records into runs/ (each under a free name), then drop the journal and
    the stage. Run again after a kill, it moves what is left: a record is in runs/ or in the stage, never lost."""
    journal = read_json(root / _JOURNAL)
    stage, folder, added = root / journal["stage"], runs_dir(root), []
    for name in journal["files"]:
        src = stage / name
        if not src.exists():
            continue  # moved before the kill
        run_id = name.split("__import")[0]
        names = itertools.chain([f"{run_id}.json"], (f"{run_id}__imported_{i}.json" for i in itertools.count()))
        for dst in (folder / n for n in names):
            try:
                os.link(src, dst)  # never overwrites: a name a local run took meanwhile is skipped
                break
            except FileExistsError:
                continue
        src.unlink()
        added.append(dst)
    (root / _JOURNAL).unlink()
    shutil.rmtree(stage, ignore_errors=True)
    return added


def recover_store(results_root: str | Path) -> None:
    """Finish an import a kill interrupted while publishing, and remove the stage of one killed while staging.
    Only when no import is running (the store's lock is free); a store that cannot be written is left as is."""
    root = Path(results_root)
    journal, stages = root / _JOURNAL, list(root.glob(_STAGE + "*")) if root.is_dir() else []
    if not journal.exists() and not stages:
        return
    try:
        with file_lock(root / ".store.lock", blocking=False) as mine:
            if mine:  # else an import is running: it finishes its own work
                _recover_locked(root)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("could not finish an interrupted import in %s: %s", root, exc)


def _recover_locked(root: Path) -> None:
    if (root / _JOURNAL).exists():
        log.warning("finishing an import that was interrupted (%s)", root / _JOURNAL)
        _finish_import(root)
    for stage in root.glob(_STAGE + "*"):
        shutil.rmtree(stage, ignore_errors=True)  # staged, never published: nothing was added


def _canonical(rec: dict[str, Any]) -> str:
    return json.dumps(rec, sort_keys=True)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number a record may hold")
