"""Measured quality of the toy world (``unlearn toy quality``): figures, not a timed test.

Prints the classifier's held-out accuracy per head, the pipeline's prompt fidelity (every
object x style prompt x N seeds, classified by the toy classifier) and generation speed.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from harness.toy import world
from harness.toy.classifier import DEFAULT_DIR as CLF_DIR
from harness.toy.classifier import load_classifier, predict
from harness.toy.model import DEFAULT_DIR as PIPE_DIR
from harness.toy.model import load_pipeline


def heldout_accuracy(clf, n: int = 4000, seed: int = 123_456) -> dict[str, float]:
    imgs, o, s = world.sample(n, seed=seed)
    po, ps = predict(clf, imgs)
    return {"object": float((po == o).mean()), "style": float((ps == s).mean())}


def generate_grid(pipe, seeds: list[int], steps: int, guidance: float, batch: int = 50, scheduler: str = "ddim"):
    """Images for every world prompt x seed (objects outer, styles, seeds inner), with labels."""
    from harness.run.generate import initial_latents, set_scheduler

    set_scheduler(pipe, scheduler)
    items = [(o, s, p, sd) for o, s, p in world.all_prompts() for sd in seeds]
    out = []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        lat = initial_latents(pipe, [c[3] for c in chunk], 32, 32)
        with torch.inference_mode():
            imgs = pipe([c[2] for c in chunk], num_inference_steps=steps, guidance_scale=guidance, latents=lat, output_type="np").images
        out.append(np.round(np.clip(imgs, 0, 1) * 255).astype(np.uint8))
    return np.concatenate(out), items


def fidelity(pipe, clf, seeds: list[int], steps: int, guidance: float, scheduler: str = "ddim") -> dict:
    imgs, items = generate_grid(pipe, seeds, steps, guidance, scheduler=scheduler)
    po, ps = predict(clf, imgs)
    o = np.array([world.OBJECTS.index(i[0]) for i in items])
    s = np.array([world.STYLES.index(i[1]) for i in items])
    per_style = {st: float((ps[s == k] == k).mean()) for k, st in enumerate(world.STYLES)}
    per_object = {ob: float((po[o == k] == k).mean()) for k, ob in enumerate(world.OBJECTS)}
    return {"object": float((po == o).mean()), "style": float((ps == s).mean()), "both": float(((po == o) & (ps == s)).mean()),
            "per_object": per_object, "per_style": per_style, "n_images": len(items)}


def speed(pipe, n: int = 100, steps: int = 20, guidance: float = 5.0, batch: int = 50, scheduler: str = "ddim") -> float:
    """Seconds for n images (after one warm-up call)."""
    prompts = [p for _, _, p in world.all_prompts()]
    seeds = list(range(n))
    generate_grid(pipe, [0], steps, guidance, batch=batch, scheduler=scheduler)  # warm-up
    t0 = time.perf_counter()
    from harness.run.generate import initial_latents

    for i in range(0, n, batch):
        ps = [prompts[j % len(prompts)] for j in range(i, min(n, i + batch))]
        lat = initial_latents(pipe, seeds[i : i + len(ps)], 32, 32)
        with torch.inference_mode():
            pipe(ps, num_inference_steps=steps, guidance_scale=guidance, latents=lat, output_type="np")
    return time.perf_counter() - t0


def report(pipe_dir=PIPE_DIR, clf_dir=CLF_DIR, seeds: int = 8, steps: int = 20, guidance: float = 5.0, scheduler: str = "ddim") -> dict:
    t0 = time.perf_counter()
    clf = load_classifier(clf_dir)
    clf_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe = load_pipeline(pipe_dir)
    pipe_load = time.perf_counter() - t0
    return {
        "settings": {"scheduler": scheduler, "steps": steps, "guidance": guidance, "seeds": list(range(seeds)), "threads": torch.get_num_threads()},
        "classifier_heldout": heldout_accuracy(clf),
        "classifier_load_s": round(clf_load, 3),
        "pipeline_load_s": round(pipe_load, 3),
        "fidelity": fidelity(pipe, clf, list(range(seeds)), steps, guidance, scheduler),
        "seconds_per_100_images": round(speed(pipe, 100, steps, guidance, scheduler=scheduler), 2),
    }
