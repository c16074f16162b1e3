"""UCE: Unified Concept Editing (Gandikota et al., WACV 2024), closed form.

Each cross-attention key/value projection W (out x d) is replaced by the minimiser of

    lamb * ||W' - W||^2
    + erase_scale    * sum_i ||W' c_i - W a_i||^2      (erased embedding c_i -> anchor a_i)
    + preserve_scale * sum_j ||W' p_j - W p_j||^2      (preserved embeddings keep their output)

which is  W' = (lamb W + s_e sum W a_i c_i^T + s_p sum W p_j p_j^T)
              (lamb I + s_e sum c_i c_i^T + s_p sum p_j p_j^T)^-1.

The embeddings are the text encoder's per-token outputs for every prompt of the concept (all
token positions, so the words after the concept, which a causal encoder also changes, are
mapped too); positions the concept does not affect map onto themselves and cost nothing.
"""

from __future__ import annotations

import torch

from .common import ConceptPrompts, cross_attention_kv, text_embeddings


def _flat(emb: torch.Tensor) -> torch.Tensor:
    return emb.reshape(-1, emb.shape[-1]).double()


@torch.no_grad()
def erase(
    pipe,
    concepts: list[ConceptPrompts],
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
    lamb: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Edit the UNet in place; return the changed tensors (UNet state-dict names)."""
    c = torch.cat([_flat(text_embeddings(pipe, cp.erased())) for cp in concepts])
    a = torch.cat([_flat(text_embeddings(pipe, cp.anchored())) for cp in concepts])
    preserved = [p for cp in concepts for p in cp.preserved()]
    p = _flat(text_embeddings(pipe, preserved)) if preserved else c.new_zeros((0, c.shape[1]))
    d = c.shape[1]
    gram = lamb * torch.eye(d, dtype=torch.float64) + erase_scale * c.T @ c + preserve_scale * p.T @ p
    gram_inv = torch.linalg.inv(gram)
    changed: dict[str, torch.Tensor] = {}
    for name, lin in cross_attention_kv(pipe.unet).items():
        w = lin.weight.double()
        rhs = lamb * w + erase_scale * (w @ a.T) @ c + preserve_scale * (w @ p.T) @ p
        new = (rhs @ gram_inv).to(lin.weight.dtype)
        lin.weight.copy_(new)
        changed[f"{name}.weight"] = new.detach().cpu().clone()
    return changed
