"""The regression gate: ``unlearn compare NEW.json BASELINE.json``.

A metric regresses when it moves the wrong way (by ``higher_is_better``) by more than its
tolerance (declared per metric in the suite and copied into every record). A metric whose
suite declares no tolerance is shown but not gated (status INFO): wall-clock times and other
figures that move with the machine would otherwise fail every re-run. Metrics present in the
baseline but missing from the new result, or turned into errors, count as regressions whatever
their tolerance: a gate that a crash passes is no gate. A change beyond tolerance must also be
significant (``harness.significance``: paired bootstrap over matched per-image scores, else the
runs' intervals) to count; otherwise its status is NOISE, shown and not failed.
"""

from __future__ import annotations

from pathlib import Path

from .errors import HarnessError
from .resultfile import one_line, read_result
from .significance import assess, describe


def load_result(path: str | Path) -> dict:
    """A results file, checked by ``resultfile.read_result``; a bad one is a one-line error."""
    try:
        return read_result(path)
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such file") from None
    except OSError as e:
        raise HarnessError(f"{path}: cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise HarnessError(f"{path}: not a results JSON ({one_line(e)})") from None


def compare(new: dict, baseline: dict) -> list[dict]:
    """One row per baseline metric: old, new, change, tolerance, status (ok / regressed / info /
    missing / error)."""
    current = {(m["suite"], m["metric"], m["target"]): m for m in new.get("metrics", [])}
    rows = []
    for m in baseline.get("metrics", []):
        key = (m["suite"], m["metric"], m["target"])
        gated = m.get("tolerance") is not None
        tol = float(m["tolerance"]) if gated else None
        row = {"suite": key[0], "metric": m.get("label", key[1]), "target": key[2], "baseline": m.get("value"), "tolerance": tol}
        n = current.get(key)
        if n is None or n.get("value") is None:
            rows.append({**row, "new": None, "change": None, "status": "missing" if n is None else "error"})
            continue
        if m.get("value") is None:  # nothing to hold the new value to: shown, not gated
            rows.append({**row, "new": n["value"], "change": None, "status": "info"})
            continue
        change = n["value"] - m["value"]
        worse = -change if m.get("higher_is_better", True) else change
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
