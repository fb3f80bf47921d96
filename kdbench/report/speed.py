"""Speed records as tables: each measurement beside its reference loop, the latest per setting."""
from __future__ import annotations

from typing import Any

from kdbench.experiment.records import describe_fast_path, speedup_range

from .tables import (
    Column,
    Table,
)


def _raw(key: str, header: str) -> Column:
    return Column(key, header, text=lambda r: "" if r.get(key) is None else str(r[key]))


SPEED_COLUMNS = [_raw(k, h) for k, h in (
    ("pair", "pair"), ("method", "method"), ("batch", "batch"), ("hardware", "hardware"), ("engine", "engine"),
    ("ref_images_per_s", "reference img/s"), ("images_per_s", "img/s"), ("speedup", "speed-up"),
    ("rounds", "rounds"), ("speedup_range", "speed-up range"), ("gflop_per_image", "GFLOP/img"),
    ("tflops", "TFLOP/s"), ("mfu_pct", "MFU (%)"), ("peak_memory_mib", "peak MiB"), ("date", "date"))]


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
