"""Building the toy text-to-image model: a real diffusers StableDiffusionPipeline, tiny.

The components are the ones SD v1.x uses (CLIP tokenizer + CLIPTextModel, AutoencoderKL,
UNet2DConditionModel with cross-attention, an SD-style scheduler), only smaller, so every code
path the harness runs on SD v1.4 runs on this model for real. ``build_pipeline`` gives random
weights (tests use it as a stand-in); ``harness.toy.train`` trains them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from harness.toy.paths import PIPELINE_DIR
from harness.toy.tokenizer import MAX_LENGTH, load_tokenizer, write_tokenizer

DEFAULT_DIR = PIPELINE_DIR

# SD-1.x's noise schedule: the prototype found the DDPM linear schedule made samples drift.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
VAE = dict(block_out_channels=(32, 64), latent_channels=4, layers_per_block=1)
UNET = dict(block_out_channels=(64, 64), layers_per_block=1, cross_attention_dim=64, attention_head_dim=8)


def build_tokenizer(tmp_dir: str | Path | None = None):
    """A CLIPTokenizer with the toy vocabulary (written to a folder, then loaded)."""
    d = Path(tmp_dir or tempfile.mkdtemp(prefix="toy-tokenizer-"))
    write_tokenizer(d)
    return load_tokenizer(d)


def build_text_encoder(tokenizer, text=TEXT, seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=text["hidden_size"],
        **text,
    )
    return CLIPTextModel(cfg)


def build_vae(vae=VAE, seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(vae["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(vae["block_out_channels"]),
        latent_channels=vae["latent_channels"],
        layers_per_block=vae["layers_per_block"],
        norm_num_groups=min(32, vae["block_out_channels"][0]),
        sample_size=32,
    )


def build_unet(unet=UNET, latent_size: int = 16, latent_channels: int = 4, seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    n = len(unet["block_out_channels"])
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(unet["block_out_channels"]),
        layers_per_block=unet["layers_per_block"],
        cross_attention_dim=unet["cross_attention_dim"],
        attention_head_dim=unet["attention_head_dim"],
        norm_num_groups=min(32, unet["block_out_channels"][0]),
    )


def assemble(vae, text_encoder, tokenizer, unet):
    """The components -> a StableDiffusionPipeline with a DDIM scheduler, no safety checker."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_pipeline(seed: int = 0, text=TEXT, vae=VAE, unet=UNET):
    """A complete toy pipeline with random weights (a stand-in for tests)."""
    tok = build_tokenizer()
    v = build_vae(vae, seed)
    te = build_text_encoder(tok, text, seed)
    latent = 32 // 2 ** (len(vae["block_out_channels"]) - 1)
    u = build_unet(unet, latent, vae["latent_channels"], seed)
    pipe = assemble(v, te, tok, u)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(path: str | Path = DEFAULT_DIR, device: str = "cpu"):
    """Load the committed toy pipeline with plain ``from_pretrained`` (offline)."""
    from diffusers import StableDiffusionPipeline

    from harness.families.sd1 import quiet_loading

    quiet_loading()
    pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
