"""Generation as Ray tasks, on one machine or a cluster of GPU machines (``--unlearn-executor ray``).

The driver (the pytest process) splits the missing jobs into chunks of the suite's batch size
and submits one Ray task per chunk (``num_gpus=1`` on CUDA, else ``num_cpus=1``). A task loads
the pipeline itself from a small picklable ``PipelineRecipe`` (kept in the worker process for
its next task), makes the images with the same ``run_chunks`` as the local path (CUDA
out-of-memory back-off included), and writes them into the content-addressed image cache; the
driver then reads every image back from the cache, its PNG checked against the sidecar's
sha256. So the cache must be a folder every Ray node sees (a shared filesystem), and every node
needs the harness installed in the same environment; the prompt attacks (below) also read the
repository (the suite's scorer and judge weights) at the driver's absolute path on every node.

A task that fails is retried: Ray's ``max_retries`` covers a dead worker or node, and
``retry_exceptions=True`` with the same bound covers an exception in the task. The attempts
that were retried are counted (from each successful task's attempt number) and recorded.

The prompt attacks of a suite (``harness.attacks.runner``) run as Ray tasks the same way
(``run_attack``): one task per attacked prompt (its seeds together; a textual inversion, whose
one embedding is learned on every forget item, is one task per target). A task loads the
unlearned pipeline from its recipe and the suite's scorer as the judge, runs the attack module
on its items with the local code, and writes each item's record into the shared attack cache
as soon as it is final. The worker's judge must be the driver's (same identity: scorer weights
sha256, threshold), since the records are keyed by it.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import closing
from pathlib import Path

from harness.errors import HarnessError

MAX_RETRIES = 2

_REMOTES: dict = {}  # task function name -> its Ray remote function, made once per process
_LOADED: tuple | None = None  # worker side: (recipe, pipeline) of the last task
_SCORER: tuple | None = None  # worker side: (key, scorer) of the last attack task's judge


def available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _pipeline(recipe):
    """Worker side: the recipe's pipeline, loaded once per worker process and recipe."""
    global _LOADED
    if _LOADED is not None and _LOADED[0] == recipe:
        return _LOADED[1]
    if _LOADED is not None:  # one model (or pair) in memory per worker
        import gc

        import torch

        _LOADED = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    pipe = recipe.load()
    _LOADED = (recipe, pipe)
    return pipe


def _attempt() -> int:
    """The current task's attempt number (0 on the first try). Ray has no public API for it."""
    try:
        from ray._private import worker

        return int(worker.global_worker.core_worker.get_current_task_attempt_number())
    except Exception:  # an older or newer Ray without it: retries go uncounted
        return 0


def _start(recipe):
    """Worker side, at a task's start: (its attempt number, Ray's runtime context), torch given
    as many threads as CPUs Ray gave the task (on CPU)."""
    import ray
    import torch

    ctx = ray.get_runtime_context()
    if recipe.placement.device == "cpu":
        cpus = ctx.get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))
    return _attempt(), ctx


def _task(recipe, jobs, cache_root: str, batch_size: int, runner) -> dict:
    """One chunk of jobs, run on a Ray worker; the images go into the shared cache."""
    from harness.run.generate import ImageCache, RunStats, run_chunks, saved_form, store
    from harness.families.sd1 import describe_pipeline

    attempt, ctx = _start(recipe)
    pipe = _pipeline(recipe)
    cache = ImageCache(cache_root)
    stats = RunStats()
    flags: list[list[str]] = []
    for start, raw, imgs in run_chunks(pipe, jobs, batch_size, runner, stats):
        for job, r, im in zip(jobs[start : start + len(imgs)], raw, imgs):
            flags.append(store(cache, job, r, saved_form(job, im)))
    return {"flags": flags, "attempt": attempt, "oom_backoffs": stats.oom_backoffs, "batch_cap": stats.batch_cap,
            "pipeline": describe_pipeline(pipe), "node": ctx.get_node_id()}


def _scorer(suite, root: str, device: str):
    """Worker side: the suite's scorer, loaded once per worker process and (scorer, device)."""
    global _SCORER
    if suite.scorer is None:
        return None
    key = (suite.scorer.model_dump_json(), root, device)
    if _SCORER is None or _SCORER[0] != key:
        from harness.scorers.classifiers import load_scorer

        _SCORER = None
        _SCORER = (key, load_scorer(suite.scorer, Path(root), device))
    return _SCORER[1]


def _attack_task(task) -> dict:
    """One prompt's attack (or one target's, textual inversion): ``task``, an
    ``attacks.runner.AttackTask`` of those items, run on a Ray worker; each
    item's record goes into the shared attack cache as soon as it is final. The judge is made
    (and compared with the driver's, whose identity keys the records) before anything is
    attacked or written: a node with other scorer files returns ``judge_mismatch``, not retried."""
    from harness.attacks.common import AttackCache
    from harness.scorers.judge import make_judge
    from harness.attacks.runner import attacks
    from harness.families.sd1 import describe_pipeline

    attempt, ctx = _start(task.recipe)
    judge = make_judge(task.suite, _scorer(task.suite, task.root, task.recipe.placement.device), task.target, dict(task.judge_params), Path(task.root))
    if judge.identity != task.judge_identity:
        return {"judge_mismatch": judge.identity, "node": ctx.get_node_id()}
    pipe = _pipeline(task.recipe)
    cache = AttackCache(task.cache_root)
    counter: dict = {}
    keys = task.keys
    recs = attacks()[task.attack].attack(pipe, list(task.items), judge, dict(task.params), False, counter, on_record=lambda i, rec: cache.put(keys[i], rec))
    return {"records": recs, "counter": counter, "attempt": attempt, "node": ctx.get_node_id(), "pipeline": describe_pipeline(pipe)}


def probe_address(address: str | None) -> None:
    """A ``HOST:PORT`` / ``ray://HOST:PORT`` address must accept a TCP connection within
    ``$UNLEARN_RAY_CONNECT_TIMEOUT`` seconds (default 20) before Ray is asked to connect (Ray
    retries a dead address for minutes); ``auto`` / ``local`` / none are left to Ray."""
    import re
    import socket

    if not address:
        return
    m = re.fullmatch(r"(?:ray://)?\[?([\w.:-]+?)\]?:(\d{1,5})", address)
    if not m:
        return
    limit = _seconds_env("UNLEARN_RAY_CONNECT_TIMEOUT", 20)
    host, port = m.group(1), int(m.group(2))
    if not 0 < port < 65536:
        raise HarnessError(f"--unlearn-ray-address {address}: port {port} is out of range")
    try:
        socket.create_connection((host, port), timeout=limit).close()
    except OSError as e:
        raise HarnessError(f"--unlearn-executor ray: nothing answers at {address} within {limit:g} s "
                           f"({e.strerror or type(e).__name__}); is the Ray cluster up? (UNLEARN_RAY_CONNECT_TIMEOUT)") from None


def _seconds_env(name: str, default: float) -> float:
    import math

    raw = os.environ.get(name, str(default))
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not math.isfinite(v) or not 0 < v <= 3600:
        raise HarnessError(f"{name}: {raw[:40]!r} is not a number of seconds from 0 to 3600")
    return v


class _connect_deadline:
    """While ``ray.init`` connects (C++ code that holds the main thread, where Python signal
    handlers, Ray's own SIGTERM handler included, cannot run): a watchdog thread ends the process
    with one line when ``$UNLEARN_RAY_INIT_TIMEOUT`` seconds pass (default 120; exit 2) or a
    SIGTERM / SIGINT arrives (exit 128 + the signal), read from the signal wake-up fd. Only in the
    main thread; nothing is made before the executor connects."""

    def __init__(self, address):
        self.address = address or "a new local instance"

    def __enter__(self):
        import signal
        import threading

        self.active = threading.current_thread() is threading.main_thread()
        if not self.active:
            return self
        limit = _seconds_env("UNLEARN_RAY_INIT_TIMEOUT", 120)
        self.r, self.w = os.pipe()
        self.stop_r, self.stop_w = os.pipe()
        os.set_blocking(self.w, False)
        self.installed = None
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            self.installed = lambda *a: None  # a Python handler, so the C handler writes the wake-up fd
            signal.signal(signal.SIGTERM, self.installed)
        self.old_fd = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        self.thread = threading.Thread(target=self._watch, args=(limit,), daemon=True, name="unlearn-ray-connect")
        self.thread.start()
        return self

    def _watch(self, limit: float):
        import select
        import signal
        import sys

        import time

        end = time.monotonic() + limit
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.r, self.stop_r], [], [], left)
            if self.stop_r in ready:
                return
            if self.r in ready:
                sigs = {b for b in os.read(self.r, 64) if b in (signal.SIGTERM, signal.SIGINT)}
                if sigs:  # other signals (SIGCHLD, ...) are not ours to act on
                    sys.stderr.write(f"unlearn: error: --unlearn-executor ray: stopped by signal {min(sigs)} while connecting to Ray at {self.address}\n")
                    sys.stderr.flush()
                    os._exit(128 + min(sigs))
        sys.stderr.write(f"unlearn: error: --unlearn-executor ray: could not connect to Ray at {self.address} within {limit:g} s "
                         "(UNLEARN_RAY_INIT_TIMEOUT)\n")
        sys.stderr.flush()
        os._exit(2)

    def __exit__(self, *exc):
        import signal

        if not self.active:
            return False
        os.write(self.stop_w, b"x")
        self.thread.join(5)
        signal.set_wakeup_fd(self.old_fd)
        if self.installed is not None and signal.getsignal(signal.SIGTERM) is self.installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for fd in (self.r, self.w, self.stop_r, self.stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        return False


class RayExecutor:
    """Runs generation chunks as Ray tasks. ``address``: a Ray cluster (``auto``,
    ``HOST:PORT``, ``ray://HOST:PORT``); None uses ``RAY_ADDRESS`` if set, else starts a local
    instance. A Ray already initialised in this process is used as it is."""

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = MAX_RETRIES):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.max_retries = max_retries
        self._started = False

    def _connect(self):
        import ray

        if not ray.is_initialized():
            probe_address(self.address)
            with _connect_deadline(self.address):
                try:
                    ray.init(address=self.address, include_dashboard=False, configure_logging=False, log_to_driver=False)
                except Exception as e:  # Ray raises several types for a bad or unreachable address
                    raise HarnessError(f"--unlearn-executor ray: could not connect to Ray at {self.address or 'a new local instance'}: "
                                       f"{' '.join(str(e).split())[:200]}") from None
            self._started = True
        return ray

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def placement(self, device: str, dtype: str, compile: bool = False):
        """Where the tasks run: ``auto`` is CUDA when the cluster has GPUs (asks Ray)."""
        from harness.families.sd1 import Placement

        if device == "auto" or device.startswith("cuda"):
            gpus = self._connect().cluster_resources().get("GPU", 0)
            if device == "auto":
                device = "cuda" if gpus >= 1 else "cpu"
            elif gpus < 1:
                raise HarnessError(f"--unlearn-device {device}: the Ray cluster has no GPU")
            else:
                device = "cuda"  # Ray gives each task its GPU (CUDA_VISIBLE_DEVICES)
        return Placement.choose(device, dtype, compile, local=False)

    def _task(self, fn, recipe):
        """(ray, the remote ``fn`` with this executor's retries and one GPU or CPU per task)."""
        from harness.families.sd1 import PipelineRecipe

        if not isinstance(recipe, PipelineRecipe):
            raise HarnessError(f"the ray executor needs a PipelineRecipe to load the model on its workers (got {type(recipe).__name__})")
        ray = self._connect()
        if fn.__name__ not in _REMOTES:
            _REMOTES[fn.__name__] = ray.remote(fn)
        resources = {"num_gpus": 1} if recipe.placement.device.startswith("cuda") else {"num_cpus": 1}
        return ray, _REMOTES[fn.__name__].options(max_retries=self.max_retries, retry_exceptions=True, **resources)

    def _finished(self, ray, pending: dict, what: str):
        """(unit, result) of each task of ``pending`` (ref -> unit) as it finishes; a task that
        failed every attempt is a one-line HarnessError; whatever is left is cancelled when the
        caller stops (use with ``contextlib.closing``)."""
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    unit = pending.pop(ref)
                    yield unit, ray.get(ref)
        except ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None) or e
            raise HarnessError(f"a Ray {what} task failed after {self.max_retries} retries: {type(cause).__name__}: {cause}") from None
        finally:
            for ref in pending:
                ray.cancel(ref)

    @staticmethod
    def _count(stats, res: dict) -> None:
        """A finished task in the suite's stats: tasks, retried attempts, nodes, pipelines."""
        stats.tasks += 1
        stats.retries += res["attempt"]
        stats.nodes.add(res["node"])
        stats.note_pipeline(res["pipeline"])

    def record(self, stats) -> dict:
        return {"name": self.name, "address": self.address, "tasks": stats.tasks, "retries": stats.retries,
                "nodes": len(stats.nodes), "max_retries": self.max_retries}

    def run(self, jobs, recipe, cache, batch_size: int, runner, stats, advance=lambda n: None, pipelines=None) -> dict:
        """Make the (uncached) jobs as Ray tasks; returns ``{index: (image, flags)}``, each
        image read back from the cache. ``recipe``: what each worker loads (``pipelines``, this
        process's loaded models, is not used: nothing loads here)."""
        from harness.run.generate import group_indices

        out: dict = {}
        if not jobs:
            return out
        ray, task = self._task(_task, recipe)
        size = max(1, min(batch_size, stats.batch_cap or batch_size))
        chunks = [idxs[s : s + size] for idxs in group_indices(jobs) for s in range(0, len(idxs), size)]
        root = str(cache.root.resolve())
        pending = {task.remote(recipe, [jobs[i] for i in c], root, size, runner): c for c in chunks}
        with closing(self._finished(ray, pending, "generation")) as finished:
            for chunk, res in finished:
                self._count(stats, res)
                stats.oom_backoffs += res["oom_backoffs"]
                if res["batch_cap"]:
                    stats.batch_cap = min(stats.batch_cap or res["batch_cap"], res["batch_cap"])
                for i, flags in zip(chunk, res["flags"]):
                    got = cache.get(jobs[i])
                    if got is None:
                        raise HarnessError(f"a Ray task wrote an image the driver cannot read back from the cache {cache.root} "
                                           "(the cache must be on a filesystem every Ray node shares)")
                    out[i] = (got[0], flags)
                advance(len(chunk))
        return out

    def run_attack(self, task, stats, counter: dict, on_record=None, progress: bool = True) -> list[dict]:
        """The records of the attacked items of ``task`` (an ``attacks.runner.AttackTask``; one
        record per item, in order), each of its ``units`` (item indices: one prompt's seeds, or a
        whole target) one Ray task. ``on_record(i, rec)`` as each task's records come back; the
        tasks' counts (UNet calls) are added to ``counter``, tasks and their retries to
        ``stats``."""
        from tqdm.auto import tqdm

        ray, remote = self._task(_attack_task, task.recipe)
        pending = {remote.remote(task.unit(u)): u for u in task.units}
        out: list = [None] * len(task.items)
        bar = tqdm(total=len(task.units), desc=f"{task.attack} (ray tasks)", unit="task", disable=not progress, leave=False)
        with closing(self._finished(ray, pending, f"attack ({task.attack})")) as finished, bar:
            for unit, res in finished:
                if "judge_mismatch" in res:
                    raise HarnessError(f"a Ray attack task's judge on node {res['node']} is {res['judge_mismatch']}, this run's is {task.judge_identity} "
                                       "(every node needs the same scorer files; nothing was attacked there)")
                self._count(stats, res)
                for k, n in res["counter"].items():  # UNet calls (and textual inversion's steps) the task made
                    counter[k] = counter.get(k, 0) + n
                for i, rec in zip(unit, res["records"]):
                    out[i] = rec
                    if on_record is not None:
                        on_record(i, rec)
                bar.update(1)
        return out


def make_executor(name: str, address: str | None = None):
    from harness.run.generate import LocalExecutor

    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise HarnessError(f"--unlearn-executor: {name!r} is not one of local, ray")
