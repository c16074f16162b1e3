"""What the fine-tuning reference methods (FMN, CA, SalUn) share: training images made by the
base model, the forward diffusion, the choice of trained parameters, and the changed tensors.

The authors train on images (real ones, or images their base model generated for a prompt). Here
every method draws its images from the base pipeline it is given (DDIM, classifier-free guidance,
a seeded generator) and keeps them as latents: ``x0`` is the pipeline's own latent of an image
of the prompt, so the VAE encode of the authors' data loaders is skipped (a generated image's
latent is what encoding its decoded pixels would approximately give back).
"""

from __future__ import annotations

import math

import torch

from ..errors import HarnessError


@torch.no_grad()
def base_latents(pipe, prompts: list[str], n: int, steps: int, guidance: float, seed: int,
                 batch: int = 16) -> tuple[torch.Tensor, list[int]]:
    """``n`` latents of images the (unchanged) pipeline draws for ``prompts`` (cycled in order),
    and the index of each one's prompt."""
    if not prompts:
        raise HarnessError("no prompts to make training images from")
    idx = [i % len(prompts) for i in range(n)]
    g = torch.Generator().manual_seed(seed)
    c = pipe.unet.config
    size = c.sample_size * pipe.vae_scale_factor
    out = []
    for s in range(0, n, batch):
        chunk = idx[s : s + batch]
        shape = (len(chunk), c.in_channels, c.sample_size, c.sample_size)
        lat = torch.randn(shape, generator=g).to(pipe.unet.device)
        res = pipe([prompts[i] for i in chunk], height=size, width=size, num_inference_steps=steps,
                   guidance_scale=guidance, latents=lat, output_type="latent")
        out.append(res.images.detach())
    return torch.cat(out), idx


def noisy(pipe, x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward diffusion at uniformly drawn training timesteps: (x_t, t, noise)."""
    sched = pipe.scheduler
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=g).long()
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    return sched.add_noise(x0, noise, t.to(x0.device)), t.to(x0.device), noise


# Which UNet parameters each option trains (names as in the diffusers state dict).
TRAIN_SETS = {
    "full": lambda n: True,                                           # every UNet weight
    "xattn": lambda n: ".attn2." in n,                                # cross-attention (ESD-x, FMN only_optimize_ca)
    "kv": lambda n: n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")),  # CA "cross-attn" (to_k / to_v)
    "attn": lambda n: any(f".{k}." in n for k in ("to_q", "to_k", "to_v", "to_out")),  # CA "attn"
}


def trainable(unet, which: str) -> dict[str, torch.nn.Parameter]:
    """Freeze the UNet, then switch on gradients for the parameters ``which`` names."""
    if which not in TRAIN_SETS:
        raise HarnessError(f"train={which!r}: not one of {', '.join(TRAIN_SETS)}")
    unet.requires_grad_(False)
    chosen = {n: p for n, p in unet.named_parameters() if TRAIN_SETS[which](n)}
    for p in chosen.values():
        p.requires_grad_(True)
    return chosen


def changed_tensors(params: dict[str, torch.nn.Parameter], before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained tensors that differ from their values before training (names as in the
    UNet's state dict), as CPU copies."""
    return {n: p.detach().cpu().clone() for n, p in params.items() if not torch.equal(p.detach().cpu(), before[n])}


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in params.items()}


def epochs_to_steps(n_images: int, batch: int, epochs: int) -> int:
    return epochs * math.ceil(n_images / batch)
