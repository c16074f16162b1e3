"""Deterministic, batched generation with a content-addressed image cache.

A job is everything that determines one image: prompt, negative prompt, seed, the generation
settings and the model's fingerprint. Its key is the sha256 of the canonical job, and the image
is stored as ``<cache>/<key[:2]>/<key>.png`` beside a JSON sidecar holding the job and the PNG's
sha256. Writes are atomic (temp file + rename), so an interrupted run never leaves a half image
that a later run would trust, and a damaged PNG is caught by its sidecar hash and regenerated.

Matched pairs: the initial latents of every image come from its own CPU ``torch.Generator``
seeded with the job's seed, so base and unlearned images share their noise, and the batch size
never changes an image's noise.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .fsutil import atomic_write
from .hashing import canonical_json, sha256_bytes

GENERATION_VERSION = "1"  # bump when the way an image is produced from a job changes


@dataclass(frozen=True)
class Job:
    prompt: str
    negative_prompt: str
    seed: int
    scheduler: str
    steps: int
    guidance: float
    height: int
    width: int
    eta: float
    dtype: str
    model: str  # fingerprint of the weights

    def key(self) -> str:
        return sha256_bytes(canonical_json({**asdict(self), "v": GENERATION_VERSION}).encode())


def settings_key(job: Job) -> tuple:
    """Jobs that can share one batched pipeline call."""
    return (job.scheduler, job.steps, job.guidance, job.height, job.width, job.eta, job.dtype, job.model)


class ImageCache:
    """PNG + JSON sidecar per job key, written atomically, verified on read."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / key[:2]
        return d / f"{key}.png", d / f"{key}.json"

    def get(self, job: Job) -> tuple[np.ndarray, list[str]] | None:
        """The cached image (uint8 HxWx3) and its flags, or None if absent or damaged."""
        from PIL import Image

        png, side = self._paths(job.key())
        try:
            meta = json.loads(side.read_text())
            data = png.read_bytes()
        except (OSError, ValueError):
            return None
        if meta.get("png_sha256") != sha256_bytes(data):
            return None
        try:
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), list(meta.get("flags", []))
        except Exception:  # PIL raises several types for a damaged PNG
            return None

    def put(self, job: Job, image: np.ndarray, extra: dict | None = None) -> None:
        from PIL import Image

        png, side = self._paths(job.key())
        png.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        data = buf.getvalue()
        atomic_write(png, data)
        meta = {"job": asdict(job), "key": job.key(), "png_sha256": sha256_bytes(data), "generation_version": GENERATION_VERSION, **(extra or {})}
        atomic_write(side, (canonical_json(meta) + "\n").encode())

    def path(self, job: Job) -> Path:
        return self._paths(job.key())[0]


SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "ddpm": "DDPMScheduler",
}


def set_scheduler(pipe, name: str) -> None:
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    if type(pipe.scheduler) is not cls:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


def initial_latents(pipe, seeds: list[int], height: int, width: int):
    """One CPU generator per image: identical noise whatever the batch, device or model."""
    import torch

    scale = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, height // scale, width // scale)
    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])


def run_batch(pipe, jobs: list[Job]):
    """Generate one batch of jobs sharing settings; returns the float images in [0, 1] (checked
    for non-finite values) and their uint8 (N, H, W, 3) form."""
    import torch

    j0 = jobs[0]
    set_scheduler(pipe, j0.scheduler)
    device = pipe.unet.device
    latents = initial_latents(pipe, [j.seed for j in jobs], j0.height, j0.width).to(device=device, dtype=pipe.unet.dtype)
    gens = [torch.Generator("cpu").manual_seed(j.seed + 1) for j in jobs]  # eta > 0 noise
    kwargs = {"eta": j0.eta} if "eta" in _step_params(pipe.scheduler) else {}
    with torch.inference_mode():
        out = pipe(
            prompt=[j.prompt for j in jobs],
            negative_prompt=[j.negative_prompt for j in jobs],
            num_inference_steps=j0.steps,
            guidance_scale=j0.guidance,
            height=j0.height,
            width=j0.width,
            latents=latents,
            generator=gens,
            output_type="np",
            **kwargs,
        )
    imgs = np.asarray(out.images, dtype=np.float32)
    return imgs, np.round(np.clip(np.nan_to_num(imgs, nan=0.0), 0, 1) * 255).astype(np.uint8)  # NaN is flagged by the caller


def _step_params(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


def generate(pipe, jobs: list[Job], cache: ImageCache, batch_size: int = 8, progress: bool = True, desc: str = "generate", runner=None) -> tuple[list[np.ndarray], dict]:
    """Images for all jobs, in order; only the jobs not in the cache are run.

    ``pipe`` is a pipeline or a function that loads one: it is called only if some job is not
    cached, so a warm re-run loads no model. ``runner(pipe, jobs)`` makes one batch (default
    ``run_batch``; attacks pass their own).

    Returns the images and a report: how many were generated / cached and which were flagged
    (non-finite output, or an all-black / constant image)."""
    from tqdm.auto import tqdm

    hits = [cache.get(j) for j in jobs]
    images: list[np.ndarray | None] = [h[0] if h else None for h in hits]
    todo = [i for i, h in enumerate(hits) if h is None]
    report = {"generated": len(todo), "cached": len(jobs) - len(todo), "flagged": []}
    for j, h in zip(jobs, hits):
        if h and h[1]:
            report["flagged"].append({"prompt": j.prompt, "seed": j.seed, "flags": h[1]})
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        groups.setdefault(settings_key(jobs[i]), []).append(i)
    runner = runner or run_batch
    if todo and callable(pipe) and not hasattr(pipe, "unet"):
        pipe = pipe()
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress or not todo, leave=False)
    for idxs in groups.values():
        for s in range(0, len(idxs), batch_size):
            chunk = idxs[s : s + batch_size]
            raw, imgs = runner(pipe, [jobs[i] for i in chunk])
            for i, r, im in zip(chunk, raw, imgs):
                flags = []
                if not np.isfinite(r).all():
                    flags.append("non-finite")
                if im.max() == im.min():
                    flags.append("constant image")
                if flags:
                    report["flagged"].append({"prompt": jobs[i].prompt, "seed": jobs[i].seed, "flags": flags})
                cache.put(jobs[i], im, {"flags": flags})
                images[i] = im
            bar.update(len(chunk))
    bar.close()
    return images, report
