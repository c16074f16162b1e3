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


def m_scores(gen: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per generated image: max over references of the cosine (M is their mean)."""
    g = gen / np.linalg.norm(gen, axis=1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    return (g @ r.T).max(axis=1)


def m_score(gen: np.ndarray, ref: np.ndarray) -> float:
    return float(m_scores(gen, ref).mean())


def toy_references(target, n: int, seed: int) -> np.ndarray:
    from ..toy import world

    if target.kind == "style" and target.concept in world.STYLES:
        return world.reference_images(None, target.concept, n, seed)
    if target.kind == "object" and target.concept in world.OBJECTS:
        return world.reference_images(target.concept, None, n, seed)
    raise HarnessError(f"M-Score: the toy world has no {target.kind} {target.concept!r}")


def reference_folder(run, spec: dict, what: str) -> tuple[list[np.ndarray], str]:
    """Images of a reference folder inside the repository, pinned by its folder sha256."""
    from PIL import Image

    from ..hashing import sha256_tree
    from ..spec import inside

    if isinstance(spec, dict) and spec.get("hub") and spec.get("sha256"):  # a hub folder at a commit (harness/hub.py)
        from ..hub import pinned_path

        folder = pinned_path(run.root, spec, what, folder=True)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise HarnessError(f"{what}.hub: the folder holds no images")
        return [np.asarray(Image.open(f).convert("RGB")) for f in files], spec["sha256"]
    if not isinstance(spec, dict) or not spec.get("path") or not spec.get("sha256"):
        raise HarnessError(f"{what}: needs {{path, sha256}} of a reference image folder")
    folder = inside(run.root, spec["path"], f"{what}.path")
    if not folder.is_dir():
        raise HarnessError(f"{what}.path: {spec['path']}: no such folder")
    got = sha256_tree(folder)
    if got != spec["sha256"]:
        raise HarnessError(f"{what}.sha256: {spec['path']} has sha256 {got}, expected {spec['sha256']}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise HarnessError(f"{what}.path: {spec['path']} holds no images")
    return [np.asarray(Image.open(f).convert("RGB")) for f in files], got


def clip_embeddings(images: list[np.ndarray], model: str, revision: str | None) -> np.ndarray:
    import torch

    from .clipscore import load_clip

    clip, proc, _ = load_clip(model, revision)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 32):
            pix = proc(images=list(images[i : i + 32]), return_tensors="pt")["pixel_values"]
            out.append(clip.visual_projection(clip.vision_model(pixel_values=pix).pooler_output).numpy())
    return np.concatenate(out).astype(np.float64)


def compute(name: str, run, target, params: dict) -> Measurement:
    idx = np.flatnonzero(forget_mask(run, target))
    if not len(idx):
        raise HarnessError(f"M-Score: no forget prompts for {target.concept!r}")
    gen_u = [run.images["unlearned"][i] for i in idx]
    gen_b = [run.images["base"][i] for i in idx]
    if params.get("references_by_concept"):  # real models: CLIP image embeddings vs a pinned folder
        from ..spec import inside

        refs_spec = params["references_by_concept"].get(target.concept)
        if refs_spec is None:
            raise HarnessError(f"M-Score: params.references_by_concept has no folder for {target.concept!r}")
        refs, ref_sha = reference_folder(run, refs_spec, f"M-Score references of {target.concept!r}")
        model, revision = params.get("model"), params.get("revision")
        if not model:
            raise HarnessError("M-Score: params.model (CLIP, with params.revision for a hub id) is required")
        ref = model if revision else str(inside(run.root, model, "M-Score params.model"))
        emb = lambda ims: clip_embeddings(ims, ref, revision)
        ref_f = emb(refs)
        details = {"embedding": f"CLIP image embedding {model}@{revision}", "references": len(refs), "reference_sha256": ref_sha}
    else:  # the toy world: classifier features vs procedural references
        from .features import toy_embeddings

        n, seed = int(params.get("references", 200)), int(params.get("reference_seed", 2024))
        refs = toy_references(target, n, seed)
        emb = toy_embeddings
        ref_f = emb(list(refs))
        details = {"embedding": "toy classifier penultimate", "references": n, "reference_seed": seed, "reference_sha256": sha256_bytes(refs.tobytes())}
    from ..stats import item_scores

    per_u, per_b = m_scores(emb(gen_u), ref_f), m_scores(emb(gen_b), ref_f)
    return Measurement(float(per_u.mean()), float(per_b.mean()), {**details, "images": int(len(idx))}, scores=item_scores(run, idx, per_u, per_b))
