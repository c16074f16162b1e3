"""What the fine-tuning reference methods (ESD, FMN, CA, SalUn) share: the seeded random
sources, training images made by the base model, the forward diffusion, the choice of trained
parameters, the training loop itself (``fit``) and the changed tensors.

The authors train on images (real ones, or images their base model generated for a prompt). Here
every method draws its images from the base pipeline it is given (DDIM, classifier-free guidance,
a seeded generator) and keeps them as latents: ``x0`` is the pipeline's own latent of an image
of the prompt, so the VAE encode of the authors' data loaders is skipped (a generated image's
latent is what encoding its decoded pixels would approximately give back).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from harness.errors import HarnessError
from harness.methods.common import denoiser


def seeded(seed: int, generator_offset: int = 1) -> tuple[random.Random, torch.Generator]:
    """Seed torch's global generator with ``seed``; return the Python RNG that picks prompts and
    batches (``seed``) and the torch generator of the training noise (``seed + generator_offset``;
    ESD uses offset 0, the others 1, as their committed checkpoints were made)."""
    torch.manual_seed(seed)
    return random.Random(seed), torch.Generator().manual_seed(seed + generator_offset)


@torch.no_grad()
def base_latents(pipe, prompts: list[str], n: int, steps: int, guidance: float, seed: int,
                 batch: int = 16) -> tuple[torch.Tensor, list[int]]:
    """``n`` latents of images the (unchanged) pipeline draws for ``prompts`` (cycled in order),
    and the index of each one's prompt."""
    if not prompts:
        raise HarnessError("no prompts to make training images from")
    idx = [i % len(prompts) for i in range(n)]
    g = torch.Generator().manual_seed(seed)
    net = denoiser(pipe)
    c = net.config
    size = c.sample_size * pipe.vae_scale_factor
    out = []
    for s in range(0, n, batch):
        chunk = idx[s : s + batch]
        shape = (len(chunk), c.in_channels, c.sample_size, c.sample_size)
        lat = torch.randn(shape, generator=g).to(net.device)
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
    # SA "noxattn" (the CompVis names out., attn2, time_embed): all but the cross-attention, the time
    # embedding and the output layers
    "noxattn": lambda n: not (".attn2." in n or n.startswith(("time_embedding.", "conv_norm_out.", "conv_out."))),
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


def adamw(params: dict[str, torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The optimizer FMN and CA train with, as the authors' code sets it up: AdamW, betas
    (0.9, 0.999), eps 1e-8, the given weight decay, a constant learning rate."""
    return torch.optim.AdamW(params.values(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-8)


def fit(unet, params: dict[str, torch.nn.Parameter], opt: torch.optim.Optimizer, loss_fn: Callable[[object], torch.Tensor],
        steps: int, *, batches: Iterable | None = None, desc: str, progress: bool = True, history: list[float] | None = None,
        max_grad_norm: float | None = None, grad_masks: dict[str, torch.Tensor] | None = None,
        postfix_every: int = 1, loss_format: str = ".4f") -> list[float]:
    """The one training loop of the fine-tuning methods: for each batch (``batches``, drawn
    lazily, else the step index ``0 .. steps-1``), ``loss = loss_fn(batch)``, backward, the
    gradients multiplied by ``grad_masks`` (SalUn) and clipped to ``max_grad_norm`` (FMN, CA)
    where given, one optimizer step. Every step's loss is appended to ``history`` (returned);
    a progress bar shows it. The UNet is in train mode during the loop and frozen in eval mode
    after it, also when a step fails."""
    history = history if history is not None else []
    unet.train()
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress)
    try:
        for i, batch in enumerate(range(steps) if batches is None else batches):
            loss = loss_fn(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_masks is not None:
                for n, p in params.items():
                    if p.grad is not None:
                        p.grad *= grad_masks[n]
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params.values(), max_grad_norm)
            opt.step()
            value = loss.item()
            history.append(value)
            bar.update(1)
            if i % postfix_every == 0:
                bar.set_postfix(loss=f"{value:{loss_format}}")
    finally:
        bar.close()
        unet.eval().requires_grad_(False)
    return history


def changed_tensors(params: dict[str, torch.nn.Parameter], before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained tensors that differ from their values before training (names as in the
    UNet's state dict), as CPU copies."""
    return {n: p.detach().cpu().clone() for n, p in params.items() if not torch.equal(p.detach().cpu(), before[n])}


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in params.items()}


def epochs_to_steps(n_images: int, batch: int, epochs: int) -> int:
    return epochs * math.ceil(n_images / batch)
