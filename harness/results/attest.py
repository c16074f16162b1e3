"""What a reader of results files re-derives instead of trusting (docs/security.md): verdicts
recomputed from values and the current suites' thresholds (and interval verdicts from the
record's interval, checked against value, bound and per-item scores), the one name rule
(``name_key``: case, punctuation and look-alike letters folded), the pins a result of a real
suite must share with this checkout (``pins_problem``), and the attestation manifest
that says which results files a trusted run made.

The manifest, ``<results>/ATTESTATION.json`` (``unlearn-attestation/2``), has an entry per
results file that ``unlearn leaderboard refresh`` wrote (or that ``unlearn leaderboard attest``,
run by a trusted workflow, found): its sha256, the commit that made it and the run that wrote
it, plus a ``sequence`` one above the previous manifest's. With ``$UNLEARN_ATTEST_KEY`` set
where it is written, an HMAC-SHA256 covers all of it; ``leaderboard build --require-attestation``
requires the key (unset or empty: an error), the HMAC and a sequence above every other signed
version in git history (a replay). A pull request can edit neither the files nor the manifest
without failing ``unlearn pr-check`` (the submission workflow), and without the key it cannot
make a valid HMAC. Residual risk: a maintainer who merges such an edit by hand, and, without
the key, anyone with push rights to the base branch.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import unicodedata
from pathlib import Path
from typing import TypeGuard

from harness.errors import HarnessError
from harness.results.assemble import git_sha
from harness.results.check import check_summary, contains
from harness.results.io import method_seed_files, read_json_file, results_files
from harness.spec import Threshold, load_suite
from harness.spec.pins import suite_pins
from harness.stats import intervals as stats
from harness.store.fsutil import atomic_write
from harness.store.hashing import sha256_file

MANIFEST = "ATTESTATION.json"
FORMAT = "unlearn-attestation/2"
OLD_FORMAT = "unlearn-attestation/1"  # file name -> sha256, signed as a list: read where attestation is not required
KEY_ENV = "UNLEARN_ATTEST_KEY"


# ----------------------------------------------------------------------------- names
# Letters of other scripts that render like Latin ones (Unicode's confusables, the common part):
# after NFKD (which folds full-width forms, ligatures and accents) these are what is left.
_SCRIPT_LOOKALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j",
    "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "к": "k", "м": "m", "н": "h", "т": "t", "ӏ": "l", "ɡ": "g", "ո": "n",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "u", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "ω": "w", "ı": "i", "ȷ": "j", "ℓ": "l", "ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "đ": "d", "ħ": "h", "ł": "l",
})
# ASCII look-alikes, after case folding: capital I / lower l / digit 1 / bar, O / 0, S / 5, B / 8, Z / 2.
_ASCII_LOOKALIKES = str.maketrans({"1": "l", "i": "l", "|": "l", "!": "l", "0": "o", "5": "s", "8": "b", "2": "z"})
_PAIRS = (("rn", "m"), ("vv", "w"), ("cl", "d"))  # two letters that read as one


def name_key(name: str) -> str:
    """The one name rule (pr-check, the site, refresh, the summary): names with the same key are
    one name to a reader. Folds case, punctuation and spacing (``Toy_UCE_Style`` =
    ``toy-uce-style``), compatibility forms and accents (NFKD), letters of other scripts that
    look Latin (Cyrillic ``с``), and ASCII look-alikes (capital ``I`` / ``l`` / ``1``, ``0`` /
    ``O``, ``rn`` / ``m``, ``vv`` / ``w``, ``cl`` / ``d``)."""
    s = unicodedata.normalize("NFKD", str(name))
    s = "".join(c for c in s if not unicodedata.combining(c)).casefold().translate(_SCRIPT_LOOKALIKES)
    s = re.sub(r"[^a-z0-9|!]+", "", s)
    for a, b in _PAIRS:
        s = s.replace(a, b)
    return s.translate(_ASCII_LOOKALIKES)


def name_clash(name: str, others) -> str | None:
    """The first of ``others`` (names) that ``name`` is not but reads as (same ``name_key``)."""
    key = name_key(name)
    return next((o for o in others if o != name and name_key(o) == key), None)


def existing_names(root: Path) -> set[str]:
    """The names of the submission files of the checkout (``submissions/*.yaml`` and the members
    of its sets): the entries that already exist, which a look-alike newcomer never displaces."""
    import yaml

    out: set[str] = set()
    folder = Path(root) / "submissions"
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*.y*ml")):
        try:
            if p.is_symlink() or not p.is_file() or p.stat().st_size > 1 << 20:
                continue
            d = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
            continue
        if isinstance(d, dict) and isinstance(d.get("name"), str):
            out.add(d["name"])
    return out


# ----------------------------------------------------------------------------- verdicts
def current_thresholds(root: Path) -> dict[tuple[str, str], str | None]:
    """(suite id, metric name) -> threshold text of the current suites in ``root/suites``."""
    out: dict[tuple[str, str], str | None] = {}
    for f in sorted(Path(root, "suites").glob("*.yaml")):
        try:
            s = load_suite(f, attack_code=False)  # thresholds only: no attack code loaded
        except HarnessError:
            continue
        for m in s.metrics:
            out[(s.id, m.name)] = m.threshold
    return out


def pins_problem(data: dict, root: Path) -> str | None:
    """Why a results file may not stand on the leaderboard as a real result: a suite of the real
    world whose recorded pins (``suites[].pins``) differ from the suite's pins in this checkout
    (suite file + lock). Toy suites, and suites this checkout does not have, are not judged here."""
    for s in data.get("suites") or []:
        sid = s.get("id") if isinstance(s, dict) else None
        p = Path(root) / "suites" / f"{sid}.yaml"
        if not isinstance(sid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", sid) or not p.is_file():
            continue
        try:
            suite = load_suite(p, attack_code=False)  # pins only: no attack code loaded
        except HarnessError:
            continue
        if suite.world != "real":
            continue
        want, got = suite_pins(suite), s.get("pins")
        if got != want:
            if not isinstance(got, dict):
                return f"suite {sid}: the run recorded no pins (a real suite needs them)"
            diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            return f"suite {sid}: pins differ from suites/{sid}.yaml + its lock at {diff[0]!r} ({len(diff)} in all)"
    return None


def expected_verdict(rec: dict, threshold: str | None) -> str:
    """The verdict a record's numbers give under ``threshold``: ``error`` for a non-finite value
    or flagged images, ``info`` without a threshold, else pass / fail (``stats.verdict``)."""
    return stats.verdict(threshold, rec.get("value"), rec.get("base_value"), flagged=rec.get("flagged_images") or 0).verdict


def recheck_verdicts(data: dict, thresholds: dict[tuple[str, str], str | None]) -> None:
    """Raise ``ValueError`` (one line) when a record claims a verdict its numbers do not give:
    the threshold is the current suite's where the suite knows the metric, the record's own
    otherwise. The point-estimate verdict (``verdict_point``, else ``verdict``) must be the one
    value and bound give; an interval verdict (pass / fail / inconclusive, ``harness.stats.intervals``)
    must be the one its ``margin_ci`` gives, that interval must hold value - bound, and where the
    record carries per-item scores the interval is recomputed from them (``interval_problem``).
    An ``error`` verdict is always accepted (it claims nothing); a verdict this module does not
    know (e.g. added later) is left to its owner."""
    for i, rec in enumerate(data["metrics"]):
        key = (rec["suite"], rec["metric"])
        th = thresholds[key] if key in thresholds else rec.get("threshold")
        claimed = rec["verdict"]
        if claimed not in ("pass", "fail", "info", "inconclusive"):
            continue
        point = rec.get("verdict_point") or claimed
        try:
            want = expected_verdict(rec, th)
        except (ValueError, HarnessError, ArithmeticError) as e:
            raise ValueError(f"metrics.{i}.threshold: {th!r} cannot be evaluated ({e})") from None
        if point != want and not (point == "fail" and want == "error"):
            raise ValueError(f"metrics.{i}.verdict: {point!r} for {rec['suite']}/{rec['metric']} = {rec.get('value')!r}, "
                             f"but its threshold {th!r} gives {want!r}")
        if want in ("pass", "fail"):  # the interval verdict: the one the record's own interval gives
            margin = rec.get("margin_ci") if isinstance(rec.get("margin_ci"), dict) else None
            t = Threshold.parse(th)  # type: ignore[arg-type]  # a pass / fail verdict has a threshold
            why = interval_problem(rec, t, margin or {"low": math.nan, "high": math.nan})  # dropped: the scores still say
            if why:
                raise ValueError(f"metrics.{i}.margin_ci: {why}")
            got = stats.verdict(t, rec["value"], rec.get("base_value"), margin).verdict
            if claimed != got:
                raise ValueError(f"metrics.{i}.verdict: {claimed!r} for {rec['suite']}/{rec['metric']}, but its interval "
                                 f"{margin!r} under {th!r} gives {got!r}")

    check_summary(data)  # the file's own counts, once its verdicts are the ones its numbers give


RECOMPUTED_METHODS = ("cluster-bootstrap-percentile", "cluster-bootstrap-percentile+seeds", "wilson")  # stats.intervals' own


def interval_problem(rec: dict, threshold, margin: dict) -> str | None:
    """Why a record's ``margin_ci`` (the interval of value - bound that decides its verdict) is
    not believed, None when it is: it must hold value - bound (the bound from the threshold and
    base value, not the file's ``bound``), and where the record has per-item scores (checked by
    ``results.check``) and an interval of ``stats.intervals``' own methods, it must be the
    interval those scores give (same resamples and seed, to 1e-3)."""
    finite = all(isinstance(margin.get(k), (int, float)) and math.isfinite(margin[k]) for k in ("low", "high"))
    if finite:  # (a non-finite one is no interval: the point estimate decides, stats.verdict)
        point = float(rec["value"]) - float(threshold.bound(rec.get("base_value")))
        if not contains(margin, point):
            return f"[{margin['low']:.6g}, {margin['high']:.6g}] does not hold value - bound = {point:.6g}"
    scores = stats.Scores.from_record(rec["scores"]) if rec.get("scores") else None
    method = str(margin.get("method") or "")
    if scores is None or (finite and method not in RECOMPUTED_METHODS):
        return None
    ref = margin if method != "wilson" else (rec.get("delta_ci") or {})
    resamples, seed = ref.get("resamples") or stats.RESAMPLES, ref.get("seed")
    if not isinstance(resamples, int) or not 1 <= resamples <= 20000 or not isinstance(seed if seed is not None else 0, int):
        return f"resamples {resamples!r} / seed {seed!r}: not a bootstrap this reader repeats"
    scores.binary = bool(rec["scores"].get("binary", False))
    level = margin.get("level")
    level = level if isinstance(level, float) and 0 < level < 1 else stats.LEVEL
    try:
        got = stats.intervals(scores, threshold, resamples, stats.SEED if seed is None else seed, level,
                              "resample" if method.endswith("+seeds") else "keep").get("margin_ci")
    except (ValueError, ArithmeticError) as e:
        return f"cannot be recomputed from the scores ({e})"
    if not finite:
        if got is not None and math.isfinite(got["low"]) and math.isfinite(got["high"]):
            return f"not finite, but its per-item scores give [{got['low']:.6g}, {got['high']:.6g}]"
        return None
    if got is None:
        return "the per-item scores give no margin interval"
    if abs(got["low"] - margin["low"]) > 1e-3 or abs(got["high"] - margin["high"]) > 1e-3:
        return f"[{margin['low']:.6g}, {margin['high']:.6g}] is not the [{got['low']:.6g}, {got['high']:.6g}] its per-item scores give"
    return None


# ----------------------------------------------------------------------------- attestation
def attest_key(required: bool = False) -> bytes | None:
    """``$UNLEARN_ATTEST_KEY`` as bytes (any characters: the environment's own bytes, so a
    non-ASCII key is a key), None when it is not set and not ``required``. Set but empty (what
    an unset secret expands to) is an error, never a silently unsigned manifest; unset where
    ``required`` is an error too."""
    if os.supports_bytes_environ:
        raw = os.environb.get(KEY_ENV.encode())
    else:
        text = os.environ.get(KEY_ENV)
        raw = None if text is None else text.encode("utf-8", "surrogateescape")
    if raw is None:
        if required:
            raise HarnessError(f"${KEY_ENV}: not set: --require-attestation needs the key to verify {MANIFEST} (the workflow passes it as a secret)")
        return None
    if not raw.strip():
        raise HarnessError(f"${KEY_ENV}: set but empty (an unset secret expands to ''): {MANIFEST} can be neither signed nor verified")
    return raw


def _body(doc: dict) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != "hmac_sha256"}, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _is_hex64(value) -> TypeGuard[str]:
    """A sha256 / HMAC-SHA256 hex digest as this module writes it: 64 lowercase hex digits."""
    import re

    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _digest(doc: dict, key: bytes) -> str:
    """HMAC-SHA256 of the whole manifest but its own ``hmac_sha256``: every file's sha256, the
    commit and run that made it, the sequence number and who made it."""
    if doc.get("format") == OLD_FORMAT:  # unlearn-attestation/1 signed the name -> sha256 list only
        body = json.dumps(doc.get("files"), sort_keys=True, separators=(",", ":")).encode()
    else:
        body = _body(doc)
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def run_id() -> str:
    """The run that makes a manifest: the CI run (``$GITHUB_RUN_ID``-attempt) or a fresh local id."""
    gh = os.environ.get("GITHUB_RUN_ID")
    if gh and re.fullmatch(r"[0-9]{1,20}", gh):
        return f"github:{gh}-{os.environ.get('GITHUB_RUN_ATTEMPT', '1')[:8]}"
    import uuid

    return f"local:{uuid.uuid4().hex[:16]}"


def entry_of(path: Path, run: str) -> dict:
    """A manifest entry for one results file: its sha256, the commit that made it (the file's own
    ``harness.git_sha``) and the run that wrote it."""
    commit = None
    try:
        data = read_json_file(path, 64 << 20)
        h = data.get("harness") if isinstance(data, dict) else None
        commit = h.get("git_sha") if isinstance(h, dict) and isinstance(h.get("git_sha"), str) else None
    except (ValueError, OSError):
        pass
    return {"sha256": sha256_file(path), "commit": commit, "run": run}


def write_manifest(folder: Path, made_by: str, only: list[Path] | None = None, report=None) -> Path:
    """Write ``folder/ATTESTATION.json``: an entry (sha256, commit, run) per results file, an
    increasing ``sequence`` and, with ``$UNLEARN_ATTEST_KEY``, an HMAC of all of it.

    ``only``: the files this run wrote (``leaderboard refresh``); the other files keep the entry
    of the folder's previous manifest when it verifies and still matches them, and are left out
    (unattested) otherwise. Without ``only`` every results file is attested (``leaderboard
    attest``, run by a trusted workflow)."""
    folder = Path(folder)
    key = attest_key()
    run = run_id()
    prev_doc = None
    try:
        prev_doc = _read_doc(folder, key, required=False)
    except HarnessError as e:
        if report:
            report(f"{folder / MANIFEST}: not carried over ({e})")
    prev = _entries(prev_doc) if prev_doc else {}
    mine = None if only is None else {Path(p).name for p in only}
    files: dict[str, dict] = {}
    for p in [*results_files(folder), *method_seed_files(folder)]:
        if p.name == MANIFEST:
            continue
        if mine is None or p.name in mine:
            files[p.name] = entry_of(p, run)
        elif p.name in prev and prev[p.name]["sha256"] == sha256_file(p):
            files[p.name] = prev[p.name]
        elif report:
            report(f"{p}: not attested (not written by this run, and not attested before with these bytes)")

    seq = prev_doc.get("sequence") if prev_doc else None
    seq = seq if isinstance(seq, int) else 0
    doc = {"format": FORMAT, "made_by": made_by, "sequence": seq + 1, "commit": git_sha(folder), "run": run, "files": files}
    if key:
        doc["hmac_sha256"] = _digest(doc, key)
    path = folder / MANIFEST
    atomic_write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return path


def _entries(doc: dict) -> dict[str, dict]:
    """file name -> {sha256, commit, run} of a manifest document of either format."""
    files = doc["files"]
    return {k: ({"sha256": v, "commit": None, "run": None} if isinstance(v, str) else v) for k, v in files.items()}


def _check_doc(doc, where: str) -> dict:
    if not isinstance(doc, dict) or doc.get("format") not in (FORMAT, OLD_FORMAT):
        raise HarnessError(f"{where}: format: not {FORMAT}")
    files = doc.get("files")
    sha = lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None
    opt = lambda v: v is None or (isinstance(v, str) and len(v) <= 200)
    ok = isinstance(files, dict) and all(
        isinstance(k, str) and (sha(v) if doc["format"] == OLD_FORMAT else
                                isinstance(v, dict) and sha(v.get("sha256")) and opt(v.get("commit")) and opt(v.get("run")))
        for k, v in files.items())
    if not ok:
        raise HarnessError(f"{where}: files: expected an object of file name -> {{sha256, commit, run}}")
    if doc["format"] == FORMAT and (not isinstance(doc.get("sequence"), int) or isinstance(doc.get("sequence"), bool) or doc["sequence"] < 1):
        raise HarnessError(f"{where}: sequence: expected a positive integer")
    return doc


def _read_doc(folder: Path, key: bytes | None, required: bool) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None

    try:
        doc = read_json_file(path, 8 << 20)
    except ValueError as e:
        raise HarnessError(f"{path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") not in (FORMAT, OLD_FORMAT):
        raise HarnessError(f"{path}: format: not {FORMAT}")
    if required and doc["format"] != FORMAT:
        raise HarnessError(f"{path}: format: {doc['format']} signs file names and sha256 only (replayable); --require-attestation needs {FORMAT}: run `unlearn leaderboard attest` with ${KEY_ENV}")
    if key is not None:  # first: an edited manifest is "not signed", whatever else is wrong with it
        got = doc.get("hmac_sha256")
        if not _is_hex64(got) or not hmac.compare_digest(got.encode("ascii"), _digest(doc, key).encode()):  # any other text (non-ASCII, a lone surrogate) is a mismatch
            raise HarnessError(f"{path}: hmac_sha256: does not verify with ${KEY_ENV} (the manifest was not made by a trusted run)")
    return _check_doc(doc, str(path))


def read_manifest(folder: Path, required: bool = False) -> dict[str, dict] | None:
    """file name -> {sha256, commit, run} from the folder's manifest; None when there is none
    (an error when ``required``). A malformed manifest, one whose HMAC does not verify where the
    key is set, and, when ``required`` (``--require-attestation``), a missing or empty key or a
    replayed manifest (a ``sequence`` not above every other version in git history) are one-line
    HarnessErrors."""
    path = Path(folder) / MANIFEST
    if required and not path.exists() and not path.is_symlink():
        raise HarnessError(f"--results {folder}: no {MANIFEST} (--require-attestation): run `unlearn leaderboard attest` in the trusted workflow")
    key = attest_key(required)
    doc = _read_doc(folder, key, required)
    if doc is None:
        if required:
            raise HarnessError(f"--results {folder}: no {MANIFEST} (--require-attestation): run `unlearn leaderboard attest` in the trusted workflow")
        return None
    if required:
        why = replayed(Path(folder), doc, key)  # type: ignore[arg-type]  # required: attest_key raised without a key
        if why:
            raise HarnessError(f"{Path(folder) / MANIFEST}: sequence: {why}")
    return _entries(doc)


def replayed(folder: Path, doc: dict, key: bytes) -> str | None:
    """Why ``doc`` is an older manifest put back (None: it is not): an earlier version of
    ``ATTESTATION.json`` in the git history of the folder, signed with the same key, has a
    sequence number as high or higher and other contents. Outside a git checkout there is no
    history to compare with (None)."""
    import subprocess

    def git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    top = git("rev-parse", "--show-prefix")
    if top is None:
        return None
    rel = top.decode(errors="replace").strip() + MANIFEST
    shas = (git("log", "--format=%H", "-n", "1000", "--", MANIFEST) or b"").decode().split()
    mine = _digest(doc, key)
    for c in shas:
        blob = git("show", f"{c}:{rel}")
        try:
            old = _check_doc(json.loads(blob or b""), "history")
        except (ValueError, HarnessError, RecursionError):
            continue
        if old.get("format") != FORMAT or not _is_hex64(old.get("hmac_sha256")) or not hmac.compare_digest(old["hmac_sha256"], _digest(old, key)):
            continue  # not a signed manifest of this key: says nothing about what came later
        if old["hmac_sha256"] != mine and old["sequence"] >= doc["sequence"]:
            return (f"{doc['sequence']} is not above the {old['sequence']} of the version committed in {c[:12]} "
                    f"(an older attested manifest put back)")
    return None


def attested(path: Path, manifest: dict[str, dict]) -> str | None:
    """Why ``path`` is not attested by ``manifest`` (None: it is)."""
    want = manifest.get(path.name)
    if want is None:
        return f"not listed in {MANIFEST} (not made by a trusted run)"
    got = sha256_file(path)
    if got != want["sha256"]:
        return f"sha256 {got[:12]}... differs from the {want['sha256'][:12]}... that {MANIFEST} attests"
    return None


def bound_problem(path: Path, data: dict, manifest: dict[str, dict]) -> str | None:
    """Why an attested file is not the run its entry says made it (the commit of the entry and
    the file's ``harness.git_sha`` differ), None when they agree or the entry names none."""
    want = (manifest.get(path.name) or {}).get("commit")
    h = data.get("harness")
    h = h if isinstance(h, dict) else {}
    if want is not None and h.get("git_sha") != want:
        return f"harness.git_sha {str(h.get('git_sha'))[:14]!r} is not the commit {want[:14]!r} that {MANIFEST} attests for it"
    return None
