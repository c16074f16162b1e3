"""CLIP score: prompt alignment, 100 * max(cos(image embedding, prompt embedding), 0), averaged
over the retain prompts' images (all images when prompts carry no label of the target's kind),
beside the base model's value.

Computed with transformers' CLIPModel directly (vision / text towers and their projections):
torchmetrics' CLIPScore breaks with transformers 5. The model is pinned by hub id + revision in
the suite (``params.model``, ``params.revision``; ViT-L/14 in the real suites, since papers using
ViT-B/32 or B/16 get other scales), or a folder inside the repository.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from pydantic import Field

from harness.errors import HarnessError
from harness.metrics import Measurement, MetricInfo
from harness.metrics.common import MetricParams


class Params(MetricParams):
    model: str | None = Field(default=None, description="CLIP: a hub id (with revision) or a folder in the repository")
    revision: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$", description="the hub id's commit")


METRICS = {"clip_score": MetricInfo("CLIP-score", True, "100 * max(cos(image, prompt), 0) with CLIP, retain prompts", params=Params,
                                      # the power analysis counts every prompt for it (its n at most that)
                                      prompts="all")}


@lru_cache(maxsize=2)
def load_clip(model: str, revision: str | None):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    if revision:  # hub id @ commit: the Hugging Face cache's snapshot, fetched when online, verified (harness/store/hub.py)
        from harness.store.hub import model_snapshot

        model, revision = str(model_snapshot(model, revision, what="CLIP model")), None
    try:
        kw: dict = {"revision": revision} if revision else {}
        return (CLIPModel.from_pretrained(model, use_safetensors=True, **kw).eval(),
                CLIPImageProcessor.from_pretrained(model, **kw), CLIPTokenizer.from_pretrained(model, **kw))
    except OSError as e:
        raise HarnessError(f"CLIP score: could not load {model}@{revision}: {str(e).splitlines()[0][:200]}") from None


def clip_scores(images: list[np.ndarray], prompts: list[str], model: str, revision: str | None = None, batch: int = 32) -> np.ndarray:
    import torch

    clip, proc, tok = load_clip(model, revision)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            pix = proc(images=list(images[i : i + batch]), return_tensors="pt")["pixel_values"]
            t = tok(prompts[i : i + batch], padding=True, truncation=True, max_length=tok.model_max_length, return_tensors="pt")
            img = clip.visual_projection(clip.vision_model(pixel_values=pix).pooler_output)
            txt = clip.text_projection(clip.text_model(input_ids=t.input_ids, attention_mask=t.attention_mask).pooler_output)
            cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
            out.append((100 * cos.clamp(min=0)).numpy())
    return np.concatenate(out).astype(np.float64)


def compute(name: str, run, target, params) -> Measurement:
    from harness.spec import inside

    p = Params.of(params, "CLIP score params")
    model, revision = p.model, p.revision
    if not model:
        raise HarnessError("CLIP score: the suite must pin params.model (a hub id with params.revision, or a folder in the repository)")
    # A hub id is pinned by its revision; without one, the model is a folder inside the repository.
    ref = model if revision else str(inside(run.root, model, "clip_score params.model"))
    labels = run.labels()
    keep = [i for i in range(len(run.items)) if labels.get(target.kind, [None] * len(run.items))[i] != target.concept]
    if not keep:
        raise HarnessError(f"CLIP score: no retain prompts for {target.concept!r}")
    prompts = [run.items[i][0].text for i in keep]
    value = clip_scores([run.images["unlearned"][i] for i in keep], prompts, ref, revision)
    base = clip_scores([run.images["base"][i] for i in keep], prompts, ref, revision)
    from harness.stats.intervals import item_scores

    return Measurement(float(value.mean()), float(base.mean()), {"model": model, "revision": revision, "images": len(keep)},
                       scores=item_scores(run, keep, value, base))
