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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from harness.store.fsutil import atomic_write
from harness.store.hashing import canonical_json, sha256_bytes

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
    image_format: str = "png"  # what the scorer sees: png (lossless) or jpeg (decoded JPEG pixels)
    jpeg_quality: int | None = None

    def key(self) -> str:
        d = asdict(self)
        if d["image_format"] == "png":  # png keys are what they were before the setting existed
            del d["image_format"], d["jpeg_quality"]
        return sha256_bytes(canonical_json({**d, "v": GENERATION_VERSION}).encode())


def saved_form(job: Job, image: np.ndarray) -> np.ndarray:
    """The image as the suite's ``image_format`` leaves it: unchanged for png; for jpeg the
    pixels of a baseline JPEG at ``jpeg_quality`` written and read back by PIL (UnlearnCanvas
    saves its samples as ``.jpg`` with PIL's defaults and classifies the files). The cache keeps
    these decoded pixels losslessly, under a key that names the format."""
    if job.image_format == "png":
        return image
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(job.jpeg_quality or 75))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


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

        meta = self._sidecar(job)
        if meta is None:
            return None
        try:
            data = self._paths(job.key())[0].read_bytes()
        except (OSError, ValueError):
            return None
        if meta.get("png_sha256") != sha256_bytes(data):
            return None
        try:
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), list(meta.get("flags", []))
        except Exception:  # PIL raises several types for a damaged PNG
            return None

    def _sidecar(self, job: Job) -> dict | None:
        """The job's sidecar, only when it describes this very job: its ``key`` and ``job`` fields
        must equal the job asked for (a slot holding another job's PNG with that job's own sidecar,
        e.g. planted by a pull request, is a miss and the image is made again). Symlinked or
        non-regular slots are misses too."""
        import os
        import stat

        png, side = self._paths(job.key())
        try:
            for p in (png, side):
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    return None
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != job.key() or meta.get("job") != asdict(job):
            return None
        if meta.get("generation_version") != GENERATION_VERSION or not isinstance(meta.get("flags", []), list):
            return None
        return meta

    def find_png_sha256(self, wanted: set[str]) -> dict[str, Path]:
        """png sha256 -> the cached PNG's path, for each of ``wanted`` that some sidecar names
        (found by scanning the sidecars; regular files only). The caller checks the bytes against
        the sha256 before using them: a sidecar only says what its PNG should hash to."""
        import os
        import stat

        found: dict[str, Path] = {}
        if not wanted or not self.root.is_dir():
            return found
        for side in sorted(self.root.glob("*/*.json")):
            try:
                if not stat.S_ISREG(os.lstat(side).st_mode):
                    continue
                sha = json.loads(side.read_text(encoding="utf-8")).get("png_sha256")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(sha, str) and sha in wanted and sha not in found:
                found[sha] = side.with_suffix(".png")
        return found

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

    def seconds(self, job: Job) -> float | None:
        """The seconds its sidecar says the job's image took to generate (None: unknown)."""
        try:
            v = json.loads(self._paths(job.key())[1].read_text()).get("seconds")
        except (OSError, ValueError):
            return None
        return float(v) if isinstance(v, (int, float)) and v >= 0 else None

    def png_sha256(self, job: Job) -> str | None:
        """The sha256 of the job's cached PNG, from its sidecar (None when it is not cached)."""
        meta = self._sidecar(job)
        return meta.get("png_sha256") if meta else None


def set_scheduler(pipe, name: str) -> None:
    """Switch the pipeline to the suite's scheduler (``ddim``, ``pndm``, ...), as its model family does."""
    from harness.families import family_of_pipeline

    family_of_pipeline(pipe).set_scheduler(pipe, name)


def initial_latents(pipe, seeds: list[int], height: int, width: int):
    """One CPU generator per image: identical noise whatever the batch, device or model."""
    from harness.families import family_of_pipeline

    return family_of_pipeline(pipe).initial_latents(pipe, seeds, height, width)


def run_batch(pipe, jobs: list[Job]):
    """Generate one batch of jobs sharing settings; returns the float images in [0, 1] (checked
    for non-finite values) and their uint8 (N, H, W, 3) form."""
    import torch

    from harness.families import family_of_pipeline

    fam = family_of_pipeline(pipe)
    j0 = jobs[0]
    fam.set_scheduler(pipe, j0.scheduler)
    device, dtype = fam.device_dtype(pipe)
    latents = fam.initial_latents(pipe, [j.seed for j in jobs], j0.height, j0.width).to(device=device, dtype=dtype)
    gens = [torch.Generator("cpu").manual_seed(j.seed + 1) for j in jobs]  # eta > 0 noise
    kwargs = {"eta": j0.eta} if "eta" in _step_params(fam.scheduler(pipe)) else {}
    with torch.inference_mode():
        images = fam.generate(pipe, jobs, latents, gens, kwargs)
    imgs = np.asarray(images, dtype=np.float32)
    return imgs, np.round(np.clip(np.nan_to_num(imgs, nan=0.0), 0, 1) * 255).astype(np.uint8)  # NaN is flagged by the caller


def _step_params(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


@dataclass
class RunStats:
    """How one suite's images were made, filled in by the executors and recorded in the suite:
    batches (local) or Ray tasks run, task retries, CUDA out-of-memory back-offs and the batch
    size they left, and what the pipelines that ran looked like."""

    tasks: int = 0
    retries: int = 0
    oom_backoffs: int = 0
    batch_cap: int | None = None  # batch size after back-off (None: no back-off happened)
    attention: set = field(default_factory=set)  # attention processor class names of the UNets
    channels_last: bool = False
    compiled: bool = False
    nodes: set = field(default_factory=set)  # Ray node ids that ran tasks

    def note_pipeline(self, info: dict) -> None:
        self.attention |= set(info.get("attention", ()))
        self.channels_last |= bool(info.get("channels_last"))
        self.compiled |= bool(info.get("compiled"))


def group_indices(jobs: list[Job]) -> list[list[int]]:
    """Indices of the jobs that can share one batched pipeline call, in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault(settings_key(j), []).append(i)
    return list(groups.values())


def run_chunks(pipe, jobs: list[Job], batch_size: int, runner, stats: RunStats):
    """Run jobs that share settings in batches; yields ``(start, raw, images)`` per batch.

    On CUDA out-of-memory the batch is halved and the same jobs retried (down to 1, then the
    error stands); the smaller size stays for the rest of the suite (``stats.batch_cap``). Each
    image's noise comes from its own seed, so a back-off never changes an image's noise."""
    import torch

    size = max(1, min(batch_size, stats.batch_cap or batch_size))
    s = 0
    while s < len(jobs):
        chunk = jobs[s : s + size]
        oom = False
        try:
            raw, imgs = runner(pipe, chunk)
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            oom = True  # retried outside the handler, so the failed batch's tensors are freed first
        if oom:
            size = max(1, size // 2)
            stats.oom_backoffs += 1
            stats.batch_cap = size
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        yield s, raw, imgs
        s += len(chunk)


def store(cache: ImageCache, job: Job, raw, image: np.ndarray, seconds: float | None = None) -> list[str]:
    """Write one generated image to the cache with its flags (non-finite output, constant image)
    and, when known, the seconds it took (its batch's wall time / batch size)."""
    flags = []
    if not np.isfinite(raw).all():
        flags.append("non-finite")
    if image.max() == image.min():
        flags.append("constant image")
    cache.put(job, image, {"flags": flags, **({"seconds": round(seconds, 5)} if seconds is not None else {})})
    return flags


class LocalExecutor:
    """Generation in this process (the default): the pipeline loads here, once, and only when
    some job is not cached."""

    name = "local"

    def placement(self, device: str, dtype: str, compile: bool = False):
        from harness.families.sd1 import Placement

        return Placement.choose(device, dtype, compile)

    def record(self, stats: RunStats) -> dict:
        return {"name": self.name, "tasks": stats.tasks, "retries": stats.retries}

    def close(self) -> None:
        pass

    def run(self, jobs: list[Job], pipe, cache: ImageCache, batch_size: int, runner, stats: RunStats, advance=lambda n: None,
            pipelines=None) -> dict:
        """Make the (uncached) jobs; returns ``{index: (image, flags)}`` in the order they ran.
        A ``PipelineRecipe`` is loaded through ``pipelines`` (``families.sd1.Pipelines``)."""
        from harness.families import is_pipeline
        from harness.families.sd1 import PipelineRecipe, Pipelines, describe_pipeline

        out: dict[int, tuple[np.ndarray, list[str]]] = {}
        if not jobs:
            return out
        if isinstance(pipe, PipelineRecipe):
            pipe = (pipelines if pipelines is not None else Pipelines()).load(pipe)
        elif callable(pipe) and not is_pipeline(pipe):  # a loader, not a pipeline
            pipe = pipe()

        stats.note_pipeline(describe_pipeline(pipe))
        import time

        for idxs in group_indices(jobs):
            t0 = time.perf_counter()
            for start, raw, imgs in run_chunks(pipe, [jobs[i] for i in idxs], batch_size, runner, stats):
                stats.tasks += 1
                each = (time.perf_counter() - t0) / max(1, len(imgs))
                for i, r, im in zip(idxs[start : start + len(imgs)], raw, imgs):
                    # C-contiguous like an image read back from the cache: the same bytes in the same
                    # layout, so scores (convolutions pick kernels by memory layout) do not depend on
                    # whether an image was just made or came from the cache.
                    im = np.ascontiguousarray(saved_form(jobs[i], im))
                    out[i] = (im, store(cache, jobs[i], r, im, each))
                advance(len(imgs))
                t0 = time.perf_counter()
        return out


def generate(pipe, jobs: list[Job], cache: ImageCache, batch_size: int = 8, progress: bool = True, desc: str = "generate", runner=None,
             executor=None, stats: RunStats | None = None, pipelines=None) -> tuple[list[np.ndarray], dict]:
    """Images for all jobs, in order; only the jobs not in the cache are run.

    ``pipe`` is a ``families.sd1.PipelineRecipe`` (loaded only if some job is not cached, so a warm
    re-run loads no model: here through ``pipelines``, a ``families.sd1.Pipelines`` that shares what
    is in memory; on Ray by each worker), or, for the local executor, a pipeline or a function
    that loads one. ``runner(pipe, jobs)`` makes one batch (default ``run_batch``; attacks pass
    their own). ``executor`` runs the missing jobs (default ``LocalExecutor``;
    ``harness.run.ray_executor.RayExecutor`` needs a recipe); ``stats`` collects how they ran.
    ``progress``: True for a tqdm bar, or a function ``(desc, jobs) -> object with update(n)
    and close()`` that shows it some other way.

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
    executor = executor or LocalExecutor()
    stats = stats if stats is not None else RunStats()
    if callable(progress):  # the caller's own display (the pytest plugin's terminal line): progress(desc, jobs to make)
        bar = progress(desc, [jobs[i] for i in todo])
    else:
        bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress or not todo, leave=False)
    made = executor.run([jobs[i] for i in todo], pipe, cache, batch_size, runner or run_batch, stats, bar.update, pipelines=pipelines)
    bar.close()
    for k, (im, flags) in made.items():
        i = todo[k]
        if flags:
            report["flagged"].append({"prompt": jobs[i].prompt, "seed": jobs[i].seed, "flags": flags})
        images[i] = im
    # what these images cost to generate, whenever that was (the sidecars keep it): a warm re-run
    # reports the generation time, not its own near-zero seconds; None when some image's is unknown
    spent = [cache.seconds(j) for j in jobs]
    if jobs and all(x is not None for x in spent):  # omitted when unknown (e.g. Ray tasks do not time their images)
        report["generation_seconds"] = round(sum(spent), 3)
    return images, report
