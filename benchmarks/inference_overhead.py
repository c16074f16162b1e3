"""Sampling overhead of the inference-time methods on the toy world, measured in one run: the same
jobs (every toy prompt, DDIM 20 steps, guidance 5, 32 px, batches of 25) through the harness's
batch runner on the base and under each method (its toy preset), in alternating rounds so a change
of machine load falls on all. An inference-time method's cost is paid at every image (a
fine-tuning method's once): prints seconds per image, each method's ratio to the base and its
denoiser calls per image (JSON).

    .venv/bin/python benchmarks/inference_overhead.py [--images 100] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=None, help="registered inference-time methods (default: all)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from harness.families import family_of
    from harness.families.guidance import install
    from harness.families.sd1 import Placement
    from harness.methods import REGISTRY, get_method
    from harness.run.generate import Job, run_batch
    from harness.toy import world
    from harness.toy.paths import PIPELINES

    methods = a.methods or [n for n in REGISTRY.names() if REGISTRY.get(n).kind == "inference"]
    prompts = [p for _, _, p in world.all_prompts()]
    jobs = [Job(prompt=prompts[i % len(prompts)], negative_prompt="", seed=i, scheduler="ddim", steps=20, guidance=5.0, height=32,
                width=32, eta=0.0, dtype="float32", model="bench") for i in range(a.images)]
    fam = family_of(PIPELINES["toy"])
    pipes = {"base": fam.load(PIPELINES["toy"], Placement("cpu", "float32"))}
    states = {}
    for m in methods:
        p = fam.load(PIPELINES["toy"], Placement("cpu", "float32"))
        params = dict((REGISTRY.get(m).presets or {}).get("toy", {}))
        states[m] = install(p, fam, get_method(m).setup(p, fam, ["striped"], **params), 5.0)
        pipes[m] = p
    for p in pipes.values():  # warm-up
        run_batch(p, jobs[:2])
    for s in states.values():
        s.calls = 0
    seconds: dict[str, list[float]] = {w: [] for w in pipes}
    for _ in range(a.rounds):
        for w, p in pipes.items():
            t0 = time.perf_counter()
            for i in range(0, len(jobs), a.batch):
                run_batch(p, jobs[i : i + a.batch])
            seconds[w].append((time.perf_counter() - t0) / len(jobs))
    per_image = {w: statistics.median(v) for w, v in seconds.items()}
    batches = -(-len(jobs) // a.batch) * a.rounds
    print(json.dumps({"seconds_per_image": {w: round(v, 5) for w, v in per_image.items()},
                      "ratio_to_base": {m: round(per_image[m] / per_image["base"], 3) for m in methods},
                      "denoiser_calls_per_step": {m: round(states[m].calls / (batches * 20), 3) for m in methods},  # the base: 1
                      "rounds": {w: [round(x, 5) for x in v] for w, v in seconds.items()},
                      "images": a.images, "batch": a.batch, "threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
