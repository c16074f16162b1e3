"""The partial-diffusion attack of "Unlearning or Concealment?" (arXiv 2409.05668).

For a ratio psi, the ORIGINAL model runs the first round(psi * steps) denoising steps and the
UNLEARNED model finishes the same trajectory (same scheduler, guidance and noise). If the
unlearned model only hides the concept, a small head start from the original brings it back.
Attacked images are generation jobs like any other (their model fingerprint names both models
and psi), so they are cached and never regenerated.
"""

from __future__ import annotations

import numpy as np

from harness.run.generate import Job, initial_latents, set_scheduler


def attack_model_id(base_fp: str, unl_fp: str, psi: float) -> str:
    return f"partial-diffusion:{base_fp}->{unl_fp}@psi={psi:g}"


def run_partial_batch(pipes, jobs: list[Job], psi: float):
    """One batch of attacked images; ``pipes`` = (base pipeline, unlearned pipeline)."""
    import torch

    base, unl = pipes
    j0 = jobs[0]
    set_scheduler(base, j0.scheduler)
    sched = base.scheduler
    sched.set_timesteps(j0.steps)
    device, dtype = base.unet.device, base.unet.dtype
    prompts, negs = [j.prompt for j in jobs], [j.negative_prompt for j in jobs]
    with torch.inference_mode():
        emb = {}
        for name, p in (("base", base), ("unl", unl)):
            cond, uncond = p.encode_prompt(prompts, device, 1, True, negative_prompt=negs)
            emb[name] = torch.cat([uncond, cond])
        lat = initial_latents(base, [j.seed for j in jobs], j0.height, j0.width).to(device=device, dtype=dtype) * sched.init_noise_sigma
        gens = [torch.Generator("cpu").manual_seed(j.seed + 1) for j in jobs]
        switch = int(round(psi * j0.steps))
        extra = {"eta": j0.eta, "generator": gens} if j0.scheduler == "ddim" else {}
        for i, t in enumerate(sched.timesteps):
            pipe, e = (base, emb["base"]) if i < switch else (unl, emb["unl"])
            inp = sched.scale_model_input(torch.cat([lat, lat]), t)
            eu, ec = pipe.unet(inp, t, encoder_hidden_states=e).sample.chunk(2)
            lat = sched.step(eu + j0.guidance * (ec - eu), t, lat, **extra).prev_sample
        img = unl.vae.decode(lat / unl.vae.config.scaling_factor).sample
    raw = (img / 2 + 0.5).permute(0, 2, 3, 1).float().cpu().numpy()
    return raw, np.round(np.clip(np.nan_to_num(raw, nan=0.0), 0, 1) * 255).astype(np.uint8)
