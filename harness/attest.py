"""What a reader of results files re-derives instead of trusting (docs/security.md): verdicts
recomputed from values and the current suites' thresholds, submission names restricted to
printable ASCII and unique after normalisation, and the attestation manifest that says which
results files a trusted run made.

The manifest, ``<results>/ATTESTATION.json``, lists the sha256 of every results file that
``unlearn leaderboard refresh`` (or ``unlearn leaderboard attest``, run by a trusted workflow)
wrote. With ``$UNLEARN_ATTEST_KEY`` set where it is written, it also carries an HMAC-SHA256 of
that list, which ``leaderboard build`` verifies where the same key is set. A pull request can
edit neither the files nor the manifest without failing ``unlearn pr-check`` (the submission
workflow), and without the key it cannot make a valid HMAC. Residual risk: a maintainer who
merges such an edit by hand, and, without the key, anyone with push rights to the base branch.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path

from .errors import HarnessError

MANIFEST = "ATTESTATION.json"
FORMAT = "unlearn-attestation/1"
KEY_ENV = "UNLEARN_ATTEST_KEY"
NAME_RE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,78}[\x21-\x7e])?$")  # printable ASCII, no edge spaces


# ----------------------------------------------------------------------------- names
def check_name(name: str) -> None:
    """A submission name as a reader accepts it: printable ASCII only (look-alike letters from
    other scripts would show as a second entry that reads like the first)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"submission.name: {name!r:.60} is not 1-80 printable ASCII characters")


def name_key(name: str) -> str:
    """Names that collide after this are one name to a reader (case, punctuation, spacing)."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


# ----------------------------------------------------------------------------- verdicts
def current_thresholds(root: Path) -> dict[tuple[str, str], str | None]:
    """(suite id, metric name) -> threshold text of the current suites in ``root/suites``."""
    from .spec import load_suite

    out: dict[tuple[str, str], str | None] = {}
    for f in sorted(Path(root, "suites").glob("*.yaml")):
        try:
            s = load_suite(f, attack_code=False)  # thresholds only: no attack code loaded
        except HarnessError:
            continue
        for m in s.metrics:
            out[(s.id, m.name)] = m.threshold
    return out


def expected_verdict(rec: dict, threshold: str | None) -> str:
    """The verdict a record's numbers give under ``threshold``: ``error`` for a non-finite value
    or flagged images, ``info`` without a threshold, else pass / fail (``stats.verdict``)."""
    from . import stats

    return stats.verdict(threshold, rec.get("value"), rec.get("base_value"), flagged=rec.get("flagged_images") or 0).verdict


def recheck_verdicts(data: dict, thresholds: dict[tuple[str, str], str | None]) -> None:
    """Raise ``ValueError`` (one line) when a record claims a verdict its numbers do not give:
    the threshold is the current suite's where the suite knows the metric, the record's own
    otherwise. The point-estimate verdict (``verdict_point``, else ``verdict``) must be the one
    value and bound give; an interval verdict (pass / fail / inconclusive, ``harness.stats``)
    must be the one its ``margin_ci`` gives. An ``error`` verdict is always accepted (it claims
    nothing); a verdict this module does not know (e.g. added later) is left to its owner."""
    from . import stats
    from .spec import Threshold

    for i, rec in enumerate(data["metrics"]):
        key = (rec["suite"], rec["metric"])
        th = thresholds[key] if key in thresholds else rec.get("threshold")
        claimed = rec["verdict"]
        if claimed not in ("pass", "fail", "info", "inconclusive"):
            continue
        point = rec.get("verdict_point") or claimed
        try:
            want = expected_verdict(rec, th)
        except (ValueError, HarnessError) as e:
            raise ValueError(f"metrics.{i}.threshold: {th!r} cannot be evaluated ({e})") from None
        if point != want and not (point == "fail" and want == "error"):
            raise ValueError(f"metrics.{i}.verdict: {point!r} for {rec['suite']}/{rec['metric']} = {rec.get('value')!r}, "
                             f"but its threshold {th!r} gives {want!r}")
        if want in ("pass", "fail"):  # the interval verdict: the one the record's own interval gives
            margin = rec.get("margin_ci") if isinstance(rec.get("margin_ci"), dict) else None
            got = stats.verdict(Threshold.parse(th), rec["value"], rec.get("base_value"), margin).verdict
            if claimed != got:
                raise ValueError(f"metrics.{i}.verdict: {claimed!r} for {rec['suite']}/{rec['metric']}, but its interval "
                                 f"{margin!r} under {th!r} gives {got!r}")


# ----------------------------------------------------------------------------- attestation
def _digest(files: dict[str, str], key: str) -> str:
    body = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key.encode("utf-8", "surrogateescape"), body, hashlib.sha256).hexdigest()  # any key: non-ASCII, undecodable bytes


def write_manifest(folder: Path, made_by: str) -> Path:
    """Record the sha256 of every results file in ``folder`` (the one discovery rule)."""
    from .fsutil import atomic_write
    from .hashing import sha256_file
    from .results.io import method_seed_files, results_files

    files = {p.name: sha256_file(p) for p in [*results_files(folder), *method_seed_files(folder)] if p.name != MANIFEST}
    doc = {"format": FORMAT, "made_by": made_by, "files": files}
    key = os.environ.get(KEY_ENV)
    if key:
        doc["hmac_sha256"] = _digest(files, key)
    path = Path(folder) / MANIFEST
    atomic_write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return path


def read_manifest(folder: Path) -> dict[str, str] | None:
    """file name -> sha256 from the folder's manifest; None when there is none; a manifest that
    is malformed, or whose HMAC does not verify where ``$UNLEARN_ATTEST_KEY`` is set, is a
    one-line HarnessError."""
    path = Path(folder) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    from .results.io import read_json_file

    try:
        doc = read_json_file(path, 8 << 20)
    except ValueError as e:
        raise HarnessError(f"{path}: {e}") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if doc.get("format") != FORMAT if isinstance(doc, dict) else True:
        raise HarnessError(f"{path}: format: not {FORMAT}")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for k, v in files.items()):
        raise HarnessError(f"{path}: files: expected an object of file name -> sha256")
    key = os.environ.get(KEY_ENV)
    if key:
        got = doc.get("hmac_sha256")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode("utf-8", "surrogateescape"), _digest(files, key).encode()):  # bytes: a non-ASCII value is a mismatch, not a TypeError
            raise HarnessError(f"{path}: hmac_sha256: does not verify with ${KEY_ENV} (the manifest was not made by a trusted run)")
    return files


def attested(path: Path, manifest: dict[str, str]) -> str | None:
    """Why ``path`` is not attested by ``manifest`` (None: it is)."""
    from .hashing import sha256_file

    want = manifest.get(path.name)
    if want is None:
        return f"not listed in {MANIFEST} (not made by a trusted run)"
    got = sha256_file(path)
    if got != want:
        return f"sha256 {got[:12]}... differs from the {want[:12]}... that {MANIFEST} attests"
    return None
