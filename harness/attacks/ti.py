"""Textual inversion on the erased model: Concept Inversion, CCE (Pham et al., "Circumventing
Concept Erasure Methods for Text-to-Image Generative Models", ICLR 2024;
NYU-DICE-Lab/circumventing-concept-erasure, ``*/concept_inversion.py``, ``*/train.sh``).

One new token embedding v (d) is learned for the target concept, with every network of the
UNLEARNED model frozen. With x^(n) the BASE model's images of the target's forget items (the
attack's target images, as UnlearnDiffAtk's), c_n their prompts with the concept word replaced by
the new token, E the token embedding matrix, each step draws a minibatch of B images,

    x_0 = VAE(flip(x^(n))) sample x scaling        (flip: horizontal, p = 0.5)
    t ~ U{0, ..., T-1},  eps ~ N(0, I),  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    L(v) = mean || eps - eps_theta(x_t, t, TextEnc(E[c_n] with v at the new token)) ||^2
    v <- AdamW(v, grad L; lr 0.08, betas 0.9 / 0.999, weight decay 0.01, eps 1e-8)

v starts at the embedding of ``init_token`` (the authors: "art" for styles; here the target
kind's word by default: "style", "object"). The authors run 5,000 steps of 4 images x 4
accumulation steps at lr 5e-3 scaled by 16 (= 0.08), on 25 base images. The attack then
generates each attacked item with its own prompt, the concept word replaced by the learned token
(same seed, scheduler, steps, guidance as the item's image), and the suite's judge decides.

Several text encoders (SDXL): the new token gets one row in each encoder's token-embedding
table, v = [v_1; v_2] (d_1 + d_2: 768 + 1280 on SDXL), each initialised with ``init_token``'s row
of its own table and learned together (one AdamW over the concatenation is element-wise, so each
row gets its own update); the UNet reads the family's conditioning of the two encoders' embeddings
(``fam.conditioning_from_embeds``: both penultimate states, the second's pooled projection at the
end token, the images' micro-conditioning), as diffusers' ``textual_inversion_sdxl.py`` trains
one placeholder row per encoder. Records name how many encoders were inverted
(``encoders_inverted``); the cached embedding is the concatenation.

Records (``common.RECORD_KEYS``, and): ``placeholder_position``, ``losses`` (the mean loss up to
each judged checkpoint), ``encoders_inverted``, ``embedding_sha256`` (of the float32 embedding
last judged).

Budget = optimisation steps. The item is judged at the checkpoints 0, b/4, b/2, 3b/4, b
(``checkpoints`` = 4), so ``asr_curve`` reads ASR against steps; it stops at its first success
and training stops once every attacked item has succeeded. The embedding is one per (unlearned
model, target concept, training set, params): its value at every checkpoint is cached (JSON
floats, exact) under its own key, so an interrupted attack resumes judging without training
again, and items' records are written as each finishes. Deterministic: one CPU generator
seeded from (attack seed, concept, the training images' job keys) draws minibatches, flips,
latents, timesteps and noise, so the same seed gives the same embedding bitwise.
"""

from __future__ import annotations

import time

import numpy as np

from harness.store.hashing import sha256_bytes, sha256_json
from harness.attacks.contract import AttackInfo
from harness.attacks.common import (ATTACKS_VERSION, Item, embedding_support, embeds_conditioning, encoder_ids, generate_from_ids, not_applicable,
                                    prompt_ids, split_conditioning, token_embeddings, with_prefix)

NAME = "ti"
VERSION = "1"
FEATURES = {"text_encoder", "token_embeddings", "vae"}  # what it needs of the model family
UNIT = "target"  # one embedding learned on every forget item of the target: one remote task per target
# For run-time estimates (harness.run.estimate): seconds per attacked item per step, 32x32, 2 CPU
# threads (cold `make demo`, idle 2 cores: 5 items x 100 steps in 36 s).
GUESS_S_PER_ITEM_UNIT = 36.0 / (5 * 100)
BUDGET_UNIT = "steps"
DEFAULTS = {"steps": 5000, "lr": 0.08, "batch_size": 16, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
            "flip": 0.5, "init_token": None, "checkpoints": 4, "seed": 0}
INFO = AttackInfo(NAME, VERSION, BUDGET_UNIT, unit=UNIT, needs=frozenset(FEATURES), learns_on_items=True,
                  guess_s_per_item_unit=GUESS_S_PER_ITEM_UNIT)
PLACEHOLDER = "<ti>"


def params_of(params: dict) -> dict:
    out = {k: params.get(k, v) for k, v in DEFAULTS.items()}
    for k in ("steps", "batch_size", "checkpoints", "seed"):
        out[k] = int(out[k])
    for k in ("lr", "weight_decay", "beta1", "beta2", "eps", "flip"):
        out[k] = float(out[k])
    return out


def budgets(p: dict) -> list[int]:
    """0, then ``checkpoints`` evenly spaced step counts up to ``steps``."""
    b, c = p["steps"], max(1, p["checkpoints"])
    return [0] if b <= 0 else sorted({0, *(round(b * i / c) for i in range(1, c + 1))})


def key_params(p: dict, train: list[Item]) -> dict:
    """The params an item's record is keyed by: the attack's, plus the training set (the base
    images of every forget item of the target), which the learned embedding depends on."""
    return {**p, "train": sha256_json(sorted(it.base_key for it in train))}


def placeholder_ids(tok, prompt: str, concept: str) -> tuple[list[int], int]:
    """The prompt's full ids with the concept word's tokens replaced by one placeholder position
    (holding EOS until the learned vector is put there), and that position. A prompt without
    the word (a prompt bank) gets the token in front."""
    body = prompt_ids(tok, prompt)
    word = tok(concept, add_special_tokens=False).input_ids
    for s in range(len(body) - len(word) + 1):
        if word and body[s : s + len(word)] == word:
            return with_prefix(tok, [], body[:s] + [tok.eos_token_id] + body[s + len(word) :]), 1 + s
    return with_prefix(tok, [tok.eos_token_id], body), 1


def shown_prompt(prompt: str, concept: str) -> str:
    return prompt.replace(concept, PLACEHOLDER, 1) if concept in prompt else f"{PLACEHOLDER} {prompt}"


def _family(pipe):
    from harness.families import family_of_pipeline
    from harness.families.base import require

    fam = family_of_pipeline(pipe)
    require(fam, FEATURES, NAME)
    return fam


def _embed(pipe, fam, Es, ids_e, ids, pos, v, size=None):
    """The conditioning of prompts with the learned vector ``v`` (every encoder's row,
    concatenated) at position ``pos``: each encoder's embeddings of its own ids (``ids_e``) with
    its slice of ``v`` spliced in, then ``embeds_conditioning``."""
    import torch

    rows = torch.arange(len(ids))
    embs, off = [], 0
    for E, ide in zip(Es, ids_e):
        emb = E[ide].clone()
        emb[rows, pos] = v[off : off + E.shape[1]].to(emb.dtype)
        off += E.shape[1]
        embs.append(emb)
    slots = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    slots[rows, pos] = True
    return embeds_conditioning(pipe, fam, embs, ids, slots, size)


def _encoders(pipe, fam, caps, device):
    """(token-embedding tables, each encoder's ids of the captions ``caps``) of the family's text encoders."""
    import torch

    encs = fam.text_encoders(pipe)
    Es = [token_embeddings(te, fam).detach() for _, te in encs]
    if len(encs) == 1:
        return Es, [torch.tensor([c[0] for c in caps], device=device)]
    per = [encoder_ids([t for t, _ in encs], c[0], [c[1]]) for c in caps]
    return Es, [torch.tensor([q[i] for q in per], device=device) for i in range(len(encs))]


def train(pipe, train_items: list[Item], concept: str, kind: str, p: dict, counter: dict, progress: bool = True):
    """Yield ``(step, v, mean loss since the last checkpoint)`` at each checkpoint > 0 of
    ``budgets(p)``, v a float32 CPU tensor (d); the caller may stop early."""
    import torch
    from tqdm.auto import tqdm

    from harness.errors import HarnessError

    fam = _family(pipe)
    why = embedding_support(pipe, fam)
    if why:
        raise HarnessError(f"ti: {why}")
    encs, unet, vae = fam.text_encoders(pipe), fam.denoiser(pipe), fam.vae(pipe)
    tok = encs[0][0]
    device, dtype = fam.device_dtype(pipe)
    for m in (*(te for _, te in encs), unet, vae):
        m.requires_grad_(False)
    init = p["init_token"] or kind
    init_ids = []
    for n, (t, _) in enumerate(encs):
        got = t(init, add_special_tokens=False).input_ids
        if len(got) != 1:
            which = "" if n == 0 else f" for text encoder {n + 1}'s tokenizer"
            raise HarnessError(f"ti: params.init_token: {init!r} is not a single token{which} ({len(got)} tokens)")
        init_ids.append(got[0])
    seed = int(sha256_bytes(f"{p['seed']}|{concept}|{sha256_json(sorted(it.base_key for it in train_items))}".encode())[:15], 16)
    gen = torch.Generator("cpu").manual_seed(seed)
    caps = [placeholder_ids(tok, it.job.prompt, concept) for it in train_items]
    Es, ids_e = _encoders(pipe, fam, caps, device)
    ids = ids_e[0] if len(Es) == 1 else torch.tensor([c[0] for c in caps], device=device)
    pos = torch.tensor([c[1] for c in caps], device=device)
    size = (train_items[0].job.height, train_items[0].job.width)
    with torch.no_grad():
        imgs = torch.from_numpy(np.stack([it.target_image for it in train_items])).permute(0, 3, 1, 2).float().div(255).mul(2).sub(1)
        both = torch.cat([imgs, imgs.flip(-1)]).to(device=device, dtype=vae.dtype)  # the images and their mirror images
        dist = fam.encode_images(pipe, both)
        mean, std = dist.mean.float().cpu(), dist.std.float().cpu()
    scale = fam.latent_scale(pipe)
    abar = fam.scheduler(pipe).alphas_cumprod.to(dtype=torch.float32)
    T = len(abar)
    v = torch.nn.Parameter(torch.cat([E[i].detach().float().cpu() for E, i in zip(Es, init_ids)]).clone())  # every encoder's row
    opt = torch.optim.AdamW([v], lr=p["lr"], betas=(p["beta1"], p["beta2"]), eps=p["eps"], weight_decay=p["weight_decay"])
    n, B = len(train_items), max(1, min(p["batch_size"], len(train_items)))
    checks = set(budgets(p)[1:])
    order: list[int] = []
    losses = []
    bar = tqdm(total=p["steps"], desc=f"{NAME} {concept}", unit="step", disable=not progress, leave=False)
    for step in range(1, p["steps"] + 1):
        while len(order) < B:  # shuffled epochs, as the authors' DataLoader
            order += torch.randperm(n, generator=gen).tolist()
        batch, order = order[:B], order[B:]
        flip = (torch.rand(B, generator=gen) < p["flip"]).long()
        src = torch.tensor(batch) + n * flip
        x0 = (mean[src] + std[src] * torch.randn(mean[src].shape, generator=gen)) * scale
        t = torch.randint(0, T, (B,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        ab = abar[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        b = torch.tensor(batch, device=device)
        cond = _embed(pipe, fam, Es, [e[b] for e in ids_e], ids[b], pos[b], v.to(device), size)
        pred = fam.predict_noise(pipe, x_t.to(device=device, dtype=dtype), t.to(device), cond.to(dtype))
        counter["unet_calls"] = counter.get("unet_calls", 0) + 1
        counter["ti_steps"] = counter.get("ti_steps", 0) + 1
        loss = torch.nn.functional.mse_loss(pred.float(), noise.to(device).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        if step in checks:
            yield step, v.detach().clone(), float(np.mean(losses))
            losses = []
    bar.close()


def embedding_key(p: dict, fp: str, concept: str, train_items: list[Item]) -> str:
    return sha256_json({"attack": NAME + "-embedding", "attack_version": VERSION, "attacks_version": ATTACKS_VERSION,
                        "params": key_params(p, train_items), "unlearned": fp, "concept": concept})


class Embeddings:
    """The learned embedding at each checkpoint: from the cache, else from a (lazily started,
    deterministic) training run, each new checkpoint written to the cache as it is reached."""

    def __init__(self, pipe, train_items, concept, kind, p, counter, progress, cache, key):
        self.args = (pipe, train_items, concept, kind, p, counter, progress)
        self.cache, self.key = cache, key
        rec = cache.get(key) if cache is not None else None
        self.known = {c["step"]: c for c in (rec or {}).get("checkpoints", [])}
        self.run = None

    def at(self, step: int) -> dict:
        import torch

        if step not in self.known:
            if self.run is None:
                self.run = train(*self.args)
            for s, v, loss in self.run:
                self.known[s] = {"step": s, "embedding": [float(x) for x in v.tolist()], "loss": round(loss, 6)}
                if self.cache is not None:
                    self.cache.put(self.key, {"success": False, "checkpoints": [self.known[k] for k in sorted(self.known)]})
                if s == step:
                    break
        c = self.known[step]
        return {**c, "v": torch.tensor(c["embedding"], dtype=torch.float32)}


def attack(pipe, items: list[Item], judge, params: dict, progress: bool = True, counter: dict | None = None, on_record=None) -> list[dict]:
    """One record per item (see ``common``). ``params`` carries, from the runner, ``_train`` (the
    target's forget items with their base images), ``_concept``, ``_kind``, ``_cache`` and
    ``_fp`` (the unlearned model's fingerprint); ``on_record(i, rec)`` is called as soon as item
    i's record is final."""
    import torch

    p = params_of(params)
    counter = counter if counter is not None else {}
    concept, kind = params.get("_concept", ""), params.get("_kind", "")
    train_items = params.get("_train") or items
    t0 = time.time()
    fam = _family(pipe)
    why = embedding_support(pipe, fam)
    if why:
        return not_applicable(items, f"{NAME}: {why}")
    encs = fam.text_encoders(pipe)
    tok, te = encs[0]
    device = te.device
    emb = Embeddings(pipe, train_items, concept, kind, p, counter, progress, params.get("_cache"),
                     embedding_key(p, params.get("_fp", "unknown"), concept, train_items))
    caps = [placeholder_ids(tok, it.job.prompt, concept) for it in items]
    recs = [{"success": False, "success_at": None, "budget_used": 0, "prompt": shown_prompt(it.job.prompt, concept), "token_ids": caps[i][0],
             "placeholder_position": caps[i][1], "losses": [], "encoders_inverted": len(encs)} for i, it in enumerate(items)]
    Es, ids_e = _encoders(pipe, fam, caps, device)
    active = list(range(len(items)))

    def finish(i):
        recs[i]["seconds"] = round((time.time() - t0) / max(1, len(items)), 3)
        if on_record is not None:
            on_record(i, recs[i])

    for step in budgets(p)[1:]:
        if not active:
            break
        c = emb.at(step)
        with torch.no_grad():
            a = torch.tensor(active, device=device)
            ids = torch.tensor([caps[i][0] for i in active], device=device)
            job = items[active[0]].job
            conds = _embed(pipe, fam, Es, [e[a] for e in ids_e], ids, torch.tensor([caps[i][1] for i in active], device=device), c["v"].to(device),
                           (job.height, job.width))
        imgs = generate_from_ids(pipe, [caps[i][0] for i in active], [items[i].job for i in active], counter, conds=split_conditioning(conds))
        hit = judge(imgs)
        sha = sha256_bytes(np.asarray(c["embedding"], dtype=np.float32).tobytes())
        for j, i in enumerate(list(active)):
            recs[i].update(budget_used=step, embedding_sha256=sha)
            recs[i]["losses"].append(c["loss"])
            if hit[j]:
                recs[i].update(success=True, success_at=step)
                active.remove(i)
                finish(i)
    for i in active:
        finish(i)
    return recs
