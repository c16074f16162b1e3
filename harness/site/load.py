"""Reading a results folder for the site: every results file that validates, is attested (where
the folder has an ``ATTESTATION.json``), whose verdicts its numbers give and whose name collides
with no other, plus the method-seed spreads that ``unlearn regress --method-seeds N`` writes
(``<name>.method-seeds.json``). Bad files are reported in one line each and skipped."""

from __future__ import annotations

import hashlib
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.results.io import one_line, read_result

ROOT = Path(__file__).resolve().parents[2]  # the checkout: the current suites' thresholds and pins
MAX_SPREAD_BYTES = 8 << 20

Report = Callable[[str], None]


def to_stderr(msg: str) -> None:
    print(f"unlearn: {msg}", file=sys.stderr)


@dataclass
class Run:
    """One accepted results file."""

    file: str  # relative to the results folder, as shown and recorded
    data: dict
    id: str = ""  # short stable id of the file (for the tables)

    @property
    def name(self) -> str:
        return self.data["submission"]["name"]

    @property
    def finished(self) -> str:
        return str(self.data.get("finished") or self.data.get("started") or "")


def load_runs(results: Path, report: Report = to_stderr, require_attestation: bool = False) -> list[Run]:
    """Every results file of ``results`` (``results.io.results_files``: ``*.json``, not
    recursive, regular files) that validates, whose verdicts its numbers and the current suites'
    thresholds give, that the folder's ATTESTATION.json lists (when there is one, or when
    required: then verified with the key, an error without one) with the commit that made it,
    and whose submission name is not a look-alike of an existing entry's; the others are
    reported and skipped (one bad file never stops the build)."""
    from harness.results.attest import attested, bound_problem, current_thresholds, read_manifest, recheck_verdicts
    from harness.results.io import results_files

    manifest = read_manifest(results, required=require_attestation)
    thresholds = current_thresholds(ROOT)
    runs = []
    for p in results_files(results):
        rel = p.relative_to(results).as_posix()
        try:
            if manifest is not None:
                why = attested(p, manifest)
                if why:
                    raise ValueError(why)
            data = read_result(p)
            if manifest is not None and (why := bound_problem(p, data, manifest)):
                raise ValueError(why)
            recheck_verdicts(data, thresholds)
        except (ValueError, OSError, HarnessError, RecursionError, ArithmeticError, TypeError) as e:
            report(f"skipped {p}: {one_line(e)}")
            continue
        from harness.results.attest import pins_problem  # a real result counts only with the suite's own pins

        if (why := pins_problem(data, ROOT)) is not None:
            report(f"skipped {p}: {why}")
            continue
        runs.append(Run(rel, data, hashlib.sha256(rel.encode()).hexdigest()[:10]))
    return drop_lookalikes(runs, results, report, manifest)


def drop_lookalikes(runs: list[Run], results: Path, report: Report, manifest: dict | None) -> list[Run]:
    """The one name rule (``attest.name_key``: case, punctuation, look-alike letters): of names
    that read as one, the existing entry stays and the newcomers are skipped, each with a line.
    The existing entry is the one the checkout's ``submissions/`` names, else the one attested,
    else the one whose first run is oldest (then by name). Never both."""
    from harness.results.attest import existing_names, name_key

    groups: dict[str, dict[str, list[Run]]] = {}
    for r in runs:
        groups.setdefault(name_key(r.name), {}).setdefault(r.name, []).append(r)
    if all(len(g) == 1 for g in groups.values()):
        return runs
    known = existing_names(ROOT)
    drop: set[str] = set()
    for g in groups.values():
        if len(g) < 2:
            continue
        first = lambda n: min(r.finished for r in g[n])
        keep = min(g, key=lambda n: (n not in known, manifest is None or not any(r.file in manifest for r in g[n]), first(n), n))
        for n in sorted(set(g) - {keep}):
            drop.add(n)
            for r in g[n]:
                report(f"skipped {results / r.file}: submission.name {n!r} collides with the existing entry {keep!r} "
                       "(names must differ in more than case, punctuation and look-alike letters)")
    return [r for r in runs if r.name not in drop]


def is_smoke(data: dict) -> bool:
    """A smoke run (``--unlearn-smoke``: each suite's small subset): the run says so, or one of
    its suites does (results written before the run-level field)."""
    return data.get("smoke") is True or any(isinstance(s, dict) and s.get("smoke") is True for s in data.get("suites", []))


def load_spreads(results: Path, names: set[str], report: Report = to_stderr) -> dict[tuple[str, str, str, str], dict]:
    """(submission, suite, metric label, target) -> {n, sd, mean, min, max, values, seeds} from the
    folder's ``*.method-seeds.json`` files (``unlearn regress --method-seeds N``: the spread of
    each metric over N training seeds of the method). A file must be attested like a results
    file where the folder has a manifest and must name a submission of ``names``; the statistics
    are recomputed from its values (a file's own mean and sd are not trusted)."""
    from harness.results.attest import attested, read_manifest
    from harness.results.io import method_seed_files, read_json_file

    manifest = read_manifest(results)
    out: dict[tuple[str, str, str, str], dict] = {}
    for p in method_seed_files(results):
        try:
            if manifest is not None and (why := attested(p, manifest)):
                raise ValueError(why)
            doc = read_json_file(p, MAX_SPREAD_BYTES)
            rows = check_spread(doc, names)
        except (ValueError, OSError, RecursionError) as e:
            report(f"skipped {p}: {one_line(e)}")
            continue
        for r in rows:
            out.setdefault((doc["submission"], *r.pop("key")), r)
    return out


def check_spread(doc, names: set[str]) -> list[dict]:
    """The rows of a method-seeds file, each with its statistics recomputed from ``values``;
    ``ValueError`` (one line, naming the field) for anything else."""
    if not isinstance(doc, dict):
        raise ValueError("(top level): not an object")
    name = doc.get("submission")
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"submission: {str(name)[:80]!r} is not a submission of the accepted results files")
    seeds = doc.get("seeds")
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError("seeds: expected a list of integers")
    if not isinstance(doc.get("spread"), list):
        raise ValueError("spread: expected a list")
    rows = []
    for i, r in enumerate(doc["spread"]):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("suite", "metric", "target")):
            raise ValueError(f"spread.{i}: expected an object with text fields suite, metric, target")
        v = r.get("values")
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise ValueError(f"spread.{i}.values: expected a list of finite numbers")
        if len(v) > len(seeds):
            raise ValueError(f"spread.{i}.values: {len(v)} values for {len(seeds)} seeds")
        if len(v) < 2:  # a metric only one of the seed runs produced: no spread to show
            continue
        v = [float(x) for x in v]
        rows.append({"key": (r["suite"], r["metric"], r["target"]), "n": len(v), "sd": statistics.stdev(v), "mean": statistics.fmean(v),
                     "min": min(v), "max": max(v), "values": v, "seeds": list(seeds)})
    return rows
