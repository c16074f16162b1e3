"""The metric registry: metric name -> the module (family) that computes it.

Lazy, like lm-evaluation-harness' task registry: a family's module (and its heavy imports) is
loaded only when a suite uses one of its metrics. A family module defines ``METRICS`` (name ->
``MetricInfo``) and ``compute(name, run, target, params) -> Measurement``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

# metric name -> family module (under harness.metrics)
_REGISTRY: dict[str, str] = {
    "ua": "accuracy",
    "ira": "accuracy",
    "cra": "accuracy",
    "integrity": "integrity",
    "integrity_forget": "integrity",
    "mscore": "mscore",
    "fid": "fid",
    "kid": "fid",
    "storage_mb": "efficiency",
    "erase_time_s": "efficiency",
    "peak_memory_gb": "efficiency",
    "ccs_forget": "concealment",
    "ccs_retain": "concealment",
    "crs_forget": "concealment",
    "crs_retain": "concealment",
    "nudity_asr": "nudity",
    "clip_score": "clipscore",
    "object_acc": "objects",
    "object_acc_others": "objects",
    "pre_asr": "robustness",
    "asr": "robustness",
    "ti_asr": "robustness",
}


@dataclass(frozen=True)
class MetricInfo:
    label: str  # how reports and test ids spell it (e.g. "UA")
    higher_is_better: bool
    description: str
    version: str = "1"
    needs_images: bool = True  # False: computed from the submission alone (no generation)
    attack: bool = False  # True: needs the partial-diffusion attacked images too
    prompt_attack: bool = False  # True: needs a prompt attack's outcome (harness.attacks.runner)


@dataclass
class Measurement:
    """One metric for one target: the unlearned model's value beside the base model's."""

    value: float
    base_value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    # Uncertainty (harness.stats): per-item scores the value is recomputed from (the bootstrap),
    # or a set statistic's resampler (FID / KID), or the reason there is no interval.
    scores: Any = None  # stats.Scores
    resample: Any = None  # callable(threshold) -> {"ci", "delta_ci", "margin_ci"}
    ci_reason: str | None = None


def known_metrics() -> set[str]:
    return set(_REGISTRY)


def family(name: str):
    return importlib.import_module(f"harness.metrics.{_REGISTRY[name]}")


def info(name: str) -> MetricInfo:
    return family(name).METRICS[name]
