"""``unlearn leaderboard refresh``: run the harness on the toy submissions and make the results
folder the site is built from.

It runs the harness as a user does (``rerun.run_harness``: pytest with the plugin, in a
subprocess, as ``unlearn regress`` does), copies each results JSON to
``leaderboard/results/<name>.json`` (all or nothing, once every run is checked), writes the
folder's ATTESTATION.json, and exports the sample PNGs the results name from the image cache
(``ImageCache.find_png_sha256``) to ``leaderboard/results/images/<sha256>.png``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.store.fsutil import cache_dir
from harness.gate.rerun import run_harness
from harness.results.io import one_line, read_result
from harness.site.images import SHA256_RE, check_image
from harness.site.load import Report, to_stderr

ROOT = Path(__file__).resolve().parents[2]


def refresh(submissions: list[str], out: str | Path, cache: str | Path | None = None, workers: int | None = None,
            root: Path = ROOT, report: Report = to_stderr, extra_args: list[str] | None = None, allow_incomplete: bool = False) -> dict:
    """Run the harness on the submissions (one pytest subprocess, the plugin's own collection),
    then copy each results JSON to ``out/<name>.json`` and export its sample images."""
    from harness.spec import SpecErrors, load_submission

    if not submissions:
        raise HarnessError("--submissions: no submission files given (default: submissions/toy-*.yaml)")
    names = {}
    for s in submissions:
        try:
            names[s] = load_submission(s).name
        except SpecErrors as e:
            raise HarnessError(e.lines[0] + (f" (and {len(e.lines) - 1} more problems)" if len(e.lines) > 1 else "")) from None
    if len(set(names.values())) != len(names):
        raise HarnessError("--submissions: two files give the same submission name")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HarnessError(f"--out {out}: exists and is not a folder")
    refuse_lookalikes(names, out)
    cache = cache_dir(root, cache).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="unlearn-refresh-") as tmp:
        rc = run_harness(root, submissions, Path(tmp) / "{submission}.json", cache=cache, workers=workers,
                         extra=extra_args, echo=True)
        if rc not in (0, 1):  # 1: some case failed (a negative control must), which is a result
            raise HarnessError(f"the harness run exited with status {rc} (see its output above); nothing was copied")
        written = []
        for s, name in names.items():
            src = Path(tmp) / f"{name}.json"
            if not src.is_file():
                raise HarnessError(f"{s}: the harness wrote no results file for {name!r}")
            try:
                data = read_result(src)
            except ValueError as e:
                raise HarnessError(f"{s}: the harness's results file is not valid: {one_line(e)}") from None
            if not data.get("complete", True) and not allow_incomplete:
                # an incomplete baseline would weaken the regression gate (its missing metrics are never compared)
                raise HarnessError(f"{s}: the run is incomplete (complete: false); nothing was copied (--allow-incomplete to copy it anyway)")
            written.append((src, out / f"{name}.json"))
        for src, dst in written:  # only once every run is checked: all or nothing
            shutil.copyfile(src, dst)
        made = [dst for _, dst in written]
    from harness.results.attest import write_manifest
    from harness.results.io import results_files

    write_manifest(out, "unlearn leaderboard refresh", only=made, report=report)  # only what this run made
    all_results = []
    for p in results_files(out):  # as build reads them
        try:
            read_result(p)
            all_results.append(p)
        except (ValueError, OSError) as e:
            report(f"skipped {p}: {one_line(e)}")
    img = export_images(all_results, cache, out / "images", report)
    return {"written": [str(p) for p in made], "images": img, "seconds": round(time.time() - t0, 1)}


def refuse_lookalikes(names: dict[str, str], out: Path) -> None:
    """The one name rule (``attest.name_key``): two submissions of this refresh, or one of them
    and an entry already in ``out`` under another name, that read as one name are refused."""
    from harness.results.attest import name_key
    from harness.results.io import read_json_file, results_files

    seen: dict[str, str] = {}
    for f, n in names.items():
        if name_key(n) in seen:
            raise HarnessError(f"{f}: name: {n!r} reads as {names[seen[name_key(n)]]!r} of {seen[name_key(n)]} (case, punctuation, look-alike letters)")
        seen[name_key(n)] = f
    have = set()
    for p in results_files(out) if out.is_dir() else []:
        try:
            d = read_json_file(p, 64 << 20)
            have.add(d["submission"]["name"])
        except (ValueError, OSError, KeyError, TypeError, RecursionError):
            continue
    for f, n in names.items():
        other = next((h for h in sorted(have, key=str) if isinstance(h, str) and h != n and name_key(h) == name_key(n)), None)
        if other is not None:
            raise HarnessError(f"{f}: name: {n!r} reads as the existing entry {other!r} in {out} (case, punctuation, look-alike letters)")


def export_images(result_files: list[Path], cache: Path, out_images: Path, report: Report = to_stderr) -> dict:
    """Copy the sample PNGs the results name from the image cache to ``out_images/<sha256>.png``
    (checked against the sha256), then drop PNGs there that no results file names any more."""
    wanted: dict[str, str] = {}
    for f in result_files:
        data = json.loads(f.read_text())
        for s in data.get("suites", []):
            for smp in s.get("samples", []):
                for side in ("base", "unlearned"):
                    if SHA256_RE.match(str(smp.get(side))):
                        wanted.setdefault(smp[side], f"{data['submission']['name']} {s['id']} {smp['prompt']!r} seed {smp['seed']} ({side})")
    out_images.mkdir(parents=True, exist_ok=True)
    have = {sha for sha in wanted if check_image(out_images, sha) is None}
    from harness.run.generate import ImageCache

    index = ImageCache(cache / "images").find_png_sha256(set(wanted) - have)
    copied = missing = 0
    for sha, what in sorted(wanted.items()):
        if sha in have:
            continue
        src = index.get(sha)
        data = src.read_bytes() if src and src.is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            missing += 1
            report(f"image {sha} of {what}: not in the image cache {cache} (or damaged)")
            continue
        tmp = out_images / f".{sha}.png.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out_images / f"{sha}.png")
        copied += 1
    pruned = 0
    for p in out_images.glob("*.png"):
        if SHA256_RE.match(p.stem) and p.stem not in wanted:
            p.unlink()
            pruned += 1
    return {"referenced": len(wanted), "copied": copied, "kept": len(have), "missing": missing, "pruned": pruned}


def default_submissions(root: Path = ROOT) -> list[str]:
    """The toy submissions: ``submissions/toy-*.yaml`` of the checkout."""
    return [str(p) for p in sorted((root / "submissions").glob("toy-*.yaml"))]
