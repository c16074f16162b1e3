"""UCE: Unified Concept Editing (Gandikota et al., WACV 2024), closed form.

Each cross-attention key/value projection W (out x d) is replaced by the minimiser of

    lamb * ||W' - W||^2
    + erase_scale    * sum_i ||W' c_i - W a_i||^2      (erased embedding c_i -> anchor a_i)
    + preserve_scale * sum_j ||W' p_j - W p_j||^2      (preserved embeddings keep their output)

which is  W' = (lamb W + s_e sum W a_i c_i^T + s_p sum W p_j p_j^T)
              (lamb I + s_e sum c_i c_i^T + s_p sum p_j p_j^T)^-1.

The closed form is the authors'; which text-encoder vectors become the c_i, a_i and p_j is
``token_positions`` (the authors' two versions, and this project's first one):

- ``last`` (the authors' current code, rohitgandikota/unified-concept-editing
  ``trainscripts/uce_sd_erase.py``): one vector per prompt, at its last content token
  (``attention_mask.sum() - 2``, the token before the end token; the start token for ``''``).
- ``tail`` (their paper-era ``train-scripts/train_erase.py``, ``edit_model``): for each erased /
  anchor pair, the positions from each prompt's last word to the end of the padded sequence,
  aligned from there and cut to a common length (an empty anchor is the prompt ``' '``); the
  preserved set is ``''`` plus the preserved prompts, every position of each, and the preserve
  scale defaults to ``max(0.1, 1 / len(preserved set))``.
- ``all`` (this project's first version, kept for the toy checkpoints): every position of every
  prompt, erased onto anchored position by position, preserved prompts at every position, no
  empty prompt.
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError
from harness.families import family_of_pipeline
from harness.methods import AuthorsInputs, MethodInfo
from harness.methods.common import ConceptPrompts, cross_attention_kv, denoiser, text_embeddings

TOKEN_POSITIONS = ("last", "tail", "all")
PRESETS = {
    # the authors' current script's defaults (erase_scale 1, preserve_scale 1, lamb 0.5);
    # preserve_scale None = the variant's default (1; tail: the paper-era rule, see resolve)
    "paper": {"token_positions": "last", "erase_scale": 1.0, "preserve_scale": None, "lamb": 0.5},
    # the committed toy checkpoints (the variant that erases best on the toy world's templates)
    "toy": {"token_positions": "all", "erase_scale": 1.0, "preserve_scale": None, "lamb": 0.5},
}
DISPLAY = {"last": "UCE", "tail": "UCE (paper-era tail tokens)", "all": "UCE (all-token)"}

INFO = MethodInfo(
    name="uce",
    module=__name__,
    paper="https://arxiv.org/abs/2308.14761",
    code="https://github.com/rohitgandikota/unified-concept-editing",
    presets=PRESETS,
    # the all-token variant, which erases best on the toy templates (README's sweep)
    toy_params={"token_positions": "all", "erase_scale": 1.0, "preserve_scale": 1.0, "lamb": 0.5},
    committed_toy=True,
    tolerance="closed_form",
    fidelity_params={"token_positions": "all"},  # records made before the parameter existed ran the all-token variant
    fidelity_preset=True,
    needs=frozenset({"cross_attention"}),
    # trainscripts/uce_sd_erase.py at 28c81ed: --edit_concepts is the concept phrase itself
    # (--expand_prompts false by default), the guide defaults to '' for objects and 'art' for art
    # styles; nothing is preserved by default, the README's art command preserves other artists
    authors_inputs=AuthorsInputs(templates={"style": ("{}",), "object": ("{}",)}, anchor={"style": "art", "object": ""},
                                 preserve={"style": "others", "object": "none"},
                                 source="rohitgandikota/unified-concept-editing@28c81ed trainscripts/uce_sd_erase.py:97-152, README.md:34"),
)


def display_name(params: dict) -> str:
    """How a leaderboard names the variant (the authors' current one is plain UCE)."""
    return DISPLAY[params.get("token_positions", "all")]


def _flat(emb: torch.Tensor) -> torch.Tensor:
    return emb.reshape(-1, emb.shape[-1]).double()


@torch.no_grad()
def _encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Per-token embeddings (N, tokens, d) as the cross-attention reads them (the model family's
    ``encode_prompts``: SD-1.x's text encoder, SDXL's two encoders' penultimate states
    concatenated) and each prompt's last content index: the first tokenizer's attention mask
    sum - 2, as the authors' ``uce_sd_erase.py`` takes it on either model."""
    fam = family_of_pipeline(pipe)
    tokenizer = fam.text_encoders(pipe)[0][0]
    mask = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")["attention_mask"]
    return fam.encode_prompts(pipe, prompts), [int(m.sum()) - 2 for m in mask]


def _last(pipe, prompts: list[str]) -> torch.Tensor:
    if not prompts:
        return torch.zeros((0, 0), dtype=torch.float64)
    emb, last = _encode(pipe, prompts)
    return torch.stack([emb[i, j] for i, j in enumerate(last)]).double()


def _tail_pairs(pipe, erased: list[str], anchored: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    cs, as_ = [], []
    for old, new in zip(erased, anchored):
        emb, (fo, fn) = _encode(pipe, [old, new if new else " "])
        far, n = max(fo, fn), emb.shape[1]
        cs.append(emb[0, fo : n - max(0, far - fo)])
        as_.append(emb[1, fn : n - max(0, far - fn)])
    return torch.cat(cs).double(), torch.cat(as_).double()


def rows(pipe, concepts: list[ConceptPrompts], token_positions: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (erased c, anchor a, preserved p) vectors, one per row, for a token-position variant."""
    erased = [e for cp in concepts for e in cp.erased()]
    anchored = [a for cp in concepts for a in cp.anchored()]
    preserved = [p for cp in concepts for p in cp.preserved()]
    if token_positions == "all":
        c = torch.cat([_flat(text_embeddings(pipe, cp.erased())) for cp in concepts])
        a = torch.cat([_flat(text_embeddings(pipe, cp.anchored())) for cp in concepts])
        p = _flat(text_embeddings(pipe, preserved)) if preserved else c.new_zeros((0, c.shape[1]))
    elif token_positions == "last":
        c, a = _last(pipe, erased), _last(pipe, anchored)
        p = _last(pipe, preserved) if preserved else c.new_zeros((0, c.shape[1]))
    elif token_positions == "tail":
        c, a = _tail_pairs(pipe, erased, anchored)
        p = _flat(text_embeddings(pipe, [""] + preserved))
    else:
        raise ValueError(f"token_positions must be one of {', '.join(TOKEN_POSITIONS)}, not {token_positions!r}")
    return c, a, p


def resolve(params: dict, concepts: list[ConceptPrompts]) -> dict:
    """The parameters as run: ``preserve_scale`` None means the variant's default (tail: the
    paper-era max(0.1, 1 / len(preserved set)); otherwise 1)."""
    out = dict(params)
    if out.get("token_positions", "all") not in TOKEN_POSITIONS:
        raise HarnessError(f"--param token_positions: must be one of {', '.join(TOKEN_POSITIONS)}, not {out['token_positions']!r}")
    if out.get("preserve_scale") is None:
        n = 1 + sum(len(cp.preserved()) for cp in concepts)
        out["preserve_scale"] = max(0.1, 1 / n) if out.get("token_positions") == "tail" else 1.0
    return out


@torch.no_grad()
def erase(
    pipe,
    concepts: list[ConceptPrompts],
    erase_scale: float = 1.0,
    preserve_scale: float | None = 1.0,
    lamb: float = 0.5,
    token_positions: str = "all",
) -> dict[str, torch.Tensor]:
    """Edit the UNet in place; return the changed tensors (UNet state-dict names)."""
    if token_positions not in TOKEN_POSITIONS:
        raise ValueError(f"token_positions must be one of {', '.join(TOKEN_POSITIONS)}, not {token_positions!r}")
    preserve_scale = resolve({"preserve_scale": preserve_scale, "token_positions": token_positions}, concepts)["preserve_scale"]
    c, a, p = (x.cpu() for x in rows(pipe, concepts, token_positions))
    return edit_kv(denoiser(pipe), c, a, p, erase_scale, preserve_scale, lamb, family=family_of_pipeline(pipe))


@torch.no_grad()
def edit_kv(unet, c: torch.Tensor, a: torch.Tensor, p: torch.Tensor, erase_scale: float, preserve_scale: float, lamb: float,
            family=None) -> dict[str, torch.Tensor]:
    """The closed form above on every cross-attention K/V projection of ``unet`` (as ``family``
    names them; None: the default family's names), in place, with rows c (erased inputs), a
    (anchor inputs, mapped by the current W) and p (preserved inputs), float64 on the CPU;
    returns the new weights by UNet state-dict name (RECE reuses this). Every projection must
    read the rows' width (SDXL: the 2048-wide concatenated embedding)."""
    d = c.shape[1]
    gram = lamb * torch.eye(d, dtype=torch.float64) + erase_scale * c.T @ c + preserve_scale * p.T @ p
    gram_inv = torch.linalg.inv(gram)
    changed: dict[str, torch.Tensor] = {}
    for name, lin in cross_attention_kv(unet, family).items():
        if lin.weight.shape[1] != d:
            raise HarnessError(f"uce: cross-attention {name} reads {lin.weight.shape[1]}-wide inputs, the text embeddings are {d} wide")
        w = lin.weight.double().cpu()
        rhs = lamb * w + erase_scale * (w @ a.T) @ c + preserve_scale * (w @ p.T) @ p
        new = (rhs @ gram_inv).to(device=lin.weight.device, dtype=lin.weight.dtype)
        lin.weight.copy_(new)
        changed[f"{name}.weight"] = new.detach().cpu().clone()
    return changed
