"""Writing the site: ``index.html`` (a table per suite, ranked within each model family, the
overview, the trade-off plot, the ASR curves), a page per submission (with its method on every
model family side by side, and "n/a" where it does not run on a family of the board),
``results.json`` / ``results.csv`` (every accepted record) and the checked sample images, into a
temp folder swapped in whole when the build is complete.

Jinja2 renders with autoescape on (submission names come from strangers); CSV cells that a
spreadsheet would read as a formula get a leading quote."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from harness.errors import HarnessError
from harness.site.aggregate import RECORD_COLUMNS, curves, records_frame, records_of, tradeoff_points
from harness.site.figure import asr_curve_svg, markup, tradeoff_svg
from harness.site.images import copy_images, images_dir
from harness.site.load import ROOT, Report, Run, family_title, is_smoke, load_runs, load_spreads, to_stderr
from harness.site.tables import glance_table, overview_rows, submission_page, suite_tables
from harness.site.text import fmt, json_value, na_to_none, pretty_threshold, short

ASSETS = ROOT / "leaderboard"  # templates/ and static/ (resolved from the checkout: pip install -e)
MARKER = ".unlearn-leaderboard"  # marks a folder this module built (and may replace)


def build(results: str | Path, out: str | Path, report: Report = to_stderr, assets: Path = ASSETS, include_smoke: bool = False,
          require_attestation: bool = False, unsupported: Mapping[str, Mapping[str, str]] | None = None) -> dict:
    """Build the site from the results folder into ``out``; returns counts of what was written.
    Bad files and images are reported and skipped; a bad folder argument is a HarnessError.

    ``unsupported``: registry method name -> {model family -> why the method does not run on it}
    (``unlearn leaderboard build`` makes it from the method registry, which this package does not
    import); a submission page then shows "n/a" and the reason for each family of the board its
    run's method (``load.method_key``) does not run on. None: nothing of the kind is shown.

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
    spreads = load_spreads(results, {r.name for r in runs}, report)  # full runs only: a spread is of the whole suite
    df, latest = records_frame(runs, spreads)  # full runs only: tables, overview, trade-off, latest
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
        images = copy_images(list(latest.values()), images_dir(results, report), tmp / "images", report)
        env = _env(assets / "templates")
        points = tradeoff_points(df)
        svg = tradeoff_svg(points)
        (tmp / "tradeoff.svg").write_text(svg, encoding="utf-8")
        asr_svg = asr_curve_svg(curves(df))  # robustness: ASR against budget, inline, one panel per suite
        tables = [{**t, "smoke_of": None} for t in suite_tables(df, latest)] + smoke_tables
        kinds = sorted(set(all_df[all_df["latest"]]["target_kind"]))
        n_records = len(all_df)
        ctx = {"root": "", "tables": tables, "overview": overview_rows(df, full_latest), "glance": glance_table(df), "kinds": kinds,
               "svg": markup(svg[svg.index("<svg"):]), "has_points": bool(points), "asr_svg": markup(asr_svg), "n_files": len(runs), "n_records": n_records,
               "n_submissions": len(full_latest), "skipped_images": len(images.bad), "has_spread": any(c["spread"] for t in tables for r in t["rows"] for c, _ in r["cells"])}
        (tmp / "index.html").write_text(env.get_template("index.html").render(**ctx), encoding="utf-8")
        (tmp / "submissions").mkdir()
        by_name: dict[str, list[Run]] = {}
        for r in runs:
            by_name.setdefault(r.name, []).append(r)
        page = env.get_template("submission.html")
        for name, run in latest.items():
            pctx = submission_page(run, by_name[name], all_df, images.ok, latest, unsupported)
            (tmp / "submissions" / f"{pctx['slug']}.html").write_text(page.render(root="../", p=pctx, kinds=kinds), encoding="utf-8")
        shutil.copytree(assets / "static", tmp / "static")
        payload = {"format": "unlearn-leaderboard-records/1", "files": [{"file": r.file, "submission": r.name, "finished": r.finished,
                   "latest": latest[r.name] is r, "schema_version": r.data["schema_version"]} for r in runs], "records": _records_json(all_df)}
        # one record a line: json's C encoder (indent= falls back to the pure-Python one, ~10x slower on 100,000 records)
        text = json.dumps({k: v for k, v in payload.items() if k != "records"}, allow_nan=False)[:-1]
        body = ",\n".join(json.dumps(r, allow_nan=False) for r in payload["records"])
        (tmp / "results.json").write_text(f'{text}, "records": [\n{body}\n]}}\n', encoding="utf-8")
        (tmp / "results.csv").write_text(_records_csv(all_df), encoding="utf-8")
        (tmp / MARKER).write_text("built by unlearn leaderboard build; this folder is replaced by the next build\n")
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"files": len(runs), "submissions": len(latest), "records": n_records, "suites": len(tables),
            "images": len(images.ok), "images_unavailable": len(images.bad)}


def _env(templates: Path):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["short"] = short
    env.filters["threshold"] = pretty_threshold
    env.filters["family_title"] = family_title
    env.filters["tojson_text"] = lambda x: json.dumps(x, sort_keys=True, default=str)
    return env


def _column(r: dict, k: str):
    v = r[k]
    if v is None or (v.__class__ is float and v != v):  # pandas' gap (NaN) is no value
        return None
    if v.__class__ not in (str, int, float, bool):
        v = na_to_none(v)
    return int(v) if k == "seeds_n" and v is not None else v  # a count (pandas makes a column with gaps float)


def _records_json(df) -> list[dict]:
    out = []
    for r in records_of(df):
        rec = {k: json_value(_column(r, k)) for k in RECORD_COLUMNS}
        rec["details"] = json_value(na_to_none(r["_details"]))
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
    for r in records_of(df):
        row = []
        for k in RECORD_COLUMNS:
            v = _column(r, k)
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
    from harness.store.fsutil import default_mode

    os.chmod(tmp, default_mode(folder=True))  # mkdtemp makes 0700: a web server as another user could not read the site
    return tmp


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
