"""One registry style for everything chosen by key: methods, judges, commands, data importers, general tasks.

A :class:`Registry` maps a key to an object (a class, a factory, a module's entry point). Each entry
registers itself where it is defined, with the registry's decorator::

    @METHODS.register("dinm")
    class DINM: ...

and the registry imports every public module of its package the first time it is looked up, so a new
method, judge, command, importer or task is one new module and nothing else to edit. Importing
``detoxedit`` registers nothing (no import-time side effects); modules whose name starts with ``_`` and
those the registry is told to skip are never imported by discovery.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Iterable

from detoxedit.errors import DetoxEditError


class Registry(dict):
    """Key -> registered object, for one kind of thing; entries come from the modules of ``package`` (or
    from ``package`` itself when it is a single module)."""

    def __init__(self, kind: str, package: str, skip: Iterable[str] = (), hint: str = ""):
        super().__init__()
        self.kind, self.package, self.skip, self.hint = kind, package, frozenset(skip), hint
        self._discovered = False

    def register(self, key: str, **attributes: Any) -> Callable:
        """Decorator: make the decorated object available as ``key`` (and set ``attributes`` on it)."""
        def deco(obj):
            if key in self:
                raise ValueError(f"{self.kind} key {key!r} registered twice")
            for name, value in attributes.items():
                setattr(obj, name, value)
            self[key] = obj
            return obj
        return deco

    def discover(self) -> "Registry":
        """Import every module of the package once (each registers its entries on import)."""
        if not self._discovered:
            self._discovered = True
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):  # a plain module: itself
                if not info.name.startswith("_") and info.name not in self.skip:
                    importlib.import_module(f"{self.package}.{info.name}")
        return self

    def get_entry(self, key: str) -> Any:
        """The object registered as ``key``; an unknown key fails listing the known ones."""
        self.discover()
        if key not in self:
            hint = f" ({self.hint})" if self.hint else ""
            raise DetoxEditError(f"unknown {self.kind} {key!r}; available: {', '.join(self.names())}{hint}")
        return self[key]

    def names(self) -> list[str]:
        """Every registered key, sorted."""
        self.discover()
        return sorted(self)
