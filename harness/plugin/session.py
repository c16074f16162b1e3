"""One pytest session of the harness: its state, and what it does with the options.

The option values are parsed by ``harness.options`` (shared with the ``unlearn`` command). What
depends on several options or on the files (a Ray address only with Ray, ``{submission}`` with
several submissions, a writable cache, the suites of the submissions) is checked by ``start``
when pytest starts, before any model loads.

``Session`` holds what the plugin's hooks share: the submissions (each resolved once by the
start-up check: ``harness.resolve.resolved.ResolvedSubmission``), their suites and cases, the
parsed options, the records gathered from the reports (under pytest-xdist: from every worker),
and the results files written. The hooks in ``harness.plugin.hooks`` are a few lines each over it.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.options import ray_address, typed

# ----------------------------------------------------------------------------- the session
@dataclass
class Session:
    root: Path
    submissions: dict  # path -> Submission
    suites: dict  # id -> Suite
    cases: list
    cache: Path
    results: str | None
    device: str
    smoke: bool
    allow_pickle: bool
    started: str
    executor: str = "local"
    ray_address: str | None = None
    compile: bool = False
    strict: bool = False  # --unlearn-strict: an inconclusive verdict fails its case
    records: list = field(default_factory=list)
    written: list = field(default_factory=list)
    suite_errors: dict = field(default_factory=dict)  # (submission, suite) -> the one-line error of a suite that failed to run
    resolved: dict = field(default_factory=dict)  # submission path -> its ResolvedSubmission (made once, by the start-up check)
    threads: tuple | None = None  # (torch threads, why) of the evaluator in this process
    progress: object = None  # the Progress display of this process
    timed: set = field(default_factory=set)  # (submission, suite) whose scoring time was kept

    @property
    def checked(self) -> dict:
        """submission path -> what the start-up checks verified, one line each."""
        return {p: list(r.checked) for p, r in self.resolved.items()}

    def suites_of(self, path: str) -> dict:
        names = {c.suite for c in self.cases if c.submission == path}
        return {k: v for k, v in self.suites.items() if k in names}

    def add_record(self, report) -> None:
        """The record a case's report carries (``_record``), local or from an xdist worker, as
        (submission path, its ``MetricRecord``, its suite's ``SuiteRecord`` or None)."""
        from harness.results.model import MetricRecord, SuiteRecord

        for name, value in getattr(report, "user_properties", []):
            if name == "unlearn" and report.when == "call":
                got = json.loads(value)
                suite = SuiteRecord.model_validate(got["suite"]) if got["suite"] is not None else None
                self.records.append((got["submission"], MetricRecord.model_validate(got["record"]), suite))


def probe_writable(folder: Path) -> None:
    """Make ``folder`` and write and remove a file in it, or raise the OSError. The probe file's
    name is this process's own: with one fixed name, two processes starting at once (the xdist
    workers of one run, two runs on one cache) removed each other's probe, and the one that lost
    the race refused a writable cache (the ``replacing crashed worker`` of issue 18)."""
    import os
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
    os.close(fd)
    os.unlink(probe)


def start(config) -> Session:
    """The session of a pytest run given ``--unlearn-submission``: the options that depend on each
    other or on the files, and every check ``unlearn check`` makes, each a one-line usage error."""
    import os

    import pytest

    from harness.spec.bundle import expand_all
    from harness.resolve.check import prepare
    from harness.run.plan import plan_cases
    from harness.store.fsutil import cache_dir
    from harness.spec import SpecErrors

    _usage = pytest.UsageError
    root = Path(config.rootpath)
    device = config.getoption("unlearn_device")
    executor = config.getoption("unlearn_executor")
    address = config.getoption("unlearn_ray_address")
    if address is not None and executor != "ray":
        raise _usage("--unlearn-ray-address: only with --unlearn-executor ray")
    if executor == "ray":
        from harness.run import ray_executor

        if not ray_executor.available():
            raise _usage("--unlearn-executor ray: ray is not installed (pip install 'unlearn-harness[ray]')")
        address = address if address is not None else os.environ.get("RAY_ADDRESS") or None
        if address is not None:  # $RAY_ADDRESS: the same parser as the option
            typed("--unlearn-ray-address", ray_address, _usage)(address)
        if re.match(r"^cuda:\d+$", device):
            raise _usage(f"--unlearn-device {device}: with --unlearn-executor ray, Ray gives each task its GPU; use cuda or auto")
        if getattr(config.option, "numprocesses", None):
            # every xdist worker would start or join Ray and submit the same suites' tasks
            raise _usage("--unlearn-executor ray: Ray spreads the work itself; run without -n (pytest-xdist)")
    cache = cache_dir(root, config.getoption("unlearn_cache"))
    try:
        probe_writable(cache)
    except OSError as e:
        raise _usage(f"--unlearn-cache: {cache} is not a writable folder ({e.strerror})") from None
    try:  # submission sets (submissions/uce.yaml) stand for their members; a missing path suggests names
        paths = expand_all(config.getoption("unlearn_submission"), root)
    except HarnessError as e:
        raise _usage(str(e)) from None
    results = config.getoption("unlearn_results")
    if results is not None and len(set(paths)) > 1 and "{submission}" not in results:
        raise _usage("--unlearn-results: with several submissions the path must contain '{submission}'")
    only = set(config.getoption("unlearn_suite"))
    subs, suites, cases = {}, {}, []
    allow_pickle = config.getoption("unlearn_allow_pickle")
    resolved = {}
    for p in dict.fromkeys(paths):
        try:
            # every check `unlearn check` makes (one function), before any model loads
            resolved[p] = prepare(p, root, cache, allow_pickle, only or None, strict_only=False)
            sub, mine = resolved[p].spec, resolved[p].suites
        except SpecErrors as e:
            raise _usage("\n".join(e.lines)) from None
        except (HarnessError, OSError) as e:
            msg = str(e) if isinstance(e, HarnessError) else (e.strerror or str(e))
            raise _usage(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
        twice = next((q for q, (other, _) in subs.items() if other.name == sub.name), None)
        if twice is not None:  # one results file per name: one would overwrite the other
            raise _usage(f"{p}: name: {sub.name!r} is also the name of {twice} in this run")
        subs[p] = (sub, mine)
        suites.update(mine)
    unknown = only - set(suites)
    if unknown:
        raise _usage(f"--unlearn-suite: {', '.join(sorted(unknown))} is not a suite of the given submissions (they have: {', '.join(sorted(suites))})")
    for p, (sub, mine) in subs.items():
        cases += plan_cases(p, sub, mine, only or None)
    subs = {p: sub for p, (sub, _) in subs.items()}
    started = dt.datetime.now(dt.timezone.utc)
    session = Session(root, subs, suites, cases, cache, results, device, config.getoption("unlearn_smoke"), allow_pickle,
                      started.isoformat(timespec="seconds"), executor, address, config.getoption("unlearn_compile"))
    session.resolved = resolved
    session.strict = bool(config.getoption("unlearn_strict"))
    return session


def header_lines(config, session: Session) -> list[str]:
    lines = [f"unlearn: {len(session.submissions)} submission(s), {len(session.cases)} case(s), cache {session.cache}" + (" [smoke]" if session.smoke else "")]
    try:
        lines.append("unlearn: " + _estimate_line(config, session))
    except Exception as e:  # noqa: BLE001 - an estimate must never stop a run
        lines.append(f"unlearn: estimate unavailable ({type(e).__name__})")
    return lines


def _estimate_line(config, session: Session) -> str:
    from harness.run import estimate
    from harness.run import threads as _threads

    workers = getattr(config.option, "numprocesses", None) or 1
    n, why = _threads.choose(workers if isinstance(workers, int) else 1)
    device = estimate.resolve_device(session.device)
    only = set(config.getoption("unlearn_suite")) or None
    plans = [p for path, sub in session.submissions.items()
             for p in estimate.plan(path, session.resolved.get(path, sub), session.suites_of(path), session.root, session.cache, session.device,
                                    session.smoke, only)]
    w = workers if isinstance(workers, int) and workers > 1 else 1
    line = estimate.summary_line(plans, session.cache, estimate.device_key(device, n), parallel=w)
    return f"{line}; torch threads {n} per process ({why})"


# ----------------------------------------------------------------------------- one case
def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _ci(ci) -> str:
    """`` [low, high]`` of an interval (an ``Interval`` model or its JSON object), else empty."""
    if ci is not None and not isinstance(ci, dict):
        ci = {"low": ci.low, "high": ci.high}
    return f" [{ci['low']:.4f}, {ci['high']:.4f}]" if isinstance(ci, dict) and ci.get("low") is not None else ""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if not isinstance(e, HarnessError) else text


def _record(request, submission: str, rec, suite) -> None:
    """The case's record (a ``MetricRecord``, with its suite's ``SuiteRecord`` or None), carried
    by its report (xdist: to the controller): the whole record as JSON under ``unlearn``, and
    value / base value / threshold / verdict as plain properties (shown by ``--junitxml``).
    Appended to ``user_properties`` directly: pytest's ``record_property`` fixture warns under
    junit's default xunit2 family."""
    props = request.node.user_properties
    payload = {"submission": submission, "record": rec.to_json(), "suite": suite.to_json() if suite is not None else None}
    props.append(("unlearn", json.dumps(payload, default=float)))
    for k in ("value", "base_value", "threshold", "bound", "verdict"):
        v = getattr(rec, k)
        props.append((f"unlearn.{k}", "" if v is None else str(v)))
    if rec.error:
        props.append(("unlearn.error", rec.error))


def check_case(case, unlearn_evaluator, request) -> None:
    """Run (or reuse) the case's suite, attach the record to the report, assert the verdict.

    A problem while the suite runs is one line in the case's report (a HarnessError as it is,
    any other exception as ``Type: message``; the full traceback with ``--unlearn-debug`` or
    ``-v``), and the suite's other cases report the same line without running it again."""
    import pytest

    state, evaluator = unlearn_evaluator
    sub = state.resolved.get(case.submission) or state.submissions[case.submission]  # resolved at start-up: nothing hashed again
    key = (case.submission, case.suite)
    failed = state.suite_errors.get(key)
    if failed is None:
        try:
            result = evaluator.result(case.submission, sub, case.suite)
        except Exception as e:  # noqa: BLE001 - every error of a case is reported, in one line
            config = request.config
            if not isinstance(e, HarnessError) and (config.getoption("unlearn_debug") or config.get_verbosity() > 0):
                raise
            failed = state.suite_errors[key] = _one_line(e)
    if failed is not None:
        from harness.results.model import MetricRecord

        rec = MetricRecord(suite=case.suite, metric=case.metric, target=case.target.concept, verdict="error", error=failed)
        _record(request, case.submission, rec, None)
        pytest.fail(f"error: {failed}", pytrace=False)
    if key not in state.timed and state.progress is not None:  # scoring time, for the next run's estimate
        from harness.run import estimate

        state.timed.add(key)
        dev = state.progress.device or estimate.device_key(estimate.resolve_device(state.device))
        # prompt attacks: seconds per item and budget unit (not noted when Ray ran them: other threads, other nodes)
        remote = (result.suite.executor or {}).get("name") == "ray"
        attack_s = estimate.note_attacks(None if remote else state.cache, dev, result)
        scoring = float(result.suite.seconds or 0) - state.progress.generation_s.get(case.suite, 0.0) - attack_s
        estimate.note(state.cache, f"score|{dev}|{case.suite}", max(scoring, 0.01), 1)
    rec = result.record(case.metric, case.target.concept)
    _record(request, case.submission, rec, result.suite)
    label = f"{rec.label if 'label' in rec.model_fields_set else case.metric} for {case.target.concept}"
    if rec.verdict == "error":
        pytest.fail(f"error: {label}: {rec.error}", pytrace=False)
    if rec.verdict == "fail":
        pytest.fail(f"{label} = {_fmt(rec.value)}{_ci(rec.ci)}, needs {rec.threshold} (bound {_fmt(rec.bound)}; base model {_fmt(rec.base_value)})", pytrace=False)
    if rec.verdict == "inconclusive":
        # Skip-like: the case neither passed nor failed; the evidence (the 95% interval of
        # value - bound) does not decide. --unlearn-strict turns it into a failure.
        m = rec.margin_ci
        msg = (f"inconclusive: {label} = {_fmt(rec.value)}{_ci(rec.ci)}, needs {rec.threshold} (bound {_fmt(rec.bound)}); "
               f"95% interval of value - bound [{_fmt(m.low if m else None)}, {_fmt(m.high if m else None)}] contains 0; point estimate: {rec.verdict_point}")
        if state.strict:
            pytest.fail(msg + " (--unlearn-strict)", pytrace=False)
        pytest.skip(msg)


# ----------------------------------------------------------------------------- the end
def write_results(state: Session, config, session, exitstatus) -> None:
    """Controller side: one results JSON per submission from the gathered records (a file that
    cannot be written is one line on stderr, exit status 2, and the others are still written)."""
    import pytest

    from harness.run.evaluate import library_versions
    from harness.results.assemble import SuiteResult, build
    from harness.results.io import write_result
    from harness.results.model import SuiteRecord

    stamp = dt.datetime.fromisoformat(state.started).strftime("%Y%m%dT%H%M%SZ")
    versions = library_versions()
    for path, sub in state.submissions.items():
        mine = [(rec, suite) for p, rec, suite in state.records if p == path]
        planned = [c for c in state.cases if c.submission == path]
        suites: dict[str, SuiteResult] = {}
        for rec, suite in mine:
            s = suites.setdefault(rec.suite, SuiteResult(suite))
            s.suite = s.suite or suite
            s.metrics.append(rec)
        order = {(c.suite, c.metric, c.target.concept): i for i, c in enumerate(planned)}
        for s in suites.values():
            s.metrics.sort(key=lambda m: order.get((m.suite, m.metric, m.target), 0))
            if s.suite is None:
                s.suite = SuiteRecord(id=s.metrics[0].suite, error="the suite did not run")
        complete = len(mine) == len(planned) and exitstatus != pytest.ExitCode.INTERRUPTED
        data = build(path, sub, state.root, list(suites.values()), versions, complete, state.started,
                     devices=sorted({s.suite.device for s in suites.values() if s.suite.device}),
                     smoke=state.smoke)  # a smoke run is a different run: readers keep it apart (leaderboard, summary, compare)
        out = Path(state.results.replace("{submission}", sub.name)) if state.results else state.root / "results" / sub.name / f"{stamp}.json"
        if not out.is_absolute():
            out = Path(config.invocation_params.dir) / out
        try:
            write_result(out, data)
        except OSError as e:  # disk full, read-only folder: one line, and the other submissions still written
            import sys

            print(f"unlearn: error: --unlearn-results: cannot write {out}: {e.strerror or e}", file=sys.stderr)
            session.exitstatus = 2
            continue
        state.written.append((sub.name, out, data.to_json()))


def summary_lines(state: Session) -> list[str]:
    """The terminal table of every results file written: one row per metric, errors in one line.
    A record without an interval says why in its interval column (``single run``, ``exact``,
    ``declared``, ...); an erasure verdict (UA) is followed by the attacks that reversed that
    target's erasure (``metrics.robustness.reversals``)."""
    from harness.metrics import info, known_metrics
    from harness.metrics.robustness import reversals
    from harness.stats.intervals import short_reason

    head = f"{'suite':<16} {'metric':<17} {'target':<14} {'value':>8} {'95% interval':<19} {'base':>8} {'delta 95% interval':<19} {'threshold':<16} verdict"
    out = []
    for name, path, data in state.written:
        out.append(f"{name}" + ("" if data["complete"] else "  (incomplete)"))
        out.append("  " + head)
        back = reversals(data["metrics"])
        for r in data["metrics"]:
            ci = _ci(r.get("ci")).strip() or (short_reason(r.get("ci_reason")) if r.get("value") is not None else "-")
            erasure = r["metric"] in known_metrics() and info(r["metric"]).role == "erasure"
            out.append(
                f"  {r['suite']:<16} {r.get('label', r['metric']):<17} {r['target']:<14} {_fmt(r.get('value')):>8} {ci:<19} "
                f"{_fmt(r.get('base_value')):>8} {_ci(r.get('delta_ci')).strip() or '-':<19} {str(r.get('threshold') or '-'):<16} {r['verdict'].upper()}"
                + (f" (point: {r['verdict_point'].upper()})" if r.get("verdict_point") and r["verdict_point"] != r["verdict"] else "")
                + (f"; {'; '.join(back[r['target']])}" if erasure and back.get(r["target"]) else "")
            )
            if r["verdict"] == "error" and r.get("error"):  # an error verdict says why, in one line
                msg = " ".join(str(r["error"]).split())
                out.append(f"    error: {msg[:200]}{'...' if len(msg) > 200 else ''}")
        out.append(f"  results: {path}")
    return out
