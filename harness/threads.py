"""How many torch threads a run uses: chosen for the machine's load, not every core.

Oversubscription is the slow case on a shared machine (one run measured 30x slower with every
core claimed by several processes). The choice, in order:

1. ``UNLEARN_THREADS`` when set (a positive integer);
2. else the cores this process may run on (``sched_getaffinity``), divided among the
   pytest-xdist workers of the run (``PYTEST_XDIST_WORKER_COUNT``), and capped by what the
   other processes leave free: ``cores - load`` (the 1-minute load average, rounded), at least 1.

Importing this module also asks OpenMP for a passive wait policy (``OMP_WAIT_POLICY=PASSIVE``,
unless set) so idle worker threads sleep instead of spinning on cores other processes need;
it takes effect when torch has not started its thread pool yet.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


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
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    free = max(1, int(c - load + 0.5))
    n = max(1, min(share, free))
    return n, f"{c} core(s), {w} worker(s), load {load:.1f}"


def apply(workers: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads to ``choose()``; returns what was chosen."""
    import torch

    n, why = choose(workers)
    torch.set_num_threads(n)
    return n, why
