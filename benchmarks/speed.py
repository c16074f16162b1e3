"""Speed of the harness on the toy world, ratios measured in one run (prints figures; not a test).

    .venv/bin/python benchmarks/speed.py [--images 100] [--only c] [--threads 1]

(a) harness generation, cold cache, vs a hand-written diffusers loop making the same images
    (checked bitwise): target <= 1.05
(b) warm-cache re-run vs cold: target <= 0.05
(c) batched scoring vs one image at a time: target >= 5x. Three figures, every one checked to
    give the same predictions / distances / embeddings both ways:
    (c1) the toy classifier alone: the harness's ``ToyScorer.predict`` on all images vs the same
         call once per image;
    (c2) the classifier as UnlearnCanvas' ``evaluation/quantitative/accuracy.py`` runs it: per
         image PIL image -> ``transforms.Resize`` + ``ToTensor`` -> ``unsqueeze(0)`` -> model ->
         ``argmax().item()`` under ``no_grad`` (image files are not read in either path: both
         start from the decoded uint8 images, as the harness's image cache hands them over);
    (c3) the toy scoring stage of the harness's image metrics: both models' predictions
         (UA / IRA / CRA), integrity distances over all matched pairs, M-Score embeddings of the
         forget images and of 200 references, each metric's own per-image pass as reference
         scripts do it, vs the harness's batched functions. FID / KID are left out: clean-fid
         loads and resizes every image one at a time in both cases.
    Wall time and process CPU time (the CPU figure is steadier on a shared machine).
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


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall s, best process CPU s, last result) over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus), out


def bench_scoring(base: list, unlearned: list, repeats: int) -> None:
    """(c): see the module docstring."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision import transforms

    from harness.scorers.classifiers import ToyScorer
    from harness.metrics.features import toy_classifier, toy_embeddings, toy_perceptual_distance
    from harness.metrics.mscore import m_score
    from harness.spec import ScorerSpec
    from harness.toy import world

    scorer = ToyScorer(ScorerSpec(backend="toy"), Path("."))
    model = toy_classifier()
    n = len(base)
    forget = list(range(0, n, 5))  # one style in five: the forget prompts of a style target
    refs = list(world.reference_images(None, "striped", 200, 2024))
    to_input = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])  # UnlearnCanvas' transform, at the toy size
    scorer.predict(base[:8])  # warm-up (first-call allocations)

    def one(im) -> torch.Tensor:
        return to_input(Image.fromarray(im)).unsqueeze(0)

    # (c1) the same harness call, all images vs one image per call
    wb, cb, batched = _timed(lambda: scorer.predict(base), repeats)
    ws, cs, single = _timed(lambda: [scorer.predict([im]) for im in base], max(1, repeats // 2))
    same = all(batched[h] == [p[h][0] for p in single] for h in batched)
    print(f"(c1) toy classifier, {n} images: harness batched {wb * 1e3:.1f} ms (CPU {cb * 1e3:.1f}) vs the same call per image "
          f"{ws * 1e3:.1f} ms (CPU {cs * 1e3:.1f}): {ws / wb:.1f}x wall, {cs / cb:.1f}x CPU; same predictions: {same}")

    # (c2) UnlearnCanvas' per-image loop
    def reference_predict(images):
        out = {"object": [], "style": []}
        for im in images:
            x = one(im)
            with torch.no_grad():
                lo, ls = model(x)
                out["object"].append(scorer.heads["object"][torch.argmax(lo).item()])
                out["style"].append(scorer.heads["style"][torch.argmax(ls).item()])
        return out

    wr, cr, ref = _timed(lambda: reference_predict(base), max(1, repeats // 2))
    print(f"(c2) toy classifier, {n} images: harness batched {wb * 1e3:.1f} ms (CPU {cb * 1e3:.1f}) vs UnlearnCanvas-style per-image loop "
          f"{wr * 1e3:.1f} ms (CPU {cr * 1e3:.1f}): {wr / wb:.1f}x wall, {cr / cb:.1f}x CPU; same predictions: {ref == batched}")

    # (c3) the scoring stage: predictions of both models, integrity over all pairs, M-Score embeddings
    def harness_stage():
        preds = scorer.predict(base), scorer.predict(unlearned)
        dist = toy_perceptual_distance(base, unlearned)
        ref_f = toy_embeddings(refs)
        ms = m_score(toy_embeddings([unlearned[i] for i in forget]), ref_f), m_score(toy_embeddings([base[i] for i in forget]), ref_f)
        return preds, dist, ms

    @torch.no_grad()
    def reference_stage():
        preds = reference_predict(base), reference_predict(unlearned)
        dist = []
        for a, b in zip(base, unlearned):  # LPIPS-style, one pair per call (as lpips' example scripts do)
            d = 0.0
            fa, fb = model.feature_maps(one(a)), model.feature_maps(one(b))
            for x, y in zip(fa, fb):
                x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
                y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
                d = d + ((x - y) ** 2).sum(1).mean((1, 2)) / 2
            dist.append((d / len(fa)).item())
        emb = lambda ims: np.stack([model.features(one(im))[0].numpy() for im in ims]).astype(np.float64)
        ref_f = emb(refs)
        ms = m_score(emb([unlearned[i] for i in forget]), ref_f), m_score(emb([base[i] for i in forget]), ref_f)
        return preds, np.array(dist), ms

    wh, ch, h = _timed(harness_stage, repeats)
    wq, cq, q = _timed(reference_stage, max(1, repeats // 2))
    same = h[0] == q[0] and np.allclose(h[1], q[1], atol=1e-6) and np.allclose(h[2], q[2], atol=1e-6)
    print(f"(c3) toy scoring stage ({2 * n} predictions, {n} integrity pairs, {2 * len(forget) + len(refs)} M-Score embeddings): "
          f"harness {wh * 1e3:.1f} ms (CPU {ch * 1e3:.1f}) vs per image {wq * 1e3:.1f} ms (CPU {cq * 1e3:.1f}): "
          f"{wq / wh:.1f}x wall, {cq / ch:.1f}x CPU (target >= 5x); same values: {same}")


def main() -> int:
    import numpy as np
    import torch

    from harness.run.generate import ImageCache, Job, generate, initial_latents
    from harness.toy import world
    from harness.toy.model import load_pipeline

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--only", default="abcd", help="which parts, e.g. c or ab (default abcd)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: every core)")
    ap.add_argument("--repeats", type=int, default=5, help="(c): best of this many runs")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{a.threads} torch thread(s), {os.cpu_count()} cores; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    parts = set(a.only)
    if not parts or parts - set("abcd"):
        ap.error(f"--only {a.only!r}: give letters of a, b, c, d")
    if parts <= {"c"}:  # scoring alone: procedural toy images (the CNN's cost does not depend on content)
        bench_scoring(list(world.sample(a.images, 0)[0]), list(world.sample(a.images, 1)[0]), a.repeats)
        return 0
    pipe = load_pipeline()
    prompts = [p for _, _, p in world.all_prompts()]
    if parts & {"a", "b"}:
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
        shutil.rmtree(cache_dir, ignore_errors=True)
        if "c" in parts:  # the generated images as the base model's; procedural ones stand in for the unlearned model's
            bench_scoring(imgs, list(world.sample(len(imgs), 1)[0]), a.repeats)
    elif "c" in parts:
        bench_scoring(list(world.sample(a.images, 0)[0]), list(world.sample(a.images, 1)[0]), a.repeats)

    if "d" in parts:
        rates = []
        for bs in (1, 2, 4, 8, 16, 32):
            n = max(32, bs * 2)
            js = [Job(prompts[i % len(prompts)], "", 10_000 + i, "ddim", 20, 5.0, 32, 32, 0.0, "float32", f"bench-bs{bs}") for i in range(n)]
            t0 = time.perf_counter()
            generate(pipe, js, ImageCache(tempfile.mkdtemp()), bs, progress=False)
            rates.append(f"{bs}: {n / (time.perf_counter() - t0):.1f}")
        print(f"(d) images/s by batch size ({torch.get_num_threads()} threads, DDIM 20, guidance 5): " + ", ".join(rates))
    return 0

if __name__ == "__main__":
    sys.exit(main())
