"""The method catalog: every registered method by name, and what can be read off a method without training it.

Methods register themselves when their module is imported (``register_method`` in
:mod:`kdbench.training.method`); the catalog discovers the built-in ones in ``kdbench.methods`` and
plug-ins through the ``kdbench.methods`` entry point, by name, the first time it is asked. Layers below
training (identity, migration, reporting) read a method's registration facts from here without
importing torch themselves.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

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
