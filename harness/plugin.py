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
    records: list = field(default_factory=list)
    written: list = field(default_factory=list)


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


def _usage(msg: str):
    return pytest.UsageError(msg)


def _build_state(config) -> State:
    import os

    from .check import startup
    from .evaluate import plan_cases
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
    paths = config.getoption("unlearn_submission")
    results = config.getoption("unlearn_results")
    if results is not None and len(set(paths)) > 1 and "{submission}" not in results:
        raise _usage("--unlearn-results: with several submissions the path must contain '{submission}'")
    if results is not None and not results.strip():
        raise _usage("--unlearn-results: empty path")
    only = set(config.getoption("unlearn_suite"))
    subs, suites, cases = {}, {}, []
    allow_pickle = config.getoption("unlearn_allow_pickle")
    for p in dict.fromkeys(paths):
        try:
            sub, mine, _ = startup(p, root, cache, allow_pickle)  # shared with `unlearn check`
        except SpecErrors as e:
            raise _usage("\n".join(e.lines)) from None
        except HarnessError as e:
            msg = str(e)
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
    return State(root, subs, suites, cases, cache, results, device, config.getoption("unlearn_smoke"), allow_pickle,
                 started.isoformat(timespec="seconds"), executor, address, config.getoption("unlearn_compile"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if not config.getoption("unlearn_submission", default=None):
        return
    _pin_worker_gpu(config)
    state = _build_state(config)
    config.stash[STATE] = state
    config.pluginmanager.register(Reporter(state, config), "unlearn-reporter")
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = [CASES_FILE]
    elif CASES_FILE not in config.args:
        config.args = [*config.args, CASES_FILE]
    # pytest-xdist: keep each suite's cases on one worker, so its pipelines load once there.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"


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
        return [f"unlearn: {len(state.submissions)} submission(s), {len(state.cases)} case(s), cache {state.cache}" + (" [smoke]" if state.smoke else "")]


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
    executor = make_executor(state.executor, state.ray_address)
    ev = Evaluator(state.root, state.cache, state.device, state.allow_pickle, state.smoke, progress=True, executor=executor, compile=state.compile)
    yield state, ev
    executor.close()  # shuts down a Ray instance only if this session started it


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def check_case(case, unlearn_evaluator, record_property) -> None:
    """Run (or reuse) the case's suite, attach the record to the report, assert the verdict."""
    state, evaluator = unlearn_evaluator
    sub = state.submissions[case.submission]
    try:
        result = evaluator.run(case.submission, sub, case.suite)
    except HarnessError as e:
        rec = {"suite": case.suite, "metric": case.metric, "target": case.target.concept, "verdict": "error", "error": str(e)}
        record_property("unlearn", json.dumps({"submission": case.submission, "record": rec, "suite": None}))
        pytest.fail(f"error: {e}", pytrace=False)
    rec = next(r for r in result["metrics"] if r["metric"] == case.metric and r["target"] == case.target.concept)
    record_property("unlearn", json.dumps({"submission": case.submission, "record": rec, "suite": result["suite"]}, default=float))
    label = f"{rec.get('label', case.metric)} for {case.target.concept}"
    if rec["verdict"] == "error":
        pytest.fail(f"error: {label}: {rec['error']}", pytrace=False)
    if rec["verdict"] == "fail":
        pytest.fail(f"{label} = {_fmt(rec['value'])}, needs {rec['threshold']} (bound {_fmt(rec['bound'])}; base model {_fmt(rec['base_value'])})", pytrace=False)


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
        from .results import build, write

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
                    s["suite"] = {"id": s["metrics"][0]["suite"], "error": "the suite did not run"}
            complete = len(mine) == len(planned) and exitstatus != pytest.ExitCode.INTERRUPTED
            data = build(path, sub, state.root, list(suites.values()), versions, complete, state.started)
            data["environment"]["device"] = sorted({s["suite"].get("device") for s in suites.values() if s["suite"].get("device")})
            out = Path(state.results.replace("{submission}", sub.name)) if state.results else state.root / "results" / sub.name / f"{stamp}.json"
            if not out.is_absolute():
                out = Path(self.config.invocation_params.dir) / out
            try:
                write(out, data)
            except OSError as e:  # disk full, read-only folder: one line, and the other submissions still written
                import sys

                print(f"unlearn: error: --unlearn-results: cannot write {out}: {e.strerror or e}", file=sys.stderr)
                session.exitstatus = 2
                continue
            state.written.append((sub.name, out, data))

    def pytest_terminal_summary(self, terminalreporter):
        if hasattr(self.config, "workerinput") or not self.state.written:
            return
        tr = terminalreporter
        tr.section("unlearn results")
        head = f"{'suite':<16} {'metric':<17} {'target':<14} {'value':>8} {'base':>8} {'threshold':<16} verdict"
        for name, out, data in self.state.written:
            tr.write_line(f"{name}" + ("" if data["complete"] else "  (incomplete)"))
            tr.write_line("  " + head)
            for r in data["metrics"]:
                tr.write_line(
                    f"  {r['suite']:<16} {r.get('label', r['metric']):<17} {r['target']:<14} {_fmt(r.get('value')):>8} "
                    f"{_fmt(r.get('base_value')):>8} {str(r.get('threshold') or '-'):<16} {r['verdict'].upper()}"
                )
            tr.write_line(f"  results: {out}")
