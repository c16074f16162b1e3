"""Faults: kill -9 mid-run, two runs on one cache, NaN outputs. Nothing finished is lost or
regenerated, nothing half-written is trusted, broken images are flagged, not silently scored."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch

from harness.run.generate import ImageCache, Job, generate

PROMPTS = ["A ring image in solid style.", "A cross image in dotted style.", "A square image in striped style."]
SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from harness.run.generate import ImageCache, Job, generate
from harness.toy.model import load_pipeline
pipe = load_pipeline(sys.argv[1])
jobs = [Job(p, "", s, "ddim", 10, 3.0, 32, 32, 0.0, "float32", "m") for p in {prompts!r} for s in range(int(sys.argv[3]))]
imgs, rep = generate(pipe, jobs, ImageCache(sys.argv[2]), batch_size=1, progress=False)
print(rep["generated"], rep["cached"])
"""


def _jobs(n_seeds):
    return [Job(p, "", s, "ddim", 10, 3.0, 32, 32, 0.0, "float32", "m") for p in PROMPTS for s in range(n_seeds)]


def _start(tiny_dir, cache, n_seeds):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT.format(prompts=PROMPTS), str(tiny_dir), str(cache), str(n_seeds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_kill_9_during_generation_loses_nothing_and_regenerates_nothing_finished(tiny_dir, tmp_path, tiny_pipe_factory):
    from harness.toy.model import load_pipeline

    cache = tmp_path / "cache"
    proc = _start(tiny_dir, cache, 8)
    deadline = time.time() + 600  # a loaded machine: the child's imports alone took 157 s at load 19
    while time.time() < deadline and len(list(cache.rglob("*.json"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(cache.rglob("*.json")))
    assert 3 <= done < 24, done
    pipe = load_pipeline(tiny_dir)
    jobs = _jobs(8)
    again, rep = generate(pipe, jobs, ImageCache(cache), batch_size=4, progress=False)
    assert rep["cached"] >= done - 1 and rep["generated"] == len(jobs) - rep["cached"]  # at most the one being written is redone
    fresh, _ = generate(pipe, jobs, ImageCache(tmp_path / "fresh"), batch_size=4, progress=False)
    for a, b in zip(again, fresh):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_two_concurrent_runs_on_one_cache_do_not_corrupt_it(tiny_dir, tmp_path):
    from harness.store.hashing import sha256_bytes

    cache = tmp_path / "cache"
    procs = [_start(tiny_dir, cache, 3) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    sides = list(cache.rglob("*.json"))
    assert len(sides) == 9 and len(list(cache.rglob("*.png"))) == 9
    for side in sides:
        meta = json.loads(side.read_text())
        assert meta["png_sha256"] == sha256_bytes(side.with_suffix(".png").read_bytes())
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_non_finite_outputs_are_flagged(tiny_pipe_factory, tmp_path):
    pipe = tiny_pipe_factory(seed=6)
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(float("nan"))
    jobs = _jobs(1)[:2]
    _, rep = generate(pipe, jobs, ImageCache(tmp_path), progress=False)
    assert len(rep["flagged"]) == 2 and all("non-finite" in f["flags"] for f in rep["flagged"])
    _, rep2 = generate(pipe, jobs, ImageCache(tmp_path), progress=False)  # from the cache: still flagged
    assert rep2["cached"] == 2 and len(rep2["flagged"]) == 2
