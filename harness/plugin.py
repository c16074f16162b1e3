"""The pytest face of the harness: options, parametrization, fixtures, results JSON, summary.

Thin on purpose: the work is in ``harness.evaluate``. Every option value is checked when pytest
starts (``pytest_configure``), before any model loads, and a bad one is a one-line usage error.
Each test case carries its metric record in ``user_properties``, so under pytest-xdist the
controller receives every worker's records with the reports and writes one complete JSON.
Without ``--unlearn-submission`` the plugin does nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import threads as _threads  # noqa: F401 - sets OMP_WAIT_POLICY=PASSIVE before torch starts its pool
from .errors import HarnessError
from .fsutil import cache_dir

CASES_FILE = str(Path(__file__).with_name("cases.py"))
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.-]+:\d+)$")


@dataclass
class State:
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
    checked: dict = field(default_factory=dict)  # submission path -> what the start-up checks verified
    threads: tuple | None = None  # (torch threads, why) of the evaluator in this process
    progress: object = None  # the Progress display of this process
    timed: set = field(default_factory=set)  # (submission, suite) whose scoring time was kept


STATE = pytest.StashKey[State]()


def pytest_addoption(parser):
    g = parser.getgroup("unlearn", "unlearn-harness: evaluate concept erasure in text-to-image models")
    g.addoption("--unlearn-submission", action="append", default=[], metavar="YAML", help="submission to evaluate (repeatable)")
    g.addoption("--unlearn-suite", action="append", default=[], metavar="ID", help="run only these suites (repeatable)")
    g.addoption("--unlearn-smoke", action="store_true", help="run each suite's smoke subset")
    g.addoption("--unlearn-results", metavar="PATH", help="results JSON (default results/<submission>/<timestamp>.json; '{submission}' is replaced)")
    g.addoption("--unlearn-cache", metavar="DIR", help="image cache (default .unlearn-cache in the rootdir, or $UNLEARN_CACHE)")
    g.addoption("--unlearn-device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N (default auto)")
    g.addoption("--unlearn-allow-pickle", action="store_true", help="allow pickle checkpoints (.ckpt/.bin/.pt): only for files you trust")
    g.addoption("--unlearn-executor", default="local", metavar="NAME", help="where images are generated: local (this process, default) or ray (Ray tasks)")
    g.addoption("--unlearn-ray-address", metavar="ADDR", help="Ray cluster for --unlearn-executor ray (default $RAY_ADDRESS, else a new local instance)")
    g.addoption("--unlearn-compile", action="store_true", help="torch.compile the UNet (worth it on a GPU for large suites)")
    g.addoption("--unlearn-strict", action="store_true", help="an inconclusive verdict (the 95%% interval straddles the bound) fails its case instead of skipping")
    g.addoption("--unlearn-debug", action="store_true", help="show the full traceback of an unexpected error in a case (default: one line; -v shows it too)")


def _usage(msg: str):
    return pytest.UsageError(msg)


def _build_state(config) -> State:
    import os

    from .bundle import expand_all
    from .check import prepare
    from .plan import plan_cases
    from .spec import SpecErrors

    root = Path(config.rootpath)
    device = config.getoption("unlearn_device")
    if not DEVICE.match(device):
        raise _usage(f"--unlearn-device: {device!r} is not one of auto, cpu, mps, cuda, cuda:N")
    executor = config.getoption("unlearn_executor")
    if executor not in ("local", "ray"):
        raise _usage(f"--unlearn-executor: {executor!r} is not one of local, ray")
    address = config.getoption("unlearn_ray_address")
    if address is not None and executor != "ray":
        raise _usage("--unlearn-ray-address: only with --unlearn-executor ray")
    if executor == "ray":
        from . import ray_executor

        if not ray_executor.available():
            raise _usage("--unlearn-executor ray: ray is not installed (pip install 'unlearn-harness[ray]')")
        address = address if address is not None else os.environ.get("RAY_ADDRESS") or None
        if address is not None and not RAY_ADDRESS.match(address):
            raise _usage(f"--unlearn-ray-address: {address!r} is not auto, local, HOST:PORT or ray://HOST:PORT")
        if re.match(r"^cuda:\d+$", device):
            raise _usage(f"--unlearn-device {device}: with --unlearn-executor ray, Ray gives each task its GPU; use cuda or auto")
        if getattr(config.option, "numprocesses", None):
            # every xdist worker would start or join Ray and submit the same suites' tasks
            raise _usage("--unlearn-executor ray: Ray spreads the work itself; run without -n (pytest-xdist)")
    cache = cache_dir(root, config.getoption("unlearn_cache"))
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise _usage(f"--unlearn-cache: {cache} is not a writable folder ({e.strerror})") from None
    try:  # submission sets (submissions/uce.yaml) stand for their members; a missing path suggests names
        paths = expand_all(config.getoption("unlearn_submission"), root)
    except HarnessError as e:
        raise _usage(str(e)) from None
    results = config.getoption("unlearn_results")
    if results is not None and len(set(paths)) > 1 and "{submission}" not in results:
        raise _usage("--unlearn-results: with several submissions the path must contain '{submission}'")
    if results is not None and not results.strip():
        raise _usage("--unlearn-results: empty path")
    only = set(config.getoption("unlearn_suite"))
    subs, suites, cases = {}, {}, []
    allow_pickle = config.getoption("unlearn_allow_pickle")
    checked = {}
    for p in dict.fromkeys(paths):
        try:
            # every check `unlearn check` makes (one function), before any model loads
            sub, mine, checked[p] = prepare(p, root, cache, allow_pickle, only or None, strict_only=False)
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
    state = State(root, subs, suites, cases, cache, results, device, config.getoption("unlearn_smoke"), allow_pickle,
                  started.isoformat(timespec="seconds"), executor, address, config.getoption("unlearn_compile"))
    state.checked = checked
    return state


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if not config.getoption("unlearn_submission", default=None):
        return
    _pin_worker_gpu(config)
    _check_pytest_cache(config)
    state = _build_state(config)
    state.strict = bool(config.getoption("unlearn_strict"))
    config.stash[STATE] = state
    config.pluginmanager.register(Reporter(state, config), "unlearn-reporter")
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = [CASES_FILE]
    elif CASES_FILE not in config.args:
        config.args = [*config.args, CASES_FILE]
    # pytest-xdist: keep each suite's cases on one worker, so its pipelines load once there.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"


def _check_pytest_cache(config) -> None:
    """pytest's cache provider stays on (``--lf`` / ``--ff`` work). What turning it off used to
    guard against is checked instead: a ``.pytest_cache`` that is a symbolic link (committed by
    a pull request, pytest would write through it outside the checkout) stops the run; a
    partial re-run (``--lf``, ``-k``, ``--sw``) writes results marked incomplete, which
    ``leaderboard refresh`` refuses; the harness's own subprocess runs (``rerun.py``: refresh,
    regress) still run without it, so a user's last-failed state never shortens them."""
    cache = getattr(config, "cache", None)
    d = getattr(cache, "_cachedir", None)
    if d is not None and Path(d).is_symlink():
        raise _usage(f"{d}: pytest's cache folder is a symbolic link; remove it (or run with -p no:cacheprovider)")


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every CUDA device."""
    import os

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable CUDA build
        return []


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` with --unlearn-submission: one worker per GPU (None: xdist's own default)."""
    if config.getoption("unlearn_submission", default=None):
        return len(visible_gpus()) or None
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """Controller side: give each xdist worker one GPU, round robin over the visible ones."""
    gpus = visible_gpus()
    if gpus and node.config.getoption("unlearn_submission", default=None):
        index = int(node.workerinput["workerid"].removeprefix("gw"))
        node.workerinput["unlearn_gpu"] = gpus[index % len(gpus)]


def _pin_worker_gpu(config) -> None:
    """Worker side, before any model (or CUDA) is touched: see only the GPU given to us."""
    import os

    gpu = getattr(config, "workerinput", {}).get("unlearn_gpu")
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def pytest_report_header(config):
    state = config.stash.get(STATE, None)
    if state:
        lines = [f"unlearn: {len(state.submissions)} submission(s), {len(state.cases)} case(s), cache {state.cache}" + (" [smoke]" if state.smoke else "")]
        try:
            lines.append("unlearn: " + _estimate_line(config, state))
        except Exception as e:  # noqa: BLE001 - an estimate must never stop a run
            lines.append(f"unlearn: estimate unavailable ({type(e).__name__})")
        return lines


def _estimate_line(config, state: State) -> str:
    from . import estimate

    workers = getattr(config.option, "numprocesses", None) or 1
    n, why = _threads.choose(workers if isinstance(workers, int) else 1)
    device = estimate.resolve_device(state.device)
    only = set(config.getoption("unlearn_suite")) or None
    plans = [p for path, sub in state.submissions.items()
             for p in estimate.plan(path, sub, _suites_of(state, path), state.root, state.cache, state.device, state.smoke, only)]
    w = workers if isinstance(workers, int) and workers > 1 else 1
    line = estimate.summary_line(plans, state.cache, estimate.device_key(device, n), parallel=w)
    return f"{line}; torch threads {n} per process ({why})"


def _suites_of(state: State, path: str) -> dict:
    names = {c.suite for c in state.cases if c.submission == path}
    return {k: v for k, v in state.suites.items() if k in names}


def pytest_generate_tests(metafunc):
    if "unlearn_case" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash.get(STATE, None)
    cases = state.cases if state else []
    many = state is not None and len(state.submissions) > 1
    metafunc.parametrize(
        "unlearn_case",
        [pytest.param(c, id=c.id(many), marks=pytest.mark.xdist_group(f"{c.submission_name}::{c.suite}")) for c in cases],
    )


@pytest.fixture(scope="session")
def unlearn_evaluator(request):
    """The session's evaluator (one per xdist worker), with the parsed options beside it."""
    from .evaluate import Evaluator
    from .ray_executor import make_executor

    state = request.config.stash[STATE]
    state.threads = _threads.apply()  # for this process's share of the machine (harness/threads.py)
    executor = make_executor(state.executor, state.ray_address)
    shown = state.progress = Progress(request.config, state)
    ev = Evaluator(state.root, state.cache, state.device, state.allow_pickle, state.smoke, progress=shown.bar, executor=executor, compile=state.compile)
    yield state, ev
    executor.close()  # shuts down a Ray instance only if this session started it


class Progress:
    """Images done / total, speed and time left, one terminal line per generation phase of a
    suite (and one every 10 s while it runs), written through pytest's terminal reporter with
    output capture suspended, so it shows without ``-s``; silent under ``-q`` and in xdist
    workers (they have no terminal). Each finished phase's speed is kept per device in the
    cache (``harness.estimate``) for the next run's estimate."""

    EVERY = 10.0

    def __init__(self, config, state: State):
        self.config, self.state = config, state
        self.device = None
        self.generation_s: dict[str, float] = {}  # suite id -> seconds spent generating in this process

    def _write(self, line: str) -> None:
        if self.config.get_verbosity() < 0 or hasattr(self.config, "workerinput"):
            return
        tr = self.config.pluginmanager.getplugin("terminalreporter")
        cap = self.config.pluginmanager.getplugin("capturemanager")
        if tr is None:
            return
        import contextlib

        with cap.global_and_fixture_disabled() if cap else contextlib.nullcontext():
            tr.ensure_newline()
            tr.write_line(line)
            tr.flush()

    def bar(self, desc: str, jobs: list):
        import time

        from . import estimate

        owner = self
        if self.device is None:
            self.device = estimate.device_key(estimate.resolve_device(self.state.device))

        class _Bar:
            def __init__(self):
                self.t0 = self.last = time.perf_counter()
                self.first = None  # (time, done) after the first batch: the rate excludes loading
                self.done, self.total = 0, len(jobs)
                self.steps = jobs[0].steps if jobs else 0
                self.size = (jobs[0].height, jobs[0].width) if jobs else (0, 0)

            def update(self, n: int) -> None:
                now = time.perf_counter()
                self.done += n
                if self.first is None:
                    self.first = (now, self.done)
                if now - self.last >= owner.EVERY and self.done < self.total:
                    self.last = now
                    owner._write(self.line(now))

            def line(self, now: float) -> str:
                el = now - self.t0
                left = ""
                if self.done < self.total and self.first and self.done > self.first[1]:
                    rate = (self.done - self.first[1]) / max(1e-9, now - self.first[0])
                    left = f", about {estimate.fmt_duration((self.total - self.done) / rate)} left"
                elif self.done < self.total and self.done:
                    left = f", about {estimate.fmt_duration(el / self.done * (self.total - self.done))} left"
                speed = f"{self.done / el:.1f} img/s" if el > 0 and self.done else "loading"
                return f"unlearn: {desc}: {self.done}/{self.total} images ({speed}, {estimate.fmt_duration(el)}{left})"

            def close(self) -> None:
                if not self.total:
                    return
                now = time.perf_counter()
                el = now - self.t0
                suite = desc.split(" ")[0]
                owner.generation_s[suite] = owner.generation_s.get(suite, 0.0) + el
                owner._write(self.line(now))
                if self.done:
                    estimate.note(owner.state.cache, estimate.gen_key(owner.device, *self.size), el, self.done * self.steps)

        return _Bar()


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if not isinstance(e, HarnessError) else text


def _record(request, payload: dict) -> None:
    """The case's record, carried by its report (xdist: to the controller): the whole record as
    JSON under ``unlearn``, and value / base value / threshold / verdict as plain properties
    (shown by ``--junitxml``). Appended to ``user_properties`` directly: pytest's
    ``record_property`` fixture warns under junit's default xunit2 family."""
    rec = payload["record"]
    props = request.node.user_properties
    props.append(("unlearn", json.dumps(payload, default=float)))
    for k in ("value", "base_value", "threshold", "bound", "verdict"):
        props.append((f"unlearn.{k}", "" if rec.get(k) is None else str(rec.get(k))))
    if rec.get("error"):
        props.append(("unlearn.error", rec["error"]))


def check_case(case, unlearn_evaluator, request) -> None:
    """Run (or reuse) the case's suite, attach the record to the report, assert the verdict.

    A problem while the suite runs is one line in the case's report (a HarnessError as it is,
    any other exception as ``Type: message``; the full traceback with ``--unlearn-debug`` or
    ``-v``), and the suite's other cases report the same line without running it again."""
    state, evaluator = unlearn_evaluator
    sub = state.submissions[case.submission]
    key = (case.submission, case.suite)
    failed = state.suite_errors.get(key)
    if failed is None:
        try:
            result = evaluator.run(case.submission, sub, case.suite)
        except Exception as e:  # noqa: BLE001 - every error of a case is reported, in one line
            config = request.config
            if not isinstance(e, HarnessError) and (config.getoption("unlearn_debug") or config.get_verbosity() > 0):
                raise
            failed = state.suite_errors[key] = _one_line(e)
    if failed is not None:
        from .results.model import MetricRecord

        rec = MetricRecord(suite=case.suite, metric=case.metric, target=case.target.concept, verdict="error", error=failed).to_json()
        _record(request, {"submission": case.submission, "record": rec, "suite": None})
        pytest.fail(f"error: {failed}", pytrace=False)
    if key not in state.timed and state.progress is not None:  # scoring time, for the next run's estimate
        from . import estimate

        state.timed.add(key)
        dev = state.progress.device or estimate.device_key(estimate.resolve_device(state.device))
        scoring = float(result["suite"].get("seconds") or 0) - state.progress.generation_s.get(case.suite, 0.0)
        estimate.note(state.cache, f"score|{dev}|{case.suite}", max(scoring, 0.01), 1)
    rec = next(r for r in result["metrics"] if r["metric"] == case.metric and r["target"] == case.target.concept)
    _record(request, {"submission": case.submission, "record": rec, "suite": result["suite"]})
    label = f"{rec.get('label', case.metric)} for {case.target.concept}"
    if rec["verdict"] == "error":
        pytest.fail(f"error: {label}: {rec['error']}", pytrace=False)
    if rec["verdict"] == "fail":
        pytest.fail(f"{label} = {_fmt(rec['value'])}{_ci(rec.get('ci'))}, needs {rec['threshold']} (bound {_fmt(rec['bound'])}; base model {_fmt(rec['base_value'])})", pytrace=False)
    if rec["verdict"] == "inconclusive":
        # Skip-like: the case neither passed nor failed; the evidence (the 95% interval of
        # value - bound) does not decide. --unlearn-strict turns it into a failure.
        m = rec.get("margin_ci") or {}
        msg = (f"inconclusive: {label} = {_fmt(rec['value'])}{_ci(rec.get('ci'))}, needs {rec['threshold']} (bound {_fmt(rec['bound'])}); "
               f"95% interval of value - bound [{_fmt(m.get('low'))}, {_fmt(m.get('high'))}] contains 0; point estimate: {rec.get('verdict_point')}")
        if state.strict:
            pytest.fail(msg + " (--unlearn-strict)", pytrace=False)
        pytest.skip(msg)


def _ci(ci) -> str:
    return f" [{ci['low']:.4f}, {ci['high']:.4f}]" if isinstance(ci, dict) and ci.get("low") is not None else "" 


class Reporter:
    """Controller-side: gathers the records from the reports (local or from xdist workers),
    writes one results JSON per submission, prints the summary table."""

    def __init__(self, state: State, config):
        self.state = state
        self.config = config

    def pytest_runtest_logreport(self, report):
        for name, value in getattr(report, "user_properties", []):
            if name == "unlearn" and report.when == "call":
                self.state.records.append(json.loads(value))

    def pytest_sessionfinish(self, session, exitstatus):
        if hasattr(self.config, "workerinput") or self.config.option.collectonly:
            return  # an xdist worker (its records travel with the reports), or nothing ran
        from .evaluate import library_versions
        from .results.assemble import build
        from .results.io import write_result
        from .results.model import SuiteRecord

        state = self.state
        stamp = dt.datetime.fromisoformat(state.started).strftime("%Y%m%dT%H%M%SZ")
        versions = library_versions()
        for path, sub in state.submissions.items():
            mine = [r for r in state.records if r["submission"] == path]
            planned = [c for c in state.cases if c.submission == path]
            suites: dict[str, dict] = {}
            for r in mine:
                s = suites.setdefault(r["record"]["suite"], {"suite": r["suite"], "metrics": []})
                s["suite"] = s["suite"] or r["suite"]
                s["metrics"].append(r["record"])
            order = {(c.suite, c.metric, c.target.concept): i for i, c in enumerate(planned)}
            for s in suites.values():
                s["metrics"].sort(key=lambda m: order.get((m["suite"], m["metric"], m["target"]), 0))
                if s["suite"] is None:
                    s["suite"] = SuiteRecord(id=s["metrics"][0]["suite"], error="the suite did not run").to_json()
            complete = len(mine) == len(planned) and exitstatus != pytest.ExitCode.INTERRUPTED
            data = build(path, sub, state.root, list(suites.values()), versions, complete, state.started,
                         devices=sorted({s["suite"].get("device") for s in suites.values() if s["suite"].get("device")}),
                         smoke=state.smoke)  # a smoke run is a different run: readers keep it apart (leaderboard, summary, compare)
            out = Path(state.results.replace("{submission}", sub.name)) if state.results else state.root / "results" / sub.name / f"{stamp}.json"
            if not out.is_absolute():
                out = Path(self.config.invocation_params.dir) / out
            try:
                write_result(out, data)
            except OSError as e:  # disk full, read-only folder: one line, and the other submissions still written
                import sys

                print(f"unlearn: error: --unlearn-results: cannot write {out}: {e.strerror or e}", file=sys.stderr)
                session.exitstatus = 2
                continue
            state.written.append((sub.name, out, data.to_json()))

    def pytest_terminal_summary(self, terminalreporter):
        if hasattr(self.config, "workerinput") or not self.state.written:
            return
        tr = terminalreporter
        tr.section("unlearn results")
        head = f"{'suite':<16} {'metric':<17} {'target':<14} {'value':>8} {'95% interval':<19} {'base':>8} {'delta 95% interval':<19} {'threshold':<16} verdict"
        for name, out, data in self.state.written:
            tr.write_line(f"{name}" + ("" if data["complete"] else "  (incomplete)"))
            tr.write_line("  " + head)
            for r in data["metrics"]:
                tr.write_line(
                    f"  {r['suite']:<16} {r.get('label', r['metric']):<17} {r['target']:<14} {_fmt(r.get('value')):>8} {_ci(r.get('ci')).strip() or '-':<19} "
                    f"{_fmt(r.get('base_value')):>8} {_ci(r.get('delta_ci')).strip() or '-':<19} {str(r.get('threshold') or '-'):<16} {r['verdict'].upper()}"
                    + (f" (point: {r['verdict_point'].upper()})" if r.get("verdict_point") and r["verdict_point"] != r["verdict"] else "")
                )
                if r["verdict"] == "error" and r.get("error"):  # an error verdict says why, in one line
                    msg = " ".join(str(r["error"]).split())
                    tr.write_line(f"    error: {msg[:200]}{'...' if len(msg) > 200 else ''}")
            tr.write_line(f"  results: {out}")
