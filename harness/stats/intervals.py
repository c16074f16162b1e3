"""Uncertainty: intervals for every image-based metric, verdicts that respect noise, and the
significance test of the regression gate (docs/statistics.md has the methods and why).

A metric family hands over its per-item scores (``Scores``): one number per image (or matched
pair) for the unlearned and the base model, the prompt each item came from (the cluster), and,
for metrics that are means over classes, each item's class (``groups``). The value is

    value = mean over groups g of (sum_{i in g} w_i x_i / sum_{i in g} w_i)     (w_i = 1)

(one group: the plain mean). The bootstrap draws prompts with replacement (a cluster keeps all
its seeds; ``seeds="resample"`` also redraws seeds inside each drawn prompt), turns the draw into
integer weights w_i, and recomputes the value for the unlearned and the base model with the
SAME weights, so ``value - base_value`` and a threshold's margin ``value - bound(base)`` get
paired intervals. Percentile intervals, a recorded seed: the same inputs give the same interval.

Proportions (``binary``: UA, Object-acc, Nudity-ASR) get the Wilson score interval on the Kish
effective sample size instead (the percentile bootstrap is degenerate at 0 or 1 and undercovers
with few prompts); their delta and margin stay bootstrapped (paired).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, TypeGuard

import numpy as np

from harness.spec.suite import Threshold
from harness.store.hashing import sha256_bytes

LEVEL = 0.95
RESAMPLES = 1000
SEED = 0
Z = {0.90: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}


def z_of(level: float) -> float:
    if level in Z:
        return Z[level]
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


@dataclass
class Scores:
    """Per-item scores behind one metric record (items aligned across the two models)."""

    unlearned: np.ndarray
    base: np.ndarray | None
    clusters: list[str]  # the prompt of each item (its key: sha256 prefix of the prompt text)
    seeds: list[int]
    groups: list[str] | None = None  # class of each item, for means over classes
    binary: bool = False  # a proportion: each score is 0 or 1
    note: str | None = None  # what the interval leaves out (recorded in ci.note)

    def __post_init__(self):
        self.unlearned = np.asarray(self.unlearned, dtype=np.float64)
        if self.base is not None:
            self.base = np.asarray(self.base, dtype=np.float64)

    def keys(self) -> list[str]:
        return [f"{c}:{s}" for c, s in zip(self.clusters, self.seeds)]

    def to_record(self) -> dict:
        """The compact JSON form kept in the results (``scores``), read back by ``from_record``."""
        r = lambda a: None if a is None else [round(float(x), 6) for x in a]
        return {"keys": self.keys(), "unlearned": r(self.unlearned), "base": r(self.base), "groups": self.groups, "binary": self.binary}

    @classmethod
    def from_record(cls, rec: Any) -> "Scores | None":
        try:
            keys = list(rec["keys"])
            u = np.asarray(rec["unlearned"], dtype=np.float64)
            b = None if rec.get("base") is None else np.asarray(rec["base"], dtype=np.float64)
            groups = rec.get("groups")
            if len(u) != len(keys) or (b is not None and len(b) != len(keys)) or (groups is not None and len(groups) != len(keys)) or not len(keys):
                return None
            if not np.isfinite(u).all() or (b is not None and not np.isfinite(b).all()):
                return None
            clusters, seeds = zip(*(str(k).rsplit(":", 1) for k in keys))
            return cls(u, b, list(clusters), [int(s) for s in seeds], None if groups is None else [str(g) for g in groups], bool(rec.get("binary", False)))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def prompt_key(text: str) -> str:
    return sha256_bytes(text.encode())[:12]


def item_scores(run, idx, unlearned, base, groups=None, binary: bool = False) -> Scores:
    """Scores of the items ``idx`` of an ``evaluate.SuiteRun`` (clusters = their prompts)."""
    idx = [int(i) for i in idx]
    items = getattr(run, "items", None)  # a stand-in run without items: every item its own cluster
    return Scores(np.asarray(unlearned, dtype=np.float64), None if base is None else np.asarray(base, dtype=np.float64),
                  [prompt_key(items[i][0].text) if items else f"item{i}" for i in idx], [int(items[i][1]) if items else 0 for i in idx],
                  None if groups is None else [str(g) for g in groups], binary)


# ---------------------------------------------------------------- resampling weights


def cluster_weights(clusters: list[str], resamples: int, rng: np.random.Generator, seeds: str = "keep") -> np.ndarray:
    """(resamples, n_items) integer weights of a cluster bootstrap: C prompts drawn with
    replacement out of C; a drawn prompt brings all its items (``seeds="keep"``) or a redraw of
    its seeds with replacement (``"resample"``: the two-stage bootstrap, conservative)."""
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    c = int(inv.max()) + 1
    k = rng.multinomial(c, np.full(c, 1.0 / c), size=resamples)  # (B, C) times each prompt is drawn
    if seeds == "keep":
        return k[:, inv].astype(np.float64)
    w = np.zeros((resamples, len(inv)))
    for j in range(c):
        idx = np.flatnonzero(inv == j)
        if len(idx) == 1:
            w[:, idx[0]] = k[:, j]
        else:
            w[:, idx] = rng.multinomial(k[:, j] * len(idx), np.full(len(idx), 1.0 / len(idx)))
    return w


def statistic(x: np.ndarray, weights: np.ndarray, groups: list[str] | None = None) -> np.ndarray:
    """The metric's value under each row of ``weights``: mean over groups of weighted group means
    (groups absent from a resample are left out of that resample's mean)."""
    weights = np.atleast_2d(weights)
    if groups is None:
        den = weights.sum(1)
        return np.divide(weights @ x, den, out=np.full(len(den), np.nan), where=den > 0)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    onehot = np.eye(int(g.max()) + 1)[g]  # (N, K)
    num, den = weights @ (x[:, None] * onehot), weights @ onehot
    per = np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)
    with np.errstate(invalid="ignore"):
        return np.nanmean(per, axis=1)


def percentile(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if not len(s):
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))


# ---------------------------------------------------------------- proportions


def wilson(successes: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval for a proportion (n may be an effective, non-integer size)."""
    if n <= 0:
        return 0.0, 1.0
    z = z_of(level)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if successes <= 0 else lo), (1.0 if successes >= n else hi)


def design_effect(x: np.ndarray, clusters: list[str]) -> float:
    """Kish's design effect 1 + (m - 1) * ICC, ICC from the one-way ANOVA estimator (clipped at
    0; 1 when the items show no variation or each prompt has one item)."""
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    c, n = int(inv.max()) + 1, len(x)
    if c == n or c < 2 or np.all(x == x[0]):
        return 1.0
    sizes = np.bincount(inv)
    means = np.bincount(inv, weights=x) / sizes
    grand = x.mean()
    msb = float((sizes * (means - grand) ** 2).sum() / (c - 1))
    msw = float(((x - means[inv]) ** 2).sum() / (n - c))
    m0 = (n - (sizes**2).sum() / n) / (c - 1)
    icc = (msb - msw) / (msb + (m0 - 1) * msw) if (msb + (m0 - 1) * msw) > 0 else 0.0
    return max(1.0, 1 + (float(sizes.mean()) - 1) * max(0.0, icc))


def proportion_ci(x, clusters: list[str], level: float = LEVEL) -> dict:
    """``ci`` of a proportion (0/1 items ``x``): Wilson on the Kish effective size n / deff
    (UA, Nudity-ASR, Pre-ASR, ASR and each point of an ASR-vs-budget curve)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    deff = design_effect(x, clusters)
    lo, hi = wilson(float(x.sum()) / deff, n / deff, level)
    return _ci(lo, hi, "wilson", len(set(clusters)), None, None, level, n_items=n, n_effective=round(n / deff, 3))


# ---------------------------------------------------------------- intervals of one record


def _ci(low, high, method, n_clusters, resamples, seed, level=LEVEL, **extra) -> dict:
    return {"low": float(low), "high": float(high), "level": level, "method": method, "n_clusters": int(n_clusters),
            "resamples": resamples, "seed": seed, **extra}


def margin_of(threshold, value_s: np.ndarray, base_s: np.ndarray | None) -> np.ndarray:
    """value - bound(base), elementwise over bootstrap samples."""
    if not threshold.relative:
        return value_s - threshold.value
    if threshold.scale is not None:
        return value_s - threshold.scale * base_s
    return value_s - (base_s + threshold.offset)


def intervals(scores: Scores, threshold=None, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
              seeds: str = "keep") -> dict:
    """``ci`` of the value, ``delta_ci`` of value - base, ``margin_ci`` of value - bound(base)
    (with a threshold): the paired cluster bootstrap (Wilson for a proportion's ``ci``)."""
    rng = np.random.default_rng(seed)
    n_clusters = len(set(scores.clusters))
    wilson_only = scores.binary and scores.groups is None and scores.base is None and (threshold is None or not threshold.relative)
    w = cluster_weights(scores.clusters, 1 if wilson_only else resamples, rng, seeds)
    u_s = statistic(scores.unlearned, w, scores.groups)
    b_s = statistic(scores.base, w, scores.groups) if scores.base is not None else None
    method = "cluster-bootstrap-percentile" + ("+seeds" if seeds == "resample" else "")
    out: dict = {}
    if scores.binary and scores.groups is None:
        out["ci"] = proportion_ci(scores.unlearned, scores.clusters, level)
    else:
        lo, hi = percentile(u_s, level)
        out["ci"] = _ci(lo, hi, method, n_clusters, resamples, seed, level, n_items=len(scores.unlearned))
    if scores.note:
        out["ci"]["note"] = scores.note
    if b_s is not None:
        lo, hi = percentile(u_s - b_s, level)
        out["delta_ci"] = _ci(lo, hi, method, n_clusters, resamples, seed, level)
    if threshold is not None and (not threshold.relative or b_s is not None):
        if threshold.relative:
            lo, hi = percentile(margin_of(threshold, u_s, b_s), level)
            out["margin_ci"] = _ci(lo, hi, method, n_clusters, resamples, seed, level)
        else:  # absolute bound: the value's own interval, shifted
            out["margin_ci"] = {**out["ci"], "low": out["ci"]["low"] - threshold.value, "high": out["ci"]["high"] - threshold.value}
    return out


def weighted_intervals(value_of: Callable[[np.ndarray], np.ndarray], base_of: Callable[[np.ndarray], np.ndarray] | None, clusters: list[str],
                       threshold=None, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL, note: str | None = None,
                       method: str = "cluster-bootstrap-percentile") -> dict:
    """``intervals`` for a statistic that is a function of item weights but not a mean of
    per-item scores (CRS: |weighted mean gap| averaged over psi; the worst ASR across attacks: a
    max of weighted means). ``value_of(w)`` maps (B, N) integer weights to B values (all ones:
    the value); the same cluster draws (prompts with replacement, ``cluster_weights``) feed both
    models, so ``delta_ci`` and ``margin_ci`` are paired as in ``intervals``."""
    rng = np.random.default_rng(seed)
    n_clusters = len(set(clusters))
    w = cluster_weights(clusters, resamples, rng)
    u_s = np.asarray(value_of(w), dtype=np.float64)
    b_s = np.asarray(base_of(w), dtype=np.float64) if base_of is not None else None
    lo, hi = percentile(u_s, level)
    out: dict = {"ci": _ci(lo, hi, method, n_clusters, resamples, seed, level, n_items=len(clusters), **({"note": note} if note else {}))}
    if b_s is not None:
        lo, hi = percentile(u_s - b_s, level)
        out["delta_ci"] = _ci(lo, hi, method, n_clusters, resamples, seed, level)
    if threshold is not None and (not threshold.relative or b_s is not None):
        lo, hi = percentile(margin_of(threshold, u_s, b_s), level)
        out["margin_ci"] = _ci(lo, hi, method, n_clusters, resamples, seed, level)
    return out


def repeats_interval(values, threshold=None, level: float = LEVEL) -> dict:
    """Intervals of a figure measured in ``n >= 2`` independent repeats (``unlearn erase
    --repeats``): the mean -/+ t_{n-1} x sd / sqrt(n) (``method`` names it; ``sd``, ``min``,
    ``max`` and ``n_items`` = n the spread). One repeat: ``ci`` null, ``ci_reason`` "single run"."""
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return {"ci": None, "delta_ci": None, "ci_reason": "single run: one measurement (unlearn erase --repeats N measures N and gives their spread)"}
    sd = float(x.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    m = float(x.mean())
    out: dict[str, Any] = {"ci": _ci(m - half, m + half, f"t over {len(x)} repeated runs (mean -/+ t sd / sqrt(n))", len(x), None, None, level, n_items=len(x),
                     sd=sd, min=float(x.min()), max=float(x.max())), "delta_ci": None}
    if threshold is not None and not threshold.relative:
        out["margin_ci"] = {**out["ci"], "low": out["ci"]["low"] - threshold.value, "high": out["ci"]["high"] - threshold.value}
    return out


MIN_SET_CLUSTERS = 5  # below this many prompts a set statistic gets ci: null (t with < 4 df is not an interval)


def jackknife_t(theta0: float, replicates: np.ndarray, level: float = LEVEL, lower: float | None = None) -> tuple[float, float, float]:
    """(low, high, se) of the delete-one-cluster jackknife: se^2 = (C - 1) / C * sum (theta_(-j) -
    mean)^2, interval theta0 -/+ t_{C-1} se, cut at ``lower`` (the parameter's floor, FID >= 0)."""
    from scipy.stats import t as student_t

    c = len(replicates)
    se = float(np.sqrt((c - 1) / c * ((replicates - replicates.mean()) ** 2).sum()))
    half = float(student_t.ppf(0.5 + level / 2, c - 1)) * se
    lo, hi = theta0 - half, theta0 + half
    if lower is not None:
        lo, hi = max(lo, lower), max(hi, lower)
    return lo, hi, se


def jackknife_units(prompts: list[str], seeds: list[int], min_clusters: int = MIN_SET_CLUSTERS) -> tuple[list[str], str]:
    """The units a set statistic's jackknife leaves out: the seeds when every prompt was drawn
    at the same >= ``min_clusters`` seeds (the prompt set is then fixed and matched by the
    reference; each seed is an independent draw of the whole set, so "delete one seed" keeps
    the composition), else the prompts (one or few seeds per prompt: prompts are the sample)."""
    per: dict[str, set] = {}
    for p, s in zip(prompts, seeds):
        per.setdefault(p, set()).add(s)
    sets = {frozenset(v) for v in per.values()}
    if len(sets) == 1 and len(next(iter(sets))) >= min_clusters and len(prompts) == len(per) * len(next(iter(sets))):
        return [f"seed {s}" for s in seeds], "seed"
    return list(prompts), "prompt"


def set_intervals(stat: Callable[[np.ndarray], float], base_stat: Callable[[np.ndarray], float] | None, clusters: list[str], threshold=None,
                  level: float = LEVEL, lower: float | None = None, min_clusters: int = MIN_SET_CLUSTERS,
                  method: str = "cluster-jackknife-t (delete one prompt, generated set)") -> dict:
    """Intervals of a set statistic (FID, KID): the delete-one-cluster jackknife (clusters:
    prompts, or seeds as ``jackknife_units`` chooses). ``stat(idx)`` recomputes the statistic on
    the generated items ``idx``; replicate j leaves out every item of cluster j (for both
    models: the same items, so ``delta_ci`` and ``margin_ci`` are paired);
    the interval is value -/+ t_{C-1} x jackknife standard error (docs/statistics.md: why not
    the bootstrap). No duplicated images, so no resampling bias to correct. ``lower`` cuts the
    interval at the statistic's floor (FID >= 0). Fewer than ``min_clusters`` prompts: ci null."""
    keys, inv = np.unique(np.asarray(clusters), return_inverse=True)
    c = len(keys)
    if c < min_clusters:
        why = f"too few clusters: {c} cluster(s); the jackknife interval of a set statistic needs at least {min_clusters} (prompts or seeds)"
        return {"ci": None, "delta_ci": None, "ci_reason": why}
    every = np.arange(len(clusters))
    u0 = stat(every)
    u_j = np.array([stat(np.flatnonzero(inv != j)) for j in range(c)])
    b0 = base_stat(every) if base_stat else None
    b_j = np.array([base_stat(np.flatnonzero(inv != j)) for j in range(c)]) if base_stat else None

    def ci(theta0, reps, floor=None, **extra):
        lo, hi, se = jackknife_t(theta0, reps, level, floor)
        return _ci(lo, hi, method, c, c, None, level, se=se, **extra)

    out = {"ci": ci(u0, u_j, lower, n_items=len(clusters))}
    if b_j is not None:
        out["delta_ci"] = ci(u0 - b0, u_j - b_j)  # type: ignore[operator]  # b_j is made from b0
    if threshold is not None and (not threshold.relative or b_j is not None):
        out["margin_ci"] = ci(float(margin_of(threshold, np.array([u0]), None if b0 is None else np.array([b0]))[0]),
                              margin_of(threshold, u_j, b_j))
    return out


# ---------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """What one metric record says about its threshold. ``verdict``: ``pass`` / ``fail`` /
    ``inconclusive`` (the 95% interval of value - bound decides), ``info`` (no threshold) or
    ``error`` (``error`` says why: the value is no measurement); ``point``: the point
    estimate's pass / fail (None without a threshold or a finite value); ``bound``: the
    threshold's bound under the base value (None where there is none)."""

    verdict: str
    point: str | None = None
    bound: float | None = None
    error: str | None = None

    def fields(self) -> dict:
        """The record's fields: ``bound``, ``verdict``, ``verdict_point`` (with a threshold)
        and ``error`` (an error)."""
        out: dict = {"bound": self.bound, "verdict": self.verdict}
        if self.point is not None:
            out["verdict_point"] = self.point
        if self.error is not None:
            out["error"] = self.error
        return out


def _finite(x) -> TypeGuard[float]:
    """A real number (numpy's included, not a bool or a string) that is finite."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and math.isfinite(x)


def flag_error(value, n_flagged: int) -> str | None:
    """Why a metric record must be an ``error`` whatever its threshold says: its value is not a
    finite number, or some of the images it was computed from were flagged (non-finite output,
    a blank / constant image)."""
    if not _finite(value):
        return f"value {value!r} is not a finite number"
    if n_flagged:
        return f"{n_flagged} image(s) were flagged (non-finite output or a constant image): the value is not a measurement"
    return None


def verdict(threshold, value, base=None, margin_ci: dict | None = None, flagged: int = 0) -> Verdict:
    """The one verdict rule (the evaluator writes it, ``harness.results.attest`` re-derives it).

    ``threshold``: a ``spec.Threshold``, its text, or None. An ``error`` when the value is not
    a finite number, some of its images were flagged (``flagged``: how many), or a relative
    threshold has no finite base value; ``info`` without a threshold; else ``pass`` when the
    whole interval ``margin_ci`` of value - bound(base) is on the right side of 0, ``fail``
    when it is wholly on the wrong side, ``inconclusive`` otherwise; without a finite interval
    the point estimate decides (``verdict`` = ``point``)."""
    if isinstance(threshold, str):
        threshold = Threshold.parse(threshold)
    reason = flag_error(value, flagged)
    if threshold is None:
        return Verdict("error" if reason else "info", error=reason)
    if threshold.relative and not _finite(base):
        return Verdict("error", error=reason or f"base value {base!r} is not a finite number: the relative threshold {threshold} cannot be evaluated")
    bound = float(threshold.bound(base))
    if not _finite(value):
        return Verdict("error", bound=bound, error=reason)
    point = "pass" if threshold.holds(value, base) else "fail"
    if reason:  # a number made from broken images never passes (its point verdict is kept, for the record)
        return Verdict("error", point, bound, reason)
    if not margin_ci or not all(np.isfinite([margin_ci.get("low", np.nan), margin_ci.get("high", np.nan)])):
        return Verdict(point, point, bound)
    lo, hi = margin_ci["low"], margin_ci["high"]
    strict = threshold.op in (">", "<")
    if threshold.op in (">=", ">"):
        ok, bad = (lo > 0 if strict else lo >= 0), (hi <= 0 if strict else hi < 0)
    else:
        ok, bad = (hi < 0 if strict else hi <= 0), (lo >= 0 if strict else lo > 0)
    return Verdict("pass" if ok else "fail" if bad else "inconclusive", point, bound)


# ---------------------------------------------------------------- the regression gate's test


def change_test(new: dict, old: dict, resamples: int = 2000, seed: int = SEED, level: float = LEVEL) -> dict | None:
    """Is new.value - old.value beyond noise? Paired bootstrap over the prompts both runs share
    when both records carry per-item ``scores`` for the same items (matched images); else an
    unpaired bootstrap of the two runs' own scores; else the two runs' intervals (normal
    approximation). Returns {method, low, high, p_value, n_clusters} or None (no information)."""
    def usable(rec):  # scores that do not reproduce the record's value are not evidence about it
        s = Scores.from_record(rec.get("scores")) if rec.get("scores") else None
        if s is None or abs(float(statistic(s.unlearned, np.ones(len(s.unlearned)), s.groups)[0]) - float(rec["value"])) > 1e-5:
            return None
        return s

    a, b = usable(new), usable(old)
    rng = np.random.default_rng(seed)
    change = float(new["value"]) - float(old["value"])
    if a is not None and b is not None and (a.groups is None) == (b.groups is None):
        if sorted(a.keys()) == sorted(b.keys()):
            order_b = {k: i for i, k in enumerate(b.keys())}
            perm = np.array([order_b[k] for k in a.keys()])
            w = cluster_weights(a.clusters, resamples, rng)
            d = statistic(a.unlearned, w, a.groups) - statistic(b.unlearned[perm], w, None if b.groups is None else [b.groups[i] for i in perm])
            method, n_c = "paired cluster bootstrap (matched images)", len(set(a.clusters))
        else:
            d = statistic(a.unlearned, cluster_weights(a.clusters, resamples, rng), a.groups) - statistic(b.unlearned, cluster_weights(b.clusters, resamples, rng), b.groups)
            method, n_c = "unpaired cluster bootstrap (images not matched)", min(len(set(a.clusters)), len(set(b.clusters)))
        d = d[np.isfinite(d)]
        if not len(d):
            return None
        lo, hi = percentile(d, level)
        # two-sided percentile-bootstrap p-value of "no change": twice the share on the far side of 0
        p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()))) if np.ptp(d) > 0 else (0.0 if change != 0 else 1.0)
        return {"method": method, "low": lo, "high": hi, "level": level, "p_value": p, "n_clusters": n_c, "resamples": resamples, "seed": seed}
    ca, cb = new.get("ci"), old.get("ci")
    tampered = (new.get("scores") and a is None) or (old.get("scores") and b is None)  # scores that contradict the value
    if isinstance(ca, dict) and isinstance(cb, dict) and not tampered:
        try:
            z = z_of(level)
            se = math.hypot((float(ca["high"]) - float(ca["low"])) / (2 * z), (float(cb["high"]) - float(cb["low"])) / (2 * z))
        except (KeyError, TypeError, ValueError):
            return None
        if not math.isfinite(se):
            return None
        from statistics import NormalDist

        p = 2 * (1 - NormalDist().cdf(abs(change) / se)) if se > 0 else (0.0 if change != 0 else 1.0)
        return {"method": "normal approximation from the two runs' intervals", "low": change - z * se, "high": change + z * se, "level": level, "p_value": float(p)}
    return None


ALPHA = 0.05


def significant(test: dict | None, alpha: float = ALPHA) -> bool | None:
    return None if test is None else bool(test["p_value"] < alpha)


# ---------------------------------------------------------------- planning (unlearn power)


def minimum_detectable_effect(sd_between: float, sd_within: float, prompts: int, seeds: int, alpha: float = 0.05, power: float = 0.8,
                              paired_sd: float | None = None) -> float:
    """Smallest true difference a two-sided test at ``alpha`` detects with ``power``, for a mean
    over ``prompts`` x ``seeds`` items with between-prompt and within-prompt standard deviations:
    (z_{1-alpha/2} + z_{power}) * SE, SE = sqrt(sd_b^2 / P + sd_w^2 / (P * S))."""
    from statistics import NormalDist

    nd = NormalDist()
    se = math.sqrt(sd_between**2 / prompts + sd_within**2 / (prompts * seeds)) if paired_sd is None else paired_sd
    return (nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)) * se


# ---------------------------------------------------------------- one metric record


def short_reason(reason) -> str:
    """What a table shows in the interval's place for a record without one: the tag that opens
    its ``ci_reason`` (``single run``, ``exact``, ``declared``, ``3 cluster(s)``), else
    ``no interval``."""
    head = str(reason or "").split(":", 1)[0].strip()
    return head if reason and ":" in str(reason) and 0 < len(head) <= 19 else "no interval"



def uncertainty(meas, threshold=None, params: dict | None = None) -> dict:
    """The record fields of a ``metrics.Measurement``: ``ci``, ``delta_ci``, ``margin_ci``
    (with a threshold), ``ci_reason`` (when ``ci`` is null) and ``scores`` (per-item, for the
    regression gate). Suite metric params ``bootstrap_resamples`` / ``bootstrap_seed`` override
    the defaults."""
    params = params or {}
    if meas.scores is not None:
        s = meas.scores
        point = float(statistic(s.unlearned, np.ones(len(s.unlearned)), s.groups)[0])
        base_ok = s.base is None or meas.base_value is None or abs(float(statistic(s.base, np.ones(len(s.base)), s.groups)[0]) - meas.base_value) <= 1e-6
        if abs(point - meas.value) > 1e-6 or not base_ok:
            return {"ci": None, "delta_ci": None, "ci_reason": "internal: the per-item scores do not reproduce the value (a bug in the metric; please report)"}
        out = intervals(s, threshold, int(params.get("bootstrap_resamples", RESAMPLES)), int(params.get("bootstrap_seed", SEED)))
        return {"delta_ci": None, **out, "scores": s.to_record()}
    if meas.resample is not None:
        return {"delta_ci": None, **meas.resample(threshold)}
    return {"ci": None, "delta_ci": None, "ci_reason": meas.ci_reason or "no per-item scores: this metric gives none to resample"}
