"""Reading a results folder for the site: every results file that validates, is attested (where
the folder has an ``ATTESTATION.json``), whose verdicts its numbers give and whose name collides
with no other, plus the method-seed spreads that ``unlearn regress --method-seeds N`` writes
(``<name>.method-seeds.json``). Bad files are reported in one line each and skipped.

A run's model family (``suite_family``): each suite's ``base_model.family`` where the file
records it; otherwise inferred from the base's label (``builtin:toy-xl`` and a hub id containing
"xl" are SDXL, everything else, every result made before families existed included, SD-1.x).

A run's registry method (``method_key``): the ``method`` key of the method record its submission
names (``submission.method_record``, a ``method.json`` of ``unlearn erase`` in the checkout),
where there is one that can be read; it matches the run to what ``unlearn leaderboard build``
hands the site about the families each registered method does not run on."""

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
DEFAULT_FAMILY = "sd1"  # every result made before families existed is SD-1.x
FAMILY_TITLES = {"sd1": "SD 1.x", "sdxl": "SDXL"}  # the site's short titles; an unknown family is shown as its name
MAX_FAMILY_CHARS = 64
MAX_METHOD_RECORD_BYTES = 1 << 20  # as harness.results.assemble.load_method_record

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
            check_families(data)
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


def family_from_label(label) -> str:
    """The family a base label implies (``suites[].base_model.label``): ``builtin:toy-xl`` and
    ``hub:ID@COMMIT`` whose ID contains "xl" (any case) are ``sdxl``; anything else is ``sd1``."""
    s = str(label or "")
    if s == "builtin:toy-xl":
        return "sdxl"
    if s.startswith("hub:") and "xl" in s[len("hub:"):].split("@")[0].lower():
        return "sdxl"
    return DEFAULT_FAMILY


def submission_label(data: dict) -> str | None:
    """A base label made from the submission's own ``base_model`` (``builtin`` / ``hub_id`` /
    ``local_dir``), for files whose suites carry no ``base_model`` record (older files)."""
    b = (data.get("submission") or {}).get("base_model")
    if not isinstance(b, dict):
        return None
    if b.get("builtin"):
        return f"builtin:{b['builtin']}"
    if b.get("hub_id"):
        return f"hub:{b['hub_id']}@{b.get('revision') or ''}"
    if b.get("local_dir"):
        return f"local:{b['local_dir']}"
    return None


def suite_family(suite, data: dict) -> str:
    """A suite's model family: its ``base_model.family`` where present, else the family its
    ``base_model.label`` implies, else the one the submission's base implies (``sd1`` when
    nothing says)."""
    b = suite.get("base_model") if isinstance(suite, dict) else None
    if isinstance(b, dict):
        if isinstance(b.get("family"), str) and b["family"]:
            return b["family"]
        if b.get("label") is not None:
            return family_from_label(b["label"])
    return family_from_label(submission_label(data))


def run_families(data: dict) -> dict[str, str]:
    """suite id -> model family of every suite of a run."""
    return {s["id"]: suite_family(s, data) for s in data.get("suites") or [] if isinstance(s, dict) and isinstance(s.get("id"), str)}


def run_family(data: dict) -> str:
    """A run's model family: its suites' (the first suite's where they differ), else the submission base's."""
    fams = run_families(data)
    return next(iter(fams.values())) if fams else family_from_label(submission_label(data))


def method_key(data: dict, root: Path = ROOT) -> str | None:
    """The registry name of a run's method: the ``method`` key (text) of the method record its
    submission names (``submission.method_record``, a path relative to ``root``, the checkout);
    None where the result names none, or the file is missing, outside ``root``, not a JSON object
    of at most 1 MiB or has no such key (no match: nothing is claimed about the method)."""
    from harness.results.io import read_json_file
    from harness.store.safefs import inside

    rel = (data.get("submission") or {}).get("method_record")
    if not isinstance(rel, str) or not rel:
        return None
    try:
        rec = read_json_file(inside(root, rel, "method_record"), MAX_METHOD_RECORD_BYTES)
    except (ValueError, OSError, HarnessError, RecursionError):
        return None
    key = rec.get("method") if isinstance(rec, dict) else None
    return key if isinstance(key, str) and key else None


def family_title(name: str) -> str:
    """``SD 1.x`` / ``SDXL``; an unknown family is shown as its own name (escaped where rendered)."""
    return FAMILY_TITLES.get(name, name)


def family_order(name: str) -> tuple[int, str]:
    """Sort key of families: the known ones first (SD 1.x, SDXL), then the others by name."""
    known = list(FAMILY_TITLES)
    return (known.index(name), "") if name in known else (len(known), name)


def check_families(data: dict) -> None:
    """``ValueError`` (one line, naming the field) for a ``suites[].base_model.family`` that is
    present but not a name: text of 1 to 64 characters without control characters."""
    for i, s in enumerate(data.get("suites") or []):
        b = s.get("base_model") if isinstance(s, dict) else None
        if not isinstance(b, dict) or "family" not in b or b["family"] is None:
            continue
        f = b["family"]
        if not isinstance(f, str) or not 0 < len(f) <= MAX_FAMILY_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in f):
            raise ValueError(f"suites.{i}.base_model.family: expected a family name (text of 1 to {MAX_FAMILY_CHARS} characters), got {str(f)[:40]!r}")


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
