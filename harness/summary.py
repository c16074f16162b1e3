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


def is_smoke(result: dict) -> bool:
    """A smoke run: the run says so, or one of its suites does (older results)."""
    return result.get("smoke") is True or any(isinstance(s, dict) and s.get("smoke") is True for s in result.get("suites", []))


def markdown(result: dict, source: str) -> str:
    sub = result.get("submission", {})
    s = result.get("summary", {})
    lines = [
        f"### {cell(sub.get('name', '?'))} ({cell(sub.get('method', {}).get('name', '?'))})",
        "",
        f"{s.get('pass', 0)} pass, {s.get('fail', 0)} fail, {s.get('error', 0)} error, {s.get('info', 0)} info"
        f"{'' if result.get('complete', True) else ' (incomplete run)'}"
        f"{' (**smoke run**: a subset of each suite, not comparable with full runs)' if is_smoke(result) else ''}; file {cell(source)}",
        "",
        "| suite | metric | target | value | base | threshold | verdict |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for m in result.get("metrics", []):
        lines.append("| " + " | ".join([
            cell(m.get("suite", "")), cell(m.get("label", m.get("metric", ""))), cell(m.get("target", "")),
            _num(m.get("value")), _num(m.get("base_value")), cell(m.get("threshold") or "-"),
            cell(str(m.get("verdict", "")).upper()),
        ]) + " |")
    return "\n".join(lines) + "\n"
