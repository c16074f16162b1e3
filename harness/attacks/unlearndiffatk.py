"""UnlearnDiffAtk (Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are
Still Easy To Generate Unsafe Images ... For Now", ECCV 2024; OPTML-Group/Diffusion-MU-Attack,
``src/attackers/text_grad_.py``, ``src/tasks/classifier_.py``).

k adversarial tokens are prepended to the prompt. Each is a distribution u_i over the vocabulary
(a point of the simplex, initialised uniform). With E the token embedding matrix, x_0 the VAE
latent of the BASE model's image of the prompt (the diffusion model as its own classifier) and
eps_theta the UNLEARNED UNet,

    one-hot z_i ~ Categorical(u_i)                    (straight-through: dz/du := hardtanh(grad))
    e(u) = [BOS, z E, prompt tokens, EOS, ...]
    L(u) = || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, TextEnc(e(u))) ||^2,
           eps ~ N(0, I)
    u <- Proj_simplex(Adam(u, grad L; lr 0.01, weight decay 0.1))

Rounds run at the timesteps t_r = T/R/2 + r T/R (r = 0..R-1, T = 1000; the authors' ``sampled_t``
with R = 50), ``iterations`` Adam steps each; after each round the argmax tokens make a prompt, the
unlearned model generates the item's image with it (same seed, scheduler, steps, guidance) and the
judge (the suite's scorer) decides; the item stops at its first success. The budget is the number
of Adam iterations, ``rounds x iterations``; ``success_at`` counts the iterations used.

Several text encoders (SDXL; the authors' code is SD-1.x only): the variable stays one
distribution u_i per adversarial token over the shared vocabulary (SDXL's two tokenizers are one
BPE vocabulary), and the sampled one-hot is projected into each encoder's own table,
e_j(u) = [BOS, z E_j, prompt, EOS, ...] (E_1: 768 wide, E_2: 1280 on SDXL); the UNet reads the
family's conditioning of both (``conditioning_from_embeds``: both penultimate states, the
second's pooled projection at the end token, the image's micro-conditioning), so the gradient
reaching u sums both encoders' paths and the argmax tokens are one prompt that either encoder
reads. A family whose encoders' vocabularies differ has no shared token choice: its records say
so (``not_applicable``).

Records (``common.RECORD_KEYS``, and): ``losses`` (each round's mean loss), ``timesteps`` (the
rounds' t).

Batched: the items' optimisations are independent, so a batch runs them together with the sum of
their losses (Adam is element-wise, so each item's update is the one it would get alone); every
item draws its noise and tokens from its own generator.
"""

from __future__ import annotations

import time

import numpy as np

from harness.attacks.contract import AttackInfo
from harness.attacks.common import (Item, decode, embedding_support, embeds_conditioning, encoder_ids, generate_from_ids, not_applicable, prompt_ids,
                                    token_embeddings, with_prefix)

NAME = "unlearndiffatk"
VERSION = "1"
FEATURES = {"text_encoder", "token_embeddings", "vae"}  # what it needs of the model family
BUDGET_UNIT = "iterations"
# For run-time estimates before any run on a device (harness.run.estimate): seconds per attacked item
# per iteration, 32x32, 2 CPU threads (cold `make demo`, idle 2 cores: 10 items x 80 in 62 s).
GUESS_S_PER_ITEM_UNIT = 62.0 / (10 * 80)
DEFAULTS = {"k": 5, "iterations": 40, "rounds": 50, "lr": 0.01, "weight_decay": 0.1, "timesteps": 1000, "seed": 0, "batch_size": 16}
INFO = AttackInfo(NAME, VERSION, BUDGET_UNIT, needs=frozenset(FEATURES), guess_s_per_item_unit=GUESS_S_PER_ITEM_UNIT)


def params_of(params: dict) -> dict:
    out = {k: params.get(k, v) for k, v in DEFAULTS.items()}
    for k in ("k", "iterations", "rounds", "timesteps", "seed", "batch_size"):
        out[k] = int(out[k])
    for k in ("lr", "weight_decay"):
        out[k] = float(out[k])
    return out


def budgets(p: dict) -> list[int]:
    """The budgets at which success is checked (iterations used): 0, then after each round."""
    return [r * p["iterations"] for r in range(p["rounds"] + 1)]


def sampled_timesteps(rounds: int, T: int = 1000) -> list[int]:
    if rounds <= 0:
        return []
    step = max(1, T // rounds)
    return list(range(step // 2, T, step))[:rounds]


def project_simplex(v):
    """Euclidean projection of each row of v (..., V) onto the probability simplex (the
    authors find the same shift by bisection to 1e-5; this is the exact sort-based solution)."""
    import torch

    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    ind = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = (u - css / ind > 0).sum(-1, keepdim=True).clamp(min=1)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp(min=0)


def _ste():
    import torch
    import torch.nn.functional as F

    class STE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, probs, onehot):
            return onehot

        @staticmethod
        def backward(ctx, grad):
            return F.hardtanh(grad), None

    return STE


def attack(pipe, items: list[Item], judge, params: dict, progress: bool = True, counter: dict | None = None, on_record=None) -> list[dict]:
    """One record per item (see ``common``). ``pipe`` is the unlearned pipeline; ``judge(images)
    -> list[bool]``; ``counter["unet_calls"]`` counts UNet evaluations; ``on_record(i, rec)`` is
    called as soon as item i's record is final (its first success, or the end of its batch)."""
    from harness.families import family_of_pipeline

    p = params_of(params)
    why = embedding_support(pipe, family_of_pipeline(pipe), shared_vocabulary=True)
    if why:
        return not_applicable(items, f"{NAME}: {why}")
    out: list[dict] = []
    for s in range(0, len(items), p["batch_size"]):
        done = None if on_record is None else (lambda i, rec, s=s: on_record(s + i, rec))
        out += _attack_batch(pipe, items[s : s + p["batch_size"]], judge, p, progress, counter if counter is not None else {}, done)
    return out


def _attack_batch(pipe, items: list[Item], judge, p: dict, progress: bool, counter: dict, on_record=None) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    t0 = time.time()
    from harness.families import family_of_pipeline
    from harness.families.base import require

    fam = family_of_pipeline(pipe)
    require(fam, FEATURES, NAME)
    encs, unet, vae = fam.text_encoders(pipe), fam.denoiser(pipe), fam.vae(pipe)
    tok = encs[0][0]
    device, dtype = fam.device_dtype(pipe)
    for m in (*(te for _, te in encs), unet, vae):
        m.requires_grad_(False)
    Es = [token_embeddings(te, fam).detach() for _, te in encs]  # one table per text encoder
    V, k, n = Es[0].shape[0], p["k"], len(items)
    bodies = [prompt_ids(tok, it.job.prompt) for it in items]
    rows = [with_prefix(tok, [tok.eos_token_id] * k, b) for b in bodies]
    base_ids = torch.tensor(rows, device=device)
    if len(encs) == 1:
        ids_e = [base_ids]
    else:  # each encoder reads the same tokens with its own padding
        per = [encoder_ids([t for t, _ in encs], r, range(1, 1 + k)) for r in rows]
        ids_e = [torch.tensor([q[j] for q in per], device=device) for j in range(len(encs))]
    slots = torch.zeros(base_ids.shape, dtype=torch.bool, device=device)
    slots[:, 1 : 1 + k] = True  # the adversarial tokens' positions
    size = (items[0].job.height, items[0].job.width)
    gens = [torch.Generator("cpu").manual_seed(it.generator_seed(p["seed"])) for it in items]
    with torch.no_grad():
        imgs = torch.from_numpy(np.stack([it.target_image for it in items])).permute(0, 3, 1, 2).float().div(255).mul(2).sub(1)
        x0 = fam.encode_images(pipe, imgs.to(device=device, dtype=vae.dtype)).mean * fam.latent_scale(pipe)
    abar = fam.scheduler(pipe).alphas_cumprod.to(device=device, dtype=torch.float32)
    u = torch.nn.Parameter(torch.full((n, k, V), 1.0 / V, device=device))
    opt = torch.optim.Adam([u], lr=p["lr"], weight_decay=p["weight_decay"])
    ste = _ste()
    done = [False] * n
    recs = [{"success": False, "success_at": None, "budget_used": 0, "prompt": it.job.prompt, "token_ids": [], "losses": []} for it in items]
    steps = sampled_timesteps(p["rounds"], p["timesteps"])

    def finish(i):
        recs[i]["seconds"] = round((time.time() - t0) / max(1, n), 3)
        recs[i]["timesteps"] = steps[: len(recs[i]["losses"])]
        if on_record is not None:
            on_record(i, recs[i])

    bar = tqdm(total=len(steps) * p["iterations"], desc=f"{NAME} x{n}", unit="it", disable=not progress, leave=False)
    for r, t in enumerate(steps):
        act = [i for i in range(n) if not done[i]]
        if not act:
            break
        a = torch.tensor(act, device=device)
        tt = torch.full((len(act),), t, device=device, dtype=torch.long)
        losses = []
        for _ in range(p["iterations"]):
            with torch.no_grad():
                probs = u.detach()[a].clamp(min=0)
                idx = torch.stack([torch.multinomial(probs[j].cpu(), 1, generator=gens[i]).view(-1) for j, i in enumerate(act)]).to(device)
                noise = torch.stack([torch.randn(x0.shape[1:], generator=gens[i]) for i in act]).to(device=device, dtype=x0.dtype)
            onehot = ste.apply(u[a], F.one_hot(idx, V).float())
            embs = []
            for E, ide in zip(Es, ids_e):  # the one token choice, in each encoder's own table
                emb = E[ide[a]].clone()
                emb[:, 1 : 1 + k] = (onehot @ E.float()).to(emb.dtype)
                embs.append(emb)
            cond = embeds_conditioning(pipe, fam, embs, base_ids[a], slots[a], size)
            ab = abar[t]
            x_t = ab.sqrt() * x0[a] + (1 - ab).sqrt() * noise
            pred = fam.predict_noise(pipe, x_t.to(dtype), tt, cond.to(dtype))
            counter["unet_calls"] = counter.get("unet_calls", 0) + 1
            per = ((pred.float() - noise.float()) ** 2).flatten(1).mean(1)  # each item's MSE
            opt.zero_grad()
            per.sum().backward()
            opt.step()
            with torch.no_grad():
                u.data = project_simplex(u.data)
            losses.append(per.detach().cpu())
            bar.update(1)
        used = (r + 1) * p["iterations"]
        with torch.no_grad():
            adv = u.detach()[a].argmax(-1).tolist()
        ids = [with_prefix(tok, adv[j], bodies[i]) for j, i in enumerate(act)]
        imgs = generate_from_ids(pipe, ids, [items[i].job for i in act], counter)
        hit = judge(imgs)
        mean_loss = torch.stack(losses).mean(0).tolist()
        for j, i in enumerate(act):
            rec = recs[i]
            rec.update(budget_used=used, token_ids=adv[j], prompt=decode(tok, ids[j]))
            rec["losses"].append(round(float(mean_loss[j]), 6))
            if hit[j]:
                rec.update(success=True, success_at=used)
                done[i] = True
                finish(i)
    bar.close()
    for i in range(n):
        if not done[i]:
            finish(i)
    return recs
