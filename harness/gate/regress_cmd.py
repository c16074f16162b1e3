"""``unlearn regress --submission YAML --method-cmd "..."``: gate your own method in CI.

The reference methods' gate (``harness.gate.regression``) re-runs ``unlearn erase``; a researcher's
method is their own command. This re-runs it and gates the checkpoint it makes, without editing
the submission YAML:

1. the command runs in the repository root (``sh -c``), with ``{out}`` (shell-quoted) and
   ``$UNLEARN_OUT`` a fresh folder ``<out>/checkpoints/<name>/`` (``<out>``: a new or empty folder,
   or one an earlier ``unlearn regress`` made: ``fsutil.claim_dir``); it writes the new checkpoint there under the
   same name as the submission's ``checkpoint.path`` (e.g. ``unet.safetensors``), and may write
   a ``method.json`` beside it. A command without ``{out}`` rewrites ``checkpoint.path`` itself;
2. the new checkpoint's sha256 is computed (``unlearn hash``'s function) and a copy of the YAML
   pointing at it (path, sha256, and the new method.json when there is one) is written to
   ``<out>/submissions/<name>.yaml``;
3. the harness evaluates that copy (pytest + the plugin, in a subprocess, own empty image cache)
   into ``<out>/results/<name>.json``;
4. ``unlearn compare`` against the baseline: ``--baseline FILE``, else the newest results of the
   same submission name in ``leaderboard/results/`` or ``results/<name>/`` made with the same
   method. Exit 1 on a regression, 0 otherwise; the run's sha256 is printed and recorded.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import yaml

from harness.gate.compare import compare, format_rows, gate_failures, load_result
from harness.errors import HarnessError
from harness.store.fsutil import claim_dir, remove_inside
from harness.store.hashing import sha256_file, sha256_tree
from harness.gate.rerun import run_harness
from harness.spec import SpecErrors, inside, load_submission


def find_baseline(root: Path, name: str, method: str) -> Path:
    """The newest results file of submission ``name`` made with ``method``."""
    found = []
    for p in [*(root / "leaderboard" / "results").glob("*.json"), *(root / "results" / name).glob("*.json")]:
        try:
            r = load_result(p)
        except HarnessError:
            continue
        s = r["submission"]
        if s.get("name") == name and s.get("method", {}).get("name") == method and r.get("complete", True):
            found.append((str(r.get("finished") or ""), p))
    if not found:
        raise HarnessError(f"--baseline: no complete results of submission {name!r} (method {method!r}) in leaderboard/results/ or results/{name}/; "
                           "run the harness once on it, or give --baseline FILE")
    return max(found)[1]


def regress_own(root: Path, submission: str, method_cmd: str, out: Path, baseline: str | None = None, pytest_args: list[str] | None = None,
                timeout: float | None = None) -> int:
    root = root.resolve()
    sub_path = Path(submission)
    try:
        sub = load_submission(sub_path)
    except SpecErrors as e:
        raise HarnessError(e.lines[0]) from None
    if sub.checkpoint is None:
        raise HarnessError(f"{submission}: method {sub.method.name} is an inference-time method: there is no checkpoint to re-make "
                           "(`unlearn regress` re-evaluates it against its committed results without --method-cmd)")
    if not sub.checkpoint.path:
        raise HarnessError(f"{submission}: checkpoint.path: --method-cmd needs a local checkpoint path (this one is a URL)")
    base_file = Path(baseline) if baseline else find_baseline(root, sub.name, sub.method.name)
    base = load_result(base_file)
    if base["submission"].get("method", {}).get("name") != sub.method.name:
        raise HarnessError(f"--baseline {base_file}: made with method {base['submission'].get('method', {}).get('name')!r}, not {sub.method.name!r}")
    out = (root / out).resolve()
    if not out.is_relative_to(root):
        raise HarnessError(f"--out {out}: must be inside the repository {root}")
    old = inside(root, sub.checkpoint.path, "checkpoint.path")
    if old == out or old.is_relative_to(out) or out.is_relative_to(old):
        raise HarnessError(f"--out {out.relative_to(root)}: holds (or is) the submission's checkpoint {sub.checkpoint.path}; give another folder")
    claim_dir(out, "--out", "unlearn regress")  # new, empty, or an earlier regress's: nothing else is deleted
    ck_dir = out / "checkpoints" / sub.name
    remove_inside(out, ck_dir)  # inside the folder regress made (never through a link)
    ck_dir.mkdir(parents=True)
    in_place = "{out}" not in method_cmd
    cmd = method_cmd.replace("{out}", shlex.quote(str(ck_dir)))  # a folder name is one word of the shell command, never code
    print(f"{sub.name}: running the method: {cmd}", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(["sh", "-c", cmd], cwd=root, env={**os.environ, "UNLEARN_OUT": str(ck_dir)}, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        raise HarnessError(f"--method-cmd: did not finish in {timeout:g} s") from None
    if rc != 0:
        raise HarnessError(f"--method-cmd: exited with status {rc}")
    new = old if in_place else ck_dir / old.name
    if not new.exists():
        raise HarnessError(f"--method-cmd: wrote no checkpoint at {new.relative_to(root)} (write it to {{out}}/{old.name})")
    sha = sha256_tree(new) if new.is_dir() else sha256_file(new)
    data = yaml.safe_load(sub_path.read_text(encoding="utf-8"))
    data["checkpoint"] = {**data["checkpoint"], "path": new.relative_to(root).as_posix(), "sha256": sha}
    if (ck_dir / "method.json").is_file():
        data["method_record"] = (ck_dir / "method.json").relative_to(root).as_posix()
    same = sha == sub.checkpoint.sha256
    print(f"{sub.name}: method ran in {time.perf_counter() - t0:.1f} s; checkpoint sha256 {sha} "
          f"({'identical to' if same else 'differs from'} the one the YAML pins)", flush=True)
    (out / "submissions").mkdir(parents=True, exist_ok=True)
    new_sub = out / "submissions" / f"{sub.name}.yaml"
    new_sub.write_text(f"# re-made by `unlearn regress --method-cmd` from {submission}; checkpoint sha256 as the run made it\n"
                       + yaml.safe_dump(data, sort_keys=False))
    result = out / "results" / f"{sub.name}.json"
    result.unlink(missing_ok=True)
    log = out / "logs" / f"{sub.name}.log"
    remove_inside(out, out / "cache")
    rc = run_harness(root, [new_sub], result, cache=out / "cache", extra=pytest_args, log=log)
    print(f"{sub.name}: evaluated (harness exit {rc}; log {log.relative_to(root)})", flush=True)
    if not result.is_file():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"{sub.name}: the harness wrote no results; the end of its log:\n  " + "\n  ".join(tail), flush=True)
        return 1
    rows = compare(load_result(result), base)
    print(f"\n== {sub.name} (checkpoint {sha[:12]}) vs {base_file}")
    print(format_rows(rows))
    bad = gate_failures(rows)
    print(f"\nregression gate: {len(bad)} of {len(rows)} metrics regressed or missing" if bad else f"\nregression gate: no regression in {len(rows)} metrics")
    return 1 if bad else 0
