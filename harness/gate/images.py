"""``unlearn images RESULTS.json [--suite S] --out DIR``: every image of a run, to look at.

The image cache is named by job hash, so a run's images cannot be browsed there. This page
rebuilds each suite's jobs from what the results file recorded (the suite file's prompts, checked
against the recorded prompt-set sha256; the recorded seeds, steps, size, guidance, negative
prompt, dtype and model fingerprints), finds each image in the cache (its PNG checked against
its sidecar's sha256), copies it to ``DIR/images/<sha256>.png`` and writes ``DIR/index.html``:
per suite, one row per prompt, one column per seed, each cell the matched pair base | unlearned;
prompts that name a target (the erased concept: forget prompts) are marked. Every string from the
results file is HTML-escaped; the page loads nothing but its own images.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from harness.errors import HarnessError
from harness.store.fsutil import claim_dir, default_mode, remove_inside
from harness.run.generate import ImageCache, Job
from harness.store.hashing import sha256_bytes, sha256_json
from harness.gate.compare import load_result
from harness.run.plan import smoke_prompts, suite_path
from harness.spec import TargetSpec, expand_prompts, load_suite
from harness.store.fsutil import cache_dir, find_root

CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"


def names_target(prompt, concepts: set[str]) -> bool:
    """The harness's rule (``evaluate.sample_pairs``): by labels when the prompt has them, else
    by whole words of the prompt text."""
    if prompt.labels:
        return bool(concepts & set(prompt.labels.values()))
    return any(re.search(rf"\b{re.escape(c)}\b", prompt.text, re.IGNORECASE) for c in concepts)


def suite_jobs(result: dict, srec: dict, root: Path, cache_dir: Path) -> list[tuple]:
    """(prompt, seed, base job, unlearned job) of every image pair of one recorded suite."""
    sid = srec.get("id")
    if not isinstance(sid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", sid) or ".." in sid:
        raise HarnessError(f"suites[].id: {str(sid)[:80]!r} is not a suite id (a suite file is read from suites/ only)")
    path = suite_path(root, sid)
    folder = (Path(root) / "suites").resolve()
    if path.is_symlink() or path.resolve().parent != folder:
        raise HarnessError(f"suite {sid}: {path} is not a file of {folder}")
    if not path.is_file():
        raise HarnessError(f"suite {sid}: no file {path} to rebuild its prompts from")
    suite = load_suite(path)
    prompts = expand_prompts(suite, root, cache_dir)
    if srec.get("smoke"):
        targets = [TargetSpec(**{k: t[k] for k in ("concept", "kind")}) for t in result["submission"]["targets"]]
        prompts = smoke_prompts(suite, prompts, targets)
    got = sha256_json([[p.text, p.labels, p.seed, p.guidance] for p in prompts])
    if srec.get("prompt_set_sha256") and got != srec["prompt_set_sha256"]:
        raise HarnessError(f"suite {sid}: its prompts changed since the run (prompt set sha256 {got[:12]}, the run recorded "
                           f"{srec['prompt_set_sha256'][:12]}); check out the commit the run used ({result.get('harness', {}).get('git_sha')})")
    g = srec.get("generation") or {}
    models = srec.get("models") or {}
    seeds = srec.get("seeds") or []
    out = []
    for p in prompts:
        for seed in [p.seed] if p.seed is not None else seeds:
            common = dict(prompt=p.text, negative_prompt=g.get("negative_prompt") or "", seed=int(seed), scheduler=g["scheduler"],
                          steps=int(g["steps"]), guidance=float(p.guidance if p.guidance is not None else g["guidance"]),
                          height=int(g["height"]), width=int(g["width"]), eta=float(g.get("eta") or 0.0), dtype=srec["dtype"])
            out.append((p, int(seed), Job(**common, model=models["base"]), Job(**common, model=models["unlearned"])))
    return out


def _copy(cache: ImageCache, job: Job, dst: Path) -> str | None:
    """Copy the job's cached PNG into ``dst`` as ``<sha256>.png`` (checked); its sha256 or None."""
    png = cache.path(job)
    sha = cache.png_sha256(job)
    try:
        data = png.read_bytes()
    except OSError:
        return None
    if not sha or sha256_bytes(data) != sha:
        return None
    target = dst / f"{sha}.png"
    if not target.exists():
        target.write_bytes(data)
        target.chmod(default_mode())
    return sha


def write_page(result: dict, out: Path, root: Path, cache_dir: Path, only: set[str] | None = None, source: str = "") -> dict:
    """Write ``out/index.html`` + ``out/images/``; returns counts."""
    e = html.escape
    cache = ImageCache(Path(cache_dir) / "images")
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    for d in (out, out / "images"):
        d.chmod(default_mode(folder=True))
    concepts = {t["concept"] for t in result["submission"]["targets"]}
    suites = [s for s in result.get("suites", []) if s.get("models") and s.get("generation") and (not only or s.get("id") in only)]
    if only and not suites:
        have = ", ".join(s.get("id", "?") for s in result.get("suites", []) if s.get("models"))
        raise HarnessError(f"--suite: {', '.join(sorted(only))} is not an image suite of this run (it has: {have})")
    done = set()
    counts = {"suites": 0, "pairs": 0, "images": 0, "missing": 0}
    body = []
    for s in suites:
        key = (json.dumps(s.get("models"), sort_keys=True), s.get("prompt_set_sha256"), json.dumps(s.get("generation"), sort_keys=True))
        sid = s["id"]
        if key in done:  # a suite that shares another's prompts and settings (include:) has the same images
            body.append(f'<section><h2>{e(sid)}</h2><p class="meta">Same images as a suite above (same prompts, settings and models).</p></section>')
            continue
        done.add(key)
        jobs = suite_jobs(result, s, root, cache_dir)
        seeds = sorted({seed for _, seed, _, _ in jobs})
        rows: dict[str, dict] = {}
        for p, seed, bj, uj in jobs:
            r = rows.setdefault(p.text, {"prompt": p, "cells": {}})
            b, u = _copy(cache, bj, out / "images"), _copy(cache, uj, out / "images")
            counts["images"] += bool(b) + bool(u)
            counts["missing"] += (not b) + (not u)
            r["cells"][seed] = (b, u)
            counts["pairs"] += 1
        counts["suites"] += 1
        g = s["generation"]
        head = "".join(f"<th>seed {seed}<br><small>base | unlearned</small></th>" for seed in seeds)
        trs = []
        for text, r in rows.items():
            forget = names_target(r["prompt"], concepts)
            tds = []
            for seed in seeds:
                b, u = r["cells"].get(seed, (None, None))
                img = lambda sha, who: (f'<img src="images/{sha}.png" alt="{who}, seed {seed}" title="{who}: {e(text)} (seed {seed})" width="96" height="96">'
                                        if sha else f'<span class="missing">{who}: not in the cache</span>')
                tds.append(f"<td>{img(b, 'base')}{img(u, 'unlearned')}</td>")
            mark = '<span class="forget">forget</span> ' if forget else ""
            trs.append(f'<tr class="{"forget-row" if forget else "retain-row"}"><th scope="row">{mark}{e(text)}</th>{"".join(tds)}</tr>')
        meta = (f"{len(rows)} prompts × {len(seeds)} seeds · {e(str(g.get('scheduler')))}, {e(str(g.get('steps')))} steps, guidance "
                f"{e(str(g.get('guidance')))}, {e(str(g.get('width')))}x{e(str(g.get('height')))}{' · smoke subset' if s.get('smoke') else ''}")
        body.append(f'<section><h2>{e(sid)}</h2><p class="meta">{meta}</p><table><thead><tr><th>prompt</th>{head}</tr></thead>'
                    f'<tbody>{"".join(trs)}</tbody></table></section>')
    sub = result["submission"]
    title = f"{sub.get('name', '?')}: every image"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{e(title)}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:1.5em}} table{{border-collapse:collapse}} th,td{{border:1px solid #ddd;padding:3px;vertical-align:middle}}
th[scope=row]{{text-align:left;font-weight:normal;max-width:28em}} img{{image-rendering:pixelated;margin:1px}}
.forget{{background:#c0392b;color:#fff;border-radius:3px;padding:0 4px;font-size:12px}} .forget-row{{background:#fdf0ef}}
.missing{{color:#999;font-size:11px;display:inline-block;width:96px}} .meta{{color:#555}}
</style></head><body>
<h1>{e(title)}</h1>
<p class="meta">method {e(str(sub.get('method', {}).get('name', '?')))} · targets {e(', '.join(sorted(concepts)))} · results {e(source)} ·
{counts['pairs']} matched pairs, {counts['images']} images{f", {counts['missing']} not in the image cache" if counts['missing'] else ''}.
Each cell: the base model's image, then the unlearned model's, from the same prompt and noise. Rows marked
<span class="forget">forget</span> name a target concept.</p>
{''.join(body)}
</body></html>
"""
    (out / "index.html").write_text(page, encoding="utf-8")
    (out / "index.html").chmod(default_mode())
    return counts


def cmd(a) -> int:
    result = load_result(a.results)
    root = Path(a.root) if a.root else find_root([a.results])
    out = claim_dir(a.out, "--out", "unlearn images")  # new, empty, or an earlier page: never a site or other files
    remove_inside(out, out / "images")  # an earlier page's images (never through a link)
    try:
        n = write_page(result, out, root, cache_dir(root, a.cache), set(a.suite or ()) or None, a.results)
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:  # a recorded field of the wrong kind: one line
        raise HarnessError(f"{a.results}: suites: a recorded generation setting cannot be used ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    print(f"wrote {out / 'index.html'}: {n['suites']} suite(s), {n['pairs']} matched pairs, {n['images']} images"
          + (f", {n['missing']} not in the cache (re-run the harness with the same cache to make them)" if n["missing"] else ""))
    return 0
