"""Training the toy world's classifier and text-to-image model from scratch, seeded.

Runs by hand (``unlearn toy train-classifier`` / ``unlearn toy train-model``), not in CI: the
committed weights are what tests and users load. Recipe (see shared/docs/toy-world-prototype.md
for what a prototype measured): a small AutoencoderKL trained for reconstruction first, then the
UNet and the text encoder trained jointly on its latents, with classifier-free-guidance dropout of
the prompt, EMA of the weights and SD-1.x's scaled-linear noise schedule.

The toy-xl world (``xl=True``) takes the toy world's trained VAE as it is and trains SDXL's
parts the way SDXL conditions them: the penultimate hidden states of both text encoders
concatenated, the second encoder's projected pooled output and the micro-conditioning
``time_ids`` (32, 32, 0, 0, 32, 32) as ``added_cond_kwargs``; a dropped prompt is all zeros
(embeddings and pooled), as ``force_zeros_for_empty_prompt`` makes the pipeline's empty
negative prompt.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.toy import world
from harness.toy.classifier import ToyClassifier, predict, save_classifier
from harness.toy.model import (SCHEDULE, XL_SIZE, assemble, assemble_xl, build_text_encoder, build_tokenizer, build_unet,
                               build_vae, build_xl_parts)


def _images_to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255.0)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild blur, noise and contrast jitter, so the classifier judges generated images (slightly
    soft, slightly noisy) by their content, not by pixel-perfect edges."""
    n = x.shape[0]
    blur = torch.rand(n, generator=g) < 0.5
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        xb = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k2, groups=3)
        x = x.clone()
        x[blur] = xb
    contrast = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = (x - 0.5) * contrast + 0.5
    x = x + torch.randn(x.shape, generator=g) * 0.05 * torch.rand(n, 1, 1, 1, generator=g)
    return x.clamp(0, 1)


def train_classifier(out_dir: str | Path, steps: int = 1500, batch: int = 128, seed: int = 0, pool: int = 30000) -> dict:
    """Train the two-head CNN; returns held-out accuracies (also written to config.json)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    imgs, objs, stys = world.sample(pool, seed=seed + 1)
    x_all, o_all, s_all = _images_to_tensor(imgs), torch.from_numpy(objs), torch.from_numpy(stys)
    model = ToyClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = _warmup_cosine(opt, steps, warmup=max(1, steps // 10), floor=0.02)
    model.train()
    bar = tqdm(range(steps), desc="classifier", unit="step")
    for step in bar:
        idx = torch.randint(0, pool, (batch,), generator=g)
        lo, ls = model(_augment(x_all[idx], g))
        loss = F.cross_entropy(lo, o_all[idx]) + F.cross_entropy(ls, s_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    test_imgs, test_o, test_s = world.sample(4000, seed=10_000 + seed)
    po, ps = predict(model, test_imgs)
    acc = {"object": float((po == test_o).mean()), "style": float((ps == test_s).mean())}
    save_classifier(model, out_dir, {"heldout_accuracy": acc, "train": {"steps": steps, "batch": batch, "seed": seed, "seconds": round(time.time() - t0, 1)}})
    return acc


def _warmup_cosine(opt, steps: int, warmup: int, floor: float = 0.1):
    """Linear warm-up, then cosine decay to ``floor`` times the base learning rate."""
    def factor(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class _EMA:
    """Exponential moving average of a module's parameters (with the usual warm-up)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.shadow.parameters(), module.parameters()):
            e.lerp_(p.detach(), 1 - d)


def _train_vae(vae, steps: int, batch: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    sched = _warmup_cosine(opt, steps, warmup=max(1, steps // 20), floor=0.05)
    vae.train()
    bar = tqdm(range(steps), desc="vae", unit="step")
    for step in bar:
        imgs, _, _ = world.sample(batch, seed=seed * 1_000_003 + step)
        x = _images_to_tensor(imgs) * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(mse=f"{loss.item():.4f}")
    vae.eval()


@torch.no_grad()
def _encode_pool(vae, n: int, seed: int, batch: int = 500):
    """Encode a pool of world images once: (posterior mean, std, prompt index)."""
    imgs, objs, stys = world.sample(n, seed=seed)
    means, stds = [], []
    for i in tqdm(range(0, n, batch), desc="encode pool", unit="batch"):
        post = vae.encode(_images_to_tensor(imgs[i : i + batch]) * 2 - 1).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds), torch.from_numpy(objs * len(world.STYLES) + stys)


def _xl_conditioning(encoders, ids: torch.Tensor, dropped: torch.Tensor) -> dict:
    """SDXL's UNet inputs for token ids: both encoders' penultimate hidden states concatenated,
    the second's projected pooled output and the micro-conditioning; dropped prompts all zeros."""
    states, pooled = [], None
    for te in encoders:
        out = te(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds
    keep = (~dropped).to(states[0].dtype)
    emb = torch.cat(states, dim=-1) * keep[:, None, None]
    time_ids = torch.tensor([XL_SIZE, XL_SIZE, 0, 0, XL_SIZE, XL_SIZE], dtype=emb.dtype).expand(ids.shape[0], 6)
    return {"encoder_hidden_states": emb, "added_cond_kwargs": {"text_embeds": pooled * keep[:, None], "time_ids": time_ids}}


def train_model(
    out_dir: str | Path,
    vae_steps: int = 1500,
    unet_steps: int = 5000,
    batch: int = 32,
    seed: int = 0,
    lr: float = 1e-3,
    cfg_dropout: float = 0.1,
    ema_decay: float = 0.999,
    pool: int = 40000,
    snapshot_every: int = 500,
    xl: bool = False,
    vae_from: str | Path | None = None,
) -> dict:
    """Train the VAE, then the UNet + text encoder; save the pipeline (EMA weights) to out_dir.

    ``xl``: the toy-xl world (SDXL's architecture; two text encoders trained with the UNet).
    ``vae_from``: a toy pipeline folder whose trained VAE (and latent scaling) is used as it is
    instead of training one (toy-xl uses the toy world's). Snapshots of the EMA pipeline are
    written every ``snapshot_every`` steps, so an interrupted run leaves a usable model behind.
    """
    from diffusers import AutoencoderKL, DDPMScheduler

    t0 = time.time()
    out = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    if vae_from is not None:
        vae = AutoencoderKL.from_pretrained(str(Path(vae_from) / "vae"), local_files_only=True)
        vae.eval()
        vae_steps = 0
        means, stds, prompt_idx = _encode_pool(vae, pool, seed=seed + 7)
        scaling = float(vae.config.scaling_factor)
    else:
        vae = build_vae(seed=seed)
        _train_vae(vae, vae_steps, 64, seed)
        means, stds, prompt_idx = _encode_pool(vae, pool, seed=seed + 7)
        scaling = float(1.0 / means.std())
        vae.register_to_config(scaling_factor=scaling)
    vae.requires_grad_(False)

    prompts = [p for _, _, p in world.all_prompts()] + [""]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    empty = len(prompts) - 1

    if xl:
        _, te1, _, te2, unet = build_xl_parts(seed)
        encoders = [te1, te2]
    else:
        encoders = [build_text_encoder(tokenizer, seed=seed)]
        unet = build_unet(seed=seed)
    noise_sched = DDPMScheduler(**SCHEDULE)
    params = list(unet.parameters()) + [p for te in encoders for p in te.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = _warmup_cosine(opt, unet_steps, warmup=min(200, max(1, unet_steps // 10)))
    ema_unet, ema_text = _EMA(unet, ema_decay), [_EMA(te, ema_decay) for te in encoders]
    g = torch.Generator().manual_seed(seed + 11)
    unet.train()
    for te in encoders:
        te.train()
    meta = {
        "recipe": {"vae_steps": vae_steps, "unet_steps": unet_steps, "batch": batch, "seed": seed, "lr": lr,
                   "cfg_dropout": cfg_dropout, "ema_decay": ema_decay, "pool": pool, "schedule": SCHEDULE,
                   **({"world": "toy-xl", "vae_from": Path(vae_from).name} if xl and vae_from is not None else
                      {"world": "toy-xl"} if xl else {})},
        "vae_scaling_factor": scaling,
    }

    def snapshot(step: int) -> None:
        if xl:
            pipe = assemble_xl(vae, ema_text[0].shadow, tokenizer, ema_text[1].shadow, tokenizer, ema_unet.shadow)
        else:
            pipe = assemble(vae, ema_text[0].shadow, tokenizer, ema_unet.shadow)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps({**meta, "steps_done": step, "seconds": round(time.time() - t0, 1)}, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)

    bar = tqdm(range(unet_steps), desc="unet+text", unit="step")
    for step in bar:
        idx = torch.randint(0, len(means), (batch,), generator=g)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=g)) * scaling
        p = prompt_idx[idx].clone()
        p[torch.rand(batch, generator=g) < cfg_dropout] = empty
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, SCHEDULE["num_train_timesteps"], (batch,), generator=g)
        zt = noise_sched.add_noise(z0, noise, t)
        if xl:
            loss = F.mse_loss(unet(zt, t, **_xl_conditioning(encoders, ids[p], p == empty)).sample, noise)
        else:
            cond = encoders[0](ids[p])[0]
            loss = F.mse_loss(unet(zt, t, encoder_hidden_states=cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema_unet.update(unet, step)
        for e, te in zip(ema_text, encoders):
            e.update(te, step)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < unet_steps:
            snapshot(step + 1)
    snapshot(unet_steps)
    return {**meta, "seconds": round(time.time() - t0, 1)}
