"""RECE: Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024, arXiv 2407.12383).

UCE's closed-form edit of the cross-attention key/value projections, iterated against the
embeddings that still regenerate the erased concept. W_0 are the base model's projections (one
per K/V layer l), c the concept prompt's token embeddings (one row per token position), W_k the
projections after round k (W_1 = the UCE edit, ``harness.methods.uce``). Each round:

1. the adversarial embedding, in closed form (the authors' ``close_regzero``): the input whose
   keys/values under the edited model are closest to the base model's for the concept,

       c'_k = argmin_x  sum_l ||W_k,l x - W_0,l c||^2 + reg ||x||^2
            = (reg I + sum_l W_k,l^T W_k,l)^-1 (sum_l W_k,l^T W_0,l) c       (row by row)

   (reg = ``regular_scale``: the paper's regularisation, which keeps the erased c' small so
   that erasing it moves unrelated concepts less);
2. the UCE edit of W_k that maps c'_k onto the anchor a (the empty prompt by default) while the
   retained prompts p (the empty prompt plus the preserved concepts) keep their outputs:

       W_k+1 = argmin_W  lamb ||W - W_k||^2 + erase_scale sum ||W c'_k - W_k a||^2
                         + preserve_scale sum ||W p - W_k p||^2

   the closed form ``uce.edit_kv`` solves, every token position of each prompt aligned with
   the same position of the anchor (the authors' ``edit_model_adversarial``, technique
   ``replace``).

Taken from CharlesGong12/RECE: ``utils/embedding_calculation/close_form_emb.py``
(``close_form_emb_regzero``: sums over every cross-attention V and K matrix, the full 77-token
concept embedding, edited model vs a frozen copy), ``erase_methods/uce.py``
(``edit_model_adversarial``: current weights as the start and value source, ``replace``), and
``train.py`` / ``train_artists.py`` / ``train_object.py`` + README notes (lamb 0.1, erase_scale 1,
preserve_scale 0.1; retained texts ``['']`` + preserved concepts; regular_scale 1e-3 and 1 epoch
for styles and objects, 1e-1 and 3 epochs for nudity; the start is a UCE checkpoint
``towards_uncond-preserve_false``, i.e. UCE's paper-era edit). Deliberate differences are in
docs/fidelity-methods.md (no validation-based choice of the best epoch; float64 on the CPU).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from harness.methods import AuthorsInputs, MethodInfo
from harness.methods import uce
from harness.methods.common import ConceptPrompts, cross_attention_kv, denoiser, text_embeddings

PRESETS: dict[str, dict] = {
    # the authors' settings for styles and objects (train_artists.py / train_object.py defaults,
    # README): 1 epoch, reg 1e-3, on top of a UCE paper-era (tail-token) edit with lamb 0.5
    "paper": {"rounds": 1, "regular_scale": 1e-3, "lamb": 0.1, "erase_scale": 1.0, "preserve_scale": 0.1,
              "uce_token_positions": "tail", "uce_erase_scale": 1.0, "uce_preserve_scale": None, "uce_lamb": 0.5},
    # the toy world: the authors' style/object round settings on top of the committed toy UCE
    # edit (all-token), so the toy RECE checkpoint is the toy UCE checkpoint plus RECE's rounds
    "toy": {"rounds": 1, "regular_scale": 1e-3, "lamb": 0.1, "erase_scale": 1.0, "preserve_scale": 0.1,
            "uce_token_positions": "all", "uce_erase_scale": 1.0, "uce_preserve_scale": 1.0, "uce_lamb": 0.5},
}

INFO = MethodInfo(
    name="rece",
    module=__name__,
    paper="https://arxiv.org/abs/2407.12383",
    code="https://github.com/CharlesGong12/RECE",
    presets=PRESETS,
    committed_toy=True,  # the toy preset as it is
    tolerance="closed_form",
    needs=frozenset({"cross_attention"}),
    families=frozenset({"sd1"}),
    families_why="its authors' code runs Stable Diffusion 1.x only",
    # CharlesGong12/RECE at 403a67f: the bare concept; guide 'art' for artists (scripts/art.sh), ' '
    # for objects; preserve every other artist (+ ''), objects only ''
    authors_inputs=AuthorsInputs(templates={"style": ("{}",), "object": ("{}",)}, anchor={"style": "art", "object": ""},
                                 preserve={"style": "others", "object": "none"},
                                 source="CharlesGong12/RECE@403a67f train_artists.py:65-66,143-176; train_object.py:210-237; scripts/art.sh:3-5"),
)

# The authors' nudity / I2P setting (scripts/nudity.sh, README): the paper preset with 3 epochs and
# reg 0.1, i.e. `unlearn erase rece --preset paper --param rounds=3 --param regular_scale=0.1`
# (the CLI's --preset names only paper and toy).
PAPER_NUDITY: dict = {"rounds": 3, "regular_scale": 0.1}


def display_name(params: dict) -> str:
    return "RECE"


def resolve(params: dict, concepts: list[ConceptPrompts]) -> dict:
    """The parameters as run (the UCE stage's preserve scale resolved as UCE resolves it)."""
    from harness.errors import HarnessError

    out = dict(params)
    if int(out.get("rounds", 1)) < 0:
        raise HarnessError(f"--param rounds: must be >= 0, not {out['rounds']!r}")
    stage = uce.resolve({"token_positions": out.get("uce_token_positions", "all"), "preserve_scale": out.get("uce_preserve_scale")}, concepts)
    out["uce_preserve_scale"] = stage["preserve_scale"]
    return out


def _weights(unet) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().double().cpu().clone() for n, m in cross_attention_kv(unet).items()}


def _flat(emb: torch.Tensor) -> torch.Tensor:
    return emb.reshape(-1, emb.shape[-1]).double().cpu()


def adversarial_embedding(current: dict[str, torch.Tensor], base: dict[str, torch.Tensor], c: torch.Tensor, regular_scale: float) -> torch.Tensor:
    """Step 1's closed form: rows of c (n x d) -> rows of c' (n x d), float64."""
    d = c.shape[1]
    mat1 = regular_scale * torch.eye(d, dtype=torch.float64)
    mat2 = torch.zeros((d, d), dtype=torch.float64)
    for name, w in current.items():
        mat1 = mat1 + w.T @ w
        mat2 = mat2 + w.T @ base[name]
    return c @ torch.linalg.solve(mat1, mat2).T


def regeneration_residual(current: dict[str, torch.Tensor], base: dict[str, torch.Tensor], x: torch.Tensor, c: torch.Tensor) -> float:
    """sum_l ||W_l x - W_0,l c||^2 / sum_l ||W_0,l c||^2: how far input x's keys/values under
    the edited model are from the base model's for the concept (0 = it regenerates it exactly)."""
    num = sum(float(((w @ x.T - base[n] @ c.T) ** 2).sum()) for n, w in current.items())
    den = sum(float(((base[n] @ c.T) ** 2).sum()) for n in current)
    return num / den


def edit_objective(weights: dict[str, torch.Tensor], start: dict[str, torch.Tensor], adv: torch.Tensor, a: torch.Tensor, p: torch.Tensor,
                   lamb: float, erase_scale: float, preserve_scale: float) -> float:
    """Step 2's objective at ``weights`` (start = W_k), summed over the layers."""
    total = 0.0
    for n, w in weights.items():
        w0 = start[n]
        total += lamb * float(((w - w0) ** 2).sum()) + erase_scale * float(((w @ adv.T - w0 @ a.T) ** 2).sum()) \
            + preserve_scale * float(((w @ p.T - w0 @ p.T) ** 2).sum())
    return total


@torch.no_grad()
def erase(
    pipe,
    concepts: list[ConceptPrompts],
    rounds: int = 1,
    regular_scale: float = 1e-3,
    lamb: float = 0.1,
    erase_scale: float = 1.0,
    preserve_scale: float = 0.1,
    uce_token_positions: str = "tail",
    uce_erase_scale: float = 1.0,
    uce_preserve_scale: float | None = None,
    uce_lamb: float = 0.5,
    progress: bool = True,
    history: list[dict] | None = None,
) -> dict[str, torch.Tensor]:
    """Edit the UNet in place (UCE, then ``rounds`` RECE rounds); return the changed tensors.

    ``history`` (if given) receives one record per round: the adversarial embedding's
    regeneration residual before and after the round's edit, the plain concept's, and the
    edit's objective at W_k and at W_k+1."""
    unet = denoiser(pipe)
    base = _weights(unet)
    changed = uce.erase(pipe, concepts, erase_scale=uce_erase_scale, preserve_scale=uce_preserve_scale, lamb=uce_lamb,
                        token_positions=uce_token_positions)
    erased = [e for cp in concepts for e in cp.erased()]
    anchors = [a if a.strip() else " " for cp in concepts for a in cp.anchored()]
    c = _flat(text_embeddings(pipe, erased))
    a = _flat(text_embeddings(pipe, anchors))
    p = _flat(text_embeddings(pipe, [""] + [q for cp in concepts for q in cp.preserved()]))
    history = history if history is not None else []
    for k in tqdm(range(int(rounds)), desc="rece", unit="round", disable=not progress):
        current = _weights(unet)
        adv = adversarial_embedding(current, base, c, regular_scale)
        before = regeneration_residual(current, base, adv, c)
        plain = regeneration_residual(current, base, c, c)
        j0 = edit_objective(current, current, adv, a, p, lamb, erase_scale, preserve_scale)
        changed = uce.edit_kv(unet, adv, a, p, erase_scale, preserve_scale, lamb)
        new = _weights(unet)
        history.append({"round": k + 1, "adv_residual_before": before, "adv_residual_after": regeneration_residual(new, base, adv, c),
                        "concept_residual": plain, "objective_before": j0,
                        "objective_after": edit_objective(new, current, adv, a, p, lamb, erase_scale, preserve_scale)})
    return changed
