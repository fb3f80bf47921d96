"""Typed config values: a leaf's type and range, as a command line can give it (``'1'``, ``4``, ``auto``), and
the types of the runtime keys (engine, bench, speed, paths), checked at composition like the experiment's
(:mod:`kdbench.experiment.identity`), so that a typo is one message before anything runs."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdbench.core.errors import KDBenchError


class Leaf:
    """A leaf's type and range: coerces what a command line can give (``'1'``, ``4``) or says why not."""

    def __init__(self, kind: type, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 nullable: bool = False, choices: tuple | None = None) -> None:
        self.kind, self.lo, self.hi, self.lo_open = kind, lo, hi, lo_open
        self.nullable, self.choices = nullable, choices

    def __call__(self, value: Any, key: str) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise KDBenchError(f"{key} must be set (got null)")
        v = _coerce(value, self.kind, key)
        if self.choices is not None and v not in self.choices:
            raise KDBenchError(f"{key}={value!r} is not one of: {', '.join(map(str, self.choices))}")
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            raise KDBenchError(f"{key}={value!r} must be {'>' if self.lo_open else '>='} {self.lo}")
        if self.hi is not None and v > self.hi:
            raise KDBenchError(f"{key}={value!r} must be <= {self.hi}")
        return v


def _coerce(value: Any, kind: type, key: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise KDBenchError(f"{key}={value!r} must be true or false")
    if kind in (int, float):
        if isinstance(value, bool) or isinstance(value, (list, dict)) or OmegaConf.is_config(value):
            raise KDBenchError(f"{key}={value!r} must be {'an integer' if kind is int else 'a number'}")
        try:
            num = float(value) if kind is float else _to_int(value)
        except (TypeError, ValueError):
            raise KDBenchError(f"{key}={value!r} must be {'an integer' if kind is int else 'a number'}") from None
        if num != num or num in (float("inf"), float("-inf")):
            raise KDBenchError(f"{key}={value!r} must be a finite number")
        return num
    if kind is str:
        if isinstance(value, (list, dict)) or OmegaConf.is_config(value):
            raise KDBenchError(f"{key}={value!r} must be a string")
        return str(value)
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    f = float(value)
    if f != int(f):
        raise ValueError(value)
    return int(f)


def type_node(node: DictConfig, types: dict[str, Leaf], prefix: str) -> None:
    for key, t in types.items():
        if key in node:
            node[key] = t(node[key], f"{prefix}.{key}")


class AutoOr:
    """``auto`` or a value of the inner type (``engine.threads=auto | N``, ``bench.cohort=auto | true | false``)."""

    def __init__(self, inner: Leaf) -> None:
        self.inner = inner

    def __call__(self, value: Any, key: str) -> Any:
        if value == "auto":
            return "auto"
        try:
            return self.inner(value, key)
        except KDBenchError as exc:
            raise KDBenchError(f"{exc} (or auto)") from None


class ListOf:
    """A list whose items are all of one type (``engine.track=[tensorboard]``)."""

    def __init__(self, item: Leaf) -> None:
        self.item = item

    def __call__(self, value: Any, key: str) -> Any:
        if not (isinstance(value, (list, tuple)) or OmegaConf.is_list(value)):
            raise KDBenchError(f"{key}={value!r} must be a list, e.g. {key}=[a,b]")
        return [self.item(v, f"{key}[{i}]") for i, v in enumerate(value)]


_FLAG, _COUNT, _TEXT = Leaf(bool), Leaf(int, 1), Leaf(str)
# The runtime keys a command reads, typed like the experiment's so that a typo is refused at composition,
# before data loads, a teacher trains or a record could be written. The fast-path switches (channels_last,
# compile, optimizer_impl, fold_teacher_bn, teacher_inference_mode) are checked by resolving them.
RUNTIME_TYPES = {
    "engine": {"device": _TEXT, "threads": AutoOr(_COUNT), "eval_batch_size": _COUNT,
               "progress": AutoOr(_FLAG), "log_every": _COUNT, "keep_checkpoint": _FLAG,
               "track": ListOf(_TEXT), "keep_model": _FLAG},
    "bench": {"cohort": AutoOr(_FLAG), "cohort_max": AutoOr(_COUNT),
              "job": Leaf(str, choices=("run", "pair-teacher", "teacher", "cohort")), "depth": Leaf(int, 0),
              "members": ListOf(_TEXT)},
    "speed": {"methods": ListOf(_TEXT), "batch_size": _COUNT, "steps": _COUNT, "warmup": Leaf(int, 0),
              "repeats": _COUNT, "reference": _FLAG, "profile": _FLAG, "cohort": _FLAG},
    "paths": {k: _TEXT for k in ("data", "results", "work", "runs", "teachers", "models")},
}
RUNTIME_FLAGS = {"resume": _FLAG, "force": _FLAG, "retry_failed": _FLAG, "note": _TEXT}


def type_runtime(cfg: DictConfig) -> None:
    """Type and range-check the runtime keys in place (they never enter a run's identity; see module doc)."""
    for group, types_ in RUNTIME_TYPES.items():
        if group in cfg and cfg[group] is not None:
            type_node(cfg[group], types_, group)
    for key, t in RUNTIME_FLAGS.items():
        if key in cfg:
            cfg[key] = t(cfg[key], key)
