"""One submission x one suite, end to end: images -> scores -> metric records with verdicts.

Usable without pytest (``Evaluator(root, cache_dir).run(sub_path, submission, suite_id)``); the
pytest plugin turns each metric record into a test case. The submission comes resolved by the
start-up check (``harness.resolve.resolved.ResolvedSubmission``: fingerprints, verified
checkpoint, native size), so a suite run hashes and locates nothing again; a bare ``Submission``
is resolved once per evaluator (``resolve_models``). What a suite needs (its prompts, seeds,
image size and generation jobs) comes from ``harness.run.plan``; the pipelines are described by
``families.sd1.PipelineRecipe`` and loaded only when some image is not cached; images go through the
content-addressed cache (``harness.run.generate``); the scorer and the metric families turn them
into values and intervals (``harness.metrics``, ``harness.stats.intervals``), and ``stats.verdict``
decides each record's verdict. Data flows one way: specs -> plan -> pipelines -> jobs -> cached
images -> scorer -> metric values -> verdicts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from harness import metrics
from harness.run import plan
from harness.stats import intervals as uncertainty  # harness.stats.intervals: intervals, verdicts ('stats' names the run's RunStats below)
from harness.errors import HarnessError
from harness.spec.pins import suite_pins
from harness.run.generate import ImageCache, Job, LocalExecutor, RunStats, generate
from harness.store.hashing import sha256_file, sha256_json
from harness.families.sd1 import PipelineRecipe, Pipelines, Placement
from harness.resolve.resolved import ResolvedSubmission, resolve_models
from harness.run.plan import base_record, family_settings, suite_path
from harness.spec import Prompt, Submission, Suite, TargetSpec, load_suite
from harness.run.fidelity import choices as fidelity_choices, inference_record

if TYPE_CHECKING:
    from harness.results.assemble import SuiteResult

# Conventions this project chose where a paper is silent (recorded in every result).
CONVENTIONS = {
    "seeds": "each image's initial latents come from a CPU torch.Generator seeded with its seed; base and unlearned share them",
    "negative_prompt": "the suite's negative prompt (empty by default) for both models",
    "accuracy_averaging": "UA/IRA/CRA means are over classes",
    "unlearncanvas_sampling": "one sampler and per-image seeded noise for every method (UnlearnCanvas samples ESD/CA/SalUn with CompVis "
                              "DDIM under one global seed and UCE with diffusers LMS re-seeded per prompt): matched pairs instead",
}


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

    from harness.store.hashing import sha256_bytes

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


class Evaluator:
    """Runs suites for submissions. Keeps, for the session, each (submission, suite)'s result
    (a second case of the suite reuses it) and each suite file as first loaded (hashed then);
    pipelines are loaded per suite run and dropped after it; images live in the cache."""

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
        self._results: dict = {}  # (sub_path, suite id) -> results.assemble.SuiteResult
        self._json: dict[tuple[str, str], dict] = {}
        self._resolved: dict[str, ResolvedSubmission] = {}  # sub_path -> a bare Submission resolved here (once)
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

    def _attack(self, suite, items, base_jobs, base_fp, unl_fp, recipe: PipelineRecipe, pipes: Pipelines, stats=None):
        """Partial-diffusion attacked images for the suite's attack metrics (the grid:
        ``plan.attack_grid``), as cached generation jobs; both models load once for the whole
        grid, only if some image is missing."""
        from harness.attacks import run_partial_batch

        grid = plan.attack_grid(suite, items)
        if grid is None:
            return {}, None
        out, rep = {}, {"psi": list(grid.psis), "seeds": list(grid.seeds), "generated": 0, "cached": 0, "flagged": []}
        for psi in grid.psis:
            jobs = plan.attack_jobs(grid, base_jobs, base_fp, unl_fp, psi)
            imgs, r = generate(recipe.of("pair"), jobs, self.cache, suite.generation.batch_size, self.progress, f"{suite.id} attack psi={psi:g}",
                               runner=partial(run_partial_batch, psi=psi), executor=self.executor, stats=stats, pipelines=pipes)
            aligned = [None] * len(items)
            for i, im in zip(grid.chosen, imgs):
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

    def _prompt_attacks(self, suite, items, sub, base_jobs, unl_jobs, base_imgs, unl_imgs, scorer, unl_pipe, base_fp, unl_fp, recipe, stats):
        """Prompt attacks (UnlearnDiffAtk, Ring-A-Bell, textual inversion) for the suite's
        robustness metrics (the suite's ``attacks`` blocks); found prompts are cached in
        ``<cache>/attacks/`` (``harness.attacks.runner``). With the Ray executor the attacked
        prompts run as Ray tasks (``recipe``: the unlearned model's, loaded by each worker)."""
        specs = [m for m in suite.metrics if metrics.info(m.name).prompt_attack]
        if not specs:
            return {}
        from harness.attacks.runner import AttackContext, RemoteAttacks, run_prompt_attacks
        from harness.attacks.common import text_encoder_fingerprint

        fps = {"unlearned": unl_fp, "text_encoder": text_encoder_fingerprint(sub, base_fp, unl_fp)}
        remote = RemoteAttacks(self.executor, recipe, stats) if hasattr(self.executor, "run_attack") else None
        return run_prompt_attacks(AttackContext(suite, suite.prompt_attacks, items, sub.targets, base_jobs, unl_jobs, base_imgs, unl_imgs, scorer,
                                                unl_pipe, fps, self.cache_dir, self.root, self.progress, self.attack_counter, remote))

    def resolved(self, sub_path: str, sub: Submission | ResolvedSubmission) -> ResolvedSubmission:
        """``sub`` as resolved by the start-up check, or a bare ``Submission`` resolved here
        once for every suite of this evaluator (``resolve_models``)."""
        if isinstance(sub, ResolvedSubmission):
            return sub
        got = self._resolved.get(sub_path)
        if got is None or got.spec != sub:
            got = self._resolved[sub_path] = resolve_models(sub_path, sub, self.root, self.cache_dir, self.allow_pickle)
        return got

    def run(self, sub_path: str, sub: Submission | ResolvedSubmission, suite_id: str) -> dict:
        """``result``'s JSON objects: ``{"suite": ..., "metrics": [...]}`` (made once per suite)."""
        key = (sub_path, suite_id)
        if key not in self._json:
            self._json[key] = self.result(sub_path, sub, suite_id).to_json()
        return self._json[key]

    def result(self, sub_path: str, sub: Submission | ResolvedSubmission, suite_id: str) -> "SuiteResult":
        """The suite's result, as the results file's models (``results.assemble.SuiteResult``):
        provenance (its ``SuiteRecord``) + one ``MetricRecord`` per (metric, target). ``sub``: the
        submission resolved by the start-up check (``harness.resolve.check.prepare``), or a bare
        ``Submission``."""
        key = (sub_path, suite_id)
        if key in self._results:
            return self._results[key]
        t0 = time.time()
        suite = self.suite(suite_id)
        g = suite.generation
        placement = self.executor.placement(self.device, g.dtype, self.compile)  # where the pipelines run
        stats = RunStats()
        spec = sub.spec if isinstance(sub, ResolvedSubmission) else sub
        prompts = plan.suite_prompts(suite, spec.targets, self.root, self.cache_dir, self.smoke)
        items = plan.suite_items(suite, prompts, self.smoke)
        if not items:
            raise HarnessError(f"suite {suite.id}: the prompt set is empty")
        resolved = self.resolved(sub_path, sub)
        sub = resolved.spec
        base_fp, unl_fp = resolved.fingerprints
        ckpt = resolved.checkpoint

        from harness.scorers.classifiers import load_scorer
        from harness.results.assemble import SuiteResult, efficiency
        from harness.results.model import MetricRecord, SuiteRecord

        if plan.needs_images(suite):
            size = plan.image_size(sub, suite, self.root, resolved.native_size)
            base_jobs = plan.suite_jobs(suite, items, base_fp, placement.dtype, size, self.smoke)
            unl_jobs = plan.suite_jobs(suite, items, unl_fp, placement.dtype, size, self.smoke)
            # The pipelines of this suite run (none is kept for the next suite), described by one
            # recipe: loaded only when some image is not cached (a warm re-run loads none), the
            # unlearned one made from the base already in memory; a Ray worker loads its own.
            pipes = Pipelines(ckpt, resolved.checkpoint_state)  # hashed again before loading if changed since verified
            # an inference-time method's single predictions (attacks) use the suite's guidance scale
            inference = replace(resolved.inference, guidance_scale=float(g.guidance)) if resolved.inference else None
            recipe = PipelineRecipe(str(self.root.resolve()), sub.base_model, placement, "base", sub.checkpoint, str(self.cache_dir.resolve()),
                                    self.allow_pickle, inference)
            how = dict(executor=self.executor, stats=stats, pipelines=pipes)
            base_imgs, base_rep = generate(recipe, base_jobs, self.cache, g.batch_size, self.progress, f"{suite.id} base", **how)
            unl_imgs, unl_rep = generate(recipe.of("unlearned"), unl_jobs, self.cache, g.batch_size, self.progress, f"{suite.id} unlearned", **how)
            # The scorer runs here; with Ray the generation device may be one this machine lacks.
            score_device = placement.device if isinstance(self.executor, LocalExecutor) else Placement.choose("cpu" if placement.device == "cpu" else "auto").device
            scorer = load_scorer(suite.scorer, self.root, score_device) if suite.scorer else None
            attacked, attack_rep = self._attack(suite, items, base_jobs, base_fp, unl_fp, recipe, pipes, stats)
            unl_pipe = partial(pipes.load, recipe.of("unlearned"))  # the prompt attacks load it only for a missing attack
            prompt_attacks = self._prompt_attacks(suite, items, sub, base_jobs, unl_jobs, base_imgs, unl_imgs, scorer, unl_pipe, base_fp, unl_fp,
                                                  recipe.of("unlearned"), stats)
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
                rec = MetricRecord.begin(suite=suite.id, metric=m.name, label=inf.label, target=target.concept, target_kind=target.kind,
                                         higher_is_better=inf.higher_is_better, metric_version=inf.version,
                                         threshold=str(th) if th else None, tolerance=m.tolerance)
                try:
                    meas = metrics.family(m.name).compute(m.name, run, target, m.params)
                except HarnessError as e:
                    rec.update(value=None, base_value=None, bound=None, verdict="error", error=str(e))
                    records.append(MetricRecord.model_validate(rec.to_json()))  # checked whole (MetricRecord.done, kept a model)
                    continue
                rec.update(value=meas.value, base_value=meas.base_value, details=meas.details)
                u = uncertainty.uncertainty(meas, th, m.params)  # ci, delta_ci, margin_ci / ci_reason, scores
                rec.update(u)
                n_flagged = len(flagged["unlearned"]) + len(flagged["base"]) + (len(attack_rep["flagged"]) if inf.attack and attack_rep else 0)
                # bound, verdict, verdict_point; a number made from broken images (or a broken number) is an error, never a pass
                rec.update(uncertainty.verdict(th, meas.value, meas.base_value, u.get("margin_ci"), n_flagged if inf.needs_images else 0).fields())
                if n_flagged:
                    rec.update(flagged_images=n_flagged)
                records.append(MetricRecord.model_validate(rec.to_json()))  # checked whole (MetricRecord.done, kept a model)
        result = SuiteResult(
            suite=SuiteRecord.model_validate({
                "id": suite.id,
                "version": suite.version,
                "file_sha256": self._suite_sha[suite.id],
                "prompt_set_sha256": sha256_json([[p.text, p.labels, p.seed, p.guidance] for p in prompts]),
                "n_prompts": len(prompts),
                "n_images_per_model": len(items),
                "smoke": self.smoke,
                "generation": {**g.model_dump(), **({"steps": base_jobs[0].steps, "height": base_jobs[0].height, "width": base_jobs[0].width} if base_jobs else {}),
                               "negative_prompt": suite.prompts.negative_prompt,
                               **family_settings(resolved.family, base_jobs)},
                "seeds": sorted({s for _, s in items}),
                "device": placement.device,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "dtype": placement.dtype,
                "executor": self.executor.record(stats),
                "pipeline": {"compile": self.compile, **({"attention": sorted(stats.attention), "channels_last": stats.channels_last, "compiled": stats.compiled}
                             if stats.attention else {"attention": None, "channels_last": None, "compiled": None})},  # None: no model loaded
                "batching": {"batch_size": min(g.batch_size, stats.batch_cap or g.batch_size), "oom_backoffs": stats.oom_backoffs},
                "scorer": scorer.identity if scorer else None,
                "pins": suite_pins(suite),  # every file the suite named, source#sha256 (harness/spec/pins.py; the leaderboard compares them)
                "models": {"base": base_fp, "unlearned": unl_fp},
                "base_model": base_record(sub, suite, resolved.family),  # which base the numbers are against (plan.base_record)
                "images": {"base": base_rep, "unlearned": unl_rep, **({"attack": attack_rep} if attack_rep else {})},
                "samples": sample_pairs(items, base_jobs, unl_jobs, sub.targets, self.cache) if base_jobs else [],
                "conventions": CONVENTIONS,
                "fidelity": {**fidelity_choices(sub, suite, self.root), **inference_record(resolved, float(g.guidance))},
                "seconds": round(time.time() - t0, 2),
            }),
            metrics=records,
        )
        self._results[key] = result
        return result
