"""One registry pattern for every extension point: methods, metrics, attacks, scorers, model families.

A ``Registry[T]`` maps a name to an entry of type ``T`` (a ``MethodInfo``, a metric family, an
``AttackInfo``, a ``ScorerInfo``). Entries come from two places:

* the harness's own, registered by name with a *lazy* target (``"module:attribute"``), so listing
  names imports nothing heavy (the CLI's parser lists the methods, and ``unlearn leaderboard
  build`` must not pay for torch);
* third-party distributions, discovered on first use through a Python entry-point group
  (``importlib.metadata.entry_points(group=...)``), like pytest's ``pytest11`` plugins: a
  distribution declares, in its ``entry_points.txt``::

      [unlearn_harness.methods]
      mymethod = my_package.mymethod:INFO

An entry is loaded when it is first asked for. An unknown name, or an entry point that cannot be
loaded, is a one-line ``HarnessError`` (the close matches are named), never a traceback.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any, Callable, Generic, Iterator, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")

# The entry-point groups a third-party distribution registers under.
GROUPS = {
    "method": "unlearn_harness.methods",
    "metric": "unlearn_harness.metrics",
    "attack": "unlearn_harness.attacks",
    "scorer": "unlearn_harness.scorers",
    "family": "unlearn_harness.families",
}


def load_target(target: str):
    """``"package.module:attr.sub"`` (or ``"package.module"``) -> the object it names."""
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Name -> entry of one kind (``kind`` names it in errors: "method", "attack", ...).

    ``register(name, entry)`` adds an entry: the object itself, or a ``"module:attr"`` string
    loaded on first ``get``. ``group`` is the entry-point group third-party entries come from
    (read on first use; ``refresh()`` reads it again). ``adapt`` turns a loaded object into a
    ``T`` (e.g. a module into its ``INFO``) and checks it; it raises ``TypeError`` or
    ``ValueError`` for an object that is not one."""

    def __init__(self, kind: str, group: str | None = None, adapt: Callable[[str, object], T] | None = None):
        self.kind = kind
        self.group = group
        self._adapt = adapt
        self._own: dict[str, object] = {}  # name -> entry or "module:attr"
        self._plugins: dict[str, Any] | None = None  # name -> EntryPoint (read lazily)
        self._loaded: dict[str, T] = {}

    # ------------------------------------------------------------------ registering
    def register(self, name: str, entry: T | str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, not {name!r}")
        if name in self._own and self._own[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._own[name] = entry
        self._loaded.pop(name, None)

    def refresh(self) -> None:
        """Forget the entry points read so far (they are read again on next use)."""
        self._plugins = None
        self._loaded = {k: v for k, v in self._loaded.items() if k in self._own}

    def _entry_points(self) -> dict[str, Any]:
        if self._plugins is None:
            found: dict[str, Any] = {}
            if self.group:
                from importlib.metadata import entry_points

                for ep in entry_points(group=self.group):
                    if ep.name not in self._own:  # the harness's own names are not overridden
                        found.setdefault(ep.name, ep)
            self._plugins = found
        return self._plugins

    # ------------------------------------------------------------------ reading
    def names(self) -> list[str]:
        """Every registered name, the harness's own first (in registration order), then the
        plugins' (sorted); nothing is loaded."""
        return list(self._own) + sorted(self._entry_points())

    def plugin_names(self) -> list[str]:
        return sorted(self._entry_points())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._own or name in self._entry_points())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def unknown(self, name: object) -> HarnessError:
        """The one-line error for a name that is not registered, naming the close matches."""
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return HarnessError(f"unknown {self.kind} {str(name)[:80]!r}{hint} (known: {', '.join(sorted(names))})")

    def get(self, name: str) -> T:
        """The entry for ``name``, loaded on first use; a one-line ``HarnessError`` for an unknown
        name or an entry that cannot be loaded."""
        if isinstance(name, str) and name in self._loaded:
            return self._loaded[name]
        if name not in self:
            raise self.unknown(name)
        entry: Any
        where: str | None
        if name in self._own:
            entry, where = self._own[name], None
            if isinstance(entry, str):
                where = entry
                try:
                    entry = load_target(entry)
                except (ImportError, AttributeError) as e:
                    raise HarnessError(f"{self.kind} {name!r}: {where} cannot be loaded ({type(e).__name__}: {str(e)[:200]})") from None
        else:
            ep = self._entry_points()[name]
            where = f"entry point {ep.name} = {ep.value} (group {self.group})"
            try:
                entry = ep.load()
            except Exception as e:  # a third party's module: any failure is its, reported in one line
                raise HarnessError(f"{self.kind} {name!r}: {where} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
        if self._adapt is not None:
            try:
                entry = self._adapt(name, entry)
            except (TypeError, ValueError) as e:
                raise HarnessError(f"{self.kind} {name!r}{': ' + where if where else ''}: {str(e)[:300]}") from None
        self._loaded[name] = entry
        return entry

    def find(self, name: object, own_only: bool = False) -> T | None:
        """``get(name)`` for a registered name, None for any other (a name read from a record).
        ``own_only``: the harness's own entries only (a gate deciding by a name from a file loads
        no installed plugin)."""
        if own_only and name not in self._own:
            return None
        return self.get(name) if name in self else None  # type: ignore[arg-type]

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) for every name, each loaded."""
        return [(n, self.get(n)) for n in self.names()]


class RegistryView(Mapping):
    """A read-only mapping name -> ``value(entry)`` over a registry's names: ``in`` and iteration
    load nothing, reading a value loads that entry (``harness.methods.PAPERS`` and the like)."""

    def __init__(self, registry: Registry, value: Callable[[Any], object]):
        self._registry, self._value = registry, value

    def __getitem__(self, name):
        if name not in self._registry:
            raise KeyError(name)
        return self._value(self._registry.get(name))

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def __iter__(self):
        return iter(self._registry.names())

    def __len__(self) -> int:
        return len(self._registry.names())

    def __repr__(self) -> str:
        return f"RegistryView({self._registry.kind}: {', '.join(self._registry.names())})"
