"""How long a run will take, before it starts: images still to make x measured speed.

The images: each suite's jobs as the evaluator builds them (same prompts, smoke subset, seeds,
steps, size, model fingerprints), minus those already in the image cache, plus the attack
images of CRS / CCS (counted as still to make). The speed: seconds per image per denoising
step, measured by every run on this machine and kept per device in ``<cache>/speed.json``
(key: device, threads, image size), so the second run's estimate is the first run's measured
speed. Scoring time per suite is kept the same way. Without a measurement for this device the
estimate scales the README's toy figure (100 32x32 images x 20 steps in 18 s on 2 CPU cores)
by pixels and says it is a guess.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .fsutil import atomic_write

GUESS_S_PER_STEP_PIXEL = 18.0 / (100 * 20 * 32 * 32)  # README: toy world, 2 CPU cores


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


def seconds_per_step(cache_dir: Path, device: str, height: int, width: int) -> tuple[float, str]:
    """(seconds per image per step, source): this device at this size, else this device at
    another size scaled by pixels, else the README's toy figure scaled by pixels (a guess)."""
    data = load(cache_dir)
    exact = data.get(gen_key(device, height, width))
    if isinstance(exact, dict) and exact.get("per_unit"):
        return float(exact["per_unit"]), "measured on this device"
    prefix = f"gen|{device}|"
    for k, v in data.items():
        if k.startswith(prefix) and isinstance(v, dict) and v.get("per_unit"):
            h, w = (int(x) for x in k[len(prefix):].split("x"))
            return float(v["per_unit"]) * (height * width) / (h * w), "scaled from another size on this device"
    return GUESS_S_PER_STEP_PIXEL * height * width, "a guess: no run measured on this device yet"


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


def plan(sub_path: str, sub, suites: dict, root: Path, cache_dir: Path, device: str = "auto", smoke: bool = False,
         only: set[str] | None = None) -> list[SuitePlan]:
    """Each suite's image counts for one submission, from the specs and the cache (no model
    loads)."""
    from . import metrics
    from .evaluate import Evaluator, native_size, smoke_prompts
    from .models import Placement, model_fingerprints
    from .spec import expand_prompts

    ev = Evaluator(root, cache_dir, device, smoke=smoke, progress=False)
    out = []
    base_fp, unl_fp = model_fingerprints(sub, root)
    for sid, suite in suites.items():
        if only and sid not in only:
            continue
        if not any(metrics.info(m.name).needs_images for m in suite.metrics):
            out.append(SuitePlan(sid, 0, 0, 0, 0, 0))
            continue
        g = suite.generation
        prompts = expand_prompts(suite, root, cache_dir)
        if smoke:
            prompts = smoke_prompts(suite, prompts, sub.targets)
        seeds = suite.smoke.seeds if smoke and suite.smoke and suite.smoke.seeds else g.seeds
        items = [(p, s) for p in prompts for s in ([p.seed] if p.seed is not None else seeds)]
        placement = Placement.choose(device if device != "auto" else "auto", g.dtype)
        size = native_size(sub, root) if not (g.height and g.width) else 0
        jobs = ev._jobs(suite, items, base_fp, placement, size) + ev._jobs(suite, items, unl_fp, placement, size)
        keys = {j.key() for j in jobs}
        missing = {j.key() for j in jobs if not ev.cache.png_sha256(j)}
        cached = len(keys) - len(missing)
        attack, attack_cached = 0, 0
        specs = [m for m in suite.metrics if metrics.info(m.name).attack]
        if specs:
            pd = suite.partial_diffusion
            psis = pd.psi
            aseeds = set(pd.seeds if pd.seeds is not None else sorted({s for _, s in items})[:2])
            attack = len(psis) * sum(1 for _, s in items if s in aseeds)
            try:
                from dataclasses import replace

                from .attacks import attack_model_id

                chosen = [j for j, (_, s) in zip(jobs[: len(items)], items) if s in aseeds]
                attack_cached = sum(1 for psi in psis for j in chosen if ev.cache.png_sha256(replace(j, model=attack_model_id(base_fp, unl_fp, float(psi)))))
            except ImportError:  # the attack code moved: count its images as still to make
                pass
        j0 = jobs[0] if jobs else None
        total = len(keys) + attack
        out.append(SuitePlan(sid, total, total - cached - attack_cached, j0.steps if j0 else 0, j0.height if j0 else 0, j0.width if j0 else 0,
                             frozenset(keys), frozenset(missing), attack - attack_cached))
    return out


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
        score = data.get(f"score|{device}|{p.suite}")
        if isinstance(score, dict) and score.get("per_unit"):
            total += float(score["per_unit"])
    order = ["a guess: no run measured on this device yet", "scaled from another size on this device", "measured on this device"]
    source = min(sources, key=order.index) if sources else "measured on this device"
    return total, source


def counts(plans: list[SuitePlan]) -> tuple[int, int]:
    """(images to make, images cached) over the plans, each shared image once."""
    keys = set().union(*(p.keys for p in plans)) if plans else set()
    missing = set().union(*(p.missing for p in plans)) if plans else set()
    attack_make = sum(p.attack_to_make for p in plans)
    attack_all = sum(p.images - len(p.keys) for p in plans)
    return len(missing) + attack_make, len(keys) - len(missing) + attack_all - attack_make


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
    return f"estimate: {make} image(s) to make, {have} cached; about {fmt_duration(secs / parallel)}{split} on {device} ({source})"


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
