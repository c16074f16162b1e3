"""The pytest face of the harness: options, parametrization, fixtures, progress, the results hooks.

Thin on purpose: each hook is a few lines over the run's ``harness.plugin.session.Session`` (its state,
the start-up checks, the results writing); the work is in ``harness.run.evaluate``. Option values
are parsed by the ``type=`` callables of ``harness.options`` (shared with the CLI) when pytest
reads its command line, and everything that depends on several
options or on the files is checked when pytest starts (``pytest_configure``), before any model
loads; a bad value is a one-line usage error. Each test case carries its metric record in
``user_properties``, so under pytest-xdist the controller receives every worker's records with
the reports and writes one complete JSON. Without ``--unlearn-submission`` the plugin runs
nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import options as _options
from harness.plugin import session as _session
from harness.run import threads as _threads  # noqa: F401 - sets OMP_WAIT_POLICY=PASSIVE before torch starts its pool
from harness.plugin.session import Session

CASES_FILE = str(Path(__file__).with_name("cases.py"))
STATE = pytest.StashKey[Session]()


def _typed(flag: str, parse):
    return _options.typed(flag, parse, pytest.UsageError)


def pytest_addoption(parser):
    g = parser.getgroup("unlearn", "unlearn-harness: evaluate concept erasure in text-to-image models")
    g.addoption("--unlearn-submission", action="append", default=[], metavar="YAML", help="submission to evaluate (repeatable)")
    g.addoption("--unlearn-suite", action="append", default=[], metavar="ID", help="run only these suites (repeatable)")
    g.addoption("--unlearn-smoke", action="store_true", help="run each suite's smoke subset")
    g.addoption("--unlearn-results", type=_typed("--unlearn-results", _options.results_path), metavar="PATH",
                help="results JSON (default results/<submission>/<timestamp>.json; '{submission}' is replaced)")
    g.addoption("--unlearn-cache", metavar="DIR", help="image cache (default .unlearn-cache in the rootdir, or $UNLEARN_CACHE)")
    g.addoption("--unlearn-device", default="auto", type=_typed("--unlearn-device", _options.device), metavar="DEV", help="auto, cpu, cuda or cuda:N (default auto)")
    g.addoption("--unlearn-allow-pickle", action="store_true", help="allow pickle checkpoints (.ckpt/.bin/.pt): only for files you trust")
    g.addoption("--unlearn-executor", default="local", type=_typed("--unlearn-executor", _options.executor), metavar="NAME",
                help="where images are generated: local (this process, default) or ray (Ray tasks)")
    g.addoption("--unlearn-ray-address", type=_typed("--unlearn-ray-address", _options.ray_address), metavar="ADDR",
                help="Ray cluster for --unlearn-executor ray (default $RAY_ADDRESS, else a new local instance)")
    g.addoption("--unlearn-compile", action="store_true", help="torch.compile the UNet (worth it on a GPU for large suites)")
    g.addoption("--unlearn-strict", action="store_true", help="an inconclusive verdict (the 95%% interval straddles the bound) fails its case instead of skipping")
    g.addoption("--unlearn-debug", action="store_true", help="show the full traceback of an unexpected error in a case (default: one line; -v shows it too)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if not config.getoption("unlearn_submission", default=None):
        return
    _pin_worker_gpu(config)
    _check_pytest_cache(config)
    state = config.stash[STATE] = _session.start(config)
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
        raise pytest.UsageError(f"{d}: pytest's cache folder is a symbolic link; remove it (or run with -p no:cacheprovider)")


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
        return _session.header_lines(config, state)


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
    from harness.run.evaluate import Evaluator
    from harness.run.ray_executor import make_executor

    state = request.config.stash[STATE]
    state.threads = _threads.apply()  # for this process's share of the machine (harness/run/threads.py)
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
    cache (``harness.run.estimate``) for the next run's estimate."""

    EVERY = 10.0

    def __init__(self, config, state: Session):
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

    def bar(self, desc: str, jobs: list, unit: str = "images"):
        """A phase's line: ``unit`` "images" (generation: its speed is noted for estimates) or
        another count (the prompt attacks' items: shown, not noted)."""
        import time

        from harness.run import estimate

        owner = self
        images = unit == "images"
        if self.device is None:
            self.device = estimate.device_key(estimate.resolve_device(self.state.device))

        class _Bar:
            def __init__(self):
                self.t0 = self.last = time.perf_counter()
                self.first = None  # (time, done) after the first batch: the rate excludes loading
                self.done, self.total = 0, len(jobs)
                self.steps = jobs[0].steps if jobs and images else 0
                self.size = (jobs[0].height, jobs[0].width) if jobs and images else (0, 0)
                if not images and self.total:  # an attack's items finish late: say it started
                    owner._write(f"unlearn: {desc}: attacking {self.total} {unit}")

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
                if images:
                    speed = f"{self.done / el:.1f} img/s" if el > 0 and self.done else "loading"
                else:
                    speed = f"{el / self.done:.1f} s per item" if self.done else "running"
                return f"unlearn: {desc}: {self.done}/{self.total} {unit} ({speed}, {estimate.fmt_duration(el)}{left})"

            def close(self) -> None:
                if not self.total:
                    return
                now = time.perf_counter()
                el = now - self.t0
                owner._write(self.line(now))
                if not images:
                    return
                suite = desc.split(" ")[0]
                owner.generation_s[suite] = owner.generation_s.get(suite, 0.0) + el
                if self.done:
                    estimate.note(owner.state.cache, estimate.gen_key(owner.device, *self.size), el, self.done * self.steps)

        return _Bar()


def check_case(case, unlearn_evaluator, request) -> None:
    """The body of every metric case (``harness.plugin.cases``): ``harness.plugin.session.check_case``."""
    _session.check_case(case, unlearn_evaluator, request)


class Reporter:
    """Controller-side: gathers the records from the reports (local or from xdist workers),
    writes one results JSON per submission, prints the summary table."""

    def __init__(self, state: Session, config):
        self.state = state
        self.config = config

    def pytest_runtest_logreport(self, report):
        self.state.add_record(report)

    def pytest_sessionfinish(self, session, exitstatus):
        if hasattr(self.config, "workerinput") or self.config.option.collectonly:
            return  # an xdist worker (its records travel with the reports), or nothing ran
        _session.write_results(self.state, self.config, session, exitstatus)

    def pytest_terminal_summary(self, terminalreporter):
        if hasattr(self.config, "workerinput") or not self.state.written:
            return
        terminalreporter.section("unlearn results")
        for line in _session.summary_lines(self.state):
            terminalreporter.write_line(line)
