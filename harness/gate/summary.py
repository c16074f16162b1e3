"""Markdown summary of results JSON files, for a pull request's job summary page
(``unlearn summary results/*.json >> "$GITHUB_STEP_SUMMARY"``).

Submission names and targets come from strangers' pull requests: every cell is escaped for
Markdown and HTML, so a name cannot open a tag, a link or a new table row."""

from __future__ import annotations

import html
import re

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def cell(value) -> str:
    """Text safe inside a Markdown table cell: HTML-escaped, Markdown punctuation
    backslash-escaped, newlines folded."""
    text = " ".join(str(value).split())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=True))


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, (int, float)) else cell(x)


def _interval(m: dict) -> str:
    """The record's 95% interval ``[low, high]``, else the tag of its ``ci_reason`` (``single
    run``, ``exact``, ``declared``), else "-"."""
    import math

    from harness.stats.intervals import short_reason

    ci = m.get("ci")
    if isinstance(ci, dict) and all(isinstance(ci.get(k), (int, float)) and not isinstance(ci.get(k), bool) and math.isfinite(ci[k]) for k in ("low", "high")):
        return f"[{ci['low']:.4g}, {ci['high']:.4g}]"
    return cell(short_reason(m["ci_reason"])) if isinstance(m.get("ci_reason"), str) and m.get("value") is not None else "-"


def is_smoke(result: dict) -> bool:
    """A smoke run: the run says so, or one of its suites does (older results)."""
    return result.get("smoke") is True or any(isinstance(s, dict) and s.get("smoke") is True for s in result.get("suites", []))


def counts(result: dict) -> dict[str, int]:
    """Verdict counts made from the records (never the file's own ``summary``)."""
    out = {v: 0 for v in ("pass", "fail", "inconclusive", "error", "info")}
    for m in result.get("metrics", []):
        v = m.get("verdict") if isinstance(m, dict) else None
        if v in out:
            out[v] += 1
    return out


def name_warning(name, existing) -> str | None:
    """The one name rule (``attest.name_key``): a name that reads as an existing entry's."""
    from harness.results.attest import name_clash

    other = name_clash(str(name), sorted(existing)) if isinstance(name, str) else None
    if other is None:
        return None
    return (f"**Refused name:** {cell(name)} reads as the existing entry {cell(other)} (case, punctuation, look-alike letters): "
            "the leaderboard keeps the existing entry and skips this one")


def markdown(result: dict, source: str, existing=()) -> str:
    sub = result.get("submission", {})
    s = counts(result)
    warn = name_warning(sub.get("name"), existing)
    lines = [
        f"### {cell(sub.get('name', '?'))} ({cell(sub.get('method', {}).get('name', '?'))})",
        "",
        *([warn, ""] if warn else []),
        f"{s.get('pass', 0)} pass, {s.get('fail', 0)} fail, {s.get('inconclusive', 0)} inconclusive, {s.get('error', 0)} error, {s.get('info', 0)} info"
        f"{'' if result.get('complete', True) else ' (incomplete run)'}"
        f"{' (**smoke run**: a subset of each suite, not comparable with full runs)' if is_smoke(result) else ''}; file {cell(source)}",
        "",
        "| suite | metric | target | value | 95% interval | base | threshold | verdict |",
        "|---|---|---|---:|---|---:|---|---|",
    ]
    for m in result.get("metrics", []):
        lines.append("| " + " | ".join([
            cell(m.get("suite", "")), cell(m.get("label", m.get("metric", ""))), cell(m.get("target", "")),
            _num(m.get("value")), _interval(m), _num(m.get("base_value")), cell(m.get("threshold") or "-"),
            cell(str(m.get("verdict", "")).upper()),
        ]) + " |")
    return "\n".join(lines) + "\n"


def side_by_side(results: list[tuple[dict, str]]) -> str:
    """One Markdown table for several results files: a value column per file (with its
    verdict), the change of each later file from the first, and the first file's base value
    and threshold. Rows are every (suite, metric, target) any file has; a file without the row
    shows "-". A mix of smoke and full runs is said above the table (they are not comparable)."""
    names = []
    for i, (r, src) in enumerate(results):
        sub = r.get("submission", {})
        names.append(f"{chr(65 + i) if i < 26 else i}: {cell(sub.get('name', '?'))}{' (smoke)' if is_smoke(r) else ''}")
    keys: list[tuple] = []
    recs: list[dict] = []
    for r, _ in results:
        by = {}
        for m in r.get("metrics", []):
            k = (m.get("suite", ""), m.get("label", m.get("metric", "")), m.get("target", ""))
            by[k] = m
            if k not in keys:
                keys.append(k)
        recs.append(by)
    letters = [n.split(":")[0] for n in names]
    lines = ["### " + " vs ".join(names), ""]
    smokes = {is_smoke(r) for r, _ in results}
    if len(smokes) > 1:
        lines += ["**Warning:** smoke and full runs side by side: a smoke run scores a subset of each suite, so their differences are not comparable.", ""]
    lines += ["Files: " + "; ".join(f"{letters[i]} = {cell(src)}" for i, (_, src) in enumerate(results)), ""]
    head = ["suite", "metric", "target", *[f"{x}" for x in letters], *[f"{x} - {letters[0]}" for x in letters[1:]], f"base ({letters[0]})", "threshold"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(letters) * 2) + ["---"]) + "|"]
    for k in keys:
        row = [cell(k[0]), cell(k[1]), cell(k[2])]
        vals = []
        for by in recs:
            m = by.get(k)
            v = m.get("value") if m else None
            vals.append(v if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
            row.append("-" if m is None else f"{_num(v)} {cell(str(m.get('verdict', '')).upper())}")
        for v in vals[1:]:
            row.append("-" if v is None or vals[0] is None else f"{v - vals[0]:+.4g}")
        first: dict = recs[0].get(k) or next((by[k] for by in recs if k in by), {})
        row += [_num(first.get("base_value")), cell(first.get("threshold") or "-")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
