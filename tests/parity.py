"""Numbers produced by running a method's authors' code on fixed inputs, stored beside the tests.

A fixture is ``tests/data/parity/<name>.json``::

    {"method": "dist",
     "source": {"repo": "owner/name", "commit": "<40 hex>", "entry": "path.py:function_or_class",
                "how": "what was run: the inputs, the calls, the precision"},
     "cases": [{"name": "...", "params": {...},
                "inputs": {"z_s": {"dtype": "float64", "shape": [4, 10], "data": [...]}, ...},
                "outputs": {"loss": {"dtype": "float64", "shape": [], "data": [0.123]}, ...}}]}

Inputs are stored, not regenerated from a seed, so a fixture means the same thing on every
machine and torch version. Only numbers are stored, never the authors' code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

PARITY_DIR = Path(__file__).parent / "data" / "parity"
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "int64": torch.int64, "bool": torch.bool}


def encode(t: torch.Tensor) -> dict[str, Any]:
    """A tensor as the fixture's JSON form (exact: float64 and float32 round-trip through JSON's repr)."""
    t = t.detach().cpu()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise ValueError(f"fixtures hold {sorted(_DTYPES)}, not {dtype}")
    return {"dtype": dtype, "shape": list(t.shape), "data": t.reshape(-1).tolist()}


def decode(obj: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(obj["data"], dtype=_DTYPES[obj["dtype"]]).reshape(obj["shape"])


def load(name: str) -> dict[str, Any]:
    """The fixture with every encoded tensor decoded; ``cases[i]["inputs"|"outputs"]`` map names to tensors."""
    raw = json.loads((PARITY_DIR / f"{name}.json").read_text())
    for case in raw["cases"]:
        for part in ("inputs", "outputs"):
            case[part] = {k: _decode_tree(v) for k, v in case.get(part, {}).items()}
    return raw


def _decode_tree(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"dtype", "shape", "data"}:
        return decode(v)
    if isinstance(v, dict):
        return {k: _decode_tree(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode_tree(x) for x in v]
    return v


def case(fixture: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in fixture["cases"] if c["name"] == name]
    if not found:
        raise KeyError(f"no case {name!r}; the fixture has {[c['name'] for c in fixture['cases']]}")
    return found[0]
