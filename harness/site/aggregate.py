"""Aggregation of the accepted runs (pandas): one row per metric record (with the model family
of its suite's base: ``load.suite_family``), each submission's latest run, the rank intervals of
a suite's headline metric, the trade-off plot's points and the ASR curves. Nothing here renders: the tables, figures and pages are built from what this returns."""

from __future__ import annotations

from harness.metrics import plotted
from harness.site.load import Run, is_smoke, run_families, run_family
from harness.site.text import finite, na_to_none

VERDICTS = ("pass", "fail", "inconclusive", "error", "info")
# The trade-off plot: erasure (x) against retention (y, the mean of the metrics present): the
# metrics' MetricInfo.plot (harness.metrics.plotted: the registry, which loads no model library).
_PLOT = plotted()
ERASURE_METRIC = _PLOT["x"][0]
RETENTION_METRICS = tuple(_PLOT["y"])
RECORD_COLUMNS = [
    "submission", "method", "family", "file", "run_finished", "complete", "harness_version", "git_sha",
    "suite", "metric", "label", "target", "target_kind", "value", "base_value", "threshold",
    "bound", "verdict", "higher_is_better", "tolerance", "error", "latest", "smoke",
    "ci_low", "ci_high", "ci_method", "delta_low", "delta_high", "verdict_point",  # harness.stats.intervals (empty in older files)
    "seeds_n", "seeds_sd",  # the method's spread over training seeds (unlearn regress --method-seeds; empty without one)
]


def method_label(method: dict) -> str:
    """A method's name as the board shows it: an inference-time method (``kind: inference``, no
    weights changed, its cost paid at every image) says so, so its row is never read as a
    checkpoint's."""
    name = str(method.get("name", ""))
    return f"{name} (inference-time)" if method.get("kind") == "inference" else name


def records_frame(runs: list[Run], spreads: dict | None = None):
    """One row per metric record of every accepted file (pandas), with ``latest`` marking the
    records of each submission's newest run (by ``finished``, then file name) and ``family`` the
    model family of the record's suite (``load.suite_family``). ``spreads``
    (``load.load_spreads``) gives the latest run's records their method-seed spread."""
    import pandas as pd

    latest: dict[str, Run] = {}
    for r in runs:
        cur = latest.get(r.name)
        if cur is None or (r.finished, r.file) > (cur.finished, cur.file):
            latest[r.name] = r
    rows = []
    for r in runs:
        d = r.data
        fams, fam = run_families(d), run_family(d)
        for m in d["metrics"]:
            rows.append({
                "submission": r.name, "method": method_label(d["submission"]["method"]), "family": fams.get(m["suite"], fam), "file": r.file,
                "run_finished": r.finished, "complete": bool(d.get("complete", True)),
                "harness_version": d["harness"].get("version"), "git_sha": d["harness"].get("git_sha"),
                "suite": m["suite"], "metric": m["metric"], "label": m.get("label") or m["metric"],
                "target": m["target"], "target_kind": m.get("target_kind") or _kind(d, m["target"]),
                "value": m.get("value"), "base_value": m.get("base_value"), "threshold": m.get("threshold"),
                "bound": m.get("bound"), "verdict": m["verdict"], "higher_is_better": m.get("higher_is_better"),
                "tolerance": m.get("tolerance"), "error": m.get("error"), "latest": latest[r.name] is r, "smoke": is_smoke(d),
                "_details": m.get("details"), "_run": r.id, **interval_columns(m),
                **spread_columns((spreads or {}).get((r.name, m["suite"], m.get("label") or m["metric"], m["target"])) if latest[r.name] is r else None),
            })
    df = pd.DataFrame(rows, columns=[*RECORD_COLUMNS, "_details", "_run", "_ci", "_delta_ci", "_scores", "_ci_reason", "_spread"])
    return df, latest


def records_of(df) -> list[dict]:
    """``df.to_dict("records")`` (native Python values), column by column: pandas' own boxes
    every cell one by one, ~10x slower on 100,000 records."""
    cols = list(df.columns)
    return [dict(zip(cols, vals)) for vals in zip(*(df[c].tolist() for c in cols))] if len(df) else []


def interval_columns(m: dict) -> dict:
    ci = m.get("ci") if isinstance(m.get("ci"), dict) else None
    d = m.get("delta_ci") if isinstance(m.get("delta_ci"), dict) else None
    return {"ci_low": finite((ci or {}).get("low")), "ci_high": finite((ci or {}).get("high")), "ci_method": (ci or {}).get("method"),
            "delta_low": finite((d or {}).get("low")), "delta_high": finite((d or {}).get("high")), "verdict_point": m.get("verdict_point"),
            "_ci": ci, "_delta_ci": d, "_scores": m.get("scores") if isinstance(m.get("scores"), dict) else None, "_ci_reason": m.get("ci_reason")}


def spread_columns(spread: dict | None) -> dict:
    return {"seeds_n": spread["n"] if spread else None, "seeds_sd": spread["sd"] if spread else None, "_spread": spread}


def _kind(data: dict, concept: str) -> str:
    for t in data["submission"]["targets"]:
        if t["concept"] == concept:
            return t["kind"]
    return "other"


def headline_metric(metrics: list[dict], sdf) -> str | None:
    """A suite's headline metric: its first metric with a threshold, else its first metric."""
    keyed = sdf.drop_duplicates("metric").set_index("metric")
    for m in metrics:
        if na_to_none(keyed.loc[m["key"], "threshold"]):
            return m["key"]
    return metrics[0]["key"] if metrics else None


def rank_intervals(entries: list[dict], higher_is_better: bool, resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Rank (1 = best) and its 95% interval for each entry {key, value, ci, scores}.

    When every entry carries per-item ``scores`` over the same (prompt, seed) items (the same
    suite: the images are matched), the ranking is bootstrapped: one cluster draw of prompts,
    applied to every entry, ranks recomputed, 2.5 / 97.5 percentiles of each entry's rank.
    Otherwise each entry's rank interval comes from the values' intervals: from 1 + the entries
    whose interval is wholly better to 1 + the entries not wholly worse. Entries whose rank
    intervals overlap form a tie group (``tied_with``)."""
    import numpy as np

    from harness.stats import intervals as stats

    sign = 1.0 if higher_is_better else -1.0
    vals = np.array([e["value"] for e in entries], float)
    point = 1 + np.array([(sign * vals > sign * v).sum() for v in vals])
    scores = [stats.Scores.from_record(e.get("scores")) if e.get("scores") else None for e in entries]
    method = None
    if len(entries) > 1 and all(s is not None for s in scores) and len({tuple(sorted(s.keys())) for s in scores}) == 1:
        order = [{k: i for i, k in enumerate(s.keys())} for s in scores]
        ref = scores[0].keys()
        perms = [np.array([o[k] for k in ref]) for o in order]
        w = stats.cluster_weights(scores[0].clusters, resamples, np.random.default_rng(seed))
        boot = np.stack([stats.statistic(s.unlearned[p], w, None if s.groups is None else [s.groups[i] for i in p]) for s, p in zip(scores, perms)], 1)
        ranks = 1 + (sign * boot[:, None, :] > sign * boot[:, :, None]).sum(2)  # (B, entries)
        lo, hi = np.quantile(ranks, 0.025, axis=0, method="lower"), np.quantile(ranks, 0.975, axis=0, method="higher")
        method = f"paired cluster bootstrap of the ranking ({resamples} resamples, seed {seed})"
    else:
        cis = [e.get("ci") or {} for e in entries]
        if all(finite(c.get("low")) is not None and finite(c.get("high")) is not None for c in cis):
            low = np.array([c["low"] for c in cis], float)
            high = np.array([c["high"] for c in cis], float)
            better_lo, better_hi = (low, high) if higher_is_better else (-high, -low)
            lo = 1 + np.array([(better_lo > better_hi[i]).sum() for i in range(len(entries))])
            hi = len(entries) - np.array([(better_hi < better_lo[i]).sum() for i in range(len(entries))])
            method = "from the values' 95% intervals (no matched per-image scores)"
        else:
            lo = hi = point
    out = []
    for i, e in enumerate(entries):
        tied = [entries[j]["key"] for j in range(len(entries)) if j != i and method and not (hi[j] < lo[i] or hi[i] < lo[j])]
        out.append({"key": e["key"], "rank": int(point[i]), "low": int(lo[i]), "high": int(hi[i]), "tied_with": tied, "method": method})
    return out


def tradeoff_points(df) -> list[dict]:
    """(erasure, retention) per (suite, submission, target) of the latest runs, plus the base
    model's point per (suite, target)."""
    cur = df[df["latest"]]
    groups: dict[tuple, dict] = {}  # grouped in Python (a pandas group per target costs ~1 ms)
    for r in records_of(cur):
        groups.setdefault((r["suite"], r["submission"], r["target"]), {})[r["metric"]] = r
    pts = []
    for (sid, name, target) in sorted(groups):
        by = groups[(sid, name, target)]
        if ERASURE_METRIC not in by or not any(m in by for m in RETENTION_METRICS):
            continue
        kind = by[ERASURE_METRIC]["target_kind"]
        for who, col in (("unlearned", "value"), ("base", "base_value")):
            x = finite(na_to_none(by[ERASURE_METRIC][col]))
            ys = [finite(na_to_none(by[m][col])) for m in RETENTION_METRICS if m in by]
            if x is None or not ys or any(y is None for y in ys):
                continue
            pts.append({"suite": sid, "submission": name if who == "unlearned" else "base model", "target": target, "kind": kind,
                        "base": who == "base", "x": x, "y": sum(ys) / len(ys),
                        "retention": [m for m in RETENTION_METRICS if m in by], **point_error_bars(by, who)})
    # one base point per (suite, target, position)
    seen, out = set(), []
    for p in pts:
        key = (p["suite"], p["target"], round(p["x"], 6), round(p["y"], 6)) if p["base"] else None
        if key and key in seen:
            continue
        if key:
            seen.add(key)
        out.append(p)
    return out


def point_error_bars(by: dict, who: str) -> dict:
    """The trade-off point's 95% error bars (unlearned model only): x from UA's interval; y, a
    mean of IRA and CRA, from the mean of their intervals' ends (wider than the interval of
    the mean, never narrower)."""
    if who != "unlearned":
        return {}
    ci = lambda m: na_to_none(by[m].get("_ci")) if m in by else None
    x = ci(ERASURE_METRIC)
    ys = [ci(m) for m in RETENTION_METRICS if m in by]
    out = {}
    if x and finite(x.get("low")) is not None and finite(x.get("high")) is not None:
        out["x_ci"] = (x["low"], x["high"])
    if ys and all(y and finite(y.get("low")) is not None and finite(y.get("high")) is not None for y in ys):
        out["y_ci"] = (sum(y["low"] for y in ys) / len(ys), sum(y["high"] for y in ys) / len(ys))
    return out


def curves(df) -> list[dict]:
    """``[{suite, submission, target, kind, unit, points: [(budget, asr)], base, bars: [(budget, low, high)]}]`` from the latest
    records of the ``asr`` metric. Only points whose budget (>= 0) and ASR (in [0, 1]) are finite
    numbers are drawn: a results file's details are free-form, and one odd file must not stop
    the build."""
    out = []
    rows = df[(df["latest"]) & (df["metric"] == "asr")]
    for r in records_of(rows):
        d = r["_details"] if isinstance(r["_details"], dict) else {}
        curve = d.get("asr_curve") if isinstance(d.get("asr_curve"), list) else []
        pts = [(float(c["budget"]), float(c["asr"])) for c in curve
               if isinstance(c, dict) and finite(c.get("budget")) is not None and c["budget"] >= 0 and finite(c.get("asr")) is not None and 0 <= c["asr"] <= 1]
        # each point's 95% interval (Wilson, harness.metrics.robustness), where the file gives one
        bars = [(float(c["budget"]), float(c["low"]), float(c["high"])) for c in curve
                if isinstance(c, dict) and finite(c.get("budget")) is not None and c["budget"] >= 0 and finite(c.get("low")) is not None
                and finite(c.get("high")) is not None and 0 <= c["low"] <= c["high"] <= 1]
        if pts:
            out.append({"suite": r["suite"], "submission": r["submission"], "target": r["target"], "kind": r.get("target_kind") or "other",
                        "unit": d.get("budget_unit") or "budget", "points": pts, "base": r["base_value"], "bars": bars})
    return out
