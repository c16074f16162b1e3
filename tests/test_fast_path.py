"""The GPU fast path, checked on the CPU: CUDA out-of-memory back-off, SDPA attention,
channels_last, the --unlearn-compile flag, and what the suite record says about them."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.run.generate import ImageCache, Job, RunStats, generate, run_batch
from harness.families.sd1 import Placement, accelerate, describe_pipeline, load_base
from harness.spec import BaseModelSpec

ROOT = Path(__file__).resolve().parents[1]
JOBS = [Job(f"A {o} image in {s} style.", "", seed, "ddim", 3, 5.0, 32, 32, 0.0, "float32", "fast-path")
        for o in ("ring", "cross", "square") for s in ("solid", "striped") for seed in (0, 1)]  # 12 jobs


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: the machine is shared


def oom_above(k, calls):
    """A runner that runs out of CUDA memory for batches larger than k."""

    def runner(pipe, jobs):
        calls.append(len(jobs))
        if len(jobs) > k:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake: batch {len(jobs)} > {k})")
        return run_batch(pipe, jobs)

    return runner


def test_cuda_oom_halves_the_batch_keeps_the_images_and_is_recorded(toy_pipe, tmp_path):
    calls, stats = [], RunStats()
    imgs, rep = generate(toy_pipe, JOBS, ImageCache(tmp_path / "a"), batch_size=8, progress=False, runner=oom_above(3, calls), stats=stats)
    assert rep["generated"] == 12
    assert calls == [8, 4, 2, 2, 2, 2, 2, 2]  # 8 and 4 fail; then batches of 2, the smaller size kept
    assert stats.oom_backoffs == 2 and stats.batch_cap == 2 and stats.tasks == 6
    ref, _ = generate(toy_pipe, JOBS, ImageCache(tmp_path / "b"), batch_size=2, progress=False)
    for a, b in zip(imgs, ref):
        np.testing.assert_array_equal(a, b)  # same batches as a run at batch 2: bitwise identical
    # The smaller size carries over to the next generate() of the suite (same stats).
    calls.clear()
    generate(toy_pipe, [j.__class__(**{**j.__dict__, "model": "other"}) for j in JOBS[:4]], ImageCache(tmp_path / "a"), batch_size=8,
             progress=False, runner=oom_above(3, calls), stats=stats)
    assert calls == [2, 2] and stats.oom_backoffs == 2


def test_oom_at_batch_one_is_raised(toy_pipe, tmp_path):
    with pytest.raises(torch.cuda.OutOfMemoryError):
        generate(toy_pipe, JOBS[:2], ImageCache(tmp_path), batch_size=2, progress=False, runner=oom_above(0, []))


def test_sdpa_replaces_the_plain_attention_processor():
    from diffusers.models.attention_processor import AttnProcessor

    pipe = load_base(BaseModelSpec(builtin="toy"), ROOT, Placement.choose("cpu"))
    assert describe_pipeline(pipe) == {"attention": ["AttnProcessor2_0"], "channels_last": False, "compiled": False}
    pipe.unet.set_attn_processor(AttnProcessor())
    assert describe_pipeline(pipe)["attention"] == ["AttnProcessor"]
    accelerate(pipe, Placement("cpu", "float32"))
    assert describe_pipeline(pipe)["attention"] == ["AttnProcessor2_0"]


def test_channels_last_on_cuda_placement(toy_pipe, tmp_path):
    """A CUDA placement puts UNet and VAE in channels_last (``.to(memory_format=...)`` works on
    CPU tensors too, so the code path runs here); the images do not change beyond rounding."""
    pipe = load_base(BaseModelSpec(builtin="toy"), ROOT, Placement.choose("cpu"))
    accelerate(pipe, Placement("cuda", "float32"))
    assert describe_pipeline(pipe)["channels_last"] is True
    a, _ = generate(pipe, JOBS[:4], ImageCache(tmp_path / "a"), batch_size=4, progress=False)
    b, _ = generate(toy_pipe, JOBS[:4], ImageCache(tmp_path / "b"), batch_size=4, progress=False)
    for x, y in zip(a, b):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile is slow on a CPU: stand in for nn.Module.compile (same observable state)."""
    compiled = []

    def compile(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        self._compiled_call_impl = self._call_impl

    monkeypatch.setattr(torch.nn.Module, "compile", compile)
    return compiled


def test_compile_flag_compiles_the_unet_in_place(fake_compile):
    pipe = load_base(BaseModelSpec(builtin="toy"), ROOT, Placement.choose("cpu", compile=True))
    assert fake_compile == ["UNet2DConditionModel"] and describe_pipeline(pipe)["compiled"] is True
    assert "conv_in.weight" in pipe.unet.state_dict()  # keys unchanged: a unet checkpoint still applies


SUITE = """\
id: mini
version: "1.0"
applies_to: [style, object]
prompts:
  template:
    template: "A {object} image in {style} style."
    values: {object: [circle], style: [striped, solid]}
generation: {scheduler: ddim, steps: 2, guidance: 3.0, seeds: [0, 1], batch_size: 4}
scorer: {backend: toy}
metrics:
  - {name: ua, threshold: ">= 0.0"}
"""


def test_plugin_records_compile_attention_and_oom_backoff(pytester, fake_compile, monkeypatch):
    import harness.run.generate

    monkeypatch.setattr(harness.run.generate, "run_batch", oom_above(1, []))
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "mini.yaml").write_text(SUITE)
    shutil.copytree(ROOT / "submissions" / "checkpoints" / "uce-style-striped", pytester.path / "ckpt")
    sub = (ROOT / "submissions" / "toy-uce-style.yaml").read_text().replace("submissions/checkpoints/uce-style-striped", "ckpt")
    (pytester.path / "sub.yaml").write_text(sub + "suites: [mini]\n")
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    r = pytester.runpytest("--unlearn-submission", "sub.yaml", "--unlearn-device", "cpu", "--unlearn-cache", str(pytester.path / "cache"),
                           "--unlearn-results", "r.json", "--unlearn-compile")
    r.assert_outcomes(passed=1)
    (suite,) = json.loads((pytester.path / "r.json").read_text())["suites"]
    assert suite["pipeline"] == {"compile": True, "attention": ["AttnProcessor2_0"], "channels_last": False, "compiled": True}
    assert suite["batching"] == {"batch_size": 1, "oom_backoffs": 2}  # 4 -> 2 -> 1 on the base, kept for the unlearned
    assert suite["executor"] == {"name": "local", "tasks": 8, "retries": 0}
    assert "UNet2DConditionModel" in fake_compile


def test_fresh_images_have_the_layout_of_cached_ones(toy_pipe, tmp_path):
    """Scores must not depend on whether an image was just made or read from the cache: the
    diffusers output is channel-planar in memory, a decoded PNG is C-contiguous, and
    convolutions over the two layouts round differently (CCS moved in the 4th digit)."""
    cache = ImageCache(tmp_path)
    fresh, _ = generate(toy_pipe, JOBS[:3], cache, batch_size=3, progress=False)
    cached, rep = generate(toy_pipe, JOBS[:3], cache, batch_size=3, progress=False)
    assert rep["cached"] == 3
    for a, b in zip(fresh, cached):
        assert a.flags["C_CONTIGUOUS"] and a.strides == b.strides
        np.testing.assert_array_equal(a, b)
