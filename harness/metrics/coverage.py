"""Density and coverage (Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative
Models", ICML 2020): fidelity and diversity of generated images against a reference set, by
k-nearest-neighbour balls around the reference features.

With X_1..X_N the reference features, Y_1..Y_M the generated ones, B(x, r) the open ball and
NND_k(X_i) the distance from X_i to its k-th nearest other reference feature:

    density  = 1 / (k M) * sum_j sum_i 1[ Y_j in B(X_i, NND_k(X_i)) ]
    coverage = 1 / N     * sum_i 1[ exists j: Y_j in B(X_i, NND_k(X_i)) ]

Coverage is the share of the reference distribution the generations still reach (a model that
drops retain concepts loses it), density how closely they sit on it (1 on average when both sets
come from one distribution). Both are higher-is-better. As the authors' ``prdc`` package computes
them (Euclidean distances, strict ``<``, the k-th neighbour excluding the point itself, k = 5).
Computed on the retain prompts' images and the reference set of FID / KID (``fid.retain_features``:
the same clean-fid features, so beside FID in a suite they cost no extra image or feature pass),
for the unlearned and the base model. Their interval is FID / KID's delete-one-cluster jackknife
(``stats.set_intervals``; docs/statistics.md: its coverage on simulated sets).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from harness.metrics import Measurement, MetricInfo
from harness.metrics.fid import FeatureParams, retain_features


class Params(FeatureParams):
    nearest_k: int = Field(default=5, gt=0, description="k of the k-nearest-neighbour balls (prdc's default: 5)")


METRICS = {
    "density": MetricInfo("Density", True, "mean number of reference k-NN balls (/ k) holding a retain-prompt image", params=Params, role="quality"),
    "coverage": MetricInfo("Coverage", True, "share of reference k-NN balls holding at least one retain-prompt image", params=Params, role="quality"),
}


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """(density, coverage) of ``fake`` (M, D) against ``real`` (N, D), N > k."""
    if len(real) <= k:
        raise ValueError(f"needs more than k = {k} reference features, has {len(real)}")
    radii = np.sort(_distances(real, real), axis=1)[:, k]  # column 0 is the point itself
    inside = _distances(real, fake) < radii[:, None]  # (N, M): Y_j in B(X_i, NND_k(X_i))
    return float(inside.sum(0).mean() / k), float(inside.any(1).mean())


def compute(name: str, run, target, params) -> Measurement:
    p = Params.of(params, f"{METRICS[name].label} params")
    f_ref, f_unl, f_base, ref_sha, what, idx = retain_features(run, target, p, METRICS[name].label)
    pick = 0 if name == "density" else 1
    of = lambda f: density_coverage(f_ref, f, p.nearest_k)[pick]
    value, base = of(f_unl), of(f_base)

    def resample(threshold):
        """The generated set's sampling noise, as FID / KID's (``fid.compute``): the delete-one-
        cluster jackknife (one seed of every prompt, or one prompt, left out in turn; the same
        items for both models), the reference balls held fixed; cut at 0 (and coverage at 1)."""
        from harness.stats.intervals import jackknife_units, prompt_key, set_intervals

        clusters, unit = jackknife_units([prompt_key(run.items[i][0].text) for i in idx], [run.items[i][1] for i in idx])
        out = set_intervals(lambda j: of(f_unl[j]), lambda j: of(f_base[j]), clusters, threshold, lower=0.0,
                            method=f"cluster-jackknife-t (delete one {unit}{' of every prompt' if unit == 'seed' else ''}, generated set)")
        if name == "coverage" and out.get("ci"):
            out["ci"].update(low=min(out["ci"]["low"], 1.0), high=min(out["ci"]["high"], 1.0))
        return out

    return Measurement(value, base, {"mode": "clean", **what, "reference_sha256": ref_sha, "images": int(len(idx)), "nearest_k": p.nearest_k},
                       resample=resample)
