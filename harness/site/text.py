"""Text the pages show: numbers, intervals, thresholds, safe file names and links. Every function
returns plain text; escaping is Jinja2's (autoescape) or, in the figures, ``figure.esc``."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any
from urllib.parse import urlsplit


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


def json_value(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_value(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_value(v) for v in x]
    return x


def na_to_none(x: Any) -> Any:
    """pandas' missing values (NaN for an empty float cell) as None."""
    if x is None or isinstance(x, (str, list, dict, bool, int)):
        return x
    if isinstance(x, float):
        return None if x != x else x
    try:
        import pandas as pd

        return None if x is None or (not isinstance(x, (list, dict, str)) and pd.isna(x)) else x
    except (TypeError, ValueError):
        return x


def ci_text(ci: dict | None) -> str:
    """``[0.912, 1.000]``: the 95% interval beside a value ('' when the record has none)."""
    if not ci or finite(ci.get("low")) is None or finite(ci.get("high")) is None:
        return ""
    return f"[{fmt(ci['low'])}, {fmt(ci['high'])}]"


def ci_title(rec: dict) -> str:
    ci, why = na_to_none(rec.get("_ci")), na_to_none(rec.get("_ci_reason"))
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


def spread_text(spread: dict | None) -> str:
    """``± 0.012 (3 seeds)``: the standard deviation of a value over the method's training seeds
    (``unlearn regress --method-seeds N``), '' when no spread file covers the record."""
    if not spread:
        return ""
    return f"± {fmt(spread['sd'])} ({spread['n']} seeds)"


def spread_title(spread: dict | None) -> str:
    if not spread:
        return ""
    vals = ", ".join(fmt(v) for v in spread["values"])
    return (f"standard deviation over {spread['n']} training seeds {spread['seeds']} of the method "
            f"(unlearn regress --method-seeds {spread['n']}): values {vals}; range [{fmt(spread['min'])}, {fmt(spread['max'])}]")
