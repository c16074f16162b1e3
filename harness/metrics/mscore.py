"""M-Score (Forget-Me-Not, ConceptBench): how much generated images still resemble the concept.

    M = mean over generated images of max over reference images of cos(f(image), f(reference))

f is CLIP's image embedding for real models (ViT-L/14) and the toy classifier's penultimate
features on the toy world, whose reference images come from the procedural generator (any
image of the concept, the other factor varying). Computed on the forget prompts, beside the base
model's M: a forgotten concept scores lower than the base. The reference set's sha256 is
recorded. Lower is better for the target.
"""

from __future__ import annotations

import numpy as np

from pydantic import Field

from harness.errors import HarnessError
from harness.store.hashing import sha256_bytes
from harness.metrics import Measurement, MetricInfo
from harness.metrics.common import MetricParams, PinnedRef, forget_mask, reference_folder


class Params(MetricParams):
    references_by_concept: dict[str, PinnedRef] | None = Field(default=None, description="real models: concept -> pinned reference image folder")
    model: str | None = Field(default=None, description="CLIP model (hub id with revision, or a folder in the repository)")
    revision: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")
    references: int = Field(default=200, gt=0, description="toy world: procedural reference images")
    reference_seed: int = Field(default=2024, ge=0)


METRICS = {"mscore": MetricInfo("M-Score", False, "mean max cosine to reference images of the target concept, forget prompts",
                                params=Params, role="erasure", prompts="forget")}


def m_scores(gen: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per generated image: max over references of the cosine (M is their mean)."""
    g = gen / np.linalg.norm(gen, axis=1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    return (g @ r.T).max(axis=1)


def m_score(gen: np.ndarray, ref: np.ndarray) -> float:
    return float(m_scores(gen, ref).mean())


def toy_references(target, n: int, seed: int) -> np.ndarray:
    from harness.toy import world

    if target.kind == "style" and target.concept in world.STYLES:
        return world.reference_images(None, target.concept, n, seed)
    if target.kind == "object" and target.concept in world.OBJECTS:
        return world.reference_images(target.concept, None, n, seed)
    raise HarnessError(f"M-Score: the toy world has no {target.kind} {target.concept!r}")


def clip_embeddings(images: list[np.ndarray], model: str, revision: str | None) -> np.ndarray:
    import torch

    from harness.metrics.clipscore import load_clip

    clip, proc, _ = load_clip(model, revision)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 32):
            pix = proc(images=list(images[i : i + 32]), return_tensors="pt")["pixel_values"]
            out.append(clip.visual_projection(clip.vision_model(pixel_values=pix).pooler_output).numpy())
    return np.concatenate(out).astype(np.float64)


def compute(name: str, run, target, params) -> Measurement:
    p = Params.of(params, "M-Score params")
    idx = np.flatnonzero(forget_mask(run, target))
    if not len(idx):
        raise HarnessError(f"M-Score: no forget prompts for {target.concept!r}")
    gen_u = [run.images["unlearned"][i] for i in idx]
    gen_b = [run.images["base"][i] for i in idx]
    if p.references_by_concept:  # real models: CLIP image embeddings vs a pinned folder
        from harness.spec import inside

        refs_spec = p.references_by_concept.get(target.concept)
        if refs_spec is None:
            raise HarnessError(f"M-Score: params.references_by_concept has no folder for {target.concept!r}")
        refs, ref_sha = reference_folder(run, refs_spec, f"M-Score references of {target.concept!r}")
        model, revision = p.model, p.revision
        if not model:
            raise HarnessError("M-Score: params.model (CLIP, with params.revision for a hub id) is required")
        ref = model if revision else str(inside(run.root, model, "M-Score params.model"))
        emb = lambda ims: clip_embeddings(ims, ref, revision)
        ref_f = emb(refs)
        details = {"embedding": f"CLIP image embedding {model}@{revision}", "references": len(refs), "reference_sha256": ref_sha}
    else:  # the toy world: classifier features vs procedural references
        from harness.metrics.features import toy_embeddings

        n, seed = p.references, p.reference_seed
        refs = toy_references(target, n, seed)
        emb = toy_embeddings
        ref_f = emb(list(refs))
        details = {"embedding": "toy classifier penultimate", "references": n, "reference_seed": seed, "reference_sha256": sha256_bytes(refs.tobytes())}
    from harness.stats.intervals import item_scores

    per_u, per_b = m_scores(emb(gen_u), ref_f), m_scores(emb(gen_b), ref_f)
    return Measurement(float(per_u.mean()), float(per_b.mean()), {**details, "images": int(len(idx))}, scores=item_scores(run, idx, per_u, per_b))
