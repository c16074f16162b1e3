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
    from harness.toy.paths import PIPELINES
    from toy_xl_cost import time_rounds, toy_jobs  # this folder's: the same jobs and timing as toy-xl's cost

    methods = a.methods or [n for n in REGISTRY.names() if REGISTRY.get(n).kind == "inference"]
    jobs = toy_jobs(a.images)
    fam = family_of(PIPELINES["toy"])
    pipes = {"base": fam.load(PIPELINES["toy"], Placement("cpu", "float32"))}
    states = {}
    for m in methods:
        p = fam.load(PIPELINES["toy"], Placement("cpu", "float32"))
        params = dict((REGISTRY.get(m).presets or {}).get("toy", {}))
        states[m] = install(p, fam, get_method(m).setup(p, fam, ["striped"], **params), 5.0)
        pipes[m] = p
    seconds = time_rounds(pipes, jobs, a.rounds, a.batch)
    per_image = {w: statistics.median(v) for w, v in seconds.items()}
    batches = -(-len(jobs) // a.batch) * a.rounds + 1  # + the warm-up batch
    print(json.dumps({"seconds_per_image": {w: round(v, 5) for w, v in per_image.items()},
                      "ratio_to_base": {m: round(per_image[m] / per_image["base"], 3) for m in methods},
                      "denoiser_calls_per_step": {m: round(states[m].calls / (batches * 20), 3) for m in methods},  # the base: 1
                      "rounds": {w: [round(x, 5) for x in v] for w, v in seconds.items()},
                      "images": a.images, "batch": a.batch, "threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
