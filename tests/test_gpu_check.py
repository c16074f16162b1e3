"""benchmarks/gpu_check.py runs end to end on the CPU with --tiny and prints its figures."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_on_cpu_prints_rates_memory_and_projection():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu", "--threads", "1", "--batches", "1,2"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    assert re.search(r"^\[\d\d:\d\d:\d\d \+\s*[\d.]+s\] torch ", out, re.M)  # timestamped lines
    assert "AttnProcessor2_0" in out  # the harness's fast path ran (SDPA)
    for bs in (1, 2):
        assert re.search(rf"float32 batch +{bs}: +[\d.]+ images/s at 2 steps .*peak memory", out), out
    assert re.search(r"projection at batch \d+ \(fitted: .* from 2 and 4 steps\): [\d.]+ images/s at 100 steps", out), out
    assert re.search(r"one unlearned model \(5,100 images\) [\d.]+ h .* one method \(70 targets, 357,000 images\) [\d.]+ h", out), out
    assert out.rstrip().endswith("done")


def test_gpu_check_tiny_sdxl_on_cpu_runs_the_sdxl_family_at_its_settings():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--model", "sdxl", "--device", "cpu", "--threads", "1",
                        "--batches", "1"], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    assert re.search(r"built sdxl UNet .* text encoder 2 \d+ M parameters .* 32x32, EulerDiscreteScheduler 2 steps, guidance 5\b", out), out
    assert re.search(r"float32 batch +1: +[\d.]+ images/s at 2 steps .*peak memory", out), out
    assert re.search(r"projection at batch 1 \(fitted: .* from 2 and 4 steps\): [\d.]+ images/s at 50 steps", out), out
    assert re.search(r"SDXL suites: one unlearned model \(292 images: sdxl-artist-styles 50, sdxl-imagenette-objects 100, sdxl-nudity 142\) [\d.]+ min", out), out
    assert out.rstrip().endswith("done")


def test_gpu_check_builds_sd14_and_sdxl_at_their_published_sizes():
    """The full-size configs written in gpu_check.py, built on the meta device (no memory, no
    download), have the parameter counts of the published weights: CompVis/stable-diffusion-v1-4's
    and stabilityai/stable-diffusion-xl-base-1.0's unet / vae / text_encoder(_2) safetensors."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    published = {"sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
                 "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}}
    for model, counts in published.items():
        pipe = gpu_check.build_pipeline(False, "meta", model=model)
        assert {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in counts} == counts, model
    assert (pipe.unet.config.sample_size * pipe.vae_scale_factor, pipe.vae.config.scaling_factor) == (1024, 0.13025)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
