"""Integrity (Model Integrity when Unlearning with T2I Diffusion Models, arXiv 2411.02068).

    I = 1 - mean over matched (prompt, seed) pairs of d(x_base, x_unlearned)

with d a perceptual distance: LPIPS (AlexNet) for real models, the toy classifier's LPIPS-style
distance on the toy world (``features.toy_perceptual_distance``). ``integrity`` is over the
retain prompts (those not labelled with the target concept): higher is better and an unchanged
model scores exactly 1.0. ``integrity_forget`` is the same over the forget prompts, where a low
value shows that the output really changed. The base model's value is 1.0 by definition (the
base compared with itself), reported for the table's symmetry.
"""

from __future__ import annotations

import numpy as np

from typing import Literal

from pydantic import Field

from harness.errors import HarnessError
from harness.metrics import Measurement, MetricInfo
from harness.metrics.common import MetricParams, forget_mask, is_toy


class Params(MetricParams):
    backend: Literal["toy", "lpips-alex"] | None = Field(default=None, description="perceptual distance; default: toy in the toy world, else lpips-alex")
    size: int | None = Field(default=None, gt=0, description="resize both images to size x size first (ESD/UCE's LPIPS protocol: 64)")


METRICS = {
    "integrity": MetricInfo("Integrity", True, "1 - mean perceptual distance to the base model's image, retain prompts", params=Params),
    "integrity_forget": MetricInfo("Integrity-forget", False, "1 - mean perceptual distance to the base model's image, forget prompts",
                                   params=Params, role="erasure", prompts="forget"),
}


def distances(backend: str, a: list[np.ndarray], b: list[np.ndarray], size: int | None = None) -> np.ndarray:
    if backend == "toy":
        from harness.metrics.features import toy_perceptual_distance

        return toy_perceptual_distance(a, b)
    if backend == "lpips-alex":
        from harness.metrics.lpips import lpips_alex

        return lpips_alex(a, b, size=size)
    raise HarnessError(f"integrity: unknown backend {backend!r} (toy, lpips-alex)")


def compute(name: str, run, target, params) -> Measurement:
    p = Params.of(params, f"{METRICS[name].label} params")
    backend = p.backend or ("toy" if is_toy(run.suite) else "lpips-alex")
    forget = forget_mask(run, target)
    mask = forget if name == "integrity_forget" else ~forget
    if not mask.any():
        raise HarnessError(f"{METRICS[name].label}: no {'forget' if name == 'integrity_forget' else 'retain'} prompts for {target.concept!r}")
    idx = np.flatnonzero(mask)
    size = p.size  # ESD/UCE's LPIPS protocol resizes to 64 px: say so in the suite
    d = distances(backend, [run.images["base"][i] for i in idx], [run.images["unlearned"][i] for i in idx], size)
    from harness.stats.intervals import item_scores

    return Measurement(1.0 - float(d.mean()), 1.0, {"backend": backend, "size": size, "pairs": int(len(idx)), "max_distance": float(d.max())},
                       scores=item_scores(run, idx, 1.0 - d, np.ones(len(idx))))
