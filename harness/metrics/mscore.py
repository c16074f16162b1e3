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

from ..errors import HarnessError
from ..hashing import sha256_bytes
from . import Measurement, MetricInfo
from .integrity import forget_mask

METRICS = {"mscore": MetricInfo("M-Score", False, "mean max cosine to reference images of the target concept, forget prompts")}


def m_score(gen: np.ndarray, ref: np.ndarray) -> float:
    g = gen / np.linalg.norm(gen, axis=1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    return float((g @ r.T).max(axis=1).mean())


def toy_references(target, n: int, seed: int) -> np.ndarray:
    from ..toy import world

    if target.kind == "style" and target.concept in world.STYLES:
        return world.reference_images(None, target.concept, n, seed)
    if target.kind == "object" and target.concept in world.OBJECTS:
        return world.reference_images(target.concept, None, n, seed)
    raise HarnessError(f"M-Score: the toy world has no {target.kind} {target.concept!r}")


def compute(name: str, run, target, params: dict) -> Measurement:
    if (run.suite.scorer.backend if run.suite.scorer else None) != "toy":
        raise HarnessError("M-Score with CLIP references needs a reference folder (params.references); only the toy backend is wired here")
    from .features import toy_embeddings

    n, seed = int(params.get("references", 200)), int(params.get("reference_seed", 2024))
    refs = toy_references(target, n, seed)
    ref_f = toy_embeddings(list(refs))
    idx = np.flatnonzero(forget_mask(run, target))
    if not len(idx):
        raise HarnessError(f"M-Score: no forget prompts for {target.concept!r}")
    value = m_score(toy_embeddings([run.images["unlearned"][i] for i in idx]), ref_f)
    base = m_score(toy_embeddings([run.images["base"][i] for i in idx]), ref_f)
    return Measurement(value, base, {"embedding": "toy classifier penultimate", "references": n, "reference_seed": seed,
                                     "reference_sha256": sha256_bytes(refs.tobytes()), "images": int(len(idx))})
