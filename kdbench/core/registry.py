"""Name -> entry registries (timm style): one decorator to add, one factory to build.

Methods, models and datasets each have a registry. A lookup of an unknown name
raises :class:`KDBenchError` listing every valid name.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from kdbench.core.errors import KDBenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A named collection of entries with an optional lazy loader.

    ``loader`` is called once before the first lookup so entries defined in
    plug-in modules (methods/, entry points) are present without import-order
    games.
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._loader = loader
        self._loaded = loader is None

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True  # set first: loaders import modules that register
            assert self._loader is not None
            self._loader()

    def register(self, name: str, description: str = "", **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name", description=...)``."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise KDBenchError(f"{self.kind} {name!r} is registered twice")
            desc = description or _first_line(getattr(obj, "__doc__", None))
            self._entries[name] = Entry(name, obj, desc, dict(meta))
            return obj

        return deco

    def get(self, name: str) -> Entry[T]:
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            raise KDBenchError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {', '.join(names)}"

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        self._ensure_loaded()
        return iter(self._entries[n] for n in sorted(self._entries))


def _first_line(doc: str | None) -> str:
    if not doc:
        return ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def load_plugins(group: str) -> None:
    """Import every entry point of ``group`` (``kdbench.methods``, ``kdbench.models``, ``kdbench.datasets``):
    installed packages register their methods, models and datasets on import. A broken plug-in is
    reported and skipped, never hides the built-ins."""
    import logging
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as exc:
            logging.getLogger(__name__).warning("could not load plug-in %s (%s) of %s: %s", ep.name, ep.value,
                                                group, exc)
