"""GPU check: SD-1.x-size and SDXL-size generation through the harness's own path, for a lent GPU machine.

    bash benchmarks/gpu_check.sh                                  # CUDA, SD-1.x, fp16 + bf16 (under 8 min on an H100)
    bash benchmarks/gpu_check.sh --model sdxl                     # CUDA, SDXL at 1024 px
    .venv/bin/python benchmarks/gpu_check.py --tiny --device cpu  # tiny models, a few seconds (the test)
    .venv/bin/python benchmarks/gpu_check.py --tiny --model sdxl --device cpu

Builds, from config values written here (no download), every component at its real size with
random weights. ``--model sd1``: a UNet2DConditionModel of SD v1.4's size (block_out_channels
320/640/1280/1280, layers_per_block 2, cross_attention_dim 768, attention_head_dim 8,
sample_size 64), SD's AutoencoderKL (128/256/512/512) and a CLIP text encoder of SD's size (12
layers, 768 wide, 77 positions); 512x512, DDIM, guidance 7.5. ``--model sdxl``: SDXL 1.0 base's
UNet (block_out_channels 320/640/1280, DownBlock2D + two CrossAttnDownBlock2D,
transformer_layers_per_block 1/2/10, attention_head_dim 5/10/20, cross_attention_dim 2048,
text_time addition embedding of 256 per micro-conditioning number, projection input 2816, linear
projections, sample_size 128), its two text encoders (CLIP ViT-L: 768 wide, 12 layers; OpenCLIP
bigG with projection: 1280 wide, 32 layers, 20 heads, 5120 MLP, projection 1280) and its VAE
(128/256/512/512, scaling factor 0.13025, decoded in float32 as the pipeline does for it);
1024x1024, the base repository's Euler scheduler, guidance 5.0 (the SDXL suites' settings). The
toy world's tokenizer (padded to 77 tokens) serves every text encoder. It then runs generation
through ``harness.run.generate.generate`` (``run_batch`` and the model family, the
content-addressed cache, the CUDA out-of-memory back-off) after
``harness.families.sd1.accelerate`` (SDPA attention, channels_last on CUDA, optional
torch.compile), in each dtype asked for, and prints images/s per batch size (1, 2, 4, ... until
memory runs out), peak GPU memory, and a projection: for SD-1.x the full UnlearnCanvas answer
set (5,100 images per unlearned model at 100 steps; 357,000 per method for 70 targets), for SDXL
the three SDXL suites' images of one unlearned model at their 50 steps. It measures at fewer
steps (--steps, default 20 for SD-1.x and 10 for SDXL) and projects from a fixed + per-step
cost fitted at --steps and 2 x --steps (also shown: plain linear scaling). Random weights give
noise images (they may be flagged non-finite in fp16): only speed and memory matter.
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

# SDXL 1.0 base's component configs (stabilityai/stable-diffusion-xl-base-1.0 unet/vae/text_encoder/
# text_encoder_2 config.json).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32, act_fn="silu",
    center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5,
)
SDXL_VAE = dict(SD14_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT = dict(SD14_TEXT)  # CLIP ViT-L/14's text tower, as SD v1.x's
SDXL_TEXT_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
                   projection_dim=1280, hidden_act="gelu", vocab_size=49408)
SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
                      prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", use_karras_sigmas=False)
TINY_XL_UNET = dict(SDXL_UNET, sample_size=16, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4),
                    layers_per_block=1, cross_attention_dim=64 + 64, addition_time_embed_dim=8, projection_class_embeddings_input_dim=64 + 6 * 8)
TINY_XL_VAE = dict(TINY_VAE, scaling_factor=0.13025, force_upcast=True)
TINY_XL_TEXT_2 = dict(SDXL_TEXT_2, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, projection_dim=64)

# The UnlearnCanvas answer set: images per unlearned model, targets per method, steps.
UC_IMAGES_PER_MODEL = 5_100
UC_TARGETS = 70
UC_STEPS = 100
# The SDXL suites' images of one unlearned model (prompts x seeds) and their steps:
# sdxl-artist-styles 10 x 5, sdxl-imagenette-objects 10 x 10, sdxl-nudity 142 prompts x 1.
SDXL_SUITE_IMAGES = {"sdxl-artist-styles": 50, "sdxl-imagenette-objects": 100, "sdxl-nudity": 142}
SDXL_STEPS = 50

# What each model generates with: size, scheduler, guidance, measured steps (full size / --tiny).
SETTINGS = {"sd1": dict(size=512, tiny_size=32, scheduler="ddim", guidance=7.5, steps=20),
            "sdxl": dict(size=1024, tiny_size=32, scheduler="euler", guidance=5.0, steps=10)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.time() - T0:6.1f}s] {msg}", flush=True)


def build_pipeline(tiny: bool, device: str, seed: int = 0, model: str = "sd1"):
    """SD-1.x-size or SDXL-size (or tiny) components with random weights, built on the device directly."""
    if model == "sdxl":
        return build_pipeline_xl(tiny, device, seed)
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


def build_pipeline_xl(tiny: bool, device: str, seed: int = 0):
    """SDXL 1.0 base's components at their size (or tiny), random weights, on the device: a
    StableDiffusionXLPipeline with its Euler scheduler, an empty prompt as zeros, no watermarker."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from harness.toy.model import assemble_xl, build_tokenizer

    tok = build_tokenizer()
    text, text_2 = (TINY_TEXT, TINY_XL_TEXT_2) if tiny else (SDXL_TEXT, SDXL_TEXT_2)
    tok.model_max_length = text["max_position_embeddings"]
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        te = CLIPTextModel(CLIPTextConfig(**ids, **text))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**ids, **text_2))
        vae = AutoencoderKL(**(TINY_XL_VAE if tiny else SDXL_VAE))
        unet = UNet2DConditionModel(**(TINY_XL_UNET if tiny else SDXL_UNET))
    pipe = assemble_xl(vae, te, tok, te2, tok, unet)
    pipe.scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def params_m(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", choices=sorted(SETTINGS), default="sd1", help="sd1: SD v1.4's size at 512 px; sdxl: SDXL 1.0 base's at 1024 px")
    ap.add_argument("--dtypes", default=None, help="comma-separated: float16,bfloat16,float32 (default float16,bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--batches", default=None, help="batch sizes to try, in order (default 1,2,4,8,16,32; sdxl 1,2,4,8; --tiny 1,2,4)")
    ap.add_argument("--steps", type=int, default=None, help="steps measured (default 20, sdxl 10; --tiny 2)")
    ap.add_argument("--size", type=int, default=None, help="image height = width (default 512, sdxl 1024; --tiny 32)")
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
    cfg = SETTINGS[a.model]
    batches = [int(b) for b in (a.batches or ("1,2,4" if a.tiny else "1,2,4,8" if a.model == "sdxl" else "1,2,4,8,16,32")).split(",")]
    steps = a.steps or (2 if a.tiny else cfg["steps"])
    size = a.size or (cfg["tiny_size"] if a.tiny else cfg["size"])
    scheduler, guidance = cfg["scheduler"], cfg["guidance"]
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
        return [Job(prompts[i % len(prompts)], "", next(seed), scheduler, nsteps, guidance, size, size, 0.0, dtype, f"gpu-check:{a.model}:{tag}")
                for i in range(n)]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    best_overall = None
    for dtype in dtypes:
        if time.time() - T0 > a.budget_s:
            log(f"{dtype}: skipped (time budget {a.budget_s:.0f} s spent)")
            continue
        t = time.time()
        pipe = build_pipeline(a.tiny, a.device, model=a.model)
        pipe = pipe.to(a.device, getattr(torch, dtype))
        accelerate(pipe, Placement(a.device, dtype, a.compile))
        sync()
        encoders = ", ".join(f"{name.replace('_', ' ')} {params_m(getattr(pipe, name)):.0f} M" for name in ("text_encoder", "text_encoder_2")
                             if getattr(pipe, name, None) is not None)
        log(f"{dtype}: built {a.model} UNet {params_m(pipe.unet):.0f} M, VAE {params_m(pipe.vae):.0f} M, {encoders} "
            f"parameters in {time.time() - t:.1f} s; {describe_pipeline(pipe)}; {size}x{size}, {type(pipe.scheduler).__name__} {steps} steps, "
            f"guidance {guidance:g}")
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
        final = UC_STEPS if a.model == "sd1" else SDXL_STEPS
        if len(per_image) == 2:
            per_step = max(0.0, (per_image[2 * steps] - per_image[steps]) / steps)
            fixed = max(0.0, per_image[steps] - per_step * steps)
            t100 = fixed + per_step * final
            how = f"fitted: {fixed * 1000:.1f} ms fixed + {per_step * 1000:.2f} ms/step per image, from {steps} and {2 * steps} steps"
        else:
            t100 = per_image[steps] * final / steps
            how = f"scaled linearly from {steps} steps"
        linear = per_image[steps] * final / steps
        log(f"{dtype} projection at batch {bs} ({how}): {1 / t100:.3f} images/s at {final} steps "
            f"(linear scaling alone: {1 / linear:.3f})")
        if a.model == "sd1":
            model_h = UC_IMAGES_PER_MODEL * t100 / 3600
            method_h = UC_IMAGES_PER_MODEL * UC_TARGETS * t100 / 3600
            log(f"{dtype} UnlearnCanvas answer set: one unlearned model ({UC_IMAGES_PER_MODEL:,} images) {model_h:.2f} h on one {unit}; "
                f"one method ({UC_TARGETS} targets, {UC_IMAGES_PER_MODEL * UC_TARGETS:,} images) {method_h:.1f} h on one {unit}, "
                f"{method_h / a.gpus:.1f} h on {a.gpus} (Ray executor, linear)")
        else:
            n = sum(SDXL_SUITE_IMAGES.values())
            each = ", ".join(f"{k} {v}" for k, v in SDXL_SUITE_IMAGES.items())
            log(f"{dtype} SDXL suites: one unlearned model ({n} images: {each}) {n * t100 / 60:.1f} min on one {unit} "
                f"at {final} steps (the base model's as many again, once per suite version)")
        if best_overall is None or t100 < best_overall[1]:
            best_overall = (dtype, t100, bs)
        del pipe
        if cuda:
            torch.cuda.empty_cache()
    if best_overall:
        dtype, t100, bs = best_overall
        log(f"best: {dtype} at batch {bs}: {t100:.3f} s per {UC_STEPS if a.model == 'sd1' else SDXL_STEPS}-step image")
    import shutil

    shutil.rmtree(cache_root, ignore_errors=True)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
