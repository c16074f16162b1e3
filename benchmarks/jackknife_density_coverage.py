"""Coverage of the delete-one-cluster jackknife interval of density and coverage (Naeem et al.),
the interval ``harness.metrics.coverage`` gives them (``stats.set_intervals``, as FID / KID's),
in a simulation shaped like toy-fid: 20 fixed prompts x 8 seeds (the seed is the jackknife's
unit, ``stats.jackknife_units``), 16-dimensional features (prompt centre + unit noise), a
fixed composition-matched reference of 320 features. The target is E[statistic] at this set
size (1,000 sets); the interval's coverage and median width (over the true 2.5-97.5% spread)
are measured on 200 further sets, for generations on the reference's distribution and shifted
by 0.5 per dimension. Figures: docs/statistics.md. About 4 minutes on one core.

    python benchmarks/jackknife_density_coverage.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stats import intervals as stats  # noqa: E402
from harness.metrics.coverage import density_coverage  # noqa: E402

D, P, S = 16, 20, 8


def main() -> None:
    centres = np.random.default_rng(0).normal(size=(P, D)) * 2.0

    def gen(r, shift=0.0):
        return (centres[:, None, :] + r.normal(size=(P, S, D)) + shift).reshape(P * S, D)

    ref = np.concatenate([gen(np.random.default_rng(99)), gen(np.random.default_rng(98))])[:320]
    clusters, unit = stats.jackknife_units([f"p{i // S}" for i in range(P * S)], [i % S for i in range(P * S)])
    for shift in (0.0, 0.5):
        truth = np.array([density_coverage(ref, gen(np.random.default_rng(1000 + k), shift)) for k in range(1000)])
        mean, q = truth.mean(0), np.quantile(truth, [0.025, 0.975], axis=0)
        hits, widths = np.zeros(2), ([], [])
        n = 200
        for k in range(n):
            f = gen(np.random.default_rng(5000 + k), shift)
            for pick in (0, 1):
                ci = stats.set_intervals(lambda j: density_coverage(ref, f[j])[pick], None, clusters, lower=0.0)["ci"]
                lo, hi = ci["low"], (min(ci["high"], 1.0) if pick else ci["high"])
                hits[pick] += lo <= mean[pick] <= hi
                widths[pick].append(hi - lo)
        print(f"shift {shift} (delete one {unit}): E[density] {mean[0]:.3f}, E[coverage] {mean[1]:.3f}; interval coverage: density "
              f"{hits[0] / n:.3f}, coverage {hits[1] / n:.3f}; median width / true spread: density "
              f"{np.median(widths[0]) / (q[1, 0] - q[0, 0]):.2f}, coverage {np.median(widths[1]) / (q[1, 1] - q[0, 1]):.2f}")


if __name__ == "__main__":
    main()
