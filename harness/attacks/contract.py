"""The prompt-attack contract and registry: what an attack module declares (``INFO``, an
``AttackInfo``) and defines (the ``Attack`` protocol), and where ``harness.attacks.runner`` finds it.

An attack module of this package (every one but ``HELPERS``) or of a third-party distribution
(entry-point group ``unlearn_harness.attacks``, ``name = package.module``; harness.registry)
defines ``INFO`` and the functions of ``Attack``. Listing the names imports no attack module.
"""

from __future__ import annotations

import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Protocol, runtime_checkable

from harness.registry import GROUPS, Registry


@dataclass(frozen=True)
class AttackInfo:
    name: str  # the suite's ``attacks.<block>.attack``; part of every cached record's key
    version: str  # part of every cached record's key: a new version re-runs the attack
    budget_unit: str  # what the budget counts ("iterations", "generations", "steps"), recorded with the result
    # What one remote task attacks: "prompt" (the seeds of one prompt; the items are independent)
    # or "target" (every forget item of the target: the attack learns one thing for it)
    unit: Literal["prompt", "target"] = "prompt"
    model_key: Literal["unlearned", "text_encoder"] = "unlearned"  # which model fingerprint its cache keys name
    # what it needs of the model family: a subset of harness.families.base.FEATURES, refused in one line
    # by harness.families.base.require where the family lacks one
    needs: frozenset[str] = frozenset()
    # key_params(params, items) and the training extras: it learns on every forget item's base image (TI)
    learns_on_items: bool = False
    # concept_pairs(params, concept, kind, prompts_by_labels): a concept vector from prompt pairs (Ring-A-Bell)
    concept_pairs: bool = False
    # seconds per attacked item per budget unit at 32x32 on 2 CPU threads (harness.run.estimate); None: no figure
    guess_s_per_item_unit: float | None = None


@runtime_checkable
class Attack(Protocol):
    """An attack module: its ``INFO``, its parameters' defaults, and three functions."""

    INFO: AttackInfo
    DEFAULTS: dict

    def params_of(self, params: dict) -> dict: ...  # the suite's params over DEFAULTS, checked

    def budgets(self, params: dict) -> list[int]: ...  # the budgets the ASR curve is read at

    def attack(self, pipe, items: list, judge, params: dict, progress: bool = True, counter: dict | None = None,
               on_record: Callable | None = None) -> list[dict]: ...  # one record per item


def _attack(name: str, obj) -> Attack:
    inf = getattr(obj, "INFO", None)
    if not isinstance(inf, AttackInfo):
        raise TypeError(f"{getattr(obj, '__name__', obj)!r} defines no INFO (a harness.attacks.contract.AttackInfo)")
    if inf.name != name:
        raise ValueError(f"its AttackInfo is named {inf.name!r}, not {name!r}")
    missing = [f for f in ("params_of", "budgets", "attack") if not callable(getattr(obj, f, None))]
    missing += [f for f, on in (("key_params", inf.learns_on_items), ("concept_pairs", inf.concept_pairs)) if on and not callable(getattr(obj, f, None))]
    if missing or not isinstance(getattr(obj, "DEFAULTS", None), dict):
        raise TypeError(f"{obj.__name__} does not define {', '.join(missing) or 'DEFAULTS'} (harness.attacks.contract.Attack)")
    return obj


# Modules of this package that are not prompt attacks.
HELPERS = frozenset({"common", "contract", "runner", "partial_diffusion"})

#: The prompt attacks: every module of this package but HELPERS, then the
#: ``unlearn_harness.attacks`` entry points of installed distributions.
REGISTRY: Registry[Attack] = Registry("attack", GROUPS["attack"], _attack)
for _m in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])):
    if _m not in HELPERS:
        REGISTRY.register(_m, f"harness.attacks.{_m}")
