"""What every prompt attack shares: items, seeds, the attack cache, the judge, and text encoding /
generation from token embeddings.

An attack item is one (prompt, seed) image of a forget prompt: the unlearned model's generation
job (its prompt, seed, scheduler, steps, guidance, size) and the base model's image of the same
job (the attack's target image). An attack returns one record per item:

    {"success": bool, "budget_used": n, "success_at": n or None, "prompt": adversarial text,
     "token_ids": [...], "seconds": s, ...}                              (``RECORD_KEYS``)

``success_at`` is the budget (iterations, or generations for the genetic search) at which the
judge first saw the concept; ASR at budget b counts the items with ``success_at <= b`` (and the
pre-attack successes, budget 0). UNet calls are counted in the caller's ``counter``. An attack
that cannot run on a model family returns ``not_applicable(items, why)``: the same keys, no
success, and ``"not_applicable"``: the one-line reason; the runner caches none of them and the
target's outcome is that line as its error.

Model families: prompts go through the family (``harness.families``): ids to conditioning
(``encode_ids``), negatives (``encode_negative``), generation from a conditioning
(``images_from_conditioning``). A family with one text encoder (SD-1.x) conditions the denoiser
on that encoder's hidden states; a family with several (SDXL) on a ``Conditioning`` built from
every encoder (``embeds_conditioning``: its ``conditioning_from_embeds``), each encoder reading
the same tokens through its own token-embedding table (``encoder_ids``: its own padding).

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
RECORD_KEYS = ("success", "success_at", "budget_used", "prompt", "token_ids", "seconds")  # every attack's record has them


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
    so an adversarial image is matched with the item's un-attacked one. Everything goes through
    the model family: the ids' conditioning (``encode_ids``), the negative prompt's
    (``encode_negative``), the images (``images_from_conditioning``). ``conds``: each prompt's
    conditioning (one prompt's: a tensor (L, d), or a ``Conditioning`` of one prompt), given
    instead of computed from the ids (a prompt with a learned embedding, textual inversion)."""
    import torch

    from harness.families.base import stack_conditioning

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
            cond = fam.encode_ids(pipe, ids) if conds is None else stack_conditioning([conds[i] for i in idx]).to(device)
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


def split_conditioning(cond) -> list:
    """A batch's conditioning (a tensor, or a ``Conditioning``) -> one prompt's each, for ``conds``."""
    return [cond[i] for i in range(len(cond))]


# ---------------------------------------------------------------------------- several text encoders
def not_applicable(items: list, why: str) -> list[dict]:
    """The records of items an attack cannot run on (``why``: one line): no success, nothing spent."""
    return [{"success": False, "success_at": None, "budget_used": 0, "prompt": it.job.prompt, "token_ids": [], "seconds": 0.0,
             "not_applicable": why} for it in items]


def embedding_support(pipe, fam, shared_vocabulary: bool = False) -> str | None:
    """Why an attack that feeds token embeddings to the text encoders cannot run on this
    pipeline (None: it can): a family with several encoders must build the denoiser's
    conditioning from their embeddings (``conditioning_from_embeds``), and with
    ``shared_vocabulary`` (one token choice for every encoder: UnlearnDiffAtk) their vocabularies
    must be one."""
    encs = fam.text_encoders(pipe)
    if len(encs) > 1 and not callable(getattr(fam, "conditioning_from_embeds", None)):
        return (f"the {fam.name} model family has {len(encs)} text encoders and no conditioning_from_embeds "
                "(the denoiser's conditioning from token embeddings)")
    if shared_vocabulary and len({int(fam.token_embeddings(te).shape[0]) for _, te in encs}) > 1:
        sizes = ", ".join(str(int(fam.token_embeddings(te).shape[0])) for _, te in encs)
        return f"the {fam.name} model family's text encoders have vocabularies of different sizes ({sizes}): no shared token choice"
    return None


def encoder_ids(tokenizers: list, ids: list[int], slots=()) -> list[list[int]]:
    """First-tokenizer ids -> each encoder's: the same tokens up to the end token (the first EOS
    not at one of the ``slots``, positions holding EOS until an embedding is put there), then
    that tokenizer's padding (SDXL's ``tokenizer_2`` pads with ``!``, not EOS)."""
    eos = tokenizers[0].eos_token_id
    end = next((i for i, t in enumerate(ids) if t == eos and i not in set(slots)), len(ids) - 1)
    out = []
    for tok in tokenizers:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out.append(list(ids[: end + 1]) + [pad] * (len(ids) - end - 1))
    return out


def embeds_conditioning(pipe, fam, embeds: list, ids, slots, size: tuple[int, int] | None = None):
    """The denoiser's conditioning of prompts given as token embeddings, one (B, L, d_i) per text
    encoder. One encoder and no ``conditioning_from_embeds`` (SD-1.x): that encoder's hidden
    states (``encode_embeds``). Else the family's ``conditioning_from_embeds`` (SDXL: both
    encoders' penultimate states, the pooled projection of the second at the end token, the
    micro-conditioning of an image of ``size``). ``ids`` (B, L): the first tokenizer's ids;
    ``slots`` (B, L) bool: the positions whose embedding is not their id's (learned or
    optimised tokens, which hold EOS in ``ids``), so the end token is the first EOS elsewhere."""
    import torch

    build = getattr(fam, "conditioning_from_embeds", None)
    if build is None:
        return encode_embeds(fam.text_encoders(pipe)[0][1], embeds[0], fam)
    tok = fam.text_encoders(pipe)[0][0]
    ids = torch.where(slots, torch.full_like(ids, tok.bos_token_id), ids)
    cond = build(pipe, embeds, ids)
    sized = getattr(fam, "sized", None)
    return sized(pipe, cond, *size) if sized is not None and size is not None else cond


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
    if sub.method.kind == "inference":  # the method may change what prompts become (SAFREE): its own prompts
        return f"{unl_fp}:text_encoder"
    if sub.checkpoint is None or sub.checkpoint.kind in ("unet", "transformer"):
        return f"{base_fp}:text_encoder"
    return f"{unl_fp}:text_encoder"
