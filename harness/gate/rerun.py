"""Running the harness as a user does, in a subprocess: ``python -m pytest --unlearn-submission
...``. ``unlearn leaderboard refresh`` and ``unlearn regress`` both make their results this way,
so what lands in ``leaderboard/results/`` and what the regression gate compares it with come
from the same command a user types, with the plugin's own collection."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def run_harness(root: Path, submissions: Sequence[str | Path], results: str | Path, *, cache: str | Path | None = None,
                workers: int | None = None, extra: list[str] | None = None, log: Path | None = None, echo: bool = False,
                env_extra: dict[str, str] | None = None) -> int:
    """pytest + the plugin on ``submissions`` (paths as the caller sees them: absolute, or
    relative to the current folder);
    ``results`` is the ``--unlearn-results`` path (``{submission}`` is replaced). Returns pytest's
    exit status: 0 all passed, 1 some metric failed its threshold (still a complete run), other
    values an error. With ``log`` the output goes to that file (a negative control's expected
    failures would otherwise read as failed tests in a CI log). Offline unless HF_HUB_OFFLINE
    says otherwise."""
    root = Path(root).resolve()
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(root),
           *(["-n", str(workers)] if workers else [])]
    for s in submissions:
        p = Path(s).resolve()  # the plugin takes paths relative to the rootdir
        cmd += ["--unlearn-submission", p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)]
    cmd += ["--unlearn-results", str(results)]
    if cache is not None:
        cmd += ["--unlearn-cache", str(cache)]
    cmd += list(extra or [])
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **(env_extra or {})}
    if echo:
        print("running: " + " ".join(cmd), flush=True)
    if log is None:
        return subprocess.run(cmd, cwd=root, env=env).returncode
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        return subprocess.run(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
