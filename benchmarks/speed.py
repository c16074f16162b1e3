"""Speed of the harness on the toy world, ratios measured in one run (prints figures; not a test).

    .venv/bin/python benchmarks/speed.py [--images 100]

(a) harness generation, cold cache, vs a hand-written diffusers loop making the same images
    (checked bitwise): target <= 1.05
(b) warm-cache re-run vs cold: target <= 0.05
(c) batched scoring vs one image at a time (toy classifier): target >= 5x
(d) images/s for batch sizes 1 to 32
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import numpy as np
    import torch

    from harness.generate import ImageCache, Job, generate, initial_latents
    from harness.metrics.classifiers import ToyScorer
    from harness.spec import ScorerSpec
    from harness.toy import world
    from harness.toy.model import load_pipeline

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch", type=int, default=25)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    pipe = load_pipeline()
    prompts = [p for _, _, p in world.all_prompts()]
    jobs = [Job(prompts[i % len(prompts)], "", i, "ddim", 20, 5.0, 32, 32, 0.0, "float32", "bench") for i in range(a.images)]
    generate(pipe, jobs[: a.batch], ImageCache(tempfile.mkdtemp()), a.batch, progress=False)  # warm-up

    # (a) the same images by hand: one CPU generator per image, the pipeline called directly
    t0 = time.perf_counter()
    hand = []
    for i in range(0, len(jobs), a.batch):
        chunk = jobs[i : i + a.batch]
        lat = initial_latents(pipe, [j.seed for j in chunk], 32, 32)
        gens = [torch.Generator("cpu").manual_seed(j.seed + 1) for j in chunk]
        with torch.inference_mode():
            out = pipe([j.prompt for j in chunk], negative_prompt=[""] * len(chunk), num_inference_steps=20, guidance_scale=5.0,
                       latents=lat, generator=gens, eta=0.0, output_type="np").images
        hand.append(np.round(np.clip(out, 0, 1) * 255).astype(np.uint8))
    t_hand = time.perf_counter() - t0
    hand = np.concatenate(hand)

    cache_dir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    t0 = time.perf_counter()
    imgs, rep = generate(pipe, jobs, ImageCache(cache_dir), a.batch, progress=False)
    t_cold = time.perf_counter() - t0
    same = all(np.array_equal(x, y) for x, y in zip(imgs, hand))
    t0 = time.perf_counter()
    _, rep2 = generate(lambda: (_ for _ in ()).throw(AssertionError("loaded a model")), jobs, ImageCache(cache_dir), a.batch, progress=False)
    t_warm = time.perf_counter() - t0
    print(f"(a) harness cold {t_cold:.2f} s vs hand-written loop {t_hand:.2f} s: ratio {t_cold / t_hand:.3f} (target <= 1.05); "
          f"images bitwise identical: {same}")
    print(f"(b) warm re-run {t_warm:.3f} s vs cold {t_cold:.2f} s: ratio {t_warm / t_cold:.4f} (target <= 0.05); generated {rep2['generated']}")

    scorer = ToyScorer(ScorerSpec(backend="toy"), Path("."))
    t0 = time.perf_counter()
    scorer.predict(imgs, batch_size=256)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for im in imgs:
        scorer.predict([im], batch_size=1)
    t_single = time.perf_counter() - t0
    print(f"(c) scoring {len(imgs)} images batched {t_batched * 1000:.1f} ms vs one at a time {t_single * 1000:.1f} ms: {t_single / t_batched:.1f}x (target >= 5x)")

    rates = []
    for bs in (1, 2, 4, 8, 16, 32):
        n = max(32, bs * 2)
        js = [Job(prompts[i % len(prompts)], "", 10_000 + i, "ddim", 20, 5.0, 32, 32, 0.0, "float32", f"bench-bs{bs}") for i in range(n)]
        t0 = time.perf_counter()
        generate(pipe, js, ImageCache(tempfile.mkdtemp()), bs, progress=False)
        rates.append(f"{bs}: {n / (time.perf_counter() - t0):.1f}")
    print(f"(d) images/s by batch size ({torch.get_num_threads()} threads, DDIM 20, guidance 5): " + ", ".join(rates))
    shutil.rmtree(cache_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
