"""What a reader checks of a results file beyond its shape (``model.ResultsFile.read``): a file
says things about itself (a summary of its verdicts, intervals, per-item scores, the fields the
pages show), and none of them is believed until it agrees with what the reader recomputes.

``check_document`` runs for every results file every reader opens (``results.io.read_result``:
the site, ``compare``, ``summary``, ``images``, ``regress``, ``refresh``); each problem is one
``ValueError`` line naming the field; so does ``check_name`` (the submission name). ``harness.results.attest.recheck_verdicts`` adds what needs the
current suites' thresholds (verdicts, the interval's margin against value and bound) and then
``check_summary`` (the file's own counts against its checked verdicts).
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeGuard

from harness.stats import intervals as stats

MAX_DEPTH = 64  # JSON nesting a reader walks (a results file written by the harness is < 10 deep)
MAX_ABS = 1e15  # no metric, interval or bound is larger; beyond it arithmetic on them overflows
MAX_INT_DIGITS = 19  # integers of a results file fit in 64 bits (seeds < 2^63)
TOL = 1e-6

# The range of each metric's per-item scores and of its value (a mean of them); a metric not
# listed: finite, |x| <= MAX_ABS. Accuracies, rates and probabilities are in [0, 1]; Integrity is
# 1 - LPIPS distance; M-Score a cosine similarity; CLIP score 100 * max(cos, 0).
UNIT = (0.0, 1.0)
RANGES: dict[str, tuple[float, float]] = {
    **{m: UNIT for m in ("ua", "ira", "cra", "object_acc", "object_acc_others", "nudity_asr", "asr", "asr_worst", "pre_asr", "ti_asr",
                         "ccs_forget", "ccs_retain", "crs_forget", "crs_retain", "coverage")},
    "integrity": (-1.0, 1.0), "integrity_forget": (-1.0, 1.0), "mscore": (-1.0, 1.0), "clip_score": (0.0, 100.0),
    "density": (0.0, MAX_ABS), "fid": (0.0, MAX_ABS), "kid": (-MAX_ABS, MAX_ABS),
    "erase_time_s": (0.0, MAX_ABS), "peak_memory_gb": (0.0, MAX_ABS), "storage_mb": (0.0, MAX_ABS),
}
# Metrics whose intervals are made from per-item scores (``stats.intervals``): a record of one of
# them with an interval and without its scores is refused (an interval nobody can recompute).
PER_ITEM = frozenset({"ua", "ira", "cra", "integrity", "integrity_forget", "mscore", "ccs_forget", "ccs_retain",
                      "object_acc", "object_acc_others", "nudity_asr", "clip_score"})
KEY_RE = re.compile(r"^[^:\s]{1,64}:[0-9]{1,19}$")  # <sha256[:12] of the prompt>:<seed>
NAME_RE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,78}[\x21-\x7e])?$")  # printable ASCII, no edge spaces


def check_name(name: str) -> None:
    """A submission name as a reader accepts it: printable ASCII only (look-alike letters from
    other scripts would show as a second entry that reads like the first)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"submission.name: {name!r:.60} is not 1-80 printable ASCII characters")


def parse_int(text: str) -> int:
    """``json.loads``' integer hook: a 10^400 is refused before Python makes it (every later
    ``float()`` of it overflows)."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def check_depth(data: Any, limit: int = MAX_DEPTH) -> None:
    """``ValueError`` when containers nest deeper than ``limit`` (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict):
            x = x.values()
        elif not isinstance(x, list):
            continue
        if d > limit:
            raise ValueError(f"nested more than {limit} deep")
        stack.extend((v, d + 1) for v in x if isinstance(v, (dict, list)))


def _num(x) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite(x) -> TypeGuard[float]:
    return _num(x) and math.isfinite(x)


def metric_range(metric: str) -> tuple[float, float]:
    return RANGES.get(metric, (-MAX_ABS, MAX_ABS))


def _in(x: float, lo: float, hi: float) -> bool:
    return lo - TOL <= x <= hi + TOL


def contains(ci: dict, x: float) -> bool:
    """Whether the interval holds ``x`` (to rounding: 1e-6 relative)."""
    slack = TOL * max(1.0, abs(x), abs(ci["low"]), abs(ci["high"]))
    return ci["low"] - slack <= x <= ci["high"] + slack


def check_document(data: dict) -> None:
    """Every check below; ``ValueError`` (one line, naming the field) for the first problem."""
    check_fields(data)
    for i, m in enumerate(data["metrics"]):
        check_record(m, f"metrics.{i}")


def check_fields(data: dict) -> None:
    """The fields the pages and reports read that the model leaves open (extra fields)."""
    sub = data["submission"]
    if sub.get("base_model") is not None and not isinstance(sub["base_model"], dict):
        raise ValueError(f"submission.base_model: expected an object, not {type(sub['base_model']).__name__}")
    method = sub["method"]
    authors = method.get("authors")
    if authors is not None and not (isinstance(authors, list) and all(isinstance(a, str) for a in authors)):
        raise ValueError("submission.method.authors: expected a list of text")
    for k in ("license", "paper_url", "code_url"):
        if method.get(k) is not None and not isinstance(method[k], str):
            raise ValueError(f"submission.method.{k}: expected text")
    for k, v in (data.get("efficiency") or {}).items():
        x = v.get("value") if isinstance(v, dict) else v
        if _num(x) and math.isfinite(x) and abs(x) > MAX_ABS:
            raise ValueError(f"efficiency.{k}.value: {x!r} is beyond ±{MAX_ABS:g}")


def check_record(m: dict, where: str) -> None:
    """One metric record: numbers finite and in range, intervals well-formed and holding their
    point, per-item scores well-formed, in the metric's range and reproducing the value."""
    lo, hi = metric_range(m["metric"])
    for k in ("value", "base_value", "bound", "tolerance"):
        x = m.get(k)
        if _num(x) and math.isfinite(x) and abs(x) > MAX_ABS:
            raise ValueError(f"{where}.{k}: {x!r} is beyond ±{MAX_ABS:g}")
    for k in ("value", "base_value"):
        x = m.get(k)
        if _finite(x) and not _in(x, lo, hi):
            raise ValueError(f"{where}.{k}: {x!r} is outside the range of {m['metric']} [{lo:g}, {hi:g}]")
    v, b = m.get("value"), m.get("base_value")
    points = {"ci": v if _finite(v) else None, "delta_ci": v - b if _finite(v) and _finite(b) else None}
    for k in ("ci", "delta_ci", "margin_ci"):
        ci = m.get(k)
        if ci is None or (isinstance(ci["low"], float) and isinstance(ci["high"], float) and math.isnan(ci["low"]) and math.isnan(ci["high"])):
            continue  # none, or an interval the bootstrap could not make (no finite resample): nothing claimed
        if not (_finite(ci["low"]) and _finite(ci["high"])) or abs(ci["low"]) > MAX_ABS or abs(ci["high"]) > MAX_ABS or ci["low"] > ci["high"]:
            raise ValueError(f"{where}.{k}: [{ci['low']!r}, {ci['high']!r}] is not an interval of finite numbers")
        point = points.get(k)
        if point is not None and not contains(ci, point):
            raise ValueError(f"{where}.{k}: [{ci['low']:.6g}, {ci['high']:.6g}] does not hold its own point estimate {point:.6g}")
    if m.get("scores") is not None:
        check_scores(m, where)
    elif m["metric"] in PER_ITEM and any(m.get(k) is not None for k in ("ci", "delta_ci", "margin_ci")):
        raise ValueError(f"{where}.scores: missing: a {m['metric']} interval is made from per-item scores, and this record has the interval without them")


def check_scores(m: dict, where: str):
    """The record's per-item ``scores`` as ``stats.Scores`` once they are well-formed (keys
    ``<prompt>:<seed>``, unique; one finite score per key for each model; groups one text per
    key; a proportion 0 or 1), in the metric's range, and reproduce ``value`` and
    ``base_value``; ``ValueError`` otherwise."""
    import numpy as np

    s, w = m["scores"], f"{where}.scores"
    keys = s.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and KEY_RE.match(k) for k in keys):
        raise ValueError(f"{w}.keys: expected a non-empty list of '<prompt>:<seed>' keys")
    if len(set(keys)) != len(keys):
        raise ValueError(f"{w}.keys: an item is listed twice")
    binary = s.get("binary", False)
    if not isinstance(binary, bool):
        raise ValueError(f"{w}.binary: expected true or false")
    lo, hi = metric_range(m["metric"])
    arrays = {}
    for side in ("unlearned", "base"):
        x = s.get(side)
        if x is None and side == "base":
            continue
        if not isinstance(x, list) or len(x) != len(keys) or not all(_finite(v) for v in x):
            raise ValueError(f"{w}.{side}: expected {len(keys)} finite numbers, one per key")
        if binary and any(v not in (0, 1) for v in x):
            raise ValueError(f"{w}.{side}: a proportion's scores are 0 or 1")
        bad = next((v for v in x if not _in(v, lo, hi)), None)
        if bad is not None:
            raise ValueError(f"{w}.{side}: {bad!r} is outside the range of {m['metric']} [{lo:g}, {hi:g}]")
        arrays[side] = np.asarray(x, dtype=np.float64)
    groups = s.get("groups")
    if groups is not None and (not isinstance(groups, list) or len(groups) != len(keys) or not all(isinstance(g, str) and len(g) <= 200 for g in groups)):
        raise ValueError(f"{w}.groups: expected null or {len(keys)} texts, one per key")
    for side, field in (("unlearned", "value"), ("base", "base_value")):
        claimed = m.get(field)
        if side in arrays and _finite(claimed):
            got = float(stats.statistic(arrays[side], np.ones(len(keys)), groups)[0])
            if not abs(got - claimed) <= 1e-5 * max(1.0, abs(claimed)):
                raise ValueError(f"{w}.{side}: the scores give {got:.6g}, not the {field} {claimed!r} the record states")
    return stats.Scores.from_record(s)


def check_summary(data: dict) -> None:
    """A file's own ``summary`` must be the counts of its records' verdicts (readers show the
    counts they make, never the file's; ``attest.recheck_verdicts`` calls this once the verdicts
    themselves are checked)."""
    summary = data.get("summary")
    if summary is None:
        return
    counts: dict[str, int] = {}
    for m in data["metrics"]:
        counts[m["verdict"]] = counts.get(m["verdict"], 0) + 1
    for v, n in summary.items():
        if v in ("pass", "fail", "inconclusive", "error", "info") and n != counts.get(v, 0):
            raise ValueError(f"summary.{v}: {n} records, but the records have {counts.get(v, 0)}")
    for v, n in counts.items():
        if v not in summary and n:  # (files before the intervals have no inconclusive key, and no such record)
            raise ValueError(f"summary.{v}: missing, but {n} records have it")
