"""What a suite may name that spec/ does not define: the metrics (the registry
``harness.metrics``: ``known_metrics()``, ``info(name)`` with the metric's typed params and the
attacks block it reads) and the prompt attacks (``harness.attacks.runner.attacks()``: name -> the
attack's module, with its ``NAME`` and ``DEFAULTS``).

spec/ sits below both registries (a metric family and an attack read specs), so the suite's own
checks (``spec.suite``: a metric's name and params, an attack's name and params) ask here instead
of importing them. The package root (``harness/__init__.py``) connects the two registries; each
loads on first use, so reading a spec loads no metric or attack module until a suite is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

_metrics: Callable[[], ModuleType] | None = None
_attacks: Callable[[], dict[str, Any]] | None = None


def connect(metrics: Callable[[], ModuleType], attacks: Callable[[], dict[str, Any]]) -> None:
    """Where the registries come from: ``metrics()`` -> the metric registry module,
    ``attacks()`` -> prompt attack name -> its module."""
    global _metrics, _attacks
    _metrics, _attacks = metrics, attacks


def metrics() -> Any:
    """The metric registry (``harness.metrics``)."""
    if _metrics is None:
        raise RuntimeError("harness.catalog: no metric registry connected (harness/__init__.py connects it)")
    return _metrics()


def attacks() -> dict[str, Any]:
    """Prompt attack name -> its module (``NAME``, ``DEFAULTS``, ``UNIT``)."""
    if _attacks is None:
        raise RuntimeError("harness.catalog: no attack registry connected (harness/__init__.py connects it)")
    return _attacks()
