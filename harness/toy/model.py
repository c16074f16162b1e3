"""Building the toy text-to-image models: a real diffusers StableDiffusionPipeline and a real
StableDiffusionXLPipeline, tiny.

The components of ``toy`` are the ones SD v1.x uses (CLIP tokenizer + CLIPTextModel,
AutoencoderKL, UNet2DConditionModel with cross-attention, an SD-style scheduler), only smaller,
so every code path the harness runs on SD v1.4 runs on this model for real. ``toy-xl`` has
SDXL's: two CLIP text encoders (the second with a projection whose pooled output conditions the
UNet), their penultimate hidden states concatenated into the cross-attention's input, a UNet
with ``text_time`` addition embeddings (size / crop micro-conditioning), the same toy VAE and
noise schedule. ``build_pipeline`` / ``build_pipeline_xl`` give random weights (tests use them
as stand-ins); ``harness.toy.train`` trains them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from harness.toy.paths import PIPELINE_DIR, PIPELINE_XL_DIR
from harness.toy.tokenizer import MAX_LENGTH, load_tokenizer, write_tokenizer

DEFAULT_DIR = PIPELINE_DIR
DEFAULT_XL_DIR = PIPELINE_XL_DIR

# SD-1.x's noise schedule: the prototype found the DDPM linear schedule made samples drift.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
VAE = dict(block_out_channels=(32, 64), latent_channels=4, layers_per_block=1)
UNET = dict(block_out_channels=(64, 64), layers_per_block=1, cross_attention_dim=64, attention_head_dim=8)

# toy-xl: two encoders of half the width, whose penultimate states concatenated are the UNet's
# 64-wide cross-attention input (SDXL: 768 + 1280 = 2048), the second with a projection (SDXL:
# 1280) that is the pooled conditioning; micro-conditioning of 6 numbers embedded 8-wide each.
TEXT_XL = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
UNET_XL = dict(block_out_channels=(64, 64), layers_per_block=1, attention_head_dim=8, addition_time_embed_dim=8)
XL_SIZE = 32  # the toy world's image size: original_size = target_size = (32, 32), no crop


def build_tokenizer(tmp_dir: str | Path | None = None):
    """A CLIPTokenizer with the toy vocabulary (written to a folder, then loaded)."""
    d = Path(tmp_dir or tempfile.mkdtemp(prefix="toy-tokenizer-"))
    write_tokenizer(d)
    return load_tokenizer(d)


def build_text_encoder(tokenizer, text=TEXT, seed: int = 0, projection: bool = False):
    """A CLIPTextModel (``projection``: a CLIPTextModelWithProjection, SDXL's second encoder,
    projecting to ``hidden_size``)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=text["hidden_size"],
        **text,
    )
    return cls(cfg)


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


def build_unet(unet=UNET, latent_size: int = 16, latent_channels: int = 4, seed: int = 0, xl: dict | None = None):
    """The toy UNet; ``xl``: SDXL's extras (``text_time`` addition embeddings, linear
    projections in and out of the transformer blocks) as ``unet_xl_kwargs`` makes them."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    n = len(unet["block_out_channels"])
    return UNet2DConditionModel(
        **(xl or {}),
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(unet["block_out_channels"]),
        layers_per_block=unet["layers_per_block"],
        cross_attention_dim=unet.get("cross_attention_dim", 2 * TEXT_XL["hidden_size"]),
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


def unet_xl_kwargs(unet=UNET_XL, text=TEXT_XL) -> dict:
    """SDXL's UNet settings at toy size: the pooled projection (``text_embeds``) and six
    micro-conditioning numbers (``time_ids``) embedded ``addition_time_embed_dim`` wide each."""
    return dict(addition_embed_type="text_time", addition_time_embed_dim=unet["addition_time_embed_dim"],
                projection_class_embeddings_input_dim=text["hidden_size"] + 6 * unet["addition_time_embed_dim"],
                use_linear_projection=True)


def assemble_xl(vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, unet):
    """The components -> a StableDiffusionXLPipeline with the toy world's DDIM scheduler, an empty
    prompt encoded as zeros (SDXL's ``force_zeros_for_empty_prompt``), no watermarker."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)


def build_xl_parts(seed: int = 0, text=TEXT_XL, unet=UNET_XL, latent_size: int = 16, latent_channels: int = 4):
    """(tokenizer, text encoder, tokenizer 2, text encoder 2 with projection, UNet) of toy-xl, random."""
    tok = build_tokenizer()
    te = build_text_encoder(tok, text, seed)
    te2 = build_text_encoder(tok, text, seed + 1, projection=True)
    u = build_unet(unet, latent_size, latent_channels, seed, xl=unet_xl_kwargs(unet, text))
    return tok, te, tok, te2, u


def build_pipeline_xl(seed: int = 0, vae=VAE):
    """A complete toy-xl pipeline with random weights (a stand-in for tests)."""
    tok, te, tok2, te2, u = build_xl_parts(seed, latent_size=32 // 2 ** (len(vae["block_out_channels"]) - 1),
                                           latent_channels=vae["latent_channels"])
    pipe = assemble_xl(build_vae(vae, seed), te, tok, te2, tok2, u)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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
    """Load a committed toy pipeline (``toy`` by default; ``PIPELINE_XL_DIR`` for toy-xl) with
    plain ``from_pretrained`` of its own pipeline class (offline)."""
    import json

    import diffusers

    from harness.families.sd1 import quiet_loading

    quiet_loading()
    cls = json.loads((Path(path) / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
    if cls not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise ValueError(f"{path}: {cls} is not a toy pipeline class")
    extra = {"add_watermarker": False} if cls == "StableDiffusionXLPipeline" else {}
    pipe = getattr(diffusers, cls).from_pretrained(str(path), local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
