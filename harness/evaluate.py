"""One submission x one suite, end to end: jobs -> matched images -> scores -> metric records.

Usable without pytest (``Evaluator(...).run(sub, suite)``); the pytest plugin turns each record
into a test case. Data flows one way: specs -> pipelines -> jobs -> cached images -> scorer ->
metric values -> verdicts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import metrics
from . import stats as uncertainty  # harness.stats: intervals, verdicts ('stats' names the run's RunStats below)
from .errors import HarnessError
from .pins import suite_pins
from .generate import ImageCache, Job, LocalExecutor, RunStats, generate
from .hashing import sha256_file, sha256_json
from .models import PipelineRecipe, Placement, apply_checkpoint, checkpoint_file, load_base, model_fingerprints
from .spec import Prompt, Submission, Suite, TargetSpec, expand_prompts, load_suite
from .fidelity import choices as fidelity_choices

# Conventions this project chose where a paper is silent (recorded in every result).
CONVENTIONS = {
    "seeds": "each image's initial latents come from a CPU torch.Generator seeded with its seed; base and unlearned share them",
    "negative_prompt": "the suite's negative prompt (empty by default) for both models",
    "accuracy_averaging": "UA/IRA/CRA means are over classes",
    "unlearncanvas_sampling": "one sampler and per-image seeded noise for every method (UnlearnCanvas samples ESD/CA/SalUn with CompVis "
                              "DDIM under one global seed and UCE with diffusers LMS re-seeded per prompt): matched pairs instead",
}


@dataclass(frozen=True)
class Case:
    """One parametrized test: a metric of a suite for one target of a submission."""

    submission: str  # path of the submission YAML
    submission_name: str
    suite: str
    metric: str
    target: TargetSpec

    def id(self, with_submission: bool = False) -> str:
        label = metrics.info(self.metric).label
        core = f"{self.suite}::{label}::{self.target.concept}"
        return f"{self.submission_name}::{core}" if with_submission else core


def suite_path(root: Path, suite_id: str) -> Path:
    return root / "suites" / f"{suite_id}.yaml"


def resolve_suites(sub: Submission, root: Path) -> dict[str, Suite]:
    """The submission's suites, loaded: as declared, else every suite in ``suites/`` of the base
    model's world (toy or real) that applies to one of its target kinds."""
    if sub.suites:
        out = {}
        for sid in sub.suites:
            p = suite_path(root, sid)
            if not p.is_file():
                raise HarnessError(f"suites: no suite {sid!r} (expected {p.relative_to(root)})")
            out[sid] = load_suite(p)
        return out
    world = "toy" if sub.base_model.builtin == "toy" else "real"
    kinds = {t.kind for t in sub.targets}
    out = {}
    for p in sorted((root / "suites").glob("*.yaml")):
        suite = load_suite(p)
        if suite.world == world and kinds & set(suite.applies_to):
            out[suite.id] = suite
    if not out:
        raise HarnessError(f"suites: no {world} suite in suites/ applies to the targets ({', '.join(sorted(kinds))})")
    return out


def plan_cases(sub_path: str, sub: Submission, suites: dict[str, Suite], only: set[str] | None = None) -> list[Case]:
    """The cases of one submission over its resolved suites, from the specs alone (no model is
    loaded)."""
    cases = []
    for sid in suites:
        if only and sid not in only:
            continue
        suite = suites[sid]
        for target in sub.targets:
            if target.kind not in suite.applies_to:
                continue
            for m in suite.metrics:
                cases.append(Case(sub_path, sub.name, sid, m.name, target))
    return cases


def smoke_prompts(suite: Suite, prompts: list[Prompt], targets: list[TargetSpec]) -> list[Prompt]:
    """The smoke subset. Template sets keep, for each label, its first ``max_prompts`` values
    that are not targets, plus every target concept (so UA, IRA and CRA all stay defined);
    other sets keep their first ``max_prompts`` prompts."""
    n = suite.smoke.max_prompts if suite.smoke else None
    if not n:
        return prompts
    if suite.prompts.template is None:
        return prompts[:n]
    target_values = {(t.kind, t.concept) for t in targets}
    keep = {k: {t for kk, t in target_values if kk == k} | set([v for v in vs if (k, v) not in target_values][:n])
            for k, vs in suite.prompts.template.values.items()}
    return [p for p in prompts if all(p.labels.get(k) in vs for k, vs in keep.items())]


@dataclass
class SuiteRun:
    """Everything a metric needs: the suite, its (prompt, seed) items, both image sets and the
    scorer's predictions (computed once, shared by the metrics)."""

    suite: Suite
    items: list[tuple[Prompt, int]]
    images: dict[str, list]  # "base" / "unlearned" -> aligned uint8 images
    scorer: object
    efficiency: dict = field(default_factory=dict)  # measured / declared cost of the erasure
    attacked: dict = field(default_factory=dict)  # psi -> images aligned with items (None: not attacked)
    root: Path = Path(".")  # the repository, for metric files named by path
    _preds: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    memo: dict = field(default_factory=dict)  # work metrics share (e.g. features for FID and KID)
    prompt_attacks: dict = field(default_factory=dict)  # (kind, concept) -> prompt attack outcome (robustness)

    def labels(self) -> dict[str, list[str]]:
        keys = self.items[0][0].labels.keys() if self.items else []
        return {k: [p.labels[k] for p, _ in self.items] for k in keys}

    def predictions(self, which: str) -> dict[str, list[str]]:
        if which not in self._preds:
            self._preds[which] = self.scorer.predict(self.images[which])
        return self._preds[which]


SAMPLES = 8  # matched image pairs per suite recorded for the leaderboard


def sample_pairs(items: list[tuple[Prompt, int]], base_jobs: list[Job], unl_jobs: list[Job], targets: list[TargetSpec], cache: ImageCache, n: int = SAMPLES) -> list[dict]:
    """Up to ``n`` matched (base, unlearned) image pairs, each named by its PNG's sha256: one per
    prompt (its first seed), prompts of the targets first (up to half), then other prompts. The
    choice depends on the prompt texts alone (sha256 order), so it is the same on every run and
    for every submission with the same targets."""
    import re

    from .hashing import sha256_bytes

    concepts = {t.concept for t in targets}

    def names_target(p: Prompt) -> bool:
        if p.labels:
            return bool(concepts & set(p.labels.values()))
        return any(re.search(rf"\b{re.escape(c)}\b", p.text, re.IGNORECASE) for c in concepts)

    first: dict[str, int] = {}
    for i, (p, _) in enumerate(items):
        first.setdefault(p.text, i)
    order = sorted(first.values(), key=lambda i: sha256_bytes(items[i][0].text.encode()))
    tgt = [i for i in order if names_target(items[i][0])]
    other = [i for i in order if not names_target(items[i][0])]
    chosen = tgt[: n // 2]
    chosen += other[: n - len(chosen)]
    chosen += tgt[n // 2 :][: n - len(chosen)]
    out = []
    for i in sorted(chosen):
        b, u = cache.png_sha256(base_jobs[i]), cache.png_sha256(unl_jobs[i])
        if b and u:
            out.append({"prompt": items[i][0].text, "seed": items[i][1], "base": b, "unlearned": u, "target": names_target(items[i][0])})
    return out


def flag_error(value, n_flagged: int) -> str | None:
    """Why a metric record must be an ``error`` whatever its threshold says: its value is not a
    finite number, or some of the images it was computed from were flagged (non-finite output,
    a blank / constant image)."""
    import math

    if value is not None:
        try:
            finite = math.isfinite(float(value))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            return f"value {value!r} is not a finite number"
    if n_flagged:
        return f"{n_flagged} image(s) were flagged (non-finite output or a constant image): the value is not a measurement"
    return None


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "safetensors", "numpy", "pillow", "timm", "clean-fid", "torchmetrics", "unlearn-harness"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def native_size(sub: Submission, root: Path) -> int:
    """The base model's native image size, read from its configs (no weights loaded)."""
    import json

    from .models import base_dir

    d = base_dir(sub.base_model, root)
    if d is None:
        from .hub import pipeline_snapshot

        try:  # read from the Hugging Face cache when the snapshot is there
            d = pipeline_snapshot(sub.base_model.hub_id, sub.base_model.revision, download=False)
        except HarnessError:
            raise HarnessError("a hub base model needs the suite to set generation.height and generation.width (or its snapshot in the Hugging Face cache: unlearn fetch)") from None
    unet = json.loads((d / "unet" / "config.json").read_text())
    vae = json.loads((d / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


class Evaluator:
    """Runs suites for submissions; keeps the base pipeline and images across suites."""

    def __init__(self, root: Path, cache_dir: Path, device: str = "auto", allow_pickle: bool = False, smoke: bool = False, progress: bool = True,
                 executor=None, compile: bool = False):
        self.root = Path(root)
        self.cache = ImageCache(Path(cache_dir) / "images")
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.allow_pickle = allow_pickle
        self.smoke = smoke
        self.progress = progress
        self.executor = executor or LocalExecutor()  # LocalExecutor, or ray_executor.RayExecutor
        self.compile = compile
        self._results: dict[tuple[str, str], dict] = {}
        self._suites: dict[str, Suite] = {}
        self._suite_sha: dict[str, str] = {}
        self.attack_counter: dict = {}  # UNet calls of the prompt attacks (tests count them)

    def suite(self, suite_id: str) -> Suite:
        if suite_id not in self._suites:
            p = suite_path(self.root, suite_id)
            if not p.is_file():
                raise HarnessError(f"suite {suite_id!r}: no file {p.relative_to(self.root)}")
            # hashed when loaded, not when recorded: an edit during a long run must not be
            # recorded as the version that ran
            self._suite_sha[suite_id] = sha256_file(p)
            self._suites[suite_id] = load_suite(p)
        return self._suites[suite_id]

    def _jobs(self, suite: Suite, items: list[tuple[Prompt, int]], model: str, placement: Placement, size: int) -> list[Job]:
        g = suite.generation
        return [
            Job(prompt=p.text, negative_prompt=suite.prompts.negative_prompt, seed=seed, scheduler=g.scheduler, steps=(suite.smoke.steps if self.smoke and suite.smoke and suite.smoke.steps else g.steps),
                guidance=p.guidance if p.guidance is not None else g.guidance, height=g.height or size, width=g.width or size,
                eta=g.eta, dtype=placement.dtype, model=model,
                image_format=g.image_format, jpeg_quality=g.jpeg_quality if g.image_format == "jpeg" else None)
            for p, seed in items
        ]

    def _attack(self, suite, items, base_jobs, base_fp, unl_fp, base_pipe, unl_pipe, stats=None):
        """Partial-diffusion attacked images for the suite's attack metrics (psi grid and seeds
        from the first such metric's params), as cached generation jobs."""
        from dataclasses import replace
        from functools import partial

        from .attacks import attack_model_id, run_partial_batch

        specs = [m for m in suite.metrics if metrics.info(m.name).attack]
        if not specs:
            return {}, None
        params = specs[0].params
        psis = [float(p) for p in params.get("psi", (0.05, 0.15, 0.35, 0.55))]
        seeds = set(params.get("attack_seeds", sorted({s for _, s in items})[:2]))
        chosen = [i for i, (_, s) in enumerate(items) if s in seeds]
        loaded: list = []

        def pipes():  # both models, loaded once for the whole psi grid, only if something is missing
            if not loaded:
                unl = unl_pipe()  # may take over the base in memory: load the base after it
                loaded.append((base_pipe(), unl))
            return loaded[0]
        pipes.recipe = replace(unl_pipe.recipe, which="pair")  # what a Ray worker loads instead
        out, rep = {}, {"psi": psis, "seeds": sorted(seeds), "generated": 0, "cached": 0, "flagged": []}
        for psi in psis:
            jobs = [replace(base_jobs[i], model=attack_model_id(base_fp, unl_fp, psi)) for i in chosen]
            imgs, r = generate(pipes, jobs, self.cache, suite.generation.batch_size, self.progress, f"{suite.id} attack psi={psi:g}",
                               runner=partial(run_partial_batch, psi=psi), executor=self.executor, stats=stats)
            aligned = [None] * len(items)
            for i, im in zip(chosen, imgs):
                aligned[i] = im
            out[psi] = aligned
            for k in ("generated", "cached"):
                rep[k] += r[k]
            rep["flagged"] += r["flagged"]
            g_s = r.get("generation_seconds")  # sidecar seconds of these images (None: unknown)
            if g_s is None or rep.get("generation_seconds", 0) is None:
                rep["generation_seconds"] = None
            else:
                rep["generation_seconds"] = round(rep.get("generation_seconds", 0) + g_s, 3)
        return out, rep

    def _prompt_attacks(self, suite, items, sub, base_jobs, unl_jobs, base_imgs, unl_imgs, scorer, unl_pipe, base_fp, unl_fp):
        """Prompt attacks (UnlearnDiffAtk, Ring-A-Bell) for the suite's robustness metrics
        (attack and budget from the first such metric's params); found prompts are cached in
        ``<cache>/attacks/`` (``harness.attacks.runner``)."""
        specs = [m for m in suite.metrics if metrics.info(m.name).prompt_attack]
        if not specs:
            return {}
        from .attacks.runner import run_prompt_attacks
        from .attacks.common import text_encoder_fingerprint

        fps = {"unlearned": unl_fp, "text_encoder": text_encoder_fingerprint(sub, base_fp, unl_fp)}
        return run_prompt_attacks(suite, specs[0].params, items, sub.targets, base_jobs, unl_jobs, base_imgs, unl_imgs, scorer, unl_pipe, fps,
                                  self.cache_dir, self.root, self.progress, self.attack_counter)

    def run(self, sub_path: str, sub: Submission, suite_id: str) -> dict:
        """The suite's record: provenance + one metric record per (metric, target)."""
        key = (sub_path, suite_id)
        if key in self._results:
            return self._results[key]
        t0 = time.time()
        suite = self.suite(suite_id)
        g = suite.generation
        placement = self.executor.placement(self.device, g.dtype, self.compile)  # where the pipelines run
        stats = RunStats()
        prompts = expand_prompts(suite, self.root, self.cache_dir)
        if self.smoke:
            prompts = smoke_prompts(suite, prompts, sub.targets)
        seeds = (suite.smoke.seeds if self.smoke and suite.smoke and suite.smoke.seeds else g.seeds)
        items = [(p, s) for p in prompts for s in ([p.seed] if p.seed is not None else seeds)]
        if not items:
            raise HarnessError(f"suite {suite.id}: the prompt set is empty")
        base_fp, unl_fp = model_fingerprints(sub, self.root)
        ckpt = checkpoint_file(sub.checkpoint, self.root, self.cache_dir, self.allow_pickle)

        from .metrics.classifiers import load_scorer
        from .results import efficiency

        if any(metrics.info(m.name).needs_images for m in suite.metrics):
            size = native_size(sub, self.root) if not (g.height and g.width) else 0
            base_jobs = self._jobs(suite, items, base_fp, placement, size)
            unl_jobs = self._jobs(suite, items, unl_fp, placement, size)
            # Pipelines load only when some image is not cached (a warm re-run loads none), and the
            # unlearned one is made from the base already in memory when there is one.
            loaded: dict = {}

            def base_pipe():
                if "base" not in loaded:
                    loaded["base"] = load_base(sub.base_model, self.root, placement)
                return loaded["base"]

            def unl_pipe():
                if "unlearned" not in loaded:
                    base = loaded.pop("base", None) or load_base(sub.base_model, self.root, placement)
                    loaded["unlearned"] = apply_checkpoint(base, sub.checkpoint, ckpt, placement, self.allow_pickle)
                return loaded["unlearned"]

            recipe = PipelineRecipe(str(self.root.resolve()), sub.base_model, placement, "base", sub.checkpoint, str(self.cache_dir.resolve()), self.allow_pickle)
            base_pipe.recipe, unl_pipe.recipe = recipe, replace(recipe, which="unlearned")  # for Ray workers
            how = dict(executor=self.executor, stats=stats)
            base_imgs, base_rep = generate(base_pipe, base_jobs, self.cache, g.batch_size, self.progress, f"{suite.id} base", **how)
            unl_imgs, unl_rep = generate(unl_pipe, unl_jobs, self.cache, g.batch_size, self.progress, f"{suite.id} unlearned", **how)
            # The scorer runs here; with Ray the generation device may be one this machine lacks.
            score_device = placement.device if isinstance(self.executor, LocalExecutor) else Placement.choose("cpu" if placement.device == "cpu" else "auto").device
            scorer = load_scorer(suite.scorer, self.root, score_device) if suite.scorer else None
            attacked, attack_rep = self._attack(suite, items, base_jobs, base_fp, unl_fp, base_pipe, unl_pipe, stats)
            prompt_attacks = self._prompt_attacks(suite, items, sub, base_jobs, unl_jobs, base_imgs, unl_imgs, scorer, unl_pipe, base_fp, unl_fp)
        else:  # metrics of the submission alone (efficiency): nothing to generate
            base_jobs, base_imgs, unl_imgs, scorer = [], [], [], None
            base_rep = unl_rep = {"generated": 0, "cached": 0, "flagged": []}
            attacked, attack_rep = {}, None
            prompt_attacks = {}
        run = SuiteRun(suite, items, {"base": base_imgs, "unlearned": unl_imgs}, scorer, efficiency(sub, self.root), attacked, self.root,
                       prompt_attacks=prompt_attacks)
        flagged = {"base": base_rep["flagged"], "unlearned": unl_rep["flagged"]}
        records = []
        for m in suite.metrics:
            inf = metrics.info(m.name)
            th = m.parsed_threshold()
            for target in sub.targets:
                if target.kind not in suite.applies_to:
                    continue
                rec = {"suite": suite.id, "metric": m.name, "label": inf.label, "target": target.concept, "target_kind": target.kind,
                       "higher_is_better": inf.higher_is_better, "metric_version": inf.version,
                       "threshold": str(th) if th else None, "tolerance": m.tolerance}
                try:
                    meas = metrics.family(m.name).compute(m.name, run, target, m.params)
                except HarnessError as e:
                    rec.update(value=None, base_value=None, bound=None, verdict="error", error=str(e))
                    records.append(rec)
                    continue
                rec.update(value=meas.value, base_value=meas.base_value, details=meas.details)
                rec.update(uncertainty.uncertainty(meas, th, m.params))  # ci, delta_ci, margin_ci / ci_reason, scores
                if th is None:
                    rec.update(bound=None, verdict="info")
                else:
                    v, point = uncertainty.verdict(th, meas.value, meas.base_value, rec.get("margin_ci"))
                    rec.update(bound=th.bound(meas.base_value), verdict=v, verdict_point=point)
                n_flagged = len(flagged["unlearned"]) + len(flagged["base"]) + (len(attack_rep["flagged"]) if inf.attack and attack_rep else 0)
                if n_flagged:
                    rec["flagged_images"] = n_flagged
                reason = flag_error(meas.value, n_flagged if inf.needs_images else 0)
                if reason:  # a number made from broken images (or a broken number) never passes
                    rec.update(verdict="error", error=reason)
                records.append(rec)
        result = {
            "suite": {
                "id": suite.id,
                "version": suite.version,
                "file_sha256": self._suite_sha[suite.id],
                "prompt_set_sha256": sha256_json([[p.text, p.labels, p.seed, p.guidance] for p in prompts]),
                "n_prompts": len(prompts),
                "n_images_per_model": len(items),
                "smoke": self.smoke,
                "generation": {**g.model_dump(), **({"steps": base_jobs[0].steps, "height": base_jobs[0].height, "width": base_jobs[0].width} if base_jobs else {}),
                               "negative_prompt": suite.prompts.negative_prompt},
                "seeds": sorted({s for _, s in items}),
                "device": placement.device,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "dtype": placement.dtype,
                "executor": self.executor.record(stats),
                "pipeline": {"compile": self.compile, **({"attention": sorted(stats.attention), "channels_last": stats.channels_last, "compiled": stats.compiled}
                             if stats.attention else {"attention": None, "channels_last": None, "compiled": None})},  # None: no model loaded
                "batching": {"batch_size": min(g.batch_size, stats.batch_cap or g.batch_size), "oom_backoffs": stats.oom_backoffs},
                "scorer": scorer.identity if scorer else None,
                "pins": suite_pins(suite),  # every file the suite named, source#sha256 (harness/pins.py; the leaderboard compares them)
                "models": {"base": base_fp, "unlearned": unl_fp},
                "images": {"base": base_rep, "unlearned": unl_rep, **({"attack": attack_rep} if attack_rep else {})},
                "samples": sample_pairs(items, base_jobs, unl_jobs, sub.targets, self.cache) if base_jobs else [],
                "conventions": CONVENTIONS,
                "fidelity": fidelity_choices(sub, suite, self.root),
                "seconds": round(time.time() - t0, 2),
            },
            "metrics": records,
        }
        self._results[key] = result
        return result
