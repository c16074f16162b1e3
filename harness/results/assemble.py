"""Assembling the results file of a run (``harness.results.model.ResultsFile``) from the suite
records the evaluator produced (possibly on several xdist workers) plus the provenance of the
run: harness version and git sha, library versions, submission and checkpoint identity,
declared or measured efficiency (the latter from ``unlearn erase``'s method.json).

A suite's outcome travels as ``SuiteResult``: the models of ``harness.results.model`` (its
``SuiteRecord`` and ``MetricRecord`` objects), from the evaluator through the pytest session to
``build``; JSON is made only where it leaves the process (a test report, the file).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.store.hashing import sha256_file
from harness.spec import Submission, inside
from harness.results.model import SCHEMA_VERSION, MetricRecord, ResultsFile, SuiteRecord, summary_counts


@dataclass
class SuiteResult:
    """One suite's run for one submission: its suite record and its metric records (one per
    metric and target, in the suite's order), as the results file's models."""

    suite: SuiteRecord
    metrics: list[MetricRecord] = field(default_factory=list)

    def record(self, metric: str, target: str) -> MetricRecord:
        """The record of ``metric`` for the target concept ``target``."""
        return next(r for r in self.metrics if r.metric == metric and r.target == target)

    def to_json(self) -> dict:
        """``{"suite": ..., "metrics": [...]}``: the JSON objects the results file holds."""
        return {"suite": self.suite.to_json(), "metrics": [r.to_json() for r in self.metrics]}


def git_sha(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def load_method_record(root: Path, rel: str) -> dict:
    """The ``method.json`` of ``unlearn erase`` that a submission names: inside the repository, a
    JSON object whose ``efficiency`` (default empty) is an object; anything else is a one-line
    error naming the field. Checked at start-up (plugin and ``unlearn check``), read again when
    the results are written and by ``unlearn regress``."""
    p = inside(root, rel, "method_record")
    if not p.is_file():
        raise HarnessError(f"method_record: {rel}: no such file")
    if p.stat().st_size > 1 << 20:
        raise HarnessError(f"method_record: {rel}: larger than 1 MiB")
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise HarnessError(f"method_record: {rel} is not JSON ({type(e).__name__})") from None
    if not isinstance(rec, dict) or not isinstance(rec.setdefault("efficiency", {}), dict):
        raise HarnessError(f"method_record: {rel} is not a method.json (an object with 'efficiency')")
    import math

    for k in ("time_s", "peak_memory_bytes", "storage_bytes"):
        v = rec["efficiency"].get(k)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
            raise HarnessError(f"method_record: {rel}: efficiency.{k}: {str(v)[:40]!r} is not a non-negative number")
    reps = rec["efficiency"].get("repeats")
    if reps is not None:
        if not isinstance(reps, dict):
            raise HarnessError(f"method_record: {rel}: efficiency.repeats: not an object")
        for k in ("time_s", "peak_memory_bytes"):
            v = reps.get(k)
            if v is not None and not (isinstance(v, list) and 0 < len(v) <= 1000 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in v)):
                raise HarnessError(f"method_record: {rel}: efficiency.repeats.{k}: not a list of 1-1000 non-negative numbers")
    for k in ("device", "peak_memory_measure"):
        v = rec["efficiency"].get(k)
        if v is not None and not isinstance(v, str):
            raise HarnessError(f"method_record: {rel}: efficiency.{k}: not a string")
    for k, t in (("method", str), ("concept", str), ("params", dict), ("base", dict), ("anchor", str)):
        if rec.get(k) is not None and not isinstance(rec[k], t):
            raise HarnessError(f"method_record: {rel}: {k}: not a{'n object' if t is dict else ' string'}")
    return rec


MEASURED_ENV = "UNLEARN_MEASURED_METHOD_RECORDS"


def measured_by_harness(root: Path, rel: str) -> bool:
    """A method.json the harness itself wrote in this run's parent process (``unlearn regress``
    re-makes a checkpoint with ``unlearn erase`` and names the file in
    ``$UNLEARN_MEASURED_METHOD_RECORDS``, paths separated by ``os.pathsep``). Any other
    method.json (a pull request's, hand-written or not) is the submitter's word: its figures are
    recorded as declared."""
    import os

    listed = [p for p in os.environ.get(MEASURED_ENV, "").split(os.pathsep) if p]
    try:
        mine = inside(root, rel, "method_record").resolve()
        return any(Path(p).resolve() == mine for p in listed)
    except (HarnessError, OSError, ValueError):
        return False


def efficiency(sub: Submission, root: Path) -> dict:
    """Storage measured from the checkpoint files; time / memory from ``unlearn erase``'s
    method.json (measured only where the harness wrote it in this run: ``measured_by_harness``;
    else declared) or the submission (declared)."""
    out: dict = {}
    if sub.checkpoint is not None and sub.checkpoint.path:
        p = inside(root, sub.checkpoint.path, "checkpoint.path")
        if p.exists():
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
            out["storage_bytes"] = {"value": size, "source": "measured"}
    if sub.method_record:
        rec = load_method_record(root, sub.method_record)["efficiency"]
        if rec:
            measured = measured_by_harness(root, sub.method_record)
            runs = rec.get("repeats") if isinstance(rec.get("repeats"), dict) else {}
            for k in ("time_s", "peak_memory_bytes"):
                if k in rec:
                    how = rec.get("peak_memory_measure") if k == "peak_memory_bytes" else "wall clock of unlearn erase"
                    out[k] = {"value": rec[k], "source": "measured" if measured else "declared",
                              "how": how if measured else f"method.json as committed ({str(how)[:80] if how else 'no method given'}); "
                                                          "not measured by the harness run that made this file",
                              "device": str(rec.get("device"))[:80] if rec.get("device") is not None else None}
                    if isinstance(runs.get(k), list) and len(runs[k]) >= 2:  # unlearn erase --repeats N: every run's figure
                        out[k]["runs"] = runs[k]  # (an interval only where measured: harness.metrics.efficiency)
    if sub.efficiency:
        declared = {"time_s": "time_s", "peak_memory_gb": "peak_memory_gb", "storage_gb": "storage_gb"}
        for k, v in sub.efficiency.model_dump(exclude_none=True).items():
            if k in declared:
                out.setdefault(declared[k], {"value": v, "source": "declared", "device": sub.efficiency.device})
    return out


def build(sub_path: str, sub: Submission, root: Path, suite_results: list[SuiteResult], versions: dict, complete: bool, started: str,
          devices: list[str] | None = None, smoke: bool | None = None) -> ResultsFile:
    """The results file of one submission's run, from its suites' results (the models, taken as
    they are); ``devices`` (``environment.device``) and ``smoke`` are set when given (the plugin
    gives both)."""
    from harness.version import __version__
    from harness.run.reproduce import fingerprint

    path = Path(sub_path)
    doc = ResultsFile(
        schema_version=SCHEMA_VERSION,
        harness={"version": __version__, "git_sha": git_sha(root)},
        started=started,
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        complete=complete,
        submission={"file": str(path), "file_sha256": sha256_file(path) if path.is_file() else None, **sub.model_dump(mode="json")},
        environment={"platform": platform.platform(), "libraries": versions, **({"device": devices} if devices is not None else {}),
                     "fingerprint": fingerprint(device=(devices or ["cpu"])[0])},
        efficiency=efficiency(sub, root),
        suites=[s.suite for s in suite_results],
        metrics=[r for s in suite_results for r in s.metrics],
    )
    doc.update(summary=summary_counts(doc.metrics))
    if smoke is not None:
        doc.update(smoke=smoke)
    return doc
