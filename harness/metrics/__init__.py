"""The metric registry: metric name -> its ``MetricInfo`` and the module (family) that computes it.

Derived from the family modules themselves, like lm-evaluation-harness' task registry: every
module of this package that defines ``METRICS`` (name -> ``MetricInfo``) and ``compute(name, run,
target, params) -> Measurement`` is a family; the others (``HELPERS``) are shared code. The
registry is built on first use, by importing the families, which keep their heavy imports (torch,
clean-fid, transformers) inside functions: reading the registry costs no model library. A
third-party distribution adds a family by the entry-point group ``unlearn_harness.metrics``
(``name = package.module``, harness.registry); its metric names must be new.

``MetricInfo`` carries everything other modules need to know about a metric: its typed parameters
(a pydantic model; a suite's unknown or mistyped ``params`` are refused when the suite is loaded),
whether it needs the suite's scorer, its role, and how the leaderboard's trade-off figure plots it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from harness.errors import HarnessError
from harness.metrics.common import MetricParams
from harness.registry import GROUPS, Registry

# Modules of this package that are shared code, not metric families (they define no METRICS).
HELPERS = frozenset({"common", "features", "lpips", "separator"})
ROLES = ("erasure", "retention", "quality", "efficiency", "robustness")


@dataclass(frozen=True)
class MetricInfo:
    label: str  # how reports and test ids spell it (e.g. "UA")
    higher_is_better: bool
    description: str
    version: str = "1"
    needs_images: bool = True  # False: computed from the submission alone (no generation)
    attack: bool = False  # True: needs the partial-diffusion attacked images too (suite's attacks.partial_diffusion)
    prompt_attack: bool = False  # True: needs a prompt attack's outcome (harness.attacks.runner)
    attack_block: Literal["prompt", "inversion", "every"] = "prompt"  # which of the suite's attacks blocks it reads (every: all it gives)
    params: type[MetricParams] = MetricParams  # the suite's params for it, typed (unknown keys refused)
    needs_scorer: bool = False  # True: needs the suite's scorer (classifier)
    role: Literal["erasure", "retention", "quality", "efficiency", "robustness"] = "retention"
    # The leaderboard's erasure / retention trade-off figure: "x" (the erasure axis) or "y" (the
    # retention axis: the mean of the "y" metrics present); None: not plotted there.
    plot: Literal["x", "y"] | None = None
    # Which of a suite's prompts it reads for a target: "forget" (the target concept's), "retain"
    # (the others') or "all" (harness.stats.power counts its prompts by this).
    prompts: Literal["forget", "retain", "all"] = "retain"
    # The fidelity choices it records (harness.run.fidelity; docs/fidelity.md): results key ->
    # the name of its typed parameter; the first metric of a suite that declares a key gives it.
    fidelity: dict[str, str] = field(default_factory=dict)


@dataclass
class Measurement:
    """One metric for one target: the unlearned model's value beside the base model's."""

    value: float
    base_value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    # Uncertainty (harness.stats.intervals): per-item scores the value is recomputed from (the bootstrap),
    # or a set statistic's resampler (FID / KID), or the reason there is no interval.
    scores: Any = None  # harness.stats.intervals.Scores
    resample: Any = None  # callable(threshold) -> {"ci", "delta_ci", "margin_ci"}
    ci_reason: str | None = None


def _family(name: str, obj):
    """A family module (METRICS of MetricInfo + compute) as the registry's entry; else TypeError."""
    if not isinstance(getattr(obj, "METRICS", None), dict) or not callable(getattr(obj, "compute", None)):
        raise TypeError(f"{getattr(obj, '__name__', obj)!r} is not a metric family (a module with METRICS and compute)")
    bad = [n for n, i in obj.METRICS.items() if not isinstance(i, MetricInfo)]
    if bad:
        raise TypeError(f"METRICS[{bad[0]!r}] is not a harness.metrics.MetricInfo")
    return obj


#: The families: every module of this package but HELPERS, then the ``unlearn_harness.metrics``
#: entry points of installed distributions (each a family module).
FAMILIES = Registry("metric family", GROUPS["metric"], _family)
for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _m not in HELPERS:
        FAMILIES.register(_m, f"{__name__}.{_m}")


@lru_cache(maxsize=1)
def _registry() -> dict[str, tuple[str, MetricInfo]]:
    """metric name -> (family module's full name, info), from every family."""
    out: dict[str, tuple[str, MetricInfo]] = {}
    for fam_name in FAMILIES.names():
        fam = FAMILIES.get(fam_name)
        for name, inf in getattr(fam, "METRICS", {}).items():
            if name in out:
                raise HarnessError(f"metric {name!r} is defined by both {out[name][0]} and {fam.__name__} (a plugin's metric names must be new)")
            out[name] = (fam.__name__, inf)
    return out


def known_metrics() -> set[str]:
    return set(_registry())


def family(name: str):
    return importlib.import_module(_registry()[name][0])


def info(name: str) -> MetricInfo:
    return _registry()[name][1]


def reading(prompts: str) -> set[str]:
    """The metrics that read a suite's ``prompts`` ("forget", "retain" or "all") for a target."""
    return {n for n, (_, i) in _registry().items() if i.prompts == prompts}


def by_role(role: str) -> list[str]:
    return sorted(n for n, (_, i) in _registry().items() if i.role == role)


def plotted() -> dict[str, list[str]]:
    """The trade-off figure's metrics: {"x": [...], "y": [...]}, in the families' order."""
    return {axis: [n for n, (_, i) in _registry().items() if i.plot == axis] for axis in ("x", "y")}
