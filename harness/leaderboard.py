"""The leaderboard: a static site built from results JSON files, and the refresh that makes them.

``unlearn leaderboard build --results leaderboard/results --out site/`` reads every ``*.json``
under the results folder (one file per submission x run), validates each one (a file that is not
JSON or not the results shape is reported on stderr as one line and skipped), aggregates the
records with pandas and renders, with Jinja2 (autoescape on: submission names come from
strangers):

* ``index.html``: one sortable table per suite, the base model's values as reference rows, a
  filter by target kind, the erasure / retention trade-off plot (``tradeoff.svg``, written here);
* ``submissions/<slug>-<hash>.html``: every metric with threshold, base value and verdict, the
  generation settings, the provenance and a grid of matched base / unlearned sample images;
* ``results.json`` and ``results.csv``: every accepted record;
* ``images/<sha256>.png``: the sample images, copied only after their sha256 is checked.

The site uses relative links only and renders without fetching anything, so it works opened from
disk (file://) and served over HTTP.

``unlearn leaderboard refresh`` runs the harness (pytest with the plugin, in a subprocess) on the
toy submissions, copies each results JSON to ``leaderboard/results/<name>.json`` and exports the
sample PNGs they name from the image cache to ``leaderboard/results/images/<sha256>.png``.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import HarnessError
from .fsutil import cache_dir
from .rerun import run_harness
from .resultfile import one_line, read_result

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "leaderboard"  # templates/ and static/ (resolved from the checkout: pip install -e)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MARKER = ".unlearn-leaderboard"  # marks a folder this module built (and may replace)
VERDICTS = ("pass", "fail", "inconclusive", "error", "info")
# The trade-off plot: erasure (x) against retention (y, the mean of the metrics present).
ERASURE_METRIC = "ua"
RETENTION_METRICS = ("ira", "cra")

Report = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"unlearn: {msg}", file=sys.stderr)


@dataclass
class Run:
    """One accepted results file."""

    file: str  # relative to the results folder, as shown and recorded
    data: dict
    id: str = ""  # short stable id of the file (for the tables)

    @property
    def name(self) -> str:
        return self.data["submission"]["name"]

    @property
    def finished(self) -> str:
        return str(self.data.get("finished") or self.data.get("started") or "")


def load_runs(results: Path, report: Report = _stderr, require_attestation: bool = False) -> list[Run]:
    """Every results file of ``results`` (``resultfile.results_files``: ``*.json``, not
    recursive, regular files) that validates, whose verdicts its numbers and the current suites'
    thresholds give, that the folder's ATTESTATION.json lists (when there is one, or when
    required), and whose submission name no other name collides with; the others are reported
    and skipped (one bad file never stops the build)."""
    from .attest import MANIFEST, attested, current_thresholds, name_key, read_manifest, recheck_verdicts
    from .resultfile import results_files

    manifest = read_manifest(results)
    if manifest is None and require_attestation:
        raise HarnessError(f"--results {results}: no {MANIFEST} (--require-attestation): run `unlearn leaderboard attest` in the trusted workflow")
    thresholds = current_thresholds(ROOT)
    runs = []
    for p in results_files(results):
        rel = p.relative_to(results).as_posix()
        try:
            if manifest is not None:
                why = attested(p, manifest)
                if why:
                    raise ValueError(why)
            data = read_result(p)
            recheck_verdicts(data, thresholds)
        except (ValueError, OSError, HarnessError, RecursionError) as e:
            report(f"skipped {p}: {one_line(e)}")
            continue
        from .pins import pins_problem  # a real result counts only with the suite's own pins

        if (why := pins_problem(data, ROOT)) is not None:
            report(f"skipped {p}: {why}")
            continue
        runs.append(Run(rel, data, hashlib.sha256(rel.encode()).hexdigest()[:10]))
    groups: dict[str, set[str]] = {}
    for r in runs:
        groups.setdefault(name_key(r.name), set()).add(r.name)
    clash = {n for names in groups.values() if len(names) > 1 for n in names}
    for r in [r for r in runs if r.name in clash]:
        report(f"skipped {results / r.file}: submission.name {r.name!r} collides with {sorted(groups[name_key(r.name)] - {r.name})[0]!r} (names must differ in more than case and punctuation)")
    return [r for r in runs if r.name not in clash]


# ----------------------------------------------------------------------------- helpers
def slug(name: str) -> str:
    """A safe, unique file name stem for a submission name: lower-case ASCII letters, digits and
    dashes (never a path), plus a short hash of the exact name."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48].strip("-") or "submission"
    return f"{s}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


def safe_url(url: Any) -> str | None:
    """``url`` when it is an absolute http(s) URL (then it may become a link), else None."""
    if not isinstance(url, str) or any(c in url for c in "\x00\r\n\t <>\"'`\\") or len(url) > 2000:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    return f"{x:.3f}"


def pretty_threshold(th: str | None) -> str:
    return (th or "").replace(">=", "≥").replace("<=", "≤")


def short(sha: Any, n: int = 12) -> str:
    s = str(sha or "")
    return s if len(s) <= n else s[:n] + "…"


def _json_value(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_value(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_value(v) for v in x]
    return x


# ----------------------------------------------------------------------------- aggregation
RECORD_COLUMNS = [
    "submission", "method", "file", "run_finished", "complete", "harness_version", "git_sha",
    "suite", "metric", "label", "target", "target_kind", "value", "base_value", "threshold",
    "bound", "verdict", "higher_is_better", "tolerance", "error", "latest", "smoke",
    "ci_low", "ci_high", "ci_method", "delta_low", "delta_high", "verdict_point",  # harness.stats (empty in older files)
]


def records_frame(runs: list[Run]):
    """One row per metric record of every accepted file (pandas), with ``latest`` marking the
    records of each submission's newest run (by ``finished``, then file name)."""
    import pandas as pd

    latest: dict[str, Run] = {}
    for r in runs:
        cur = latest.get(r.name)
        if cur is None or (r.finished, r.file) > (cur.finished, cur.file):
            latest[r.name] = r
    rows = []
    for r in runs:
        d = r.data
        for m in d["metrics"]:
            rows.append({
                "submission": r.name, "method": d["submission"]["method"]["name"], "file": r.file,
                "run_finished": r.finished, "complete": bool(d.get("complete", True)),
                "harness_version": d["harness"].get("version"), "git_sha": d["harness"].get("git_sha"),
                "suite": m["suite"], "metric": m["metric"], "label": m.get("label") or m["metric"],
                "target": m["target"], "target_kind": m.get("target_kind") or _kind(d, m["target"]),
                "value": m.get("value"), "base_value": m.get("base_value"), "threshold": m.get("threshold"),
                "bound": m.get("bound"), "verdict": m["verdict"], "higher_is_better": m.get("higher_is_better"),
                "tolerance": m.get("tolerance"), "error": m.get("error"), "latest": latest[r.name] is r, "smoke": is_smoke(d),
                "_details": m.get("details"), "_run": r.id, **interval_columns(m),
            })
    df = pd.DataFrame(rows, columns=[*RECORD_COLUMNS, "_details", "_run", "_ci", "_delta_ci", "_scores", "_ci_reason"])
    return df, latest


# ----------------------------------------------------------------------------- intervals and ranks
# (harness.stats; docs/statistics.md). Records of older results files carry no interval: their
# cells show the value alone and their ranks come from the values' intervals only where present.


def interval_columns(m: dict) -> dict:
    ci = m.get("ci") if isinstance(m.get("ci"), dict) else None
    d = m.get("delta_ci") if isinstance(m.get("delta_ci"), dict) else None
    return {"ci_low": finite((ci or {}).get("low")), "ci_high": finite((ci or {}).get("high")), "ci_method": (ci or {}).get("method"),
            "delta_low": finite((d or {}).get("low")), "delta_high": finite((d or {}).get("high")), "verdict_point": m.get("verdict_point"),
            "_ci": ci, "_delta_ci": d, "_scores": m.get("scores") if isinstance(m.get("scores"), dict) else None, "_ci_reason": m.get("ci_reason")}


def ci_text(ci: dict | None) -> str:
    """``[0.912, 1.000]``: the 95% interval beside a value ('' when the record has none)."""
    if not ci or finite(ci.get("low")) is None or finite(ci.get("high")) is None:
        return ""
    return f"[{fmt(ci['low'])}, {fmt(ci['high'])}]"


def ci_title(rec: dict) -> str:
    ci, why = _none(rec.get("_ci")), _none(rec.get("_ci_reason"))
    if ci:
        return f"95% interval {ci_text(ci)} ({ci.get('method')}, {ci.get('n_clusters')} prompts)" + (f"; {ci['note']}" if ci.get("note") else "")
    return f"no interval: {why}" if why else ""


def delta_text(d: dict | None, value: Any, base: Any) -> str:
    """``Δ +0.950 [0.900, 1.000]``: the change against the base model with its paired interval."""
    v, b = finite(value), finite(base)
    if v is None or b is None:
        return ""
    sign = lambda x: ("+" if x >= 0 else "") + fmt(x)
    return f"Δ {sign(v - b)}" + (f" [{sign(d['low'])}, {sign(d['high'])}]" if d and finite(d.get("low")) is not None else "")


def headline_metric(metrics: list[dict], sdf) -> str | None:
    """A suite's headline metric: its first metric with a threshold, else its first metric."""
    keyed = sdf.drop_duplicates("metric").set_index("metric")
    for m in metrics:
        if _none(keyed.loc[m["key"], "threshold"]):
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

    from . import stats

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


def attach_ranks(table: dict, sdf, metrics: list[dict]) -> None:
    """Rank interval of each row's headline metric, among the rows of the same target."""
    key = headline_metric(metrics, sdf)
    table["headline"] = next((m for m in metrics if m["key"] == key), None)
    recs = {(r["submission"], r["target"]): r for r in sdf[sdf["metric"] == key].to_dict("records")} if key else {}
    by_target: dict[str, list[dict]] = {}
    for (name, target), r in recs.items():
        if finite(_none(r["value"])) is not None:
            by_target.setdefault(target, []).append({"key": name, "value": float(r["value"]), "ci": _none(r["_ci"]), "scores": _none(r["_scores"])})
    ranks = {}
    for target, entries in by_target.items():
        hib = _none(table["headline"]["higher_is_better"]) if table["headline"] else True
        for r in rank_intervals(sorted(entries, key=lambda e: e["key"]), True if hib is None else bool(hib)):
            ranks[(r["key"], target)] = r
    for row in table["rows"]:
        r = ranks.get((row["submission"], row["target"]))
        if r is None:
            row["rank"] = {"text": "–", "sort": "", "title": "no value"}
            continue
        span = f"{r['low']}" if r["low"] == r["high"] else f"{r['low']}–{r['high']}"
        row["rank"] = {"text": f"{r['rank']} [{span}]", "sort": repr(r["rank"] + (r["high"] - r["low"]) / 100), "tied": bool(r["tied_with"]),
                       "title": (f"95% rank interval {span} ({r['method']})" if r["method"] else "no intervals: rank of the point values")
                       + (f"; tied with {', '.join(r['tied_with'])}" if r["tied_with"] else "; resolved")}


def _kind(data: dict, concept: str) -> str:
    for t in data["submission"]["targets"]:
        if t["concept"] == concept:
            return t["kind"]
    return "other"


def _none(x: Any) -> Any:
    """pandas' missing values (NaN for an empty float cell) as None."""
    try:
        import pandas as pd

        return None if x is None or (not isinstance(x, (list, dict, str)) and pd.isna(x)) else x
    except (TypeError, ValueError):
        return x


def _cell(rec: dict | None) -> dict:
    if rec is None:
        return {"text": "–", "sort": "", "verdict": None, "title": "no record"}
    v = finite(_none(rec["value"]))
    title = rec.get("error") or ""
    return {"text": fmt(_none(rec["value"])), "sort": "" if v is None else repr(v), "verdict": rec["verdict"], "title": _none(title) or ci_title(rec),
            "ci": ci_text(_none(rec.get("_ci"))), "delta": delta_text(_none(rec.get("_delta_ci")), _none(rec["value"]), _none(rec["base_value"]))}


def _num_cell(x: Any) -> dict:
    x = _none(x)
    v = finite(x)
    return {"text": fmt(x), "sort": "" if v is None else repr(v)}


def suite_tables(df, latest: dict[str, Run]) -> list[dict]:
    """One table per suite (sorted by id) over each submission's latest run: rows of
    (submission, target), a value / base column group per metric, base-model reference rows."""
    cur = df[df["latest"]]
    tables = []
    for sid in sorted(cur["suite"].unique()):
        sdf = cur[cur["suite"] == sid]
        metrics = []
        for key, g in sdf.groupby("metric", sort=False):
            first = g.iloc[0]
            metrics.append({"key": key, "label": first["label"], "threshold": pretty_threshold(_none(first["threshold"])),
                            "higher_is_better": _none(first["higher_is_better"])})
        recs = {(r["submission"], r["target"], r["metric"]): r for r in sdf.to_dict("records")}
        rows = []
        for (name, target), g in sdf.groupby(["submission", "target"], sort=True):
            first = g.iloc[0]
            cells = [_cell(recs.get((name, target, m["key"]))) for m in metrics]
            bases = [_num_cell(recs[(name, target, m["key"])]["base_value"]) if (name, target, m["key"]) in recs else _num_cell(None) for m in metrics]
            checked = [r for r in g.to_dict("records") if r["verdict"] in ("pass", "fail", "error")]
            passed = sum(r["verdict"] == "pass" for r in checked)
            rows.append({"submission": name, "page": f"submissions/{slug(name)}.html", "method": first["method"],
                         "target": target, "kind": first["target_kind"], "cells": list(zip(cells, bases)),
                         "checks": {"text": f"{passed} / {len(checked)}" if checked else "–",
                                    "sort": repr(passed / len(checked)) if checked else "", "all": bool(checked) and passed == len(checked)}})
        suite_rec = next((s for run in latest.values() for s in run.data["suites"] if s["id"] == sid), {})
        tables.append({"id": sid, "metrics": metrics, "rows": rows, "base_rows": _base_rows(sdf, metrics, latest, sid),
                       "suite": suite_meta(suite_rec), "kinds": sorted(set(sdf["target_kind"]))})
        attach_ranks(tables[-1], sdf, metrics)
    return tables


GENERATION_KEYS = ("scheduler", "steps", "guidance", "height", "width", "eta", "batch_size", "negative_prompt")


def generation_seconds(s: dict) -> float | None:
    """Seconds the suite's images took to generate (base + unlearned + attacked, from the image
    sidecars, whenever they were made); None when a results file does not say."""
    imgs = s.get("images") if isinstance(s.get("images"), dict) else {}
    vals = [v.get("generation_seconds") for v in imgs.values() if isinstance(v, dict)]
    if not vals or any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in vals):
        return None
    return float(sum(vals))


def suite_meta(s: dict) -> dict:
    """The fields of a suite record the pages show, every one present (None when absent)."""
    gen = s.get("generation") if isinstance(s.get("generation"), dict) else {}
    scorer = s.get("scorer")
    models = s.get("models") if isinstance(s.get("models"), dict) else {}
    images = []
    for k, v in sorted((s.get("images") or {}).items() if isinstance(s.get("images"), dict) else []):
        if isinstance(v, dict):
            flagged = v.get("flagged")
            images.append({"which": k, "generated": v.get("generated"), "cached": v.get("cached"),
                           "flagged": len(flagged) if isinstance(flagged, list) else 0})
    return {"id": s.get("id"), "version": s.get("version"), "n_prompts": s.get("n_prompts"), "n_images": s.get("n_images_per_model"),
            "seeds": s.get("seeds") or [], "smoke": s.get("smoke"), "generation": {k: gen.get(k) for k in GENERATION_KEYS},
            "device": s.get("device"), "dtype": s.get("dtype"), "cuda_visible_devices": s.get("cuda_visible_devices"),
            "file_sha256": s.get("file_sha256"), "prompt_set_sha256": s.get("prompt_set_sha256"),
            "scorer_id": scorer.get("id") if isinstance(scorer, dict) else scorer,
            "scorer_sha256": scorer.get("sha256") if isinstance(scorer, dict) else None,
            "models": {"base": models.get("base"), "unlearned": models.get("unlearned")}, "images": images,
            "seconds": s.get("seconds"), "generation_seconds": generation_seconds(s), "error": s.get("error")}


def _base_rows(sdf, metrics: list[dict], latest: dict[str, Run], sid: str) -> list[dict]:
    """The base model's value of each metric, per (base model, target), as every record carries
    it. Where the submissions' runs disagree (e.g. an attack that depends on the unlearned model)
    the range is shown."""
    base_of = {}
    for name, run in latest.items():
        for s in run.data["suites"]:
            if s["id"] == sid:
                base_of[name] = str((s.get("models") or {}).get("base") or "")
    out = []
    keyed: dict[tuple[str, str, str], list] = {}
    for r in sdf.to_dict("records"):
        keyed.setdefault((base_of.get(r["submission"], ""), r["target"], r["target_kind"]), []).append(r)
    many_bases = len({k[0] for k in keyed}) > 1
    for (fp, target, kind), recs in sorted(keyed.items()):
        cells = []
        for m in metrics:
            vals = sorted({finite(_none(r["base_value"])) for r in recs if r["metric"] == m["key"]} - {None})
            if not vals:
                cells.append({"text": "–", "title": "no base value (the metric is about the submission alone)"})
            elif vals[-1] - vals[0] <= 1e-9 * max(1.0, abs(vals[-1])):
                cells.append({"text": fmt(vals[0]), "title": ""})
            else:
                cells.append({"text": f"{fmt(vals[0])}–{fmt(vals[-1])}", "title": "the base value differs between submissions' runs (it depends on the unlearned model, e.g. an attack)"})
        out.append({"label": "base model" + (f" ({short(fp, 20)})" if many_bases else ""), "fingerprint": fp, "target": target, "kind": kind, "cells": cells})
    return out


def overview_rows(df, latest: dict[str, Run]) -> list[dict]:
    cur = df[df["latest"]]
    out = []
    for name, run in sorted(latest.items()):
        g = cur[cur["submission"] == name]
        counts = {v: int((g["verdict"] == v).sum()) for v in VERDICTS}
        sub = run.data["submission"]
        out.append({"submission": name, "page": f"submissions/{slug(name)}.html", "method": sub["method"]["name"],
                    "targets": [{"concept": t["concept"], "kind": t["kind"]} for t in sub["targets"]],
                    "kinds": " ".join(sorted({t["kind"] for t in sub["targets"]})),
                    "counts": counts, "finished": run.finished, "complete": bool(run.data.get("complete", True)),
                    "runs": sum(1 for r in df.drop_duplicates("_run").to_dict("records") if r["submission"] == name)})
    return out


# ----------------------------------------------------------------------------- trade-off plot
def tradeoff_points(df) -> list[dict]:
    """(erasure, retention) per (suite, submission, target) of the latest runs, plus the base
    model's point per (suite, target)."""
    cur = df[df["latest"]]
    pts = []
    for (sid, name, target), g in cur.groupby(["suite", "submission", "target"], sort=True):
        by = {r["metric"]: r for r in g.to_dict("records")}
        if ERASURE_METRIC not in by or not any(m in by for m in RETENTION_METRICS):
            continue
        kind = by[ERASURE_METRIC]["target_kind"]
        for who, col in (("unlearned", "value"), ("base", "base_value")):
            x = finite(_none(by[ERASURE_METRIC][col]))
            ys = [finite(_none(by[m][col])) for m in RETENTION_METRICS if m in by]
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
    ci = lambda m: _none(by[m].get("_ci")) if m in by else None
    x = ci(ERASURE_METRIC)
    ys = [ci(m) for m in RETENTION_METRICS if m in by]
    out = {}
    if x and finite(x.get("low")) is not None and finite(x.get("high")) is not None:
        out["x_ci"] = (x["low"], x["high"])
    if ys and all(y and finite(y.get("low")) is not None and finite(y.get("high")) is not None for y in ys):
        out["y_ci"] = (sum(y["low"] for y in ys) / len(ys), sum(y["high"] for y in ys) / len(ys))
    return out


def error_bar_lines(p: dict, X, Y, colour: str) -> list[str]:
    out = []
    cx, cy = X(p["x"]), Y(p["y"])
    if p.get("x_ci"):
        a, b = X(p["x_ci"][0]), X(p["x_ci"][1])
        out.append(f'<path class="errorbar" d="M{a:.1f} {cy:.1f} H{b:.1f} M{a:.1f} {cy - 4:.1f} V{cy + 4:.1f} M{b:.1f} {cy - 4:.1f} V{cy + 4:.1f}" stroke="{colour}" stroke-width="1.2" fill="none"/>')
    if p.get("y_ci"):
        a, b = Y(p["y_ci"][0]), Y(p["y_ci"][1])
        out.append(f'<path class="errorbar" d="M{cx:.1f} {a:.1f} V{b:.1f} M{cx - 4:.1f} {a:.1f} H{cx + 4:.1f} M{cx - 4:.1f} {b:.1f} H{cx + 4:.1f}" stroke="{colour}" stroke-width="1.2" fill="none"/>')
    return out


KIND_COLOURS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed"]


def tradeoff_svg(points: list[dict], title: str = "Erasure vs retention") -> str:
    """A self-contained SVG scatter plot (every label escaped): x = UA (erasure), y = mean of
    IRA and CRA (retention); coincident points share one marker and a stacked label."""
    e = lambda s: html.escape(str(s), quote=True)
    W, H = 760, 480
    L, R, T, B = 64, 150, 44, 56
    pw, ph = W - L - R, H - T - B
    # y (retention) zooms to the points' range: the interesting differences are often small
    ymin = min([p["y"] for p in points] or [0.0])
    lo = max(0.0, math.floor((ymin - 0.02) * 10) / 10)
    span = 1.0 - lo
    ystep = 0.05 if span <= 0.2 + 1e-9 else 0.1 if span <= 0.5 + 1e-9 else 0.2
    pad = 12  # points on the edges (UA 0 or 1) stay inside the frame
    X = lambda x: L + pad + max(0.0, min(1.0, x)) * (pw - 2 * pad)
    Y = lambda y: T + pad + (1 - (max(lo, min(1.0, y)) - lo) / span) * (ph - 2 * pad)
    kinds = sorted({p["kind"] for p in points if not p["base"]})
    colour = {k: KIND_COLOURS[i % len(KIND_COLOURS)] for i, k in enumerate(kinds)}
    ret = sorted({m for p in points for m in p["retention"]}) or list(RETENTION_METRICS)
    ylabel = f"retention: mean({', '.join(m.upper() for m in ret)})"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-labelledby="tradeoff-title" class="tradeoff" font-family="system-ui, sans-serif" font-size="12">',
           f'<title id="tradeoff-title">{e(title)}: {ERASURE_METRIC.upper()} against {e(ylabel)}, one point per submission and target</title>',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
           f'<text x="{L + pw}" y="{T - 16}" text-anchor="end" fill="#047857" font-size="11">better ↗</text>']
    for i in range(6):
        v = i / 5
        out.append(f'<line x1="{X(v):.1f}" y1="{T}" x2="{X(v):.1f}" y2="{T + ph}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{X(v):.1f}" y="{T + ph + 16}" text-anchor="middle" fill="#4b5563">{v:.1f}</text>')
    n_y = round(span / ystep)
    for i in range(n_y + 1):
        v = lo + i * ystep
        out.append(f'<line x1="{L}" y1="{Y(v):.1f}" x2="{L + pw}" y2="{Y(v):.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{L - 8}" y="{Y(v) + 4:.1f}" text-anchor="end" fill="#4b5563">{v:.2f}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#9ca3af"/>')
    out.append(f'<text x="{L + pw / 2:.1f}" y="{H - 16}" text-anchor="middle" fill="#111827">erasure: {e(ERASURE_METRIC.upper())} (unlearning accuracy) →</text>')
    out.append(f'<text transform="translate(18 {T + ph / 2:.1f}) rotate(-90)" text-anchor="middle" fill="#111827">{e(ylabel)} →</text>')
    out.append(f'<text x="{L}" y="{T - 16}" fill="#111827" font-size="14" font-weight="600">{e(title)}</text>')
    # group coincident points
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((round(X(p["x"])), round(Y(p["y"]))), []).append(p)
    labels = []
    for (gx, gy), ps in sorted(groups.items()):
        kinds_here = " ".join(sorted({p["kind"] for p in ps}))
        tip = "; ".join(f"{p['submission']} · {p['target']} ({p['suite']}): {ERASURE_METRIC.upper()} {p['x']:.3f}, retention {p['y']:.3f}" for p in ps)
        out.append(f'<g class="point" data-kind="{e(kinds_here)}"><title>{e(tip)}</title>')
        for p in ps:
            cx, cy = X(p["x"]), Y(p["y"])
            if p["base"]:
                out.append(f'<path d="M{cx:.1f} {cy - 7:.1f} L{cx + 7:.1f} {cy:.1f} L{cx:.1f} {cy + 7:.1f} L{cx - 7:.1f} {cy:.1f} Z" fill="none" stroke="#374151" stroke-width="1.5" data-kind="{e(p["kind"])}"/>')
            else:
                out.extend(error_bar_lines(p, X, Y, colour[p["kind"]]))
                out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5.5" fill="{colour[p["kind"]]}" fill-opacity="0.85" stroke="#ffffff" data-kind="{e(p["kind"])}"/>')
        out.append("</g>")
        for p in ps:
            labels.append({"x": gx, "y": gy, "text": f"{p['submission']} · {p['target']}", "kind": p["kind"], "base": p["base"]})
    # labels to the right of the plot area's points; stacked and pushed apart vertically
    placed: list[dict] = []
    for lab in sorted(labels, key=lambda d: (d["y"], d["x"], d["text"])):
        right = lab["x"] < L + pw * 0.55
        lab["anchor"] = "start" if right else "end"
        lab["tx"] = lab["x"] + 10 if right else lab["x"] - 10
        ty = lab["y"] + 4
        for q in placed:
            if q["anchor"] == lab["anchor"] and abs(q["tx"] - lab["tx"]) < 160 and abs(q["ty"] - ty) < 14:
                ty = q["ty"] + 14
        lab["ty"] = ty
        placed.append(lab)
    for lab in placed:
        fill = "#374151" if lab["base"] else colour.get(lab["kind"], "#111827")
        if abs(lab["ty"] - 4 - lab["y"]) > 6:  # pushed away from its point: a leader line
            out.append(f'<line x1="{lab["x"]:.1f}" y1="{lab["y"]:.1f}" x2="{lab["tx"] + (-3 if lab["anchor"] == "start" else 3):.1f}" y2="{lab["ty"] - 4:.1f}" stroke="#9ca3af" stroke-width="0.8" data-kind="{e(lab["kind"])}"/>')
        out.append(f'<text x="{lab["tx"]:.1f}" y="{lab["ty"]:.1f}" text-anchor="{lab["anchor"]}" fill="{fill}" data-kind="{e(lab["kind"])}" class="label">{e(lab["text"])}</text>')
    # legend
    lx, ly = L + pw + 20, T + 8
    out.append(f'<text x="{lx}" y="{ly}" fill="#111827" font-weight="600">target kind</text>')
    for i, k in enumerate(kinds):
        out.append(f'<circle cx="{lx + 6}" cy="{ly + 18 + i * 18}" r="5.5" fill="{colour[k]}"/><text x="{lx + 18}" y="{ly + 22 + i * 18}" fill="#111827">{e(k)}</text>')
    by = ly + 18 + len(kinds) * 18
    out.append(f'<path d="M{lx + 6} {by - 7} L{lx + 13} {by} L{lx + 6} {by + 7} L{lx - 1} {by} Z" fill="none" stroke="#374151" stroke-width="1.5"/><text x="{lx + 18}" y="{by + 4}" fill="#111827">base model</text>')
    if not points:
        out.append(f'<text x="{L + pw / 2:.1f}" y="{T + ph / 2:.1f}" text-anchor="middle" fill="#6b7280">no {e(ERASURE_METRIC.upper())} / retention records</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- images
@dataclass
class ImageState:
    ok: set[str] = field(default_factory=set)
    bad: dict[str, str] = field(default_factory=dict)  # sha -> why


def copy_images(runs: list[Run], src: Path | None, dst: Path, report: Report) -> ImageState:
    """Copy every sample image the given runs name from ``src/<sha256>.png`` to
    ``dst/<sha256>.png``, only when its bytes hash to the name and it is a PNG."""
    st = ImageState()
    for run in runs:
        for s in run.data["suites"]:
            for smp in s.get("samples", []):
                for side in ("base", "unlearned"):
                    sha = smp[side]
                    if sha in st.ok or sha in st.bad:
                        continue
                    why = _check_image(src, sha)
                    if why:
                        st.bad[sha] = why
                        report(f"image unavailable: {run.file}: suite {one_line(s['id'])}: {side} image of {one_line(smp['prompt'])!r} seed {smp['seed']}: {why}")
                        continue
                    dst.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / f"{sha}.png", dst / f"{sha}.png")
                    st.ok.add(sha)
    return st


def _check_image(src: Path | None, sha: str) -> str | None:
    if src is None:
        return "the images folder is a symbolic link (not followed)"
    if not SHA256_RE.match(sha):
        return "not a sha256"
    p = src / f"{sha}.png"
    if p.is_symlink() or not p.is_file():
        return f"no file images/{sha}.png"
    data = p.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        return f"images/{sha}.png has sha256 {got}"
    if not data.startswith(PNG_MAGIC):
        return "not a PNG"
    return None


# ----------------------------------------------------------------------------- pages
def _env(templates: Path):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["short"] = short
    env.filters["threshold"] = pretty_threshold
    env.filters["tojson_text"] = lambda x: json.dumps(x, sort_keys=True, default=str)
    return env


def submission_page(run: Run, others: list[Run], df, images: ImageState) -> dict:
    """The context of one submission's page (its latest run)."""
    d = run.data
    sub = d["submission"]
    method, ck = sub["method"], sub["checkpoint"]
    g = df[df["_run"] == run.id]
    recs = []
    for r in g.to_dict("records"):
        recs.append({**{k: _none(v) for k, v in r.items() if not k.startswith("_")}, "threshold": pretty_threshold(_none(r["threshold"])),
                     "value_cell": _num_cell(r["value"]), "base_cell": _num_cell(r["base_value"]), "bound_cell": _num_cell(r["bound"]),
                     "ci": ci_text(_none(r["_ci"])), "ci_title": ci_title(r), "delta": delta_text(_none(r["_delta_ci"]), _none(r["value"]), _none(r["base_value"]))})
    # sample grids: suites with the same pairs share one grid
    grids: list[dict] = []
    for s in d["suites"]:
        samples = s.get("samples") or []
        if not samples:
            continue
        key = [(x["prompt"], x["seed"], x["base"], x["unlearned"]) for x in samples]
        for gr in grids:
            if gr["key"] == key:
                gr["suites"].append(s["id"])
                break
        else:
            pairs = []
            for x in samples:
                pairs.append({"prompt": x["prompt"], "seed": x["seed"], "target": bool(x.get("target")),  # the harness's own rule
                              "base": x["base"] if x["base"] in images.ok else None, "unlearned": x["unlearned"] if x["unlearned"] in images.ok else None})
            grids.append({"key": key, "suites": [s["id"]], "pairs": pairs})
    suites = [suite_meta(s) for s in d["suites"]]
    eff = []
    for k, v in (d.get("efficiency") or {}).items():
        if isinstance(v, dict):
            eff.append({"key": k, "value": v.get("value"), "source": v.get("source"), "how": v.get("how"), "device": v.get("device")})
        else:
            eff.append({"key": k, "value": v, "source": None, "how": None, "device": None})
    env = d.get("environment") or {}
    libs = env.get("libraries") if isinstance(env.get("libraries"), dict) else {}
    counts = {v: sum(1 for r in recs if r["verdict"] == v) for v in VERDICTS}
    return {
        "name": sub["name"], "slug": slug(sub["name"]), "run": run, "records": recs, "counts": counts,
        "method": method, "params": method.get("params") or {}, "authors": method.get("authors") or [],
        "license": method.get("license"),
        "paper": {"text": method.get("paper_url"), "href": safe_url(method.get("paper_url"))},
        "code": {"text": method.get("code_url"), "href": safe_url(method.get("code_url"))},
        "checkpoint": {"kind": ck.get("kind"), "path": ck.get("path"), "url": ck.get("url"), "href": safe_url(ck.get("url")), "sha256": ck.get("sha256")},
        "base_model": sub.get("base_model") or {}, "targets": sub["targets"],
        "harness": d["harness"], "started": d.get("started"), "finished": d.get("finished"), "complete": d.get("complete", True),
        "file": sub.get("file"), "file_sha256": sub.get("file_sha256"),
        "platform": env.get("platform"), "devices": env.get("device") or [], "libraries": libs,
        "efficiency": eff, "suites": suites, "grids": grids,
        "others": [{"file": o.file, "finished": o.finished, "git_sha": o.data["harness"].get("git_sha"), "complete": o.data.get("complete", True),
                    "summary": {v: sum(1 for m in o.data["metrics"] if m["verdict"] == v) for v in VERDICTS}, "current": o is run}
                   for o in sorted(others, key=lambda o: (o.finished, o.file), reverse=True)],
    }


def _records_json(df) -> list[dict]:
    out = []
    for r in df.to_dict("records"):
        rec = {k: _json_value(_none(r[k])) for k in RECORD_COLUMNS}
        rec["details"] = _json_value(_none(r["_details"]))
        out.append(rec)
    return out


def _csv_text(text: str) -> str:
    """Text from a submission, made inert for spreadsheets: a cell starting with = + - @ or a
    tab / carriage return would be read as a formula (CSV injection), so it gets a leading '."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _records_csv(df) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RECORD_COLUMNS)
    for r in df.to_dict("records"):
        row = []
        for k in RECORD_COLUMNS:
            v = _none(r[k])
            row.append("" if v is None else repr(v) if isinstance(v, float) else _csv_text(str(v)) if isinstance(v, str) else str(v))
        w.writerow(row)
    return buf.getvalue()


def _check_out(out: Path) -> None:
    """``out`` must be absent, empty or a site this module built (it is replaced at the end)."""
    if out.exists():
        if not out.is_dir():
            raise HarnessError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise HarnessError(f"--out {out}: not empty and not a site built by `unlearn leaderboard build` (no {MARKER}); choose an empty or new folder")


def _prepare_out(out: Path) -> Path:
    """A fresh temp folder beside ``out``, renamed to ``out`` when the build is complete."""
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    from .fsutil import default_mode

    os.chmod(tmp, default_mode(folder=True))  # mkdtemp makes 0700: a web server as another user could not read the site
    return tmp


def is_smoke(data: dict) -> bool:
    """A smoke run (``--unlearn-smoke``: each suite's small subset): the run says so, or one of
    its suites does (results written before the run-level field)."""
    return data.get("smoke") is True or any(isinstance(s, dict) and s.get("smoke") is True for s in data.get("suites", []))


def build(results: str | Path, out: str | Path, report: Report = _stderr, assets: Path = ASSETS, include_smoke: bool = False,
          require_attestation: bool = False) -> dict:
    """Build the site from the results folder into ``out``; returns counts of what was written.
    Bad files and images are reported and skipped; a bad folder argument is a HarnessError.

    Smoke runs are a different run (a subset of each suite): they are left out, each reported on
    stderr, unless ``include_smoke``, and then shown apart, in their own tables marked smoke,
    never ranked with full runs or chosen as a submission's latest run."""
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise HarnessError(f"--results {results}: no such folder")
    if not (assets / "templates" / "index.html").is_file():
        raise HarnessError(f"leaderboard templates not found in {assets / 'templates'} (run from a checkout: pip install -e .)")
    _check_out(out)
    runs = load_runs(results, report, require_attestation)
    smoke = [r for r in runs if is_smoke(r.data)]
    runs = [r for r in runs if not is_smoke(r.data)]
    if not include_smoke:
        for r in smoke:
            report(f"left out {r.file}: a smoke run (a subset of each suite; --include-smoke shows smoke runs apart)")
        smoke = []
    if not runs and not smoke:
        what = "only smoke runs there (--include-smoke shows them)" if any(is_smoke(r.data) for r in load_runs(results, lambda m: None)) else "no valid results file (*.json) there"
        raise HarnessError(f"--results {results}: {what}")
    df, latest = records_frame(runs)  # full runs only: tables, overview, trade-off, latest
    all_df, smoke_tables, full_latest = df, [], dict(latest)
    if smoke:
        import pandas as pd

        sdf, slatest = records_frame(smoke)
        smoke_tables = suite_tables(sdf, slatest)
        for t in smoke_tables:
            t["smoke_of"], t["id"] = t["id"], f"{t['id']}-smoke"
        all_df = pd.concat([df, sdf], ignore_index=True) if len(df) else sdf
        latest = {**slatest, **latest}  # a submission's page shows its full run when it has one
        runs = runs + smoke
    tmp = _prepare_out(out)
    try:
        images = copy_images(list(latest.values()), _images_dir(results, report), tmp / "images", report)
        env = _env(assets / "templates")
        points = tradeoff_points(df)
        svg = tradeoff_svg(points)
        (tmp / "tradeoff.svg").write_text(svg, encoding="utf-8")
        from .leaderboard_asr import asr_curve_svg, curves  # robustness: ASR against attack budget

        asr_svg = asr_curve_svg(curves(df))  # inline on the index page, one panel per suite
        tables = [{**t, "smoke_of": None} for t in suite_tables(df, latest)] + smoke_tables
        kinds = sorted(set(all_df[all_df["latest"]]["target_kind"]))
        n_records = len(all_df)
        ctx = {"root": "", "tables": tables, "overview": overview_rows(df, full_latest), "kinds": kinds,
               "svg": _markup(svg[svg.index("<svg"):]), "has_points": bool(points), "asr_svg": _markup(asr_svg), "n_files": len(runs), "n_records": n_records,
               "n_submissions": len(full_latest), "skipped_images": len(images.bad)}
        (tmp / "index.html").write_text(env.get_template("index.html").render(**ctx), encoding="utf-8")
        (tmp / "submissions").mkdir()
        by_name: dict[str, list[Run]] = {}
        for r in runs:
            by_name.setdefault(r.name, []).append(r)
        page = env.get_template("submission.html")
        for name, run in latest.items():
            pctx = submission_page(run, by_name[name], all_df, images)
            (tmp / "submissions" / f"{pctx['slug']}.html").write_text(page.render(root="../", p=pctx, kinds=kinds), encoding="utf-8")
        shutil.copytree(assets / "static", tmp / "static")
        payload = {"format": "unlearn-leaderboard-records/1", "files": [{"file": r.file, "submission": r.name, "finished": r.finished,
                   "latest": latest[r.name] is r, "schema_version": r.data["schema_version"]} for r in runs], "records": _records_json(all_df)}
        (tmp / "results.json").write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        (tmp / "results.csv").write_text(_records_csv(all_df), encoding="utf-8")
        (tmp / MARKER).write_text("built by unlearn leaderboard build; this folder is replaced by the next build\n")
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"files": len(runs), "submissions": len(latest), "records": n_records, "suites": len(tables),
            "images": len(images.ok), "images_unavailable": len(images.bad)}


def _images_dir(results: Path, report: Report) -> Path | None:
    """``results/images``, unless it is a symbolic link (or resolves outside ``results``): then
    an empty stand-in, so nothing outside the results folder is read."""
    d = results / "images"
    if d.is_symlink() or (d.exists() and not d.resolve().is_relative_to(results.resolve())):
        report(f"skipped {d}: a symbolic link (images are read from inside the results folder only)")
        return None
    return d


def swap_in(tmp: Path, out: Path) -> None:
    """Replace the site ``out`` with the finished build ``tmp`` so that a kill at any moment
    leaves a whole site (the old or the new) or none, never half of one: the old site is renamed
    aside, the new one renamed in, then the old one deleted. Asides left by an earlier kill are
    deleted first (they carry the marker; nothing else is touched)."""
    for stale in out.parent.glob(f".{out.name}.*.old"):
        if (stale / MARKER).is_file():
            shutil.rmtree(stale, ignore_errors=True)
    aside = None
    if out.exists():
        aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, aside)  # aside is an empty folder: replace() onto it is a rename
    os.replace(tmp, out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _markup(s: str):
    from markupsafe import Markup

    return Markup(s)  # noqa: S704 - built by tradeoff_svg, every label escaped there


# ----------------------------------------------------------------------------- refresh
def _cache_index(cache_images: Path, wanted: set[str]) -> dict[str, Path]:
    """png sha256 -> cached PNG path, from the image cache's sidecars (only the wanted ones)."""
    found: dict[str, Path] = {}
    if not cache_images.is_dir():
        return found
    for side in cache_images.glob("*/*.json"):
        try:
            sha = json.loads(side.read_text()).get("png_sha256")
        except (OSError, ValueError):
            continue
        if sha in wanted and sha not in found:
            found[sha] = side.with_suffix(".png")
    return found


def export_images(result_files: list[Path], cache: Path, out_images: Path, report: Report = _stderr) -> dict:
    """Copy the sample PNGs the results name from the image cache to ``out_images/<sha256>.png``
    (checked against the sha256), then drop PNGs there that no results file names any more."""
    wanted: dict[str, str] = {}
    for f in result_files:
        data = json.loads(f.read_text())
        for s in data.get("suites", []):
            for smp in s.get("samples", []):
                for side in ("base", "unlearned"):
                    if SHA256_RE.match(str(smp.get(side))):
                        wanted.setdefault(smp[side], f"{data['submission']['name']} {s['id']} {smp['prompt']!r} seed {smp['seed']} ({side})")
    out_images.mkdir(parents=True, exist_ok=True)
    have = {sha for sha in wanted if _check_image(out_images, sha) is None}
    index = _cache_index(cache / "images", set(wanted) - have)
    copied = missing = 0
    for sha, what in sorted(wanted.items()):
        if sha in have:
            continue
        src = index.get(sha)
        data = src.read_bytes() if src and src.is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            missing += 1
            report(f"image {sha} of {what}: not in the image cache {cache} (or damaged)")
            continue
        tmp = out_images / f".{sha}.png.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out_images / f"{sha}.png")
        copied += 1
    pruned = 0
    for p in out_images.glob("*.png"):
        if SHA256_RE.match(p.stem) and p.stem not in wanted:
            p.unlink()
            pruned += 1
    return {"referenced": len(wanted), "copied": copied, "kept": len(have), "missing": missing, "pruned": pruned}


def refresh(submissions: list[str], out: str | Path, cache: str | Path | None = None, workers: int | None = None,
            root: Path = ROOT, report: Report = _stderr, extra_args: list[str] | None = None, allow_incomplete: bool = False) -> dict:
    """Run the harness on the submissions (one pytest subprocess, the plugin's own collection),
    then copy each results JSON to ``out/<name>.json`` and export its sample images."""
    from .spec import SpecErrors, load_submission

    if not submissions:
        raise HarnessError("--submissions: no submission files given (default: submissions/toy-*.yaml)")
    names = {}
    for s in submissions:
        try:
            names[s] = load_submission(s).name
        except SpecErrors as e:
            raise HarnessError(e.lines[0] + (f" (and {len(e.lines) - 1} more problems)" if len(e.lines) > 1 else "")) from None
    if len(set(names.values())) != len(names):
        raise HarnessError("--submissions: two files give the same submission name")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HarnessError(f"--out {out}: exists and is not a folder")
    cache = cache_dir(root, cache).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="unlearn-refresh-") as tmp:
        rc = run_harness(root, submissions, Path(tmp) / "{submission}.json", cache=cache, workers=workers,
                         extra=extra_args, echo=True)
        if rc not in (0, 1):  # 1: some case failed (a negative control must), which is a result
            raise HarnessError(f"the harness run exited with status {rc} (see its output above); nothing was copied")
        written = []
        for s, name in names.items():
            src = Path(tmp) / f"{name}.json"
            if not src.is_file():
                raise HarnessError(f"{s}: the harness wrote no results file for {name!r}")
            try:
                data = read_result(src)
            except ValueError as e:
                raise HarnessError(f"{s}: the harness's results file is not valid: {one_line(e)}") from None
            if not data.get("complete", True) and not allow_incomplete:
                # an incomplete baseline would weaken the regression gate (its missing metrics are never compared)
                raise HarnessError(f"{s}: the run is incomplete (complete: false); nothing was copied (--allow-incomplete to copy it anyway)")
            written.append((src, out / f"{name}.json"))
        for src, dst in written:  # only once every run is checked: all or nothing
            shutil.copyfile(src, dst)
        written = [dst for _, dst in written]
    from .attest import write_manifest
    from .resultfile import results_files

    write_manifest(out, "unlearn leaderboard refresh")  # these files were just made by the harness
    all_results = []
    for p in results_files(out):  # as build reads them
        try:
            read_result(p)
            all_results.append(p)
        except (ValueError, OSError) as e:
            report(f"skipped {p}: {one_line(e)}")
    img = export_images(all_results, cache, out / "images", report)
    return {"written": [str(p) for p in written], "images": img, "seconds": round(time.time() - t0, 1)}


def default_submissions(root: Path = ROOT) -> list[str]:
    """The toy submissions: ``submissions/toy-*.yaml`` of the checkout."""
    return [str(p) for p in sorted((root / "submissions").glob("toy-*.yaml"))]
