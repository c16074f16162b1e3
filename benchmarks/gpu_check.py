"""GPU check: SD-1.x-size generation through the harness's own path, for a lent GPU machine.

    bash benchmarks/gpu_check.sh                                  # CUDA, fp16 + bf16 (under 8 min on an H100)
    .venv/bin/python benchmarks/gpu_check.py --tiny --device cpu  # tiny models, a few seconds (the test)

Builds, from config values written here (no download), a UNet2DConditionModel of SD v1.4's size
(block_out_channels 320/640/1280/1280, layers_per_block 2, cross_attention_dim 768,
attention_head_dim 8, sample_size 64), SD's AutoencoderKL (128/256/512/512) and a CLIP text
encoder of SD's size (12 layers, 768 wide, 77 positions), all with random weights, plus the toy
world's tokenizer (padded to 77 tokens). It then runs 512x512 generation through
``harness.run.generate.generate`` (``run_batch``, the content-addressed cache, the CUDA
out-of-memory back-off) after ``harness.families.sd1.accelerate`` (SDPA attention, channels_last on
CUDA, optional torch.compile), in each dtype asked for, and prints images/s per batch size
(1, 2, 4, ... until memory runs out), peak GPU memory, and the projected time of the full
UnlearnCanvas answer set (5,100 images per unlearned model at 100 steps; 357,000 per method for
70 targets). It measures at fewer steps (--steps, default 20) and projects to 100 steps from
a fixed + per-step cost fitted at --steps and 2 x --steps (also shown: plain linear scaling).
Random weights give noise images (they may be flagged non-finite in fp16): only speed matters.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

T0 = time.time()

# SD v1.4's component configs (CompVis/stable-diffusion-v1-4 unet/vae/text_encoder config.json).
SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu", center_input_sample=False,
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5,
)
SD14_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512,
)
SD14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                 projection_dim=768, hidden_act="quick_gelu", vocab_size=49408)
# --tiny: the same architecture, small, for the CPU test.
TINY_UNET = dict(SD14_UNET, sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(SD14_VAE, block_out_channels=(32, 64), layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32)
TINY_TEXT = dict(SD14_TEXT, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, projection_dim=64)

# The UnlearnCanvas answer set: images per unlearned model, targets per method, steps.
UC_IMAGES_PER_MODEL = 5_100
UC_TARGETS = 70
UC_STEPS = 100


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.time() - T0:6.1f}s] {msg}", flush=True)


def build_pipeline(tiny: bool, device: str, seed: int = 0):
    """SD-1.x-size (or tiny) components with random weights, built on the device directly."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from harness.toy.model import assemble, build_tokenizer

    tok = build_tokenizer()
    text = TINY_TEXT if tiny else SD14_TEXT
    tok.model_max_length = text["max_position_embeddings"]  # SD pads prompts to 77 tokens
    torch.manual_seed(seed)
    with torch.device(device):  # parameters made where they run: no 1 B-parameter CPU init and copy
        te = CLIPTextModel(CLIPTextConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **text))
        vae = AutoencoderKL(**(TINY_VAE if tiny else SD14_VAE))
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD14_UNET))
    pipe = assemble(vae, te, tok, unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def params_m(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default=None, help="comma-separated: float16,bfloat16,float32 (default float16,bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--batches", default=None, help="batch sizes to try, in order (default 1,2,4,8,16,32; --tiny 1,2,4)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps measured (default 20; --tiny 2)")
    ap.add_argument("--size", type=int, default=None, help="image height = width (default 512; --tiny 32)")
    ap.add_argument("--reps", type=int, default=2, help="timed batches per batch size (after one warm-up batch)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (each batch size compiles once, in its warm-up)")
    ap.add_argument("--tiny", action="store_true", help="tiny models (CPU test of this script)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this many seconds")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs for the multi-GPU projection (Ray executor, linear)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    a = ap.parse_args()

    import torch

    from harness.run.generate import ImageCache, Job, RunStats, generate
    from harness.families.sd1 import Placement, accelerate, describe_pipeline, quiet_loading

    quiet_loading()

    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available (use --device cpu --tiny to test the script)", file=sys.stderr)
        return 2
    dtypes = (a.dtypes or ("float16,bfloat16" if cuda else "float32")).split(",")
    batches = [int(b) for b in (a.batches or ("1,2,4" if a.tiny else "1,2,4,8,16,32")).split(",")]
    steps = a.steps or (2 if a.tiny else 20)
    size = a.size or (32 if a.tiny else 512)
    if a.threads:
        torch.set_num_threads(a.threads)
    log(f"torch {torch.__version__}, device {a.device}" + (f" ({torch.cuda.get_device_name(a.device)}, "
        f"{torch.cuda.get_device_properties(a.device).total_memory / 2**30:.1f} GiB)" if cuda else f", {torch.get_num_threads()} threads"))
    unit = "GPU" if cuda else f"{a.device} process"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    prompts = [f"A {o} image in {s} style." for o in ("circle", "square", "triangle", "cross", "ring") for s in ("solid", "striped", "dotted", "checkered", "outline")]
    cache_root = Path(tempfile.mkdtemp(prefix="gpu-check-cache-"))
    seed = iter(range(10**9))

    def jobs(n: int, nsteps: int, tag: str) -> list:
        return [Job(prompts[i % len(prompts)], "", next(seed), "ddim", nsteps, 7.5, size, size, 0.0, dtype, f"gpu-check:{tag}") for i in range(n)]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    best_overall = None
    for dtype in dtypes:
        if time.time() - T0 > a.budget_s:
            log(f"{dtype}: skipped (time budget {a.budget_s:.0f} s spent)")
            continue
        t = time.time()
        pipe = build_pipeline(a.tiny, a.device)
        pipe = pipe.to(a.device, getattr(torch, dtype))
        accelerate(pipe, Placement(a.device, dtype, a.compile))
        sync()
        log(f"{dtype}: built UNet {params_m(pipe.unet):.0f} M, VAE {params_m(pipe.vae):.0f} M, text encoder {params_m(pipe.text_encoder):.0f} M "
            f"parameters in {time.time() - t:.1f} s; {describe_pipeline(pipe)}; {size}x{size}, DDIM {steps} steps, guidance 7.5")
        rates: dict[int, float] = {}
        stats = RunStats()
        for bs in batches:
            if time.time() - T0 > a.budget_s:
                log(f"{dtype} batch {bs}: skipped (time budget {a.budget_s:.0f} s spent)")
                break
            before = stats.oom_backoffs
            t = time.time()
            generate(pipe, jobs(bs, steps, f"{dtype}-warm{bs}"), ImageCache(cache_root), bs, progress=False, stats=stats)  # warm-up (and compile)
            sync()
            warm = time.time() - t
            if stats.oom_backoffs > before:
                log(f"{dtype} batch {bs}: out of memory; the harness backed off to batch {stats.batch_cap} ({stats.oom_backoffs - before} halving(s)); larger batches not tried")
                break
            if cuda:
                torch.cuda.reset_peak_memory_stats(a.device)
            js = jobs(bs * a.reps, steps, f"{dtype}-bs{bs}")
            t = time.time()
            _, rep = generate(pipe, js, ImageCache(cache_root), bs, progress=False, stats=stats)
            sync()
            dt = time.time() - t
            if stats.oom_backoffs > before:
                log(f"{dtype} batch {bs}: out of memory in the timed batches; backed off to {stats.batch_cap}; larger batches not tried")
                break
            rates[bs] = len(js) / dt
            if cuda:
                mem = f"peak {torch.cuda.max_memory_allocated(a.device) / 2**30:.2f} GiB allocated"
            else:
                import resource

                mem = f"peak memory n/a on cpu (process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)"
            flagged = len(rep["flagged"])
            log(f"{dtype} batch {bs:3d}: {rates[bs]:8.3f} images/s at {steps} steps ({rates[bs] * steps:9.1f} image-steps/s), "
                f"{mem}, warm-up {warm:.1f} s" + (f", {flagged} flagged (random weights)" if flagged else ""))
        if not rates:
            continue
        bs = max(rates, key=rates.get)
        # Fixed + per-step cost per image from a second measurement at 2 x steps, best batch size.
        per_image = {steps: 1 / rates[bs]}
        if time.time() - T0 <= a.budget_s:
            js = jobs(bs * a.reps, 2 * steps, f"{dtype}-fit{bs}")
            generate(pipe, js[:bs], ImageCache(cache_root), bs, progress=False, stats=stats)
            sync()
            t = time.time()
            generate(pipe, js[bs:], ImageCache(cache_root), bs, progress=False, stats=stats)
            sync()
            n2 = len(js) - bs
            per_image[2 * steps] = (time.time() - t) / max(1, n2)
        if len(per_image) == 2:
            per_step = max(0.0, (per_image[2 * steps] - per_image[steps]) / steps)
            fixed = max(0.0, per_image[steps] - per_step * steps)
            t100 = fixed + per_step * UC_STEPS
            how = f"fitted: {fixed * 1000:.1f} ms fixed + {per_step * 1000:.2f} ms/step per image, from {steps} and {2 * steps} steps"
        else:
            t100 = per_image[steps] * UC_STEPS / steps
            how = f"scaled linearly from {steps} steps"
        linear = per_image[steps] * UC_STEPS / steps
        model_h = UC_IMAGES_PER_MODEL * t100 / 3600
        method_h = UC_IMAGES_PER_MODEL * UC_TARGETS * t100 / 3600
        log(f"{dtype} projection at batch {bs} ({how}): {1 / t100:.3f} images/s at {UC_STEPS} steps "
            f"(linear scaling alone: {1 / linear:.3f})")
        log(f"{dtype} UnlearnCanvas answer set: one unlearned model ({UC_IMAGES_PER_MODEL:,} images) {model_h:.2f} h on one {unit}; "
            f"one method ({UC_TARGETS} targets, {UC_IMAGES_PER_MODEL * UC_TARGETS:,} images) {method_h:.1f} h on one {unit}, "
            f"{method_h / a.gpus:.1f} h on {a.gpus} (Ray executor, linear)")
        if best_overall is None or t100 < best_overall[1]:
            best_overall = (dtype, t100, bs)
        del pipe
        if cuda:
            torch.cuda.empty_cache()
    if best_overall:
        dtype, t100, bs = best_overall
        log(f"best: {dtype} at batch {bs}: {t100:.3f} s per {UC_STEPS}-step image")
    import shutil

    shutil.rmtree(cache_root, ignore_errors=True)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
