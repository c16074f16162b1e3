"""Torch threads under the machine's current load: images/s of the toy pipeline with the thread
count harness/run/threads.py chooses against every core (the old default), measured in one run,
interleaved (A B A B) so a change in the competing load hits both.

    .venv/bin/python benchmarks/threads.py [--images 16] [--repeats 2]
"""

import argparse
import os
import time

from harness.run import threads as chooser  # sets OMP_WAIT_POLICY=PASSIVE before torch starts its pool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    import torch

    from harness.run.generate import Job, run_batch
    from harness.toy.model import load_pipeline

    pipe = load_pipeline()
    jobs = [Job("A circle image in striped style.", "", s, "ddim", 20, 5.0, 32, 32, 0.0, "float32", "toy") for s in range(a.images)]
    chosen, why = chooser.choose()
    every = chooser.cores()
    print(f"load {os.getloadavg()[0]:.1f} on {every} core(s); chosen {chosen} thread(s) ({why}); every core = {every}")
    times = {chosen: [], every: []}
    for _ in range(a.repeats):
        for n in (chosen, every) if chosen != every else (chosen,):
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            run_batch(pipe, jobs)
            times[n].append(time.perf_counter() - t0)
    for n, ts in times.items():
        if ts:
            print(f"{n} thread(s): {a.images / min(ts):.2f} img/s best, {a.images / (sum(ts) / len(ts)):.2f} img/s mean ({', '.join(f'{t:.1f}' for t in ts)} s)")
    if chosen != every:
        print(f"chosen / every core, mean time: {(sum(times[chosen]) / len(times[chosen])) / (sum(times[every]) / len(times[every])):.2f}")


if __name__ == "__main__":
    main()
