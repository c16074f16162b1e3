"""Generation cost per image of the toy-xl world (SDXL architecture) against the toy world (SD-1.x),
measured in one run: the same jobs (every toy prompt, DDIM 20 steps, guidance 5, 32 px, batches
of 25) through the harness's own batch runner, the two pipelines timed in alternating rounds so a
change of machine load falls on both. Prints seconds per image of each and their ratio (JSON).

    .venv/bin/python benchmarks/toy_xl_cost.py [--images 100] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def toy_jobs(n: int) -> list:
    """``n`` jobs over every toy prompt (DDIM 20 steps, guidance 5, 32 px), seeds 0..n-1."""
    from harness.run.generate import Job
    from harness.toy import world

    prompts = [p for _, _, p in world.all_prompts()]
    return [Job(prompt=prompts[i % len(prompts)], negative_prompt="", seed=i, scheduler="ddim", steps=20, guidance=5.0, height=32,
                width=32, eta=0.0, dtype="float32", model="bench") for i in range(n)]


def time_rounds(pipes: dict, jobs: list, rounds: int, batch: int) -> dict[str, list[float]]:
    """Seconds per image of each pipeline, round by round, the pipelines alternating within a
    round (a change of machine load falls on all); one warm-up batch of two images each first."""
    from harness.run.generate import run_batch

    for p in pipes.values():
        run_batch(p, jobs[:2])
    seconds: dict[str, list[float]] = {w: [] for w in pipes}
    for _ in range(rounds):
        for w, p in pipes.items():
            t0 = time.perf_counter()
            for i in range(0, len(jobs), batch):
                run_batch(p, jobs[i : i + batch])
            seconds[w].append((time.perf_counter() - t0) / len(jobs))
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from harness.families import family_of
    from harness.families.sd1 import Placement
    from harness.toy.paths import PIPELINES

    jobs = toy_jobs(a.images)
    pipes = {w: family_of(d).load(d, Placement("cpu", "float32")) for w, d in PIPELINES.items()}
    seconds = time_rounds(pipes, jobs, a.rounds, a.batch)
    per_image = {w: statistics.median(v) for w, v in seconds.items()}
    print(json.dumps({"seconds_per_image": {w: round(v, 5) for w, v in per_image.items()},
                      "rounds": {w: [round(x, 5) for x in v] for w, v in seconds.items()},
                      "ratio_toy_xl_over_toy": round(per_image["toy-xl"] / per_image["toy"], 3),
                      "images": a.images, "batch": a.batch, "threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
