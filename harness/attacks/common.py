"""What every prompt attack shares: items, seeds, the attack cache, the judge, and text encoding /
generation from token embeddings.

An attack item is one (prompt, seed) image of a forget prompt: the unlearned model's generation
job (its prompt, seed, scheduler, steps, guidance, size) and the base model's image of the same
job (the attack's target image). An attack returns one record per item:

    {"success": bool, "budget_used": n, "success_at": n or None, "prompt": adversarial text,
     "token_ids": [...], "unet_calls": n, "seconds": s, ...}

``success_at`` is the budget (iterations, or generations for the genetic search) at which the
judge first saw the concept; ASR at budget b counts the items with ``success_at <= b`` (and the
pre-attack successes, budget 0).

The cache key of a record is the sha256 of (attack, its version, its parameters, the unlearned
model's fingerprint, the base model's job key for the item, which names the target prompt, its
seed and settings, the target concept, the judge's identity and threshold). A record is a JSON
file ``<cache>/attacks/<key[:2]>/<key>.json`` written atomically: an interrupted attack keeps
every finished item, and a re-run repeats nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.store.fsutil import atomic_write
from harness.run.generate import Job
from harness.store.hashing import canonical_json, sha256_bytes, sha256_json

ATTACKS_VERSION = "1"


@dataclass(frozen=True)
class Item:
    """One attacked image: the unlearned model's job and the base model's image of it."""

    index: int  # position in the suite's (prompt, seed) items
    job: Job  # the unlearned model's job (the attack changes its prompt only)
    base_key: str  # the base model's job key: the target image's identity
    target_image: np.ndarray | None = None  # uint8 HxWx3, the base model's image

    def generator_seed(self, attack_seed: int) -> int:
        """A per-item seed: the same item gives the same draws whatever the batch around it."""
        return int(sha256_bytes(f"{attack_seed}|{self.job.prompt}|{self.job.seed}".encode())[:15], 16)


def item_key(attack: str, version: str, params: dict, unlearned_fp: str, item: Item, concept: str, judge_id: dict) -> str:
    return sha256_json({"attack": attack, "attack_version": version, "attacks_version": ATTACKS_VERSION, "params": params,
                        "unlearned": unlearned_fp, "base_job": item.base_key, "prompt": item.job.prompt, "seed": item.job.seed,
                        "concept": concept, "judge": judge_id})


class AttackCache:
    """Attack records by key, JSON, written atomically; a damaged file reads as absent."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            rec = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("key") == key and "success" in rec else None

    def put(self, key: str, record: dict) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, (canonical_json({**record, "key": key}) + "\n").encode())


def _family(pipe=None):
    from harness.families import default, family_of_pipeline

    return default() if pipe is None else family_of_pipeline(pipe)


def token_embeddings(text_encoder, family=None):
    """The vocabulary's input embedding matrix (V, d) (``family``: the model family's text
    encoder; the default family when None)."""
    return (family or _family()).token_embeddings(text_encoder)


def encode_embeds(text_encoder, inputs_embeds, family=None):
    """Text encoder hidden states from token embeddings (B, L, d) instead of ids, as the model
    family computes them (for SD-1.x, ``CLIPTextModel`` without its token lookup)."""
    return (family or _family()).encode_embeds(text_encoder, inputs_embeds)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids between BOS and the first EOS (truncated to the model's length)."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    eos = tokenizer.eos_token_id
    body = ids[1:]
    return body[: body.index(eos)] if eos in body else body


def with_prefix(tokenizer, prefix: list[int], body: list[int]) -> list[int]:
    """[BOS] + prefix + body + [EOS] padded with EOS to the model's length (the body is cut so the
    EOS always fits), as UnlearnDiffAtk's ``prefix_k`` insertion builds it."""
    n = tokenizer.model_max_length
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    body = body[: max(0, n - 2 - len(prefix))]
    ids = [bos, *prefix, *body, eos]
    return ids + [pad] * (n - len(ids))


def decode(tokenizer, ids: list[int]) -> str:
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return tokenizer.decode([i for i in ids if i not in special]).strip()


def generate_from_ids(pipe, ids_batch: list[list[int]], jobs: list[Job], counter: dict | None = None, conds: list | None = None):
    """Images (uint8) of token-id prompts with the jobs' settings and noise: the same latents
    (the job's seed), scheduler, steps, guidance and negative prompt as ``generate.run_batch``,
    so an adversarial image is matched with the item's un-attacked one. ``conds``: the text
    encoder's hidden states (L, d) of each prompt, given instead of computed from the ids (a
    prompt with a learned embedding, textual inversion)."""
    import torch

    out = [None] * len(jobs)
    groups: dict[tuple, list[int]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault((j.scheduler, j.steps, j.guidance, j.height, j.width, j.eta, j.negative_prompt), []).append(i)
    fam = _family(pipe)
    device, dtype = fam.device_dtype(pipe)
    for idx in groups.values():
        j0 = jobs[idx[0]]
        fam.set_scheduler(pipe, j0.scheduler)
        ids = torch.tensor([ids_batch[i] for i in idx], device=device)
        with torch.inference_mode():
            cond = fam.encode_ids(pipe, ids) if conds is None else torch.stack([conds[i] for i in idx]).to(device)
            neg = fam.encode_negative(pipe, [j0.negative_prompt] * len(idx), device) if j0.guidance > 1 else None
            lat = fam.initial_latents(pipe, [jobs[i].seed for i in idx], j0.height, j0.width).to(device=device, dtype=dtype)
            gens = [torch.Generator("cpu").manual_seed(jobs[i].seed + 1) for i in idx]
            kw = {"eta": j0.eta} if j0.scheduler == "ddim" else {}
            images = fam.images_from_conditioning(pipe, cond, neg, lat, gens, j0, kw)
        if counter is not None:
            counter["unet_calls"] = counter.get("unet_calls", 0) + j0.steps * (2 if j0.guidance > 1 else 1)
        imgs = np.round(np.clip(np.nan_to_num(np.asarray(images, dtype=np.float32)), 0, 1) * 255).astype(np.uint8)
        for i, im in zip(idx, imgs):
            out[i] = np.ascontiguousarray(im)
    return out


def asr_curve(pre: list[bool], success_at: list[int | None], budgets: list[int]) -> list[dict]:
    """ASR at each budget: the share of items that succeed before the attack or at a budget <= b
    (UnlearnDiffAtk's count: pre-attack successes included)."""
    n = len(pre)
    return [{"budget": b, "asr": (sum(1 for p, s in zip(pre, success_at) if p or (s is not None and s <= b)) / n) if n else float("nan")}
            for b in budgets]


def text_encoder_fingerprint(sub, base_fp: str, unl_fp: str) -> str:
    """The text encoder's identity, for attacks that use it alone (Ring-A-Bell): a checkpoint of
    denoiser tensors (``unet``, ``transformer``) leaves the base's text encoder(s), so those
    submissions share its found prompts; any other kind (a text encoder's tensors, a whole
    pipeline, a LoRA) may change it."""
    if sub.checkpoint.kind in ("unet", "transformer"):
        return f"{base_fp}:text_encoder"
    return f"{unl_fp}:text_encoder"
