"""One small registry type for everything permerge looks up by name.

Architectures, alignment methods, mergers, reduction methods, dataset kinds, grid task kinds
and executors are all registered by name with a decorator, and each is one file. A
:class:`Registry` gives them the same behaviour, so a newcomer learns it once:

* a second entry under a name already taken is refused with a one-line error (two files
  silently shadowing each other is the bug a plugin system must not have);
* an unknown name is a one-line error listing the known ones;
* ``summaries()`` lists the entries with their one-line summaries (``permerge methods``);
* with ``package=...`` the modules of that package are imported on first lookup, so adding
  a method is adding a file: nothing else needs to import it.

Re-importing the module that made an entry (``importlib.reload`` in a notebook) replaces it
instead of failing: the entry's *origin* (module and qualified name) is the same.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import PermergeError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def origin(obj: object) -> str:
    """Where an entry was defined: ``module.qualname`` (what makes a re-import harmless)."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def summary_of(obj: object) -> str:
    """The first line of a docstring: an entry's summary when it does not give one."""
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else ""


class Registry(Generic[T]):
    """Entries of type ``T`` by name; ``what`` names them in errors (``"alignment method"``).

    ``error`` is the exception raised for an unknown name (a subclass of
    :class:`~permerge.errors.PermergeError`, so the CLI prints it on one line).
    """

    def __init__(self, what: str, *, package: str | None = None, error: type[PermergeError] = PermergeError) -> None:
        self.what = what
        self.package = package
        self.error = error
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._discovered = package is None

    # --- adding ----------------------------------------------------------------------------

    def add(self, name: str, entry: T, *, source: object = None) -> T:
        """Register ``entry`` under ``name``; ``source`` (default: the entry) is where it was
        defined, so a re-import of the same module replaces it and anything else is refused."""
        where = origin(entry if source is None else source)
        if name in self._entries and self._origins[name] != where:
            raise PermergeError(
                f"{self.what} {name!r} is registered twice ({self._origins[name]} and {where}); rename one"
            )
        self._entries[name] = entry
        self._origins[name] = where
        return entry

    def register(self, name: str) -> Callable[[F], F]:
        """``@registry.register("name")`` for registries whose entries are the functions (or
        classes) themselves."""

        def deco(obj: F) -> F:
            self.add(name, obj)  # type: ignore[arg-type]
            return obj

        return deco

    # --- looking up ------------------------------------------------------------------------

    def discover(self) -> None:
        """Import every module of ``package`` once (their decorators register them)."""
        if self._discovered or self.package is None:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self.package}.{mod.name}")

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def items(self) -> dict[str, T]:
        """All entries by name, sorted."""
        self.discover()
        return dict(sorted(self._entries.items()))

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._entries:
            raise self.error(f"unknown {self.what} {name!r}; known: {', '.join(self.names()) or '(none)'}")
        return self._entries[name]

    def summaries(self) -> dict[str, str]:
        """Name -> one-line summary (the entry's ``summary`` attribute, else its docstring)."""
        return {n: getattr(e, "summary", None) or summary_of(e) for n, e in self.items().items()}

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)
