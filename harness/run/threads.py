"""How many torch threads a run uses: chosen for the machine's load, not every core.

Oversubscription is the slow case on a shared machine (one run measured 30x slower with every
core claimed by several processes). The choice, in order:

1. ``UNLEARN_THREADS`` when set (a positive integer);
2. else the cores this process may run on (``sched_getaffinity``), divided among the
   pytest-xdist workers of the run (``PYTEST_XDIST_WORKER_COUNT``), and capped by what the
   other processes leave free: ``cores - load`` (rounded), at least 1. ``load`` is the cores the
   OTHER processes keep busy now: the busy share of this process's cores in ``/proc/stat`` over
   a short sample (``SAMPLE_S``), less this process's own CPU time in it. Not the 1-minute load
   average, which counts this process itself and whatever ran before it: ``make demo`` right
   after its ``pip install``, on an idle 2-core machine, saw a load of 1.0 and ran with one
   thread. Where ``/proc/stat`` cannot be read, the load average is the fallback.

Importing this module also asks OpenMP for a passive wait policy (``OMP_WAIT_POLICY=PASSIVE``,
unless set) so idle worker threads sleep instead of spinning on cores other processes need;
it takes effect when torch has not started its thread pool yet.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SAMPLE_S = 0.3  # how long the other processes' CPU use is sampled
_SAMPLED: tuple[float, float] | None = None  # (when, load): one sample serves a start-up's calls


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies of the given cores since boot, from /proc/stat."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    busy = total = 0
    seen = 0
    try:
        for line in lines:
            name, *vals = line.split() or [""]
            if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpus:
                continue
            v = [int(x) for x in vals[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(v)
            busy += sum(v) - v[3] - v[4]
            seen += 1
    except (ValueError, IndexError):  # a /proc/stat of another shape (a sandbox): the load average instead
        return None
    return (busy, total) if seen else None


def others_load(sample_s: float = SAMPLE_S) -> float | None:
    """The cores that other processes keep busy now (see the module docstring); None where
    ``/proc/stat`` is not there. Sampled once per process start-up (reused for 10 s)."""
    global _SAMPLED
    now = time.monotonic()
    if _SAMPLED is not None and now - _SAMPLED[0] < 10:
        return _SAMPLED[1]
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    a, t0, own0 = _cpu_times(cpus), time.monotonic(), sum(os.times()[:2])
    if a is None:
        return None
    time.sleep(sample_s)
    b, t1, own1 = _cpu_times(cpus), time.monotonic(), sum(os.times()[:2])
    if b is None or b[1] <= a[1]:
        return None
    share = (b[0] - a[0]) / (b[1] - a[1])  # of the cores' time, busy
    load = max(0.0, share * len(cpus) - (own1 - own0) / max(1e-3, t1 - t0))
    _SAMPLED = (time.monotonic(), load)
    return load


def choose(workers: int | None = None, load: float | None = None) -> tuple[int, str]:
    """(threads, why): see the module docstring."""
    env = os.environ.get("UNLEARN_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n >= 1:
            return n, "UNLEARN_THREADS"
    c = cores()
    w = workers if workers is not None else int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    share = max(1, c // max(1, w))
    what = "load"
    if load is None:
        load = others_load()
        what = "other processes' load"
    if load is None:
        what = "load average"
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    free = max(1, int(c - load + 0.5))
    n = max(1, min(share, free))
    return n, f"{c} core(s), {w} worker(s), {what} {load:.1f}"


def apply(workers: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads to ``choose()``; returns what was chosen."""
    import torch

    n, why = choose(workers)
    torch.set_num_threads(n)
    return n, why
