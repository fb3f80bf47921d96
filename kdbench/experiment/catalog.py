"""The method catalog: every registered method by name, and what can be read off a method without training it.

Methods register themselves when their module is imported (``register_method`` in
:mod:`kdbench.training.method`); the catalog discovers the built-in ones in ``kdbench.methods`` and
plug-ins through the ``kdbench.methods`` entry point, by name, the first time it is asked. Layers below
training (identity, migration, reporting) read a method's registration facts from here without
importing torch themselves: its category and scheme, how tables show it (display name, row order, the
survey's name for it), its references, and the ranges its hyper-parameters must lie in.
"""
from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from dataclasses import dataclass
from typing import Annotated, Any

from kdbench.core.errors import KDBenchError
from kdbench.core.registry import Registry, load_plugins


def _load_methods() -> None:
    pkg = importlib.import_module("kdbench.methods")

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"kdbench.methods.{info.name}")
    load_plugins("kdbench.methods")


METHODS: Registry[Any] = Registry("method", loader=_load_methods)


def method_defaults(name: str) -> dict[str, Any]:
    """A method's default config, read off its class: ``__init__``'s keyword defaults, then the class's
    ``defaults``. This is the one place defaults live (plug-ins included); Hydra sees it as the
    ``method/NAME`` config (:func:`register_method_configs`)."""
    cls = METHODS.get(name).obj
    out: dict[str, Any] = {"name": name}
    missing = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[4:]:  # after self, student, teacher, ctx
        if p.kind is not p.KEYWORD_ONLY:
            continue
        if p.default is inspect.Parameter.empty:
            missing.append(p.name)
        else:
            out[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
    out.update(cls.defaults)
    missing = [m for m in missing if m not in out]
    if missing:
        raise KDBenchError(f"method {name!r} has no default for {missing}: give each keyword of __init__ a default "
                           "(or list it in the class's `defaults`)")
    return out


# -- how a method is shown ---------------------------------------------------------------------

def _meta(name: str) -> dict[str, Any]:
    """A method's registration facts; none for a method not registered here (a plug-in's records)."""
    return METHODS.get(name).meta if name in METHODS else {}


def display_name(name: str) -> str:
    """The name tables show for a method (``KD``, ``TF-KD (self)``); its id where it declares none."""
    return _meta(name).get("display") or name


def survey_name(name: str) -> str:
    """The method's id in the survey's reference table (Gou et al. 2021), where it differs from ours; ``""``
    for a method the survey does not table under any id (its id there names another method)."""
    meta = _meta(name)
    return meta["survey_name"] if meta.get("survey_name") is not None else name


def survey_teacher(name: str, student: str) -> str | None:
    """What the survey's table names as this method's teacher for ``student``, where it names one the
    records cannot (ONE's on-the-fly ensemble); None otherwise."""
    form = _meta(name).get("survey_teacher")
    return form.format(student=student) if form else None


def method_rank(name: str) -> tuple[float, str]:
    """Where a method's rows go in a table: by its registered ``order`` (the baseline first, then the CRD
    benchmark's table, then the later methods), then a method without one (a plug-in, or records of a
    method not registered here), alphabetically."""
    order = _meta(name).get("order")
    return (math.inf if order is None else float(order), name)


def method_order() -> list[str]:
    """Every registered method that declares a table position, in table order."""
    return sorted((e.name for e in METHODS if e.meta.get("order") is not None), key=method_rank)


# -- what a hyper-parameter may be ---------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """The interval a numeric hyper-parameter must lie in, declared in its annotation, e.g.
    ``temperature: Annotated[float, Range(gt=0)] = 4.0`` or ``alpha: Annotated[float, Range(ge=0, le=1)]``.
    Composition refuses a value outside it (``method.temperature=0.0 must be > 0``), before anything is
    hashed or built; so does building a method from a config that was not composed."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __post_init__(self) -> None:
        if (self.ge is not None and self.gt is not None) or (self.le is not None and self.lt is not None):
            raise ValueError("a Range has at most one lower bound (ge or gt) and one upper bound (le or lt)")

    def __str__(self) -> str:
        lo, lo_open = (self.gt, True) if self.gt is not None else (self.ge, False)
        hi, hi_open = (self.lt, True) if self.lt is not None else (self.le, False)
        if lo is not None and hi is not None:
            return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        if lo is not None:
            return f"{'>' if lo_open else '>='} {lo:g}"
        if hi is not None:
            return f"{'<' if hi_open else '<='} {hi:g}"
        return "a number"

    def __contains__(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def check(self, value: float, key: str) -> None:
        """Refuse ``value`` for ``key`` (``method.alpha``), saying the interval it must lie in."""
        if value not in self:
            raise KDBenchError(f"{key}={value!r} must be {self}")


@dataclass(frozen=True)
class Modifier:
    """Marks a hyper-parameter that modifies a method after its records existed -- logit standardisation,
    a variant of a loss as the authors' code writes it: ``logit_stand: Annotated[bool, Modifier()] = False``.
    At its default the option is left out of a run's identity, so every stored run of the method keeps its id;
    set to anything else it is part of the identity (and of the table's label) like any hyper-parameter."""


# The ranges most hyper-parameters have, by what they are (``beta: Weight = 1000.0``).
Weight = Annotated[float, Range(ge=0)]  # a loss term's weight: 0 switches the term off
Positive = Annotated[float, Range(gt=0)]  # a temperature, a norm's power, a variance
Count = Annotated[int, Range(ge=1)]  # a dimension, a number of negatives or channels
Index = Annotated[int, Range(ge=0)]  # a position in a list (a stage, a layer)
