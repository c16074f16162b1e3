"""Significance in the regression gate (``unlearn compare`` / ``unlearn regress``).

A gated metric regresses only when its change is beyond the suite's tolerance in the wrong
direction AND the change is significant at ``harness.stats.intervals.ALPHA`` (two-sided 0.05):

* both records carry per-item ``scores`` over the same (prompt, seed) items (the images are
  matched: same prompts, same noise) -> paired cluster bootstrap of new - old over the prompts;
* both carry scores over different items (another seed subset, another smoke subset) -> the
  two runs resampled independently (unpaired cluster bootstrap);
* else both carry a ``ci`` -> normal approximation from the two intervals;
* else (an older baseline without intervals, CRS, efficiency figures) -> the tolerance alone
  decides, as before, and the row says so (``significance: null``).

A change beyond tolerance that is not significant gets status ``noise``: shown, not failed.
"""

from __future__ import annotations

from harness.stats import intervals as stats


def assess(new: dict, old: dict, worse: float, tolerance: float) -> dict:
    """Status and evidence for one gated metric: {status, p_value, change_ci, significance}."""
    test = stats.change_test(new, old)
    out = {"p_value": None if test is None else test["p_value"],
           "change_ci": None if test is None else [test["low"], test["high"]],
           "significance": None if test is None else test["method"]}
    if worse <= tolerance + 1e-12:
        return {**out, "status": "ok"}
    if test is not None and not stats.significant(test):
        return {**out, "status": "noise"}
    return {**out, "status": "regressed"}


def describe(row: dict) -> str:
    """The evidence column of ``compare.format_rows``."""
    if row.get("p_value") is None:
        return "" if row.get("status") not in ("ok", "regressed", "noise") else "  (no interval: tolerance alone)"
    lo, hi = row["change_ci"]
    return f"  p={row['p_value']:.3f} change 95% [{lo:+.4f}, {hi:+.4f}]"
