"""How long a run will take, before it starts: images still to make x measured speed.

The images: each suite's jobs as the evaluator builds them (same prompts, smoke subset, seeds,
steps, size, model fingerprints), minus those already in the image cache, plus the attack
images of CRS / CCS (counted as still to make), plus the prompt attacks (UnlearnDiffAtk,
Ring-A-Bell, textual inversion): every forget item of the attack seeds, at the full budget, for
each target (an upper bound: an item the model already shows, or one that succeeds early, costs
less), counted as still to run when some unlearned image of the suite is not cached (their
records are keyed by the model; a warm re-run has them). The speed: seconds per image per
denoising step, and seconds per attacked item per budget unit (iteration, generation, step) of
each attack, measured by every run on this machine and kept per device in
``<cache>/speed.json`` (key: device, threads, image size), so the second run's estimate is the
first run's measured speed. Scoring time per suite (less its generation and attacks) is kept the
same way. Without a measurement for this device the estimate uses the figures of a cold ``make
demo`` on an idle 2-core CPU (``GUESS_S_PER_STEP_PIXEL``, each attack module's
``GUESS_S_PER_ITEM_UNIT``), scaled by pixels, and says it is a guess.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from harness.store.fsutil import atomic_write

# A cold `make demo` (README "Speed of the harness"), idle 2-core CPU, 2 threads: 1,000 32x32
# images x 20 steps in 471 s of generation; with 1 thread (the same machine) about 1.4x slower.
GUESS_S_PER_STEP_PIXEL = 471.0 / (1000 * 20 * 32 * 32)
GUESS_ONE_THREAD = 1.4
GUESS = "a guess: no run measured on this device yet"


def device_key(device: str, threads: int | None = None) -> str:
    """``cuda:<name>`` or ``cpu/<threads>t``: figures are kept per device."""
    if device.startswith("cuda"):
        try:
            import torch

            return f"cuda:{torch.cuda.get_device_name(0)}"
        except Exception:  # noqa: BLE001 - no usable CUDA here: the string alone
            return device
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return f"{device}/{threads}t"


def _store(cache_dir: Path) -> Path:
    return Path(cache_dir) / "speed.json"


def load(cache_dir: Path) -> dict:
    try:
        data = json.loads(_store(cache_dir).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def note(cache_dir: Path, key: str, seconds: float, amount: float) -> None:
    """Add a measurement (``seconds`` for ``amount`` units) under ``key``: a running mean
    weighted by amount, so a long phase counts more than a short one."""
    if amount <= 0 or seconds <= 0:
        return
    data = load(cache_dir)
    old = data.get(key) if isinstance(data.get(key), dict) else {}
    total_s, total_n = float(old.get("seconds", 0)) + seconds, float(old.get("amount", 0)) + amount
    data[key] = {"seconds": round(total_s, 4), "amount": total_n, "per_unit": total_s / total_n, "updated": int(time.time())}
    try:
        atomic_write(_store(cache_dir), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    except OSError:
        pass  # a read-only cache: no figure kept, nothing else lost


def gen_key(device: str, height: int, width: int) -> str:
    return f"gen|{device}|{height}x{width}"


def _measured(cache_dir: Path, prefix: str, height: int, width: int) -> tuple[float, str] | None:
    """The figure kept under ``prefix + "HxW"``: at this size, else at another size scaled by
    pixels; None when this device has none."""
    data = load(cache_dir)
    exact = data.get(f"{prefix}{height}x{width}")
    if isinstance(exact, dict) and exact.get("per_unit"):
        return float(exact["per_unit"]), "measured on this device"
    for k, v in data.items():
        if k.startswith(prefix) and isinstance(v, dict) and v.get("per_unit"):
            try:
                h, w = (int(x) for x in k[len(prefix):].split("x"))
            except ValueError:  # another key sharing the prefix
                continue
            return float(v["per_unit"]) * (height * width) / (h * w), "scaled from another size on this device"
    return None


def seconds_per_step(cache_dir: Path, device: str, height: int, width: int) -> tuple[float, str]:
    """(seconds per image per step, source): this device at this size, else this device at
    another size scaled by pixels, else the cold ``make demo`` figure scaled by pixels (x1.4 at
    one thread; a guess)."""
    got = _measured(cache_dir, f"gen|{device}|", height, width)
    if got is not None:
        return got
    return GUESS_S_PER_STEP_PIXEL * height * width * _thread_factor(device), GUESS


def _thread_factor(device: str) -> float:
    return GUESS_ONE_THREAD if device.endswith("/1t") else 1.0


def attack_key(device: str, attack: str, height: int, width: int) -> str:
    return f"attack|{device}|{attack}|{height}x{width}"


def seconds_per_item_unit(cache_dir: Path, device: str, attack: str, height: int, width: int) -> tuple[float, str]:
    """(seconds per attacked item per budget unit, source) of one attack, as ``seconds_per_step``."""
    got = _measured(cache_dir, f"attack|{device}|{attack}|", height, width)
    if got is not None:
        return got
    from harness.attacks.runner import attacks

    guess = getattr(attacks().get(attack), "GUESS_S_PER_ITEM_UNIT", 0.1)  # 0.1: an order of magnitude (Ring-A-Bell: no figure)
    return guess * (height * width) / (32 * 32) * _thread_factor(device), GUESS


@dataclass
class SuitePlan:
    suite: str
    images: int  # every image the suite uses (base + unlearned + attacked)
    to_make: int  # not in the cache
    steps: int
    height: int
    width: int
    keys: frozenset = frozenset()  # job keys of every image (suites sharing prompts share images)
    missing: frozenset = frozenset()  # job keys not in the cache (attack images: not counted here)
    attack_to_make: int = 0
    prompt_attacks: tuple = ()  # (attack, items, budget) still to run, one per target and block


def plan(sub_path: str, sub, suites: dict, root: Path, cache_dir: Path, device: str = "auto", smoke: bool = False,
         only: set[str] | None = None) -> list[SuitePlan]:
    """Each suite's image counts for one submission, from the specs and the cache (no model
    loads). ``sub``: the submission as the start-up check resolved it
    (``harness.resolve.resolved.ResolvedSubmission``: its fingerprints and native size are
    used, nothing is hashed again), or a bare ``Submission`` (fingerprinted here)."""
    from harness.run import plan as run_plan
    from harness.run.generate import ImageCache
    from harness.families.sd1 import Placement, model_fingerprints
    from harness.resolve.resolved import ResolvedSubmission

    cache = ImageCache(Path(cache_dir) / "images")
    out = []
    if isinstance(sub, ResolvedSubmission):
        (base_fp, unl_fp), native, sub = sub.fingerprints, sub.native_size, sub.spec
    else:
        from harness.resolve.resolved import cached_base_folder, resolve_inference

        inference = resolve_inference(sub, cached_base_folder(sub, root))[0] if sub.method.kind == "inference" else None
        (base_fp, unl_fp), native = model_fingerprints(sub, root, inference), None
    for sid, suite in suites.items():
        if only and sid not in only:
            continue
        if not run_plan.needs_images(suite):
            out.append(SuitePlan(sid, 0, 0, 0, 0, 0))
            continue
        g = suite.generation
        items = run_plan.suite_items(suite, run_plan.suite_prompts(suite, sub.targets, root, cache_dir, smoke), smoke)
        dtype = Placement.choose(device if device != "auto" else "auto", g.dtype).dtype
        size = run_plan.image_size(sub, suite, root, native)
        base_jobs = run_plan.suite_jobs(suite, items, base_fp, dtype, size, smoke)
        jobs = base_jobs + run_plan.suite_jobs(suite, items, unl_fp, dtype, size, smoke)
        keys = {j.key() for j in jobs}
        missing = {j.key() for j in jobs if not cache.png_sha256(j)}
        cached = len(keys) - len(missing)
        attack, attack_cached = 0, 0
        grid = run_plan.attack_grid(suite, items)
        if grid is not None:
            attack = grid.images()
            attack_cached = sum(1 for psi in grid.psis for j in run_plan.attack_jobs(grid, base_jobs, base_fp, unl_fp, psi) if cache.png_sha256(j))
        j0 = jobs[0] if jobs else None
        total = len(keys) + attack
        unl_missing = any(j.key() in missing for j in jobs[len(base_jobs):])
        out.append(SuitePlan(sid, total, total - cached - attack_cached, j0.steps if j0 else 0, j0.height if j0 else 0, j0.width if j0 else 0,
                             frozenset(keys), frozenset(missing), attack - attack_cached,
                             prompt_attack_work(suite, items, sub.targets) if unl_missing else ()))
    return out


def prompt_attack_work(suite, items, targets) -> tuple:
    """(attack, items, budget) of each prompt-attack block and target of the suite (all forget
    items of the attack seeds, at the full budget)."""
    from harness.attacks.runner import attack_module, forget_items

    out = []
    for block, ps in suite.prompt_attacks.items():
        mod = attack_module(ps.attack, suite.id)
        budget = max(mod.budgets(mod.params_of(ps.params)))
        seeds = set(ps.seeds) if ps.seeds is not None else None
        for t in targets:
            if t.kind in suite.applies_to and budget > 0:
                n = len(forget_items(suite, items, t, seeds))
                if n:
                    out.append((mod.NAME, n, budget))
    return tuple(out)


def seconds(plans: list[SuitePlan], cache_dir: Path, device: str) -> tuple[float, str]:
    """Estimated seconds for the plans on ``device`` (a ``device_key``) and where the speed
    figure came from (the least certain source used). An image several suites (or
    submissions: the same base) share is made once and counted once."""
    total, sources = 0.0, []
    data = load(cache_dir)
    seen: set = set()
    for p in plans:
        make = len(p.missing - seen) + p.attack_to_make
        seen |= p.missing
        if make:
            per, src = seconds_per_step(cache_dir, device, p.height, p.width)
            total += per * make * p.steps
            sources.append(src)
        for attack, n, budget in p.prompt_attacks:
            per, src = seconds_per_item_unit(cache_dir, device, attack, p.height, p.width)
            total += per * n * budget
            sources.append(src)
        score = data.get(f"score|{device}|{p.suite}")
        if isinstance(score, dict) and score.get("per_unit"):
            total += float(score["per_unit"])
    order = [GUESS, "scaled from another size on this device", "measured on this device"]
    source = min(sources, key=order.index) if sources else "measured on this device"
    return total, source


def counts(plans: list[SuitePlan]) -> tuple[int, int]:
    """(images to make, images cached) over the plans, each shared image once."""
    keys = set().union(*(p.keys for p in plans)) if plans else set()
    missing = set().union(*(p.missing for p in plans)) if plans else set()
    attack_make = sum(p.attack_to_make for p in plans)
    attack_all = sum(p.images - len(p.keys) for p in plans)
    return len(missing) + attack_make, len(keys) - len(missing) + attack_all - attack_make


def note_attacks(cache_dir: Path, device: str, result) -> float:
    """Note each prompt attack of a suite result (``results.assemble.SuiteResult``: its metric
    records' details: attack, attacked items, budget, seconds) as seconds per attacked item per
    budget unit; returns the attacks' seconds (the suite's scoring time is the rest).
    ``cache_dir`` None: count them, note nothing."""
    seen, total = set(), 0.0
    gen = (result.suite.generation if result.suite is not None else None) or {}
    h, w = gen.get("height"), gen.get("width")
    for r in result.metrics:
        d = r.details if isinstance(r.details, dict) else {}
        if not all(k in d for k in ("attack", "attacked", "budget", "seconds")) or not (h and w):
            continue
        key = (r.target, d["attack"], json.dumps([d.get("params"), d.get("attack_seeds")], sort_keys=True))  # pre_asr and asr share one
        if key in seen:
            continue
        seen.add(key)
        total += float(d["seconds"] or 0)
        if d["attacked"] and d["budget"] and cache_dir is not None:
            note(cache_dir, attack_key(device, d["attack"], h, w), float(d["seconds"]), d["attacked"] * d["budget"])
    return total


def fmt_duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def summary_line(plans: list[SuitePlan], cache_dir: Path, device: str, parallel: int = 1) -> str:
    """One line: images to make / cached and the time they take (``parallel`` processes share
    the suites: an ideal split)."""
    make, have = counts(plans)
    secs, source = seconds(plans, cache_dir, device)
    split = f" over {parallel} workers" if parallel > 1 else ""
    attacked = sum(n for p in plans for _, n, _ in p.prompt_attacks)
    att = f" and {attacked} prompt-attack item(s)" if attacked else ""
    return f"estimate: {make} image(s) to make{att}, {have} cached; about {fmt_duration(secs / parallel)}{split} on {device} ({source})"


def resolve_device(device: str) -> str:
    if device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except Exception:  # noqa: BLE001
            return "cpu"
    return device


def env_threads() -> int | None:
    v = os.environ.get("UNLEARN_THREADS")
    return int(v) if v and v.isdigit() else None
