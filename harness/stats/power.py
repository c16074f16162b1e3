"""``unlearn power SUITE``: the minimum detectable effect (MDE) of a suite at its current size.

MDE = (z_{1 - alpha/2} + z_{power}) * SE, two-sided alpha 0.05, power 0.8 (factor 2.80).

* With ``--results FILE`` (results JSON of the suite, any submission), SE is read from each
  record's own 95% interval (SE = width / (2 * 1.96)): the cluster bootstrap already accounts
  for prompts and seeds. Between two submissions (independent runs) the SE is sqrt(2) x that;
  it is smaller for matched images (the gate's paired test), so this is an upper bound.
* Without results, each metric is treated as a proportion at its worst case p = 0.5 and two
  bounds are printed: seeds of one prompt independent (ICC 0: n = prompts x seeds) and seeds
  identical (ICC 1: n = prompts). Metrics on one concept's prompts (UA, M-Score, forget-prompt
  metrics) see only that concept's share of a template set (1 / number of its values).
"""

from __future__ import annotations

import math
from pathlib import Path

from harness import metrics
from harness.stats import intervals as stats
from harness.errors import HarnessError
from harness.run.plan import smoke_prompts, suite_path
from harness.spec import expand_prompts, load_suite

FACTOR = None  # computed: z_{0.975} + z_{0.8}


def factor(alpha: float = 0.05, power: float = 0.8) -> float:
    from statistics import NormalDist

    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float range
        return None
    return f if math.isfinite(f) else None


def _se(ci) -> float | None:
    """SE from a recorded 95% (or other level) interval, or None where the interval is absent or
    not finite numbers ``low <= high`` at a level strictly between 0 and 1 (a level of 1.0 has
    no normal quantile)."""
    if not isinstance(ci, dict):
        return None
    low, high = _num(ci.get("low")), _num(ci.get("high"))
    level = _num(ci.get("level")) if ci.get("level") is not None else 0.95
    if low is None or high is None or level is None or not 0 < level < 1 or high < low:
        return None
    return (high - low) / (2 * stats.z_of(level))


def report(root: Path, suite_id: str, results: list[dict], cache: Path, smoke: bool = False) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", str(suite_id)) or ".." in str(suite_id):
        raise HarnessError(f"suite {str(suite_id)[:80]!r}: not a suite id (a suite file is read from suites/ only)")
    p = suite_path(root, suite_id)
    if not p.is_file():
        raise HarnessError(f"suite {suite_id!r}: no file {p.relative_to(root)}")
    suite = load_suite(p)
    prompts = expand_prompts(suite, root, cache)
    if smoke:
        prompts = smoke_prompts(suite, prompts, [])
    seeds = suite.smoke.seeds if smoke and suite.smoke and suite.smoke.seeds else suite.generation.seeds
    n_seeds = 1 if prompts and prompts[0].seed is not None else len(seeds)
    share = {}
    if suite.prompts.template is not None:
        share = {k: len({q.labels.get(k) for q in prompts}) for k in suite.prompts.template.values}
    k = factor()
    image_metrics = [m for m in suite.metrics if metrics.info(m.name).needs_images]
    lines = [f"{suite.id}: {len(prompts)} prompts x {n_seeds} seed{'s' if n_seeds != 1 else ''} = {len(prompts) * n_seeds} images per model"
             f"{' (smoke subset)' if smoke else ''}; minimum detectable effect at 80% power, two-sided alpha 0.05 (factor {k:.3f} x SE)"]
    recs = [r for res in results for r in res.get("metrics", []) if r.get("suite") == suite.id]
    if recs:
        lines.append(f"  from the intervals of {len(recs)} record(s) in the given results (SE = 95% width / 3.92):")
        lines.append(f"  {'metric':<17} {'target':<14} {'prompts':>7} {'images':>6} {'SE':>8} {'MDE vs bound':>13} {'MDE 2 runs':>11}")
        for r in recs:
            ci = r.get("ci")
            label, target = str(r.get("label") or r.get("metric") or "?")[:40], str(r.get("target") or "?")[:40]
            se = _se(ci)
            if se is None:
                why = (r.get("ci_reason") or "older results file") if not isinstance(ci, dict) or ci.get("low") is None else \
                    "its interval is not finite numbers low <= high at a level strictly between 0 and 1"
                lines.append(f"  {label:<17} {target:<14} {'-':>7} {'-':>6} {'-':>8} {'-':>13} {'-':>11}  no interval: {str(why)[:120]}")
                continue
            lines.append(f"  {label:<17} {target:<14} {str(ci.get('n_clusters', '-'))[:7]:>7} {str(ci.get('n_items', '-'))[:6]:>6} {se:>8.4f} {k * se:>13.4f} {k * se * math.sqrt(2):>11.4f}")
        return "\n".join(lines)
    lines.append("  no results given (--results FILE): scores in [0, 1] at their worst-case sd 0.5 (a proportion at p = 0.5); MDE between two runs (unpaired),")
    lines.append("  from ICC 0 (seeds independent) to ICC 1 (every seed of a prompt agrees)")
    lines.append(f"  {'metric':<17} {'prompts':>7} {'images':>6} {'MDE (ICC 0)':>12} {'MDE (ICC 1)':>12}")
    for m in image_metrics:
        n_p = len(prompts)
        reads = metrics.info(m.name).prompts  # MetricInfo.prompts: forget / retain / all
        if reads == "forget" and share:
            n_p = max(1, round(n_p / min(share.values())))  # the target concept's prompts
        elif reads == "retain" and share:
            n_p = max(1, n_p - round(n_p / min(share.values())))  # the retain prompts
        n = n_p * n_seeds
        se0, se1 = 0.5 / math.sqrt(n), 0.5 / math.sqrt(n_p)
        show = lambda x: f"{x:.4f}" if x <= 1 else "> 1"
        lines.append(f"  {metrics.info(m.name).label:<17} {n_p:>7} {n:>6} {show(k * se0 * math.sqrt(2)):>12} {show(k * se1 * math.sqrt(2)):>12}")
    return "\n".join(lines)
