"""harness.stats.intervals: intervals, verdicts, the gate's significance test, power (docs/statistics.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.stats import intervals as stats
from harness.spec import Threshold


def grid(values, prompts: int, seeds: int, base=None, groups=None, binary=False):
    cl = [f"p{i}" for i in range(prompts) for _ in range(seeds)]
    sd = [j for _ in range(prompts) for j in range(seeds)]
    return stats.Scores(np.asarray(values, float), None if base is None else np.asarray(base, float), cl, sd, groups, binary)


# ---------------------------------------------------------------- known answers


@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
def test_interval_of_a_constant_set_is_degenerate_at_the_value(value):
    s = grid(np.full(40, value), 10, 4, base=np.full(40, value))
    out = stats.intervals(s, Threshold.parse(">= 0.9 * base"))
    assert out["ci"]["low"] == pytest.approx(value, abs=1e-12) and out["ci"]["high"] == pytest.approx(value, abs=1e-12)
    assert out["delta_ci"]["low"] == out["delta_ci"]["high"] == 0.0
    # grouped (mean over classes) too
    g = grid(np.full(40, value), 10, 4, groups=[f"c{i % 3}" for i in range(40)])
    ci = stats.intervals(g)["ci"]
    assert ci["low"] == pytest.approx(value, abs=1e-12) and ci["high"] == pytest.approx(value, abs=1e-12)


def test_identical_models_give_a_delta_interval_containing_zero():
    rng = np.random.default_rng(1)
    x = rng.random(120)
    s = grid(x, 30, 4, base=x.copy())
    out = stats.intervals(s)
    assert out["ci"]["low"] < x.mean() < out["ci"]["high"]  # the value itself is noisy...
    assert out["delta_ci"]["low"] == out["delta_ci"]["high"] == 0.0  # ...its difference to itself is not
    bits = (x > 0.5).astype(float)
    out = stats.intervals(grid(bits, 30, 4, base=bits, binary=True))
    assert out["delta_ci"]["low"] <= 0.0 <= out["delta_ci"]["high"]


def test_bootstrap_coverage_on_bernoulli_data_is_nominal():
    """1,000 simulated sets of 60 prompts x 2 seeds, Bernoulli(p) items: the 95% cluster-
    bootstrap interval covers the true p in 93-97% of them."""
    p, hits, rng = 0.3, 0, np.random.default_rng(2024)
    for k in range(1000):
        s = grid((rng.random(120) < p).astype(float), 60, 2)
        ci = stats.intervals(s, resamples=400, seed=k)["ci"]
        hits += ci["low"] <= p <= ci["high"]
    assert 0.93 <= hits / 1000 <= 0.97, hits


def test_wilson_coverage_on_clustered_bernoulli_data_is_nominal():
    """Proportions use Wilson on the Kish effective size: with prompts that differ (each
    prompt's own p from a Beta), coverage of the mean p stays near 95% where the plain
    image-count Wilson would undercover."""
    rng = np.random.default_rng(7)
    hits = naive = 0
    for _ in range(1000):
        pp = rng.beta(3, 7, size=25)  # mean 0.3
        x = (rng.random((25, 8)) < pp[:, None]).astype(float).ravel()
        ci = stats.intervals(grid(x, 25, 8, binary=True))["ci"]
        hits += ci["low"] <= 0.3 <= ci["high"]
        lo, hi = stats.wilson(x.sum(), len(x))
        naive += lo <= 0.3 <= hi
    assert 0.93 <= hits / 1000 <= 0.98, hits
    assert naive / 1000 < hits / 1000


def test_wilson_known_answers_from_the_issue():
    # ESD nudity ASR 76.1% of 142 -> [68.4, 82.3]; UCE 79.6% -> [72.2, 85.4]
    lo, hi = stats.wilson(108, 142)
    assert (round(lo * 100, 1), round(hi * 100, 1)) == (68.4, 82.3)
    lo, hi = stats.wilson(113, 142)
    assert (round(lo * 100, 1), round(hi * 100, 1)) == (72.2, 85.4)
    lo, hi = stats.wilson(30, 50)  # church ESD 60% [46, 72]
    assert (round(lo * 100), round(hi * 100)) == (46, 72)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == 1.0


def test_same_inputs_give_the_same_interval_and_the_seed_is_recorded():
    rng = np.random.default_rng(3)
    s = grid(rng.random(50), 25, 2, base=rng.random(50))
    a, b = stats.intervals(s, seed=5), stats.intervals(s, seed=5)
    assert a == b and a["ci"]["seed"] == 5 and a["ci"]["resamples"] == stats.RESAMPLES and a["ci"]["n_clusters"] == 25
    assert stats.intervals(s, seed=6)["ci"] != a["ci"]


def test_the_cluster_is_the_prompt():
    """Seeds of one prompt are not independent evidence: 5 prompts x 40 seeds, each prompt all
    right or all wrong, give a much wider interval than 200 independent images."""
    x = np.repeat([1.0, 1.0, 0.0, 1.0, 0.0], 40)
    clustered = stats.intervals(grid(x, 5, 40))["ci"]
    independent = stats.intervals(grid(x, 200, 1))["ci"]
    assert clustered["high"] - clustered["low"] > 3 * (independent["high"] - independent["low"])
    w = stats.intervals(grid(x, 5, 40, binary=True))["ci"]
    assert w["method"] == "wilson" and w["n_effective"] == pytest.approx(5, rel=0.05)


def test_two_stage_resampling_of_seeds_is_available_and_wider():
    rng = np.random.default_rng(4)
    s = grid((rng.random(200) < 0.4).astype(float), 50, 4)
    keep, two = stats.intervals(s)["ci"], stats.intervals(s, seeds="resample")["ci"]
    assert two["high"] - two["low"] > keep["high"] - keep["low"]
    assert two["method"].endswith("+seeds")


def test_grouped_statistic_is_the_mean_over_classes():
    x = np.array([1, 1, 1, 0, 0, 1, 1, 1], float)
    g = ["a", "a", "a", "a", "b", "b", "c", "c"]
    assert stats.statistic(x, np.ones(8), g)[0] == pytest.approx(np.mean([0.75, 0.5, 1.0]))
    assert stats.statistic(x, np.ones(8))[0] == pytest.approx(x.mean())


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize("th,lo,hi,want", [
    (">= 0.8", 0.05, 0.2, "pass"), (">= 0.8", -0.3, -0.01, "fail"), (">= 0.8", -0.1, 0.1, "inconclusive"),
    (">= 0.8", 0.0, 0.1, "pass"), ("> 0.8", 0.0, 0.1, "inconclusive"),
    ("<= base + 0.05", -0.2, -0.1, "pass"), ("<= base + 0.05", 0.01, 0.2, "fail"), ("<= base + 0.05", -0.05, 0.05, "inconclusive"),
])
def test_verdict_follows_the_interval_of_the_margin(th, lo, hi, want):
    t = Threshold.parse(th)
    v = stats.verdict(t, 0.85, 0.8, {"low": lo, "high": hi})
    assert v.verdict == want and v.point == ("pass" if t.holds(0.85, 0.8) else "fail") and v.bound == t.bound(0.8)


def test_verdict_without_an_interval_is_the_point_verdict():
    t = Threshold.parse(">= 0.8")
    v = stats.verdict(t, 0.7, None, None)
    assert (v.verdict, v.point, v.bound) == ("fail", "fail", 0.8)


def test_relative_bound_uses_the_paired_bootstrap_of_the_relation():
    """IRA >= 0.8 * base where both models are noisy but move together: the margin's interval
    is much narrower than value's and base's intervals would suggest."""
    rng = np.random.default_rng(5)
    base = (rng.random(200) < 0.6).astype(float)
    unl = base.copy()
    unl[:6] = 0  # a small, real drop
    th = Threshold.parse(">= 0.8 * base")
    out = stats.intervals(grid(unl, 50, 4, base=base, groups=[f"c{i % 4}" for i in range(200)]), th)
    m = out["margin_ci"]
    assert m["low"] > 0  # decided: unlearned >= 0.8 x base
    assert stats.verdict(th, unl.mean(), base.mean(), m).verdict == "pass"


# ---------------------------------------------------------------- the gate's test


def rec(x, prompts, seeds, start_seed=0, groups=None):
    s = grid(x, prompts, seeds, groups=groups)
    s.seeds = [start_seed + v for v in s.seeds]
    r = {"value": float(stats.statistic(s.unlearned, np.ones(len(x)), groups)[0]), "scores": s.to_record()}
    r.update({k: v for k, v in stats.intervals(s).items() if k == "ci"})
    return r


def test_change_test_identical_runs_are_not_different():
    x = np.random.default_rng(6).random(80)
    t = stats.change_test(rec(x, 20, 4), rec(x, 20, 4))
    assert t["p_value"] == 1.0 and t["low"] == t["high"] == 0.0 and t["method"].startswith("paired")


def test_change_test_catches_a_real_matched_degradation():
    rng = np.random.default_rng(8)
    old = (rng.random(200) < 0.9).astype(float)
    new = old.copy()
    new[rng.choice(200, 30, replace=False)] = 0  # damaged: 30 of 200 images now wrong
    t = stats.change_test(rec(new, 50, 4), rec(old, 50, 4))
    assert t["p_value"] < 0.01 and t["high"] < 0


def test_change_test_on_another_seed_subset_is_unpaired_and_not_significant():
    rng = np.random.default_rng(9)
    pp = rng.beta(8, 2, size=25)
    draw = lambda: (rng.random((25, 4)) < pp[:, None]).astype(float).ravel()
    a, b = rec(draw(), 25, 4, 0), rec(draw(), 25, 4, 100)
    t = stats.change_test(a, b)
    assert t["method"].startswith("unpaired") and t["low"] < 0 < t["high"] and t["p_value"] > 0.05


def test_change_test_falls_back_to_intervals_then_to_nothing():
    a = {"value": 0.5, "ci": {"low": 0.4, "high": 0.6}}
    b = {"value": 0.45, "ci": {"low": 0.35, "high": 0.55}}
    t = stats.change_test(a, b)
    assert t["method"].startswith("normal") and t["p_value"] > 0.05
    assert stats.change_test({"value": 0.5}, {"value": 0.4}) is None
    assert stats.change_test({"value": 0.5, "scores": {"keys": "junk"}}, {"value": 0.4, "scores": [1]}) is None


def test_scores_round_trip_through_json():
    rng = np.random.default_rng(10)
    s = grid(rng.random(12), 6, 2, base=rng.random(12), groups=list("abcabcabcabc"))
    back = stats.Scores.from_record(json.loads(json.dumps(s.to_record())))
    assert back.keys() == s.keys() and back.groups == s.groups
    assert np.allclose(back.unlearned, s.unlearned, atol=1e-6)
    for bad in ({"keys": ["a:0"], "unlearned": [float("nan")]}, {"keys": ["a:0", "b:0"], "unlearned": [1.0]}, {"keys": ["nocolon"], "unlearned": [1]}, None):
        assert stats.Scores.from_record(bad) is None


# ---------------------------------------------------------------- planning


def test_minimum_detectable_effect_known_answer():
    # sd 0.5 over 100 independent items: SE 0.05, MDE = (1.95996 + 0.84162) * 0.05
    assert stats.minimum_detectable_effect(0.5, 0.0, 100, 1) == pytest.approx(0.1400792, rel=1e-5)
    # more seeds shrink only the within-prompt part
    a = stats.minimum_detectable_effect(0.2, 0.4, 25, 8)
    assert a == pytest.approx(2.8015842 * math.sqrt(0.04 / 25 + 0.16 / 200), rel=1e-5)


# ---------------------------------------------------------------- the metric families' per-item scores


class _Prompt:
    def __init__(self, text, labels):
        self.text, self.labels = text, labels


class _Run:
    """A SuiteRun stand-in: 5 objects x 5 styles x 3 seeds, with given predictions."""

    def __init__(self, preds_u, preds_b):
        from harness.spec import ScorerSpec
        from harness.toy import world

        self.items = [(_Prompt(f"A {o} image in {s} style.", {"object": o, "style": s}), seed)
                      for o in world.OBJECTS for s in world.STYLES for seed in range(3)]
        self._preds = {"unlearned": preds_u, "base": preds_b}
        self.scorer = object()
        self.suite = type("S", (), {"id": "synthetic", "scorer": ScorerSpec(backend="toy")})()
        self.memo = {}

    def labels(self):
        return {k: [p.labels[k] for p, _ in self.items] for k in ("object", "style")}

    def predictions(self, which):
        return self._preds[which]


def _noisy(run, rng, flip):
    from harness.toy import world

    lab = run.labels()
    return {k: [v if rng.random() > flip else rng.choice(vals) for v in lab[k]]
            for k, vals in (("object", world.OBJECTS), ("style", world.STYLES))}


@pytest.mark.parametrize("name", ["ua", "ira", "cra"])
def test_accuracy_scores_reproduce_the_value_and_give_paired_intervals(name):
    from harness.metrics import accuracy
    from harness.spec import TargetSpec

    rng = np.random.default_rng(11)
    run = _Run(None, None)
    run._preds = {"unlearned": _noisy(run, rng, 0.3), "base": _noisy(run, rng, 0.05)}
    t = TargetSpec(concept="striped", kind="style")
    meas = accuracy.compute(name, run, t, {})
    th = Threshold.parse(">= 0.8 * base")
    rec = stats.uncertainty(meas, th)
    assert "ci_reason" not in rec, rec.get("ci_reason")
    assert rec["ci"]["low"] <= meas.value <= rec["ci"]["high"]
    assert rec["delta_ci"]["low"] <= meas.value - meas.base_value <= rec["delta_ci"]["high"]
    assert rec["ci"]["n_clusters"] == (5 if name == "ua" else 20 if name == "ira" else 25)
    assert rec["ci"]["method"] == ("wilson" if name == "ua" else "cluster-bootstrap-percentile")
    same = accuracy.compute(name, _Run(run._preds["base"], run._preds["base"]), t, {})
    d = stats.uncertainty(same)["delta_ci"]
    assert d["low"] == d["high"] == 0.0  # identical models: delta exactly 0


def test_integrity_mscore_and_nudity_scores_reproduce_their_values():
    from harness.metrics import integrity, mscore, nudity
    from harness.spec import TargetSpec
    from harness.toy import world

    run = _Run(None, None)
    n = len(run.items)
    base = list(world.sample(n, seed=3)[0])
    unl = base[:40] + list(world.sample(n - 40, seed=4)[0])
    run.images = {"base": base, "unlearned": unl}
    t = TargetSpec(concept="striped", kind="style")
    for fam, name in ((integrity, "integrity"), (integrity, "integrity_forget"), (mscore, "mscore")):
        meas = fam.compute(name, run, t, {"references": 40} if name == "mscore" else {})
        rec = stats.uncertainty(meas, None)
        assert "ci_reason" not in rec and rec["ci"]["low"] <= meas.value + 1e-12 and meas.value - 1e-12 <= rec["ci"]["high"], name
    same = integrity.compute("integrity", type("R", (), {**run.__dict__, "labels": run.labels, "images": {"base": base, "unlearned": base}})(), t, {})
    ci = stats.uncertainty(same)["ci"]
    assert ci["low"] == ci["high"] == 1.0  # an unchanged model: integrity exactly 1, interval degenerate
    imgs = [np.kron(im, np.ones((10, 10, 1), np.uint8)) for im in world.sample(3, seed=5)[0]]
    nrun = type("N", (), {"images": {"base": imgs, "unlearned": imgs}, "memo": {}, "items": run.items[:3]})()
    meas = nudity.compute("nudity_asr", nrun, TargetSpec(concept="nudity", kind="nudity"), {"threshold": 0.45})
    rec = stats.uncertainty(meas)
    assert rec["ci"]["method"] == "wilson" and rec["ci"]["low"] == 0.0 and rec["delta_ci"]["low"] == rec["delta_ci"]["high"] == 0.0


def test_metrics_without_per_item_scores_say_why():
    from harness.metrics import Measurement, efficiency

    rec = stats.uncertainty(Measurement(1.0, None, ci_reason=efficiency.SINGLE))
    assert rec["ci"] is None and rec["ci_reason"] == efficiency.SINGLE
    assert stats.short_reason(rec["ci_reason"]) == "single run"
    assert stats.short_reason(efficiency.DECLARED) == "declared" and stats.short_reason(efficiency.EXACT) == "exact"
    assert stats.uncertainty(Measurement(1.0, None))["ci_reason"]
    assert stats.short_reason("a long sentence without a short tag: it says why") == "no interval" == stats.short_reason(None)


def test_fid_interval_is_the_paired_prompt_jackknife():
    from harness.metrics import fid

    rng = np.random.default_rng(12)
    ref = rng.normal(size=(200, 4))
    a, b = rng.normal(size=(60, 4)), rng.normal(0.5, size=(60, 4))
    clusters = [f"p{i // 3}" for i in range(60)]
    out = stats.set_intervals(lambda j: fid.fid_from_features(a[j], ref), lambda j: fid.fid_from_features(b[j], ref), clusters,
                              Threshold.parse("<= 2 * base"), lower=0.0)
    v = fid.fid_from_features(a, ref)
    assert out["ci"]["method"].startswith("cluster-jackknife-t") and out["ci"]["n_clusters"] == 20 and out["ci"]["resamples"] == 20
    assert 0 <= out["ci"]["low"] < v < out["ci"]["high"]
    assert out["delta_ci"]["high"] < 0  # a is nearer the reference than b, with every prompt left out
    # the margin's interval is centred on value - 2 x base, as the verdict reads it
    m = v - 2 * fid.fid_from_features(b, ref)
    assert out["margin_ci"]["low"] < m < out["margin_ci"]["high"]
    again = stats.set_intervals(lambda j: fid.fid_from_features(a[j], ref), lambda j: fid.fid_from_features(b[j], ref), clusters,
                                Threshold.parse("<= 2 * base"), lower=0.0)
    assert again == out  # no random draw: the same inputs give the same interval


def test_fid_interval_known_answers_identical_sets():
    from harness.metrics import fid

    rng = np.random.default_rng(3)
    a = rng.normal(size=(80, 6))
    clusters = [f"p{i // 4}" for i in range(80)]
    # identical models: delta exactly [0, 0]
    out = stats.set_intervals(lambda j: fid.fid_from_features(a[j], a), lambda j: fid.fid_from_features(a[j], a), clusters, lower=0.0)
    assert out["delta_ci"]["low"] == out["delta_ci"]["high"] == 0.0
    # a set against itself: FID 0, the interval contains 0, is not negative, and is far narrower
    # than the distance to a visibly different set
    assert abs(fid.fid_from_features(a, a)) < 1e-6
    ci = out["ci"]
    far = fid.fid_from_features(a + 1.0, a)
    assert ci["low"] == 0.0 and 0 < ci["high"] < 0.1 * far
    # fewer prompts than the minimum: no interval, and the reason
    few = stats.set_intervals(lambda j: fid.fid_from_features(a[j], a), None, [f"p{i // 20}" for i in range(80)])
    assert few["ci"] is None and "at least 5" in few["ci_reason"]


def test_fid_jackknife_covers_the_expected_fid_at_toy_size():
    """Coverage, measured: prompts with their own mean, 8 seeds each, 20 prompts (toy-fid's
    retain set shape), a fixed reference. The target is E[FID_n] (FID at this set size, the
    quantity two runs of a suite compare); the old bias-shifted bootstrap was 3-4x too wide here."""
    from harness.metrics import fid

    rng = np.random.default_rng(7)
    d, n_p, n_s = 4, 20, 8
    ref = rng.normal(size=(500, d)) * 1.2

    def draw():
        mu = rng.normal(size=(n_p, 1, d)) * 0.8
        return (mu + 0.6 * rng.normal(size=(n_p, n_s, d))).reshape(-1, d)

    truth = np.array([fid.fid_from_features(draw(), ref) for _ in range(400)])
    target, spread = truth.mean(), np.quantile(truth, 0.975) - np.quantile(truth, 0.025)
    clusters = [f"p{i // n_s}" for i in range(n_p * n_s)]
    hits, widths = 0, []
    for _ in range(200):
        x = draw()
        ci = stats.set_intervals(lambda j: fid.fid_from_features(x[j], ref), None, clusters, lower=0.0)["ci"]
        hits += ci["low"] <= target <= ci["high"]
        widths.append(ci["high"] - ci["low"])
    assert 0.90 <= hits / 200 <= 0.995, hits
    assert 0.7 * spread < np.median(widths) < 1.6 * spread, (np.median(widths), spread)


def test_set_statistic_jackknife_units():
    prompts = [f"p{i // 8}" for i in range(160)]
    seeds = [i % 8 for i in range(160)]
    groups, unit = stats.jackknife_units(prompts, seeds)
    assert unit == "seed" and len(set(groups)) == 8 and groups[0] == groups[8] != groups[1]
    assert stats.jackknife_units(prompts[:80], [i % 4 for i in range(80)]) == (prompts[:80], "prompt")  # 4 seeds: too few
    ragged = seeds[:-1] + [9]  # one prompt at another seed: the seeds are not a shared design
    assert stats.jackknife_units(prompts, ragged)[1] == "prompt"


def test_fid_seed_jackknife_covers_with_the_prompts_fixed():
    """The toy-fid design: a fixed, fully enumerated prompt set matched by the reference, 8 seeds;
    only the seeds are random. Deleting one seed of every prompt keeps the composition; the
    interval covers E[FID_n] over new seeds and is far narrower than the prompt jackknife's."""
    from harness.metrics import fid

    rng = np.random.default_rng(11)
    d, n_p, n_s = 4, 20, 8
    mu = rng.normal(size=(n_p, 1, d)) * 0.8
    ref = (mu + 0.6 * rng.normal(size=(n_p, 25, d))).reshape(-1, d)

    def draw():
        return (mu + 0.6 * rng.normal(size=(n_p, n_s, d))).reshape(-1, d)

    truth = np.array([fid.fid_from_features(draw(), ref) for _ in range(400)])
    target = truth.mean()
    prompts = [f"p{i // n_s}" for i in range(n_p * n_s)]
    units, unit = stats.jackknife_units(prompts, [i % n_s for i in range(n_p * n_s)])
    assert unit == "seed"
    hits, w_seed, w_prompt = 0, [], []
    for _ in range(200):
        x = draw()
        ci = stats.set_intervals(lambda j: fid.fid_from_features(x[j], ref), None, units, lower=0.0)["ci"]
        hits += ci["low"] <= target <= ci["high"]
        w_seed.append(ci["high"] - ci["low"])
        if len(w_prompt) < 20:
            cp = stats.set_intervals(lambda j: fid.fid_from_features(x[j], ref), None, prompts, lower=0.0)["ci"]
            w_prompt.append(cp["high"] - cp["low"])
    assert 0.90 <= hits / 200 <= 0.995, hits
    assert np.median(w_seed) < 0.7 * np.median(w_prompt), (np.median(w_seed), np.median(w_prompt))


# ---------------------------------------------------------------- the intervals of issue 32


def test_asr_wilson_interval_covers_p_on_simulated_bernoulli_items():
    """The interval an ASR record carries (Wilson on the effective size of 0/1 attacked items,
    clustered by prompt: ``intervals`` of a binary ``Scores``) covers the true rate in 93-97% of
    1,000 simulated sets of 25 prompts x 2 attack seeds of Bernoulli(0.3) items (measured 0.960)."""
    rng = np.random.default_rng(3)
    clusters, p, hits = [f"p{i // 2}" for i in range(50)], 0.3, 0
    for _ in range(1000):
        s = stats.Scores((rng.random(50) < p).astype(float), None, clusters, [i % 2 for i in range(50)], binary=True)
        ci = stats.intervals(s)["ci"]
        assert ci["method"] == "wilson"
        hits += ci["low"] <= p <= ci["high"]
    assert 0.93 <= hits / 1000 <= 0.97, hits / 1000


def test_weighted_and_repeat_intervals_known_answers():
    """A constant statistic gives a degenerate interval at its value; identical models give a
    delta of exactly [0, 0]; the worst case of two proportions is bracketed by its interval;
    repeats give mean -/+ t sd / sqrt(n) and one repeat says "single run"."""
    clusters = [f"p{i // 2}" for i in range(20)]
    x = np.r_[np.ones(10), np.zeros(10)]
    mean = lambda v: (lambda w: stats.statistic(v, w))
    const = stats.weighted_intervals(lambda w: np.full(len(np.atleast_2d(w)), 0.25), None, clusters)
    assert const["ci"]["low"] == const["ci"]["high"] == 0.25 and "delta_ci" not in const
    same = stats.weighted_intervals(mean(x), mean(x), clusters, Threshold.parse("<= 0.5 * base"))
    assert same["delta_ci"]["low"] == same["delta_ci"]["high"] == 0.0
    assert same["ci"]["low"] < 0.5 < same["ci"]["high"] and same["margin_ci"]["low"] < 0.25 < same["margin_ci"]["high"]
    assert stats.weighted_intervals(mean(x), mean(x), clusters) == stats.weighted_intervals(mean(x), mean(x), clusters)  # seeded
    y = np.r_[np.ones(4), np.zeros(16)]
    worst = stats.weighted_intervals(lambda w: np.maximum(stats.statistic(x, w), stats.statistic(y, w)), None, clusters)
    assert worst["ci"]["low"] <= 0.5 <= worst["ci"]["high"] and worst["ci"]["low"] >= 0.2
    r = stats.repeats_interval([10.0, 12.0, 14.0])
    from scipy.stats import t

    half = t.ppf(0.975, 2) * 2.0 / np.sqrt(3)
    assert r["ci"]["low"] == pytest.approx(12 - half) and r["ci"]["high"] == pytest.approx(12 + half)
    assert r["ci"]["sd"] == 2.0 and (r["ci"]["min"], r["ci"]["max"], r["ci"]["n_items"]) == (10.0, 14.0, 3)
    flat = stats.repeats_interval([3.0, 3.0, 3.0], Threshold.parse("<= 5"))
    assert flat["ci"]["low"] == flat["ci"]["high"] == 3.0 and flat["margin_ci"]["low"] == flat["margin_ci"]["high"] == -2.0
    one = stats.repeats_interval([3.0])
    assert one["ci"] is None and stats.short_reason(one["ci_reason"]) == "single run"
