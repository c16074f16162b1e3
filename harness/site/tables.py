"""The pages' contexts: one table per suite (value / base column groups, the model family column,
base-model reference rows per family, the rank column: ranked within a family), the overview of
submissions and one submission's page (with its method's rows on every model family side by side,
and "n/a" with the reason for a family of the board its method does not run on).
Plain data for the Jinja2 templates (autoescape on), nothing rendered here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.site.aggregate import VERDICTS, headline_metric, method_label, rank_intervals, records_of
from harness.site.load import Run, family_order, family_title, is_smoke, method_key, run_families, run_family, suite_family
from harness.site.text import ci_text, ci_title, delta_text, finite, fmt, na_to_none, pretty_threshold, safe_url, short, slug, spread_text, spread_title

MAX_ROWS = 2000  # rows of one table on a page (every record is in results.csv / results.json)
GENERATION_KEYS = ("scheduler", "steps", "guidance", "height", "width", "eta", "batch_size", "negative_prompt")


def suite_tables(df, latest: dict[str, Run]) -> list[dict]:
    """One table per suite (sorted by id) over each submission's latest run: rows of
    (submission, target), grouped by model family, a value / base column group per metric,
    base-model reference rows (one per base family present)."""
    cur = df[df["latest"]]
    back = reversed_notes(cur)
    tables = []
    for sid in sorted(cur["suite"].unique()):
        sdf = cur[cur["suite"] == sid]
        metrics = []
        for key, g in sdf.groupby("metric", sort=False):
            first = g.iloc[0]
            metrics.append({"key": key, "label": first["label"], "threshold": pretty_threshold(na_to_none(first["threshold"])),
                            "higher_is_better": na_to_none(first["higher_is_better"])})
        all_recs = records_of(sdf)  # grouped in Python: one pandas group per row costs ~1 ms (100,000 targets: minutes)
        recs = {(r["submission"], r["target"], r["metric"]): r for r in all_recs}
        by_row: dict[tuple, list[dict]] = {}
        for r in all_recs:
            by_row.setdefault((r["submission"], r["target"]), []).append(r)
        fam = {k: g[0]["family"] for k, g in by_row.items()}
        keys = sorted(by_row, key=lambda k: (family_order(fam[k]), k))
        left_out = max(0, len(keys) - MAX_ROWS)  # a page of 100,000 rows is no table: the first rows, and every record in results.csv
        keys = keys[:MAX_ROWS]
        rows = []
        for (name, target) in keys:
            g = by_row[(name, target)]
            first = g[0]
            cells = [_cell(recs.get((name, target, m["key"])), back.get((name, target)) if _erasure(m["key"]) else None) for m in metrics]
            bases = [_num_cell(recs[(name, target, m["key"])]["base_value"]) if (name, target, m["key"]) in recs else _num_cell(None) for m in metrics]
            checked = [r for r in g if r["verdict"] in ("pass", "fail", "error")]
            passed = sum(r["verdict"] == "pass" for r in checked)
            rows.append({"submission": name, "page": f"submissions/{slug(name)}.html", "method": first["method"],
                         "family": first["family"], "family_title": family_title(first["family"]), "target": target, "kind": first["target_kind"], "cells": list(zip(cells, bases)),
                         "checks": {"text": f"{passed} / {len(checked)}" if checked else "–",
                                    "sort": repr(passed / len(checked)) if checked else "", "all": bool(checked) and passed == len(checked)}})
        shown = {t for _, t in keys}
        srecs = [r for r in all_recs if r["target"] in shown] if left_out else all_recs
        suite_rec = next((s for run in latest.values() for s in run.data["suites"] if s["id"] == sid), {})
        tables.append({"id": sid, "metrics": metrics, "rows": rows, "base_rows": _base_rows(srecs, metrics, latest, sid),
                       "suite": suite_meta(suite_rec), "kinds": sorted(set(sdf["target_kind"])), "rows_left_out": left_out,
                       "families": [{"name": f, "title": family_title(f)} for f in sorted(set(sdf["family"]), key=family_order)]})
        attach_ranks(tables[-1], sdf, metrics, srecs)
    return tables


def attach_ranks(table: dict, sdf, metrics: list[dict], recs_of_rows: list[dict] | None = None) -> None:
    """Rank interval of each row's headline metric, among the rows of the same model family and
    target: an SDXL submission is never ranked against an SD-1.x one (``recs_of_rows``: the
    records of the targets shown, default every record of ``sdf``)."""
    key = headline_metric(metrics, sdf)
    table["headline"] = next((m for m in metrics if m["key"] == key), None)
    every = records_of(sdf) if recs_of_rows is None else recs_of_rows
    recs = {(r["submission"], r["target"]): r for r in every if r["metric"] == key} if key else {}
    by_target: dict[tuple[str, str], list[dict]] = {}  # (family, target): the rows ranked together
    for (name, target), r in recs.items():
        if finite(na_to_none(r["value"])) is not None:
            by_target.setdefault((r["family"], target), []).append({"key": name, "value": float(r["value"]), "ci": na_to_none(r["_ci"]), "scores": na_to_none(r["_scores"])})
    ranks = {}
    for (_, target), entries in by_target.items():
        hib = na_to_none(table["headline"]["higher_is_better"]) if table["headline"] else True
        for r in rank_intervals(sorted(entries, key=lambda e: e["key"]), True if hib is None else bool(hib)):
            ranks[(r["key"], target)] = r
    for row in table["rows"]:
        r = ranks.get((row["submission"], row["target"]))
        if r is None:
            row["rank"] = {"text": "–", "sort": "", "title": "no value", "tied": False}
            continue
        span = f"{r['low']}" if r["low"] == r["high"] else f"{r['low']}–{r['high']}"
        row["rank"] = {"text": f"{r['rank']} [{span}]", "sort": repr(r["rank"] + (r["high"] - r["low"]) / 100), "tied": bool(r["tied_with"]),
                       "title": (f"95% rank interval {span} ({r['method']})" if r["method"] else "no intervals: rank of the point values")
                       + (f"; tied with {', '.join(r['tied_with'])}" if r["tied_with"] else "; resolved")}


def reversed_notes(cur) -> dict[tuple[str, str], str]:
    """(submission, target) -> the attacks that reversed that erasure (``metrics.robustness.reversals``
    over the submission's latest records), shown beside its erasure verdicts (UA)."""
    from harness.metrics.robustness import reversals

    out = {}
    for name, g in cur.groupby("submission", sort=True):
        recs = [{"metric": r["metric"], "target": r["target"], "value": na_to_none(r["value"]), "details": na_to_none(r["_details"]),
                 "label": r["label"], "verdict": r["verdict"]} for r in g.to_dict("records")]
        for target, notes in reversals(recs).items():
            out[(name, target)] = "; ".join(notes)
    return out


def _erasure(metric: str) -> bool:
    from harness.metrics import info, known_metrics

    return metric in known_metrics() and info(metric).role == "erasure"


def _cell(rec: dict | None, reversed_by: str | None = None) -> dict:
    if rec is None:
        return {"text": "–", "sort": "", "verdict": None, "title": "no record", "ci": "", "delta": "", "spread": "", "spread_title": "", "reversed": ""}
    v = finite(na_to_none(rec["value"]))
    title = rec.get("error") or ""
    return {"text": fmt(na_to_none(rec["value"])), "sort": "" if v is None else repr(v), "verdict": rec["verdict"], "title": na_to_none(title) or ci_title(rec),
            "ci": ci_text(na_to_none(rec.get("_ci"))) or reason_tag(rec), "delta": delta_text(na_to_none(rec.get("_delta_ci")), na_to_none(rec["value"]), na_to_none(rec["base_value"])),
            "spread": spread_text(na_to_none(rec.get("_spread"))), "spread_title": spread_title(na_to_none(rec.get("_spread"))),
            "reversed": reversed_by or ""}


def reason_tag(rec: dict) -> str:
    """A value without an interval says why in the interval's place: ``(single run)``,
    ``(exact)``, ``(declared)`` (the tag of its ``ci_reason``; '' when the file gives none)."""
    from harness.stats.intervals import short_reason

    why = na_to_none(rec.get("_ci_reason"))
    return f"({short_reason(why)})" if why and finite(na_to_none(rec.get("value"))) is not None else ""


def _num_cell(x: Any) -> dict:
    x = na_to_none(x)
    v = finite(x)
    return {"text": fmt(x), "sort": "" if v is None else repr(v)}


def _base_rows(srecs: list[dict], metrics: list[dict], latest: dict[str, Run], sid: str) -> list[dict]:
    """The base model's value of each metric, per (model family, base model, target), as every
    record carries it: one reference row per base family present (more where a family has several
    bases). Where the submissions' runs disagree (e.g. an attack that depends on the unlearned
    model) the range is shown."""
    base_of = {}
    for name, run in latest.items():
        for s in run.data["suites"]:
            if s["id"] == sid:
                base_of[name] = str((s.get("models") or {}).get("base") or "")
    out = []
    keyed: dict[tuple[str, str, str, str], list] = {}
    for r in srecs:
        keyed.setdefault((r["family"], base_of.get(r["submission"], ""), r["target"], r["target_kind"]), []).append(r)
    many_families = len({k[0] for k in keyed}) > 1
    bases_of: dict[str, set[str]] = {}
    for k in keyed:
        bases_of.setdefault(k[0], set()).add(k[1])
    for (family, fp, target, kind), recs in sorted(keyed.items(), key=lambda kv: (family_order(kv[0][0]), kv[0])):
        cells = []
        for m in metrics:
            vals = sorted({finite(na_to_none(r["base_value"])) for r in recs if r["metric"] == m["key"]} - {None})
            if not vals:
                cells.append({"text": "–", "title": "no base value (the metric is about the submission alone)"})
            elif vals[-1] - vals[0] <= 1e-9 * max(1.0, abs(vals[-1])):
                cells.append({"text": fmt(vals[0]), "title": ""})
            else:
                cells.append({"text": f"{fmt(vals[0])}–{fmt(vals[-1])}", "title": "the base value differs between submissions' runs (it depends on the unlearned model, e.g. an attack)"})
        label = "base model" + (f" ({family_title(family)})" if many_families else "") + (f" ({short(fp, 20)})" if len(bases_of[family]) > 1 else "")
        out.append({"label": label, "fingerprint": fp, "family": family, "family_title": family_title(family), "target": target, "kind": kind, "cells": cells})
    return out


# The index's one-glance table (UnlearnCanvas' Table 3 shape): these metrics, in this order, by
# target kind, where some latest run has them; any other erasure metric present is added
GLANCE_METRICS = ("ua", "ira", "cra", "fid", "integrity", "ccs_forget", "pre_asr", "asr", "ti_asr")
GLANCE_ROLES = {"erasure": "Erasure", "retention": "Retention", "quality": "Quality", "robustness": "Robustness", "efficiency": "Efficiency"}


def glance_table(df) -> dict:
    """One row per method and model family (every submission of it, latest runs: the control's
    rows too), one column per metric and target kind: the value of the newest run that has it,
    its verdict's colour, the submission, interval and suite in its title. Columns are grouped
    by the metric's role (erasure, retention, quality, robustness)."""
    cur = df[df["latest"]]
    if not len(cur):
        return {"groups": [], "columns": [], "rows": []}
    from harness.metrics import info, known_metrics

    present = set(cur["metric"])
    names = list(GLANCE_METRICS) + sorted(m for m in present - set(GLANCE_METRICS) if m in known_metrics() and info(m).role == "erasure")
    recs = [r for r in records_of(cur) if r["metric"] in names]
    kinds = sorted({r["target_kind"] for r in recs})
    columns = []
    for m in names:
        role = info(m).role if m in known_metrics() else "retention"
        for k in kinds:
            have = [r for r in recs if r["metric"] == m and r["target_kind"] == k]
            if have:
                columns.append({"metric": m, "kind": k, "label": have[0]["label"], "role": role, "group": GLANCE_ROLES.get(role, role)})
    columns.sort(key=lambda c: list(GLANCE_ROLES).index(c["role"]) if c["role"] in GLANCE_ROLES else len(GLANCE_ROLES))
    groups: list[dict] = []
    for c in columns:
        if groups and groups[-1]["title"] == c["group"]:
            groups[-1]["span"] += 1
        else:
            groups.append({"title": c["group"], "span": 1})
    by_row: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
    for r in sorted(recs, key=lambda r: (str(r["run_finished"]), r["submission"])):  # the newest run's record last: it wins
        by_row.setdefault((r["family"], r["method"]), {})[(r["metric"], r["target_kind"])] = r
    rows = []
    for (fam, method), cells in sorted(by_row.items(), key=lambda kv: (family_order(kv[0][0]), not kv[0][1].startswith("none"), kv[0][1])):
        row_cells = []
        for c in columns:
            rec = cells.get((c["metric"], c["kind"]))
            cell = _cell(rec)
            if rec is not None:
                cell["title"] = f"{rec['submission']}, {rec['suite']}: {cell['text']} {cell['ci']}".strip()
            row_cells.append(cell)
        rows.append({"method": method, "family": fam, "family_title": family_title(fam), "cells": row_cells})
    return {"groups": groups, "columns": columns, "rows": rows}


def overview_rows(df, latest: dict[str, Run]) -> list[dict]:
    cur = df[df["latest"]]
    verdicts: dict[str, list[str]] = {}
    for name, v in zip(cur["submission"], cur["verdict"]):
        verdicts.setdefault(name, []).append(v)
    n_runs: dict[str, int] = {}
    for name in df.drop_duplicates("_run")["submission"]:
        n_runs[name] = n_runs.get(name, 0) + 1
    out = []
    for name, run in sorted(latest.items()):
        counts = {v: verdicts.get(name, []).count(v) for v in VERDICTS}
        sub = run.data["submission"]
        fams = sorted(set(run_families(run.data).values()) or {run_family(run.data)}, key=family_order)
        out.append({"submission": name, "page": f"submissions/{slug(name)}.html", "method": method_label(sub["method"]),
                    "family": " ".join(fams), "families": [{"name": f, "title": family_title(f)} for f in fams],
                    "targets": [{"concept": t["concept"], "kind": t["kind"]} for t in sub["targets"]],
                    "kinds": " ".join(sorted({t["kind"] for t in sub["targets"]})),
                    "counts": counts, "finished": run.finished, "complete": bool(run.data.get("complete", True)),
                    "runs": n_runs.get(name, 0)})
    return out


def generation_seconds(s: dict) -> float | None:
    """Seconds the suite's images took to generate (base + unlearned + attacked, from the image
    sidecars, whenever they were made); None when a results file does not say."""
    imgs = s.get("images") if isinstance(s.get("images"), dict) else {}
    vals = [v.get("generation_seconds") for v in imgs.values() if isinstance(v, dict)]
    if not vals or any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in vals):
        return None
    return float(sum(vals))


def suite_meta(s: dict, data: dict | None = None) -> dict:
    """The fields of a suite record the pages show, every one present (None when absent); with the
    run's ``data``, the suite's model family (``load.suite_family``)."""
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
            "base_model": _base_model(s.get("base_model")),
            "family": suite_family(s, data) if data is not None else None,
            "seconds": s.get("seconds"), "generation_seconds": generation_seconds(s), "error": s.get("error")}


def _base_model(b) -> dict | None:
    """Which base a suite's numbers are against (``suites[].base_model``), as the page shows it:
    the label (200 characters at most) and whether the suite is defined on it (None: older file)."""
    if not isinstance(b, dict):
        return None
    label = b.get("label")
    return {"label": str(label)[:200] if label is not None else None, "suite_base": b.get("suite_base") if isinstance(b.get("suite_base"), bool) else None}


def family_comparison(run: Run, latest: dict[str, Run], df, unsupported: Mapping[str, Mapping[str, str]] | None = None) -> dict | None:
    """The method of ``run`` on every model family it has results for, side by side: a row per
    (target, family, submission) over the latest runs of the submissions of the same method name,
    the metrics (suite, label) as columns; and, with ``unsupported`` (registry method name ->
    {family -> why the method does not run on it}, from ``unlearn leaderboard build``), an "n/a"
    entry with the reason for each family of the board (the latest runs) that the run's registry
    method (``load.method_key``) does not run on and has no results for. None where those runs are
    all of one family and there is no such entry."""
    method = run.data["submission"]["method"]["name"]
    runs = {r.id: r for r in latest.values() if r.data["submission"]["method"]["name"] == method}
    g = df[df["_run"].isin(list(runs))]
    have = set(g["family"])
    na = []
    if unsupported:
        board = set(df[df["_run"].isin([r.id for r in latest.values()])]["family"])
        key = method_key(run.data)
        limits = (unsupported.get(key) or {}) if key is not None else {}
        if len(board) > 1:
            na = [{"family": f, "family_title": family_title(f), "why": str(limits[f] or "")} for f in sorted(set(limits) & (board - have), key=family_order)]
    if len(have) < 2 and not na:
        return None
    recs = records_of(g)
    columns: dict[tuple[str, str], dict] = {}
    by_row: dict[tuple[str, str, str], dict] = {}
    for r in recs:
        columns.setdefault((r["suite"], r["metric"]), {"suite": r["suite"], "metric": r["metric"], "label": r["label"],
                                                       "higher_is_better": na_to_none(r["higher_is_better"])})
        by_row.setdefault((r["target"], r["family"], r["submission"]), {})[(r["suite"], r["metric"])] = r
    suites = sorted({sid for sid, _ in columns})
    cols = [c for sid in suites for c in columns.values() if c["suite"] == sid]  # suites by id, each's metrics in file order
    keys = sorted(by_row, key=lambda k: (k[0], family_order(k[1]), k[2]))
    rows = []
    for target, family, name in keys[:MAX_ROWS]:
        cells = by_row[(target, family, name)]
        first = next(iter(cells.values()))
        rows.append({"submission": name, "page": f"{slug(name)}.html", "current": name == run.name, "smoke": is_smoke(runs[first["_run"]].data),
                     "family": family, "family_title": family_title(family), "target": target, "kind": first["target_kind"],
                     "cells": [_compare_cell(cells.get((c["suite"], c["metric"]))) for c in cols]})
    return {"method": method, "suites": [{"id": sid, "span": sum(c["suite"] == sid for c in cols)} for sid in suites], "columns": cols,
            "rows": rows, "rows_left_out": max(0, len(keys) - MAX_ROWS), "na": na,
            "families": [{"name": f, "title": family_title(f)} for f in sorted(have, key=family_order)]}


def _compare_cell(rec: dict | None) -> dict:
    if rec is None:
        return {"text": "–", "sort": "", "ci": "", "verdict": None, "base": "", "title": "no record"}
    v = finite(na_to_none(rec["value"]))
    return {"text": fmt(na_to_none(rec["value"])), "sort": "" if v is None else repr(v), "ci": ci_text(na_to_none(rec.get("_ci"))),
            "verdict": rec["verdict"], "base": fmt(na_to_none(rec["base_value"])) if finite(na_to_none(rec["base_value"])) is not None else "",
            "title": na_to_none(rec.get("error")) or ci_title(rec)}


def submission_page(run: Run, others: list[Run], df, images_ok: set[str], latest: dict[str, Run] | None = None,
                    unsupported: Mapping[str, Mapping[str, str]] | None = None) -> dict:
    """The context of one submission's page (its latest run); with ``latest`` (each submission's
    latest run), its method's rows on every model family side by side and, with ``unsupported``,
    "n/a" for the board's families its method does not run on (``family_comparison``)."""
    d = run.data
    sub = d["submission"]
    method, ck = sub["method"], sub.get("checkpoint") or {"kind": "none (an inference-time method)"}
    g = df[df["_run"] == run.id]
    left_out = max(0, len(g) - MAX_ROWS)
    back = {t: n for (name, t), n in reversed_notes(g).items()}
    recs = []
    for r in records_of(g.head(MAX_ROWS)):
        recs.append({**{k: na_to_none(v) for k, v in r.items() if not k.startswith("_")}, "threshold": pretty_threshold(na_to_none(r["threshold"])),
                     "value_cell": _num_cell(r["value"]), "base_cell": _num_cell(r["base_value"]), "bound_cell": _num_cell(r["bound"]),
                     "ci": ci_text(na_to_none(r["_ci"])) or reason_tag(r), "ci_title": ci_title(r),
                     "reversed": back.get(r["target"], "") if _erasure(r["metric"]) else "", "delta": delta_text(na_to_none(r["_delta_ci"]), na_to_none(r["value"]), na_to_none(r["base_value"])),
                     "spread": spread_text(na_to_none(r["_spread"])), "spread_title": spread_title(na_to_none(r["_spread"]))})
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
                              "base": x["base"] if x["base"] in images_ok else None, "unlearned": x["unlearned"] if x["unlearned"] in images_ok else None})
            grids.append({"key": key, "suites": [s["id"]], "pairs": pairs})
    suites = [suite_meta(s, d) for s in d["suites"]]
    fams = sorted(set(run_families(d).values()) or {run_family(d)}, key=family_order)
    eff = []
    for k, v in (d.get("efficiency") or {}).items():
        if isinstance(v, dict):
            eff.append({"key": k, "value": v.get("value"), "source": v.get("source"), "how": v.get("how"), "device": v.get("device")})
        else:
            eff.append({"key": k, "value": v, "source": None, "how": None, "device": None})
    env = d.get("environment") or {}
    libs = env.get("libraries") if isinstance(env.get("libraries"), dict) else {}
    counts = {v: int((g["verdict"] == v).sum()) for v in VERDICTS}  # every record of the run, shown or not
    return {
        "name": sub["name"], "slug": slug(sub["name"]), "run": run, "records": recs, "records_left_out": left_out, "counts": counts, "has_spread": any(r["spread"] for r in recs),
        "method": method, "params": method.get("params") or {}, "authors": method.get("authors") or [],
        "license": method.get("license"),
        "paper": {"text": method.get("paper_url"), "href": safe_url(method.get("paper_url"))},
        "code": {"text": method.get("code_url"), "href": safe_url(method.get("code_url"))},
        "checkpoint": {"kind": ck.get("kind"), "path": ck.get("path"), "url": ck.get("url"), "href": safe_url(ck.get("url")), "sha256": ck.get("sha256")},
        "base_model": sub.get("base_model") or {}, "targets": sub["targets"],
        "harness": {"version": None, "git_sha": None, **d["harness"]}, "started": d.get("started"), "finished": d.get("finished"), "complete": d.get("complete", True),
        "file": sub.get("file"), "file_sha256": sub.get("file_sha256"),
        "platform": env.get("platform"), "devices": env.get("device") or [], "libraries": libs,
        "efficiency": eff, "suites": suites, "grids": grids,
        "families": [{"name": f, "title": family_title(f)} for f in fams],
        "across": family_comparison(run, latest, df, unsupported) if latest else None,
        "others": [{"file": o.file, "finished": o.finished, "git_sha": o.data["harness"].get("git_sha"), "complete": o.data.get("complete", True),
                    "summary": {v: sum(1 for m in o.data["metrics"] if m["verdict"] == v) for v in VERDICTS}, "current": o is run}
                   for o in sorted(others, key=lambda o: (o.finished, o.file), reverse=True)],
    }
