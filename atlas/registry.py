"""Handler discovery through the `atlas.handlers` entry-point group.

Names are listed from package metadata without importing anything; a handler's module
is imported the first time its class is asked for. Two distributions registering the
same name is an error naming both, as in hatchling's plugin manager.
"""
from __future__ import annotations

import importlib.metadata as md
from typing import Iterable

from atlas.errors import AtlasError
from atlas.handler import Handler

GROUP = "atlas.handlers"


class HandlerLoadError(AtlasError):
    pass


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "?"


class Registry:
    def __init__(self, entry_points: Iterable[md.EntryPoint] | None = None) -> None:
        if entry_points is None:
            entry_points = md.entry_points(group=GROUP)
        self._eps: dict[str, md.EntryPoint] = {}
        self._classes: dict[str, type[Handler]] = {}
        for ep in entry_points:
            known = self._eps.get(ep.name)
            if known is not None and known.value != ep.value:
                raise HandlerLoadError(
                    f"handler name {ep.name!r} is registered twice: {known.value} "
                    f"(from {_dist_name(known)}) and {ep.value} (from {_dist_name(ep)})",
                    "uninstall one of the two packages, or rename one entry point",
                )
            self._eps[ep.name] = ep

    @classmethod
    def from_classes(cls, *handlers: type[Handler]) -> "Registry":
        """A registry of in-memory classes, for tests and embedding."""
        registry = cls(entry_points=[])
        for handler in handlers:
            registry._classes[handler.name] = handler
        return registry

    def names(self) -> list[str]:
        return sorted(set(self._eps) | set(self._classes))

    def __contains__(self, name: str) -> bool:
        return name in self._eps or name in self._classes

    def load(self, name: str) -> type[Handler]:
        if name in self._classes:
            return self._classes[name]
        if name not in self._eps:
            raise HandlerLoadError(f"unknown handler {name!r}",
                                   f"known handlers: {', '.join(self.names()) or 'none installed'}")
        ep = self._eps[name]
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take the CLI down
            raise HandlerLoadError(f"handler {name!r} ({ep.value}) failed to import: "
                                   f"{type(exc).__name__}: {exc}",
                                   "reinstall the package that provides it") from None
        if not (isinstance(obj, type) and issubclass(obj, Handler)):
            raise HandlerLoadError(f"entry point {name!r} ({ep.value}) is not an atlas Handler class")
        if obj.name != name:
            raise HandlerLoadError(f"entry point {name!r} points at handler {obj.name!r} ({ep.value})",
                                   "make the entry-point name and the class's `name` the same")
        self._classes[name] = obj
        return obj
