"""The regression gate: ``unlearn compare NEW.json BASELINE.json``.

A metric regresses when it moves the wrong way (by ``higher_is_better``) by more than its
tolerance, both taken from the current suites and metric modules (the base branch's), never
from the results files, which a pull request can edit. A metric whose
suite declares no tolerance is shown but not gated (status INFO): wall-clock times and other
figures that move with the machine would otherwise fail every re-run. Metrics present in the
baseline but missing from the new result, or turned into errors, count as regressions whatever
their tolerance: a gate that a crash passes is no gate. A change beyond tolerance must also be
significant (``harness.stats.significance``: paired bootstrap over matched per-image scores, else the
runs' intervals) to count; otherwise its status is NOISE, shown and not failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from harness.errors import HarnessError
from harness.results.io import one_line, read_result
from harness.stats.significance import assess, describe


ROOT = Path(__file__).resolve().parents[2]
_THRESHOLDS: dict = {}


def _thresholds(root: Path) -> dict:
    from harness.results.attest import current_thresholds

    if root not in _THRESHOLDS:
        _THRESHOLDS[root] = current_thresholds(root)
    return _THRESHOLDS[root]


def load_result(path: str | Path) -> dict:
    """A results file, checked by ``results.io.read_result``; a bad one is a one-line error."""
    from harness.results.attest import recheck_verdicts

    try:
        data = read_result(path)
        recheck_verdicts(data, _thresholds(ROOT))
        return data
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such file") from None
    except OSError as e:
        raise HarnessError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (ValueError, ArithmeticError, RecursionError) as e:
        raise HarnessError(f"{path}: not a results JSON ({one_line(e)})") from None


@dataclass(frozen=True)
class Rule:
    """How one metric is gated, from the current (base-branch) suites and metric modules, never
    from a results file: its tolerance (None: shown, not gated) and direction."""

    tolerance: float | None
    higher_is_better: bool


def current_rules(root: Path | None = None) -> dict[tuple[str, str], Rule]:
    """(suite id, metric name) -> Rule, for every suite in ``<root>/suites`` that loads."""
    from harness import metrics
    from harness.spec import load_suite

    rules: dict[tuple[str, str], Rule] = {}
    for f in sorted(Path(root or ROOT, "suites").glob("*.yaml")):
        try:
            suite = load_suite(f)
        except HarnessError:
            continue
        for m in suite.metrics:
            rules[(suite.id, m.name)] = Rule(m.tolerance, metrics.info(m.name).higher_is_better)
    return rules


# ---- refusals: runs that must not be compared at all (one line each, exit 2). Each is its own
# function so that other checks (e.g. a significance test) can be added beside them.
def _suites_by_id(doc: dict) -> dict[str, dict]:
    return {s.get("id"): s for s in doc.get("suites", []) if isinstance(s, dict)}


def refuse_other_submission(new: dict, baseline: dict) -> str | None:
    a, b = new["submission"]["name"], baseline["submission"]["name"]
    return f"submission.name: {a!r} is compared with a baseline of {b!r}" if a != b else None


def refuse_other_method_kind(new: dict, baseline: dict) -> str | None:
    """An inference-time method's run is never compared with a checkpoint's (or the reverse) as if
    they were the same kind of model (files made before the field existed are ``checkpoint``)."""
    a, b = [doc["submission"].get("method", {}).get("kind", "checkpoint") for doc in (new, baseline)]
    return f"submission.method.kind: {a} is compared with a baseline of kind {b}" if a != b else None


def refuse_other_checkpoint(new: dict, baseline: dict) -> str | None:
    a, b = [(doc["submission"].get("checkpoint") or {}).get("sha256") for doc in (new, baseline)]
    return f"submission.checkpoint.sha256: {a} differs from the baseline's {b}" if a != b else None


def refuse_other_suite_files(new: dict, baseline: dict) -> str | None:
    old = _suites_by_id(baseline)
    for sid, s in _suites_by_id(new).items():
        if sid in old:
            for field, what in (("file_sha256", "suite file"), ("prompt_set_sha256", "prompt set")):
                if s.get(field) != old[sid].get(field):
                    return f"suites.{sid}.{field}: the {what} differs from the baseline's ({s.get(field)} vs {old[sid].get(field)})"
    return None


def _smoke(doc: dict) -> bool:
    from harness.gate.summary import is_smoke

    return is_smoke(doc)


def refuse_smoke_vs_full(new: dict, baseline: dict) -> str | None:
    """A smoke run against a full one, per suite and for the run as a whole (a smoke run whose
    ``suites[]`` was emptied still says ``smoke`` at the top)."""
    kind = lambda x: "a smoke run" if x else "a full run"
    if _smoke(new) != _smoke(baseline):
        return f"smoke: {kind(_smoke(new))} is compared with {kind(_smoke(baseline))}"
    old = _suites_by_id(baseline)
    for sid, s in _suites_by_id(new).items():
        if sid in old and bool(s.get("smoke")) != bool(old[sid].get("smoke")):
            kind = lambda x: "a smoke run" if x.get("smoke") else "a full run"
            return f"suites.{sid}.smoke: {kind(s)} is compared with {kind(old[sid])}"
    return None


def refuse_unrecorded_suites(new: dict, baseline: dict) -> str | None:
    """A record of a suite the run does not list in ``suites[]`` (so its suite file, prompt set
    and smoke flag escape the refusals above), in either run."""
    for who, doc in (("new run", new), ("baseline", baseline)):
        have = set(_suites_by_id(doc))
        for i, m in enumerate(doc.get("metrics", [])):
            if m.get("suite") not in have:
                return f"metrics.{i}.suite: {m.get('suite')!r} is not in the {who}'s suites[] (its suite file and prompt set are not recorded)"
    return None


def refuse_dropped_scores(new: dict, baseline: dict) -> str | None:
    """A record that has per-item scores in the baseline and none in the new run (not an error):
    without them the change could be waved through as noise on the file's own word (its ``ci``)."""
    old = {(m["suite"], m["metric"], m["target"]): m for m in baseline.get("metrics", [])}
    for i, m in enumerate(new.get("metrics", [])):
        b = old.get((m["suite"], m["metric"], m["target"]))
        if b is not None and b.get("scores") and not m.get("scores") and m.get("verdict") != "error":
            return f"metrics.{i}.scores: {m['suite']}/{m['metric']}/{m['target']} has no per-item scores, but the baseline's record has them"
    return None


REFUSALS = {"submission": refuse_other_submission, "method_kind": refuse_other_method_kind, "checkpoint": refuse_other_checkpoint,
            "suite": refuse_other_suite_files, "smoke": refuse_smoke_vs_full,
            "recorded": refuse_unrecorded_suites, "scores": refuse_dropped_scores}


def refuse_mismatch(new: dict, baseline: dict, allow: set[str] | frozenset[str] = frozenset()) -> None:
    """Raise (one line) when the two runs are not runs of the same thing under the same suites.
    ``allow``: names of REFUSALS to skip (``unlearn regress`` re-makes the checkpoint: ``checkpoint``)."""
    for name, check in REFUSALS.items():
        if name not in allow:
            why = check(new, baseline)
            if why:
                raise HarnessError(f"cannot compare: {why}")


def _finite(x) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def compare(new: dict, baseline: dict, rules: dict[tuple[str, str], Rule] | None = None) -> list[dict]:
    """One row per metric of either run: old, new, change, tolerance, status (ok / regressed /
    info / missing / error). Tolerance and direction come from ``rules`` (default: the current
    suites), never from the files. A gated metric regresses when it moves the wrong way by more
    than its tolerance, when it is missing from either run, when either value is not finite, or
    when either record is an ``error``; a new ``error`` or a missing record fails whatever the
    tolerance."""
    rules = current_rules() if rules is None else rules
    current = {(m["suite"], m["metric"], m["target"]): m for m in new.get("metrics", [])}
    old = {(m["suite"], m["metric"], m["target"]): m for m in baseline.get("metrics", [])}
    rows = []
    for key in list(old) + [k for k in current if k not in old]:
        m, n = old.get(key), current.get(key)
        rule = rules.get(key[:2])
        gated = rule is not None and rule.tolerance is not None
        tol = float(rule.tolerance) if gated else None
        label = (m or n).get("label") or key[1]
        row = {"suite": key[0], "metric": label, "target": key[2], "baseline": m.get("value") if m else None, "tolerance": tol}
        if m is None:  # new in this run: a gated metric needs a baseline, others are shown
            rows.append({**row, "new": n.get("value"), "change": None, "status": "missing" if gated else "info", "why": "not in the baseline"})
            continue
        if n is None:
            rows.append({**row, "new": None, "change": None, "status": "missing", "why": "not in the new run"})
            continue
        if n.get("verdict") == "error" or not _finite(n.get("value")):
            rows.append({**row, "new": n.get("value"), "change": None, "status": "error", "why": "the new record is an error or not a finite number"})
            continue
        if m.get("verdict") == "error" or not _finite(m.get("value")):
            rows.append({**row, "new": n["value"], "change": None, "status": "error" if gated else "info", "why": "the baseline is an error or not a finite number"})
            continue
        change = n["value"] - m["value"]
        worse = -change if (rule.higher_is_better if rule else True) else change
        if not gated:
            rows.append({**row, "new": n["value"], "change": change, "status": "info"})
            continue
        rows.append({**row, "new": n["value"], "change": change, **assess(n, m, worse, tol)})  # tolerance AND significance
    return rows


def format_rows(rows: list[dict]) -> str:
    f = lambda x: "-" if x is None else f"{x:.4f}"
    t = lambda x: "-" if x is None else f"{x:.3f}"
    lines = [f"{'suite':<18} {'metric':<17} {'target':<14} {'baseline':>9} {'new':>9} {'change':>9} {'tol':>7}  status"]
    for r in rows:
        lines.append(f"{r['suite']:<18} {r['metric']:<17} {r['target']:<14} {f(r['baseline']):>9} {f(r['new']):>9} {f(r['change']):>9} {t(r['tolerance']):>7}  {r['status'].upper()}{describe(r)}")
    return "\n".join(lines)


def gate_failures(rows: list[dict]) -> list[dict]:
    """The rows that fail the gate."""
    return [r for r in rows if r["status"] in ("regressed", "missing", "error")]
