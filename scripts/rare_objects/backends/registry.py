"""The one plug-in style of the workflow: a name in the config maps to one module's backend.

Each pluggable part (caption backends, outlier detectors, embedders, object
detectors, text encoders) is a package under :mod:`rare_objects.backends`
whose modules each call ``REGISTRY.register(Backend(...))`` when imported,
with a dataclass of what the workflow needs to know about that backend.
The package's ``__init__`` holds its :class:`Registry`; the modules are
found by importing every module of the package (those whose name starts
with ``_`` are helpers), so adding a backend is its module plus its section
of schemas/config.schema.yaml, and nothing else names it.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Generic, TypeVar

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Backends of one kind (``what``, for messages) from the modules of ``package``."""

    def __init__(self, what: str, package: str, path):
        self.what = what
        self._package = package
        self._path = list(path)
        self._entries: dict[str, Entry] = {}
        self._imported = False
        self._lock = threading.Lock()

    def register(self, entry: Entry) -> Entry:
        """Add ``entry`` under its ``name`` (each backend module calls this when imported)."""
        name = entry.name
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def _import_all(self) -> None:
        with self._lock:
            if self._imported:
                return
            for module in pkgutil.iter_modules(self._path):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{self._package}.{module.name}")
            self._imported = True

    def names(self) -> list[str]:
        """The registered names, sorted (the schema's enum lists the same; a test checks it)."""
        self._import_all()
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        """The backend registered as ``name``; a ValueError names the known ones."""
        self._import_all()
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.what} {name!r}; use one of {', '.join(self.names())}"
            ) from None
