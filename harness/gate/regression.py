"""The regression gate for the reference methods: ``unlearn regress``.

For every committed baseline (``leaderboard/results/<submission>.json``, written by the harness
through ``unlearn leaderboard refresh``) whose submission is a reference method's toy checkpoint:

1. re-run the method (``run_erase`` with the method, concept, anchor and parameters its
   ``method.json`` recorded) into ``<out>/checkpoints/<name>/``;
2. write a copy of the submission YAML pointing at the new checkpoint (path and sha256) into
   ``<out>/submissions/`` (inside the repository, as the harness requires);
3. evaluate it with the harness itself (pytest + the plugin, in a subprocess, with its own image
   cache so nothing is reused from earlier runs) into ``<out>/results/<name>.json``;
4. compare it with the baseline (``harness.gate.compare``: a metric that moved the wrong way by more
   than its suite's tolerance, or that went missing, fails the gate).

Submissions without a method record (the ``toy-base`` control, an inference-time method's) are
re-evaluated as they are; ``--method NAME`` selects an inference-time method's by its name.
The exit status is 1 when anything regressed, 0 otherwise.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import yaml

from harness.gate.compare import compare, current_rules, format_rows, gate_failures, load_result, refuse_mismatch
from harness.results.io import results_files
from harness.errors import HarnessError
from harness.gate.rerun import run_harness
from harness.results.assemble import MEASURED_ENV
from harness.results.assemble import load_method_record
from harness.spec import SpecErrors, inside, load_submission


def method_record(root: Path, rel: str) -> dict:
    """The submission's ``method.json``, with the fields a re-run needs, or a one-line error."""
    record = load_method_record(root, rel)
    try:
        record["method"], record["concept"], record["base"]["path"], record["params"]
    except (KeyError, TypeError) as e:
        raise HarnessError(f"method_record: {rel}: not a method record of `unlearn erase` (no {e})") from None
    return record


def remake_checkpoint(root: Path, sub: dict, record: dict, out: Path, seed: int | None = None) -> dict:
    """Re-run the reference method of ``record`` (the submission's method.json); returns the
    submission dict pointing at the new checkpoint. ``seed`` replaces the recorded training
    seed (``--method-seeds``: the method's own variance)."""
    from harness.store.hashing import sha256_file
    from harness.methods import erase_repeated, run_erase_isolated
    from harness.toy.paths import PIPELINES, world_of_base

    world = world_of_base(record["base"]["path"])
    if world is None:
        raise HarnessError(f"{sub['method_record']}: base {str(record['base']['path'])[:80]!r} is not a toy world's ({', '.join(PIPELINES)})")
    DEFAULT_DIR = PIPELINES[world]
    ck_dir = out / "checkpoints" / (sub["name"] if seed is None else f"{sub['name']}-seed{seed}")
    params = record["params"] if seed is None else {**record["params"], "seed": seed}
    from harness.toy.submissions import TOY_THREADS

    # the thread count the checkpoint was made with (older records: the toy checkpoints' one thread)
    eff = record.get("efficiency") or {}
    threads = eff.get("threads", TOY_THREADS)
    threads = TOY_THREADS if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 256:  # a PR's method.json: bounded
        raise HarnessError(f"{sub['method_record']}: efficiency.threads: {str(threads)[:40]!r} is not a thread count from 1 to 256")
    # a record made with `unlearn erase --repeats N` is re-made N times (its efficiency figures get their spread)
    reps = eff.get("repeats", {}).get("n", 1) if isinstance(eff.get("repeats"), dict) else 1
    if isinstance(reps, bool) or not isinstance(reps, int) or not 1 <= reps <= 20:
        raise HarnessError(f"{sub['method_record']}: efficiency.repeats.n: {str(reps)[:40]!r} is not a count from 1 to 20")
    # the record's prompt source (records made before it was recorded: the toy templates)
    source, kind = record.get("prompt_source", "toy"), record.get("concept_kind")
    if source not in ("authors", "toy", "generic") or kind not in (None, "style", "object"):
        raise HarnessError(f"{sub['method_record']}: prompt_source / concept_kind: {str(source)[:20]!r} / {str(kind)[:20]!r} is not one `unlearn erase` writes")
    kw = dict(anchor=record.get("anchor"), world=source, kind=kind, force=True, params=params, preset=record.get("preset"), threads=threads)
    if reps > 1 and seed is None:
        new = erase_repeated(reps, record["method"], DEFAULT_DIR, record["concept"], ck_dir, **kw)
    else:
        new = run_erase_isolated(record["method"], DEFAULT_DIR, record["concept"], ck_dir, **kw)
    ck = ck_dir / new["checkpoint"]["file"]
    new_sub = dict(sub)
    new_sub["checkpoint"] = {**sub["checkpoint"], "path": str(ck.relative_to(root)), "sha256": sha256_file(ck)}
    new_sub["method_record"] = str((ck_dir / "method.json").relative_to(root))
    if seed is None:
        print(f"{sub['name']}: re-ran {record['method']} on {record['concept']!r} in {new['efficiency']['time_s']:.1f} s; "
              f"checkpoint {checkpoint_verdict(root, sub, ck_dir)}", flush=True)
    else:
        print(f"{sub['name']}: re-trained {record['method']} with seed {seed} in {new['efficiency']['time_s']:.1f} s", flush=True)
    return new_sub


def checkpoint_verdict(root: Path, sub: dict, made_dir: Path) -> str:
    """The re-made checkpoint against the committed one, by harness.run.reproduce's rule: bitwise
    where the committed method.json records this platform, else within the method's tolerance.
    Informative: a checkpoint that differs is no failure by itself (float rounding compounds
    over a fine-tuning run); the metrics compared below decide the gate."""
    from harness.methods import method_tolerance
    from harness.run.reproduce import compare_checkpoint

    try:
        committed = inside(root, sub["method_record"], "method_record").parent
        c = compare_checkpoint(made_dir, committed, method_tolerance)
    except (HarnessError, OSError, ValueError) as e:
        return f"not compared with the committed one ({str(e)[:200]}); the metrics below decide"
    if c.status == "identical":
        return "identical to the committed one (bitwise)"
    if c.ok:
        return f"{c.line()} to the committed one"
    return f"{c.line()} from the committed one; the metrics below decide"


def method_spread(results: list[dict]) -> list[dict]:
    """Per (suite, metric, target): the values over the method-seed runs, their mean, standard
    deviation (n - 1) and range: the variance of a stochastic method itself."""
    import statistics

    keyed: dict[tuple, list[float]] = {}
    for res in results:
        for m in res.get("metrics", []):
            if isinstance(m.get("value"), (int, float)):
                keyed.setdefault((m["suite"], m.get("label", m["metric"]), m["target"]), []).append(float(m["value"]))
    return [{"suite": k[0], "metric": k[1], "target": k[2], "values": v, "mean": statistics.fmean(v),
             "sd": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v), "max": max(v)} for k, v in keyed.items()]


def format_spread(rows: list[dict]) -> str:
    lines = [f"{'suite':<18} {'metric':<17} {'target':<14} {'mean':>9} {'sd':>8} {'min':>9} {'max':>9}  runs"]
    for r in rows:
        lines.append(f"{r['suite']:<18} {r['metric']:<17} {r['target']:<14} {r['mean']:>9.4f} {r['sd']:>8.4f} {r['min']:>9.4f} {r['max']:>9.4f}  {len(r['values'])}")
    return "\n".join(lines)


def regress(root: Path, baselines: Path, out: Path, methods: set[str] | None = None, only: set[str] | None = None,
            pytest_args: list[str] | None = None, method_seeds: int = 1) -> int:
    """Re-run and compare every baseline; print one table per submission and a last line.
    ``pytest_args`` go to each harness run (e.g. ``--unlearn-smoke``, ``--unlearn-suite ID``:
    the baselines must then have been made with the same ones)."""
    root, out, baselines = root.resolve(), (root / out).resolve(), (root / baselines).resolve()
    files = results_files(baselines)
    if not files:
        raise HarnessError(f"{baselines}: no baseline results (*.json)")
    if not out.is_relative_to(root):
        raise HarnessError(f"--out {out}: must be inside the repository {root}")
    from harness.store.fsutil import claim_dir

    claim_dir(out, "--out", "unlearn regress")  # new, empty, or an earlier regress's: nothing else is replaced
    (out / "submissions").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(parents=True, exist_ok=True)
    # From scratch, outside the checkout: a cached image would hide a change in generation, and a
    # cache folder inside the repository could have been committed by a pull request.
    cache = Path(tempfile.mkdtemp(prefix="unlearn-regress-cache-"))
    try:
        return _regress(root, files, out, cache, methods, only, pytest_args, method_seeds)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _regress(root: Path, files: list[Path], out: Path, cache: Path, methods, only, pytest_args, method_seeds: int = 1) -> int:
    failed: list[str] = []
    total = 0
    for f in files:
        base = load_result(f)
        rel = base["submission"].get("file")
        if not rel:
            raise HarnessError(f"{f}: submission.file is missing: which submission made this baseline?")
        sub_file = inside(root, rel, f"{f.name}: submission.file")
        try:
            load_submission(sub_file)  # the schema, before anything is re-run from it
        except SpecErrors as e:
            raise HarnessError(e.lines[0]) from None
        sub = yaml.safe_load(sub_file.read_text())
        name = sub["name"]
        record_remade = False
        if only and name not in only:
            continue
        if sub.get("method_record"):
            record = method_record(root, sub["method_record"])
            if methods is not None and record["method"] not in methods:
                continue
            sub = remake_checkpoint(root, sub, record, out)
            record_remade = True  # its method.json was written just now by the harness (unlearn erase): measured
        elif methods is not None and "control" not in methods and (sub.get("method") or {}).get("name") not in methods:
            continue  # no method record: the control, or an inference-time method (selected by its name)
        new_sub_file = out / "submissions" / f"{name}.yaml"
        new_sub_file.write_text(f"# re-made by `unlearn regress` from {base['submission']['file']}\n" + yaml.safe_dump(sub, sort_keys=False))
        result = out / "results" / f"{name}.json"
        result.unlink(missing_ok=True)
        total += 1
        log = out / "logs" / f"{name}.log"
        t0 = time.perf_counter()
        measured = {MEASURED_ENV: str(root / sub["method_record"])} if sub.get("method_record") and record_remade else None
        rc = run_harness(root, [new_sub_file], result, cache=cache, extra=pytest_args, log=log, env_extra=measured)
        print(f"{name}: evaluated in {time.perf_counter() - t0:.0f} s (harness exit {rc}{' = some metric below its threshold, a verdict' if rc == 1 else ''}; log {log.relative_to(root)})", flush=True)
        if not result.is_file():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(f"{name}: the harness wrote no results; the end of its log:\n  " + "\n  ".join(tail), flush=True)
            failed.append(name)
            continue
        new_result = load_result(result)
        refuse_mismatch(new_result, base, allow={"checkpoint"})  # the checkpoint is re-made on purpose
        rows = compare(new_result, base, current_rules(root))
        print(f"\n== {name} vs {f}")
        print(format_rows(rows), flush=True)
        if gate_failures(rows):
            failed.append(name)
        if method_seeds > 1 and sub.get("method_record"):
            spread_of(root, out, name, sub, base, record, method_seeds, pytest_args, load_result(result))
    if total == 0:
        raise HarnessError("no baseline matched the selection")
    if method_seeds > 1:
        print("\n(--method-seeds: the gate above used the recorded seed; the spread tables show the method's own variance)")
    print(f"\nregression gate: {len(failed)} of {total} submissions regressed: {', '.join(failed)}"
          if failed else f"\nregression gate: no regression in {total} submissions")
    return 1 if failed else 0


def spread_of(root: Path, out: Path, name: str, sub: dict, base: dict, record: dict, n: int, pytest_args, first: dict) -> list[dict]:
    """``--method-seeds N``: re-train with N - 1 more training seeds (recorded seed + 1, + 2,
    ...), evaluate each, print the spread of every metric over the N runs and write it to
    ``<out>/results/<name>.method-seeds.json``."""
    import json

    seed0 = int(record["params"].get("seed", 0))
    runs, seeds, failed = [first], [seed0], []
    for k in range(1, n):
        s = remake_checkpoint(root, sub, record, out, seed=seed0 + k)
        f = out / "submissions" / f"{name}-seed{seed0 + k}.yaml"
        s = {**s, "name": f"{name}-seed{seed0 + k}"}
        f.write_text(f"# re-made by `unlearn regress --method-seeds` (training seed {seed0 + k})\n" + yaml.safe_dump(s, sort_keys=False))
        res = out / "results" / f"{s['name']}.json"
        res.unlink(missing_ok=True)
        run_harness(root, [f], res, cache=out / "cache", extra=pytest_args, log=out / "logs" / f"{s['name']}.log",
                    env_extra={MEASURED_ENV: str(root / s["method_record"])} if s.get("method_record") else None)
        if res.is_file():
            runs.append(load_result(res))
            seeds.append(seed0 + k)
        else:  # its run wrote no results: the spread is over the seeds that did
            failed.append(seed0 + k)
    rows = method_spread(runs)
    print(f"\n== {name}: spread over {len(runs)} training seeds ({', '.join(map(str, seeds))})"
          + (f"; no results from seed(s) {', '.join(map(str, failed))} (logs in {out / 'logs'})" if failed else ""))
    print(format_spread(rows), flush=True)
    (out / "results" / f"{name}.method-seeds.json").write_text(
        json.dumps({"submission": name, "seeds": seeds, "failed_seeds": failed, "spread": rows}, indent=1) + "\n")
    return rows
