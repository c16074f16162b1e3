"""Ring-A-Bell (Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion
Models?", ICLR 2024; chiayi-hsu/Ring-A-Bell, ``Get_Concept_Vector.ipynb``, ``InversePrompt.ipynb``).

With TE the text encoder's hidden states (the whole sequence, L x d: what the UNet's
cross-attention reads, the family's ``encode_ids``; on SDXL both encoders' penultimate states
concatenated, L x 2048, the pooled text embedding left out of the fitness), a concept vector from
pairs of prompts with and without the concept,

    c = mean over pairs (with_j, without_j) of TE(with_j) - TE(without_j)
    target(prompt) = TE(prompt) + eta c                                  (eta = 3 in the authors')
    fitness(ids) = || target - TE([BOS] ids [EOS ...]) ||_F^2            (lower is better)

and a genetic search over ``length`` token ids: a random population of ``population`` (200);
each generation keeps the best half, every parent is kept and with probability ``crossover``
(0.5) breeds two children with a random partner at a random cut, and each individual mutates
with probability ``mutation`` (0.25): one random position gets a random token. The authors run
3,000 generations and use the final best prompt; here the best prompt is also tried every
``eval_every`` generations (the unlearned model generates the item's image with it, the judge
decides) and the search stops at its first success, so ``asr_curve`` reads success against
generations. The budget unit is generations.

Text encoder only: the search never touches the UNet, so its found prompts (the best at every
checkpoint, no early stop) are cached under the text encoder's fingerprint, shared by every
submission that leaves the text encoder alone and recomputed when a method changes it; the judge
then runs the unlearned model on them (the outcome is cached per unlearned model).

Records (``common.RECORD_KEYS``, and): ``fitness`` (the best fitness at each judged checkpoint),
``search_cached`` (the search came from the cache).

Toy world: the concept pairs are the suite's own prompts, each forget prompt against the same
prompt with the target replaced by each other value of its kind (``params.pairs`` gives explicit
[with, without] pairs for a real suite, as the authors' CSVs do).
"""

from __future__ import annotations

import time

import numpy as np

from harness.attacks.contract import AttackInfo
from harness.attacks.common import Item, decode, generate_from_ids

NAME = "ringabell"
VERSION = "1"
FEATURES = {"text_encoder"}  # what it needs of the model family
BUDGET_UNIT = "generations"
DEFAULTS = {"population": 200, "generations": 3000, "mutation": 0.25, "crossover": 0.5, "length": 16, "strength": 3.0, "eval_every": 500, "seed": 0,
            "pairs": None}
# text encoder only (no UNet gradient); its concept vector from prompt pairs (concept_pairs)
INFO = AttackInfo(NAME, VERSION, BUDGET_UNIT, needs=frozenset(FEATURES), concept_pairs=True)


def params_of(params: dict) -> dict:
    out = {k: params.get(k, v) for k, v in DEFAULTS.items()}
    for k in ("population", "generations", "length", "eval_every", "seed"):
        out[k] = int(out[k])
    for k in ("mutation", "crossover", "strength"):
        out[k] = float(out[k])
    return out


def budgets(p: dict) -> list[int]:
    if p["generations"] <= 0:
        return [0]
    e = max(1, p["eval_every"])
    return [0, *range(e, p["generations"], e), p["generations"]] if p["generations"] % e else [0, *range(e, p["generations"] + 1, e)]


def concept_pairs(p: dict, concept: str, kind: str, prompts_by_labels: dict) -> list[tuple[str, str]]:
    if p.get("pairs"):
        return [(a, b) for a, b in p["pairs"]]
    out = []
    for labels, text in prompts_by_labels.items():
        lab = dict(labels)
        if lab.get(kind) != concept:
            continue
        for other_labels, other in prompts_by_labels.items():
            ol = dict(other_labels)
            if ol.get(kind) != concept and all(ol.get(k) == v for k, v in lab.items() if k != kind):
                out.append((text, other))
    return out


def _encode(encode, ids, batch: int = 1024):
    """``encode(ids)``: the model family's ``encode_ids``; its cross-attention input (the hidden
    states: SD-1.x's encoder output, SDXL's two encoders' penultimate states concatenated)."""
    import torch

    from harness.families.base import hidden_states

    with torch.inference_mode():
        return torch.cat([hidden_states(encode(ids[i : i + batch])).float() for i in range(0, len(ids), batch)])


def search(pipe, items: list[Item], p: dict, pairs, counter: dict, progress: bool = True) -> list[dict]:
    """The genetic search of each item (batched: one text-encoder call per generation for every
    item's population); returns per item the best token ids and fitness at each checkpoint."""
    import torch
    from tqdm.auto import tqdm

    from harness.families import family_of_pipeline
    from harness.families.base import require

    fam = family_of_pipeline(pipe)
    require(fam, FEATURES, NAME)
    tok, te = fam.text_encoders(pipe)[0]
    device = te.device
    enc = lambda ids: fam.encode_ids(pipe, ids)  # noqa: E731
    n_len = tok.model_max_length
    L = min(p["length"], n_len - 2)
    special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    vocab = np.array([i for i in range(len(tok)) if i not in special])

    def embed(texts):
        ids = tok(texts, padding="max_length", max_length=n_len, truncation=True, return_tensors="pt").input_ids.to(device)
        return _encode(enc, ids)

    if not pairs:
        from harness.errors import HarnessError

        raise HarnessError("ringabell: no concept pairs (prompts with and without the concept) for the concept vector")
    vec = (embed([a for a, _ in pairs]) - embed([b for _, b in pairs])).mean(0)
    targets = embed([it.job.prompt for it in items]) + p["strength"] * vec
    rngs = [np.random.default_rng(it.generator_seed(p["seed"]) % 2**63) for it in items]
    pops = [vocab[r.integers(0, len(vocab), size=(p["population"], L))] for r in rngs]
    out = [{"checkpoints": []} for _ in items]
    checks = set(budgets(p)[1:])
    keep = max(1, p["population"] // 2)
    bar = tqdm(total=p["generations"], desc=f"{NAME} search x{len(items)}", unit="gen", disable=not progress, leave=False)
    for gen in range(1, p["generations"] + 1):
        allids = np.concatenate([pops[i] for i in range(len(items))])
        allids = np.concatenate([np.full((len(allids), 1), tok.bos_token_id), allids, np.full((len(allids), n_len - 1 - L), tok.eos_token_id)], 1)
        h = _encode(enc, torch.from_numpy(allids).to(device))
        counter["text_encoder_calls"] = counter.get("text_encoder_calls", 0) + 1
        off = 0
        for i in range(len(items)):
            hs = h[off : off + len(pops[i])]
            off += len(pops[i])
            fit = ((targets[i] - hs) ** 2).sum(dim=(1, 2)).cpu().numpy()
            order = np.argsort(fit, kind="stable")[:keep]
            parents = pops[i][order]
            if gen in checks:
                out[i]["checkpoints"].append({"generation": gen, "token_ids": [int(x) for x in parents[0]], "fitness": round(float(fit[order[0]]), 4)})
            if gen == p["generations"]:
                continue
            r = rngs[i]
            children = []
            for a in range(len(parents)):
                children.append(parents[a])
                if r.random() < p["crossover"]:
                    b = r.integers(0, len(parents))
                    cut = r.integers(1, L + 1)
                    children.append(np.concatenate([parents[a][:cut], parents[b][cut:]]))
                    children.append(np.concatenate([parents[b][:cut], parents[a][cut:]]))
            kids = np.stack(children)
            for c in range(len(kids)):
                if r.random() < p["mutation"]:
                    kids[c, r.integers(0, L)] = vocab[r.integers(0, len(vocab))]
            pops[i] = kids
        bar.update(1)
    bar.close()
    return out


def attack(pipe, items: list[Item], judge, params: dict, progress: bool = True, counter: dict | None = None, on_record=None) -> list[dict]:
    """The search (cached per text-encoder fingerprint in ``params['_search_cache']``: it never
    sees the UNet), then the judge on the unlearned model at each checkpoint, stopping at the
    first success; ``on_record(i, rec)`` as soon as item i's record is final."""
    from harness.attacks.common import item_key

    p = params_of(params)
    counter = counter if counter is not None else {}
    t0 = time.time()
    from harness.families import family_of_pipeline

    tok = family_of_pipeline(pipe).text_encoders(pipe)[0][0]
    cache, te_fp, pairs = params.get("_search_cache"), params.get("_te_fp", "unknown"), params.get("_pairs") or []
    skeys = [item_key(NAME + "-search", VERSION, {**p, "pairs": pairs}, te_fp, it, "", {}) for it in items]
    found = [cache.get(k) if cache is not None else None for k in skeys]
    todo = [i for i, f in enumerate(found) if f is None]
    if todo:
        made = search(pipe, [items[i] for i in todo], p, pairs, counter, progress)
        for i, m in zip(todo, made):
            found[i] = {**m, "success": False}  # the cache's record shape; success is judged below
            if cache is not None:
                cache.put(skeys[i], found[i])
    n_len = tok.model_max_length
    recs = [{"success": False, "success_at": None, "budget_used": 0, "prompt": it.job.prompt, "token_ids": [], "fitness": [],
             "search_cached": i not in todo} for i, it in enumerate(items)]
    active = list(range(len(items)))

    def finish(i):
        recs[i]["seconds"] = round((time.time() - t0) / max(1, len(items)), 3)
        if on_record is not None:
            on_record(i, recs[i])

    for c in range(len(found[0]["checkpoints"]) if found else 0):
        if not active:
            break
        ids = []
        for i in active:
            body = found[i]["checkpoints"][c]["token_ids"]
            ids.append([tok.bos_token_id, *body] + [tok.eos_token_id] * (n_len - 1 - len(body)))
        imgs = generate_from_ids(pipe, ids, [items[i].job for i in active], counter)
        hit = judge(imgs)
        for j, i in enumerate(list(active)):
            cp = found[i]["checkpoints"][c]
            recs[i].update(budget_used=cp["generation"], token_ids=cp["token_ids"], prompt=decode(tok, ids[j]))
            recs[i]["fitness"].append(cp["fitness"])
            if hit[j]:
                recs[i].update(success=True, success_at=cp["generation"])
                active.remove(i)
                finish(i)
    for i in active:
        finish(i)
    return recs
