"""What a submission's run consists of, from the specs alone (no model is loaded, no image made).

The one planning layer under ``unlearn check`` (``harness.resolve.check``), the evaluator
(``harness.run.evaluate``), the pytest plugin's cases and the run estimate (``harness.run.estimate``):

- ``resolve_suites``: the suites a submission runs (declared, or every suite of its world that
  applies to a target kind); ``suite_path`` names a suite's file;
- ``plan_cases``: one ``Case`` (a parametrized test) per (suite, metric, target);
- ``smoke_prompts`` / ``suite_items``: the (prompt, seed) items of a suite, full or smoke;
- ``image_size`` / ``native_size``: the size the images are made at;
- ``suite_jobs`` / ``attack_grid`` / ``attack_jobs``: the generation jobs (content-addressed
  cache keys) of the base, the unlearned model and the partial-diffusion attack.

It imports specs, the metric registry and the job type, never the evaluator, the checks or the
plugin (``tests/test_plan.py`` holds that rule).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from harness import metrics
from harness.errors import HarnessError
from harness.run.generate import Job
from harness.spec import Prompt, Submission, Suite, TargetSpec, expand_prompts, load_suite

# The partial-diffusion attack's grid where a suite's attack metric sets none.
DEFAULT_PSI = (0.05, 0.15, 0.35, 0.55)


# ----------------------------------------------------------------------------- suites and cases
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
        return _bases_allowed(sub, out)
    world = "toy" if sub.base_model.builtin else "real"  # toy, toy-xl: the toy world
    kinds = {t.kind for t in sub.targets}
    out = {}
    for p in sorted((root / "suites").glob("*.yaml")):
        suite = load_suite(p)
        if suite.world == world and kinds & set(suite.applies_to):
            out[suite.id] = suite
    if not out:
        raise HarnessError(f"suites: no {world} suite in suites/ applies to the targets ({', '.join(sorted(kinds))})")
    return _bases_allowed(sub, out)


def _bases_allowed(sub: Submission, suites: dict[str, Suite]) -> dict[str, Suite]:
    """Every suite accepts the submission's base: one it is defined on, or another its
    ``other_bases`` allows (``Suite.check_base``); else one line naming the suite and the base."""
    for suite in suites.values():
        suite.check_base(sub.base_model)
    return suites


def base_record(sub: Submission, suite: Suite, family: str | None = None) -> dict:
    """What a suite's results record says about the base its numbers are against: ``label``
    (``builtin:toy``, ``hub:ID@COMMIT``, ``local:FOLDER``), ``suite_base`` (one the suite is
    defined on), ``suite_bases`` (the suite's own) and ``family`` (its model family, where known:
    the leaderboard ranks within a family)."""
    from harness.spec.suite import base_label

    return {"label": base_label(sub.base_model), "suite_base": suite.check_base(sub.base_model),
            "suite_bases": [b.label() for b in suite.bases()], **({"family": family} if family else {})}


def family_settings(family: str, jobs: list) -> dict:
    """Generation settings the base's model family adds to the jobs' (SDXL's micro-conditioning,
    ``ModelFamily.conditioning_settings``), as ``{"conditioning": {...}}``; empty when it adds none."""
    from harness.families import get

    if not jobs:
        return {}
    extra = get(family).conditioning_settings(jobs[0].height, jobs[0].width)
    return {"conditioning": extra} if extra else {}


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


# ----------------------------------------------------------------------------- prompts and items
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


def suite_prompts(suite: Suite, targets: list[TargetSpec], root: Path, cache_dir: Path | None, smoke: bool = False) -> list[Prompt]:
    """The suite's prompts as a run uses them: expanded, and cut to the smoke subset."""
    prompts = expand_prompts(suite, root, cache_dir)
    return smoke_prompts(suite, prompts, targets) if smoke else prompts


def suite_seeds(suite: Suite, smoke: bool = False) -> list[int]:
    s = suite.smoke
    return s.seeds if smoke and s and s.seeds else suite.generation.seeds


def suite_items(suite: Suite, prompts: list[Prompt], smoke: bool = False) -> list[tuple[Prompt, int]]:
    """(prompt, seed) of every image a model makes: a prompt's own seed, else each of the
    suite's (smoke) seeds."""
    seeds = suite_seeds(suite, smoke)
    return [(p, s) for p in prompts for s in ([p.seed] if p.seed is not None else seeds)]


def needs_images(suite: Suite) -> bool:
    """Some metric of the suite is computed from images (else nothing is generated)."""
    return any(metrics.info(m.name).needs_images for m in suite.metrics)


# ----------------------------------------------------------------------------- sizes and jobs
def native_size(sub: Submission, root: Path) -> int:
    """The base model's native image size, read from its configs (no weights loaded), within
    the bounds a suite's own height / width have (``safefs.native_px``)."""

    from harness.families.sd1 import base_dir

    d = base_dir(sub.base_model, root)
    if d is None:
        from harness.store.hub import pipeline_snapshot

        try:  # read from the Hugging Face cache when the snapshot is there
            d = pipeline_snapshot(sub.base_model.hub_id, sub.base_model.revision, download=False)
        except HarnessError:
            raise HarnessError("a hub base model needs the suite to set generation.height and generation.width (or its snapshot in the Hugging Face cache: unlearn fetch)") from None
    return native_size_at(d)


def native_size_at(d: Path) -> int:
    """``native_size`` of a base folder already located (its family reads it)."""
    from harness.families import family_of

    return family_of(d).native_size(d, "base_model")


def image_size(sub: Submission, suite: Suite, root: Path, native: int | None = None) -> int:
    """The size ``suite_jobs`` fills in where the suite sets no height and width: the base's
    native size (0 when the suite sets both, so nothing is read); ``native``: that size, already
    read (``ResolvedSubmission.native_size``), so the base is not located again."""
    g = suite.generation
    if g.height and g.width:
        return 0
    return native if native is not None else native_size(sub, root)


def suite_jobs(suite: Suite, items: list[tuple[Prompt, int]], model: str, dtype: str, size: int, smoke: bool = False) -> list[Job]:
    """One generation job per item for ``model`` (a fingerprint, ``harness.families.sd1``): its key
    addresses the image in the cache, so base and unlearned jobs differ in ``model`` alone."""
    g = suite.generation
    steps = suite.smoke.steps if smoke and suite.smoke and suite.smoke.steps else g.steps
    return [
        Job(prompt=p.text, negative_prompt=suite.prompts.negative_prompt, seed=seed, scheduler=g.scheduler, steps=steps,
            guidance=p.guidance if p.guidance is not None else g.guidance, height=g.height or size, width=g.width or size,
            eta=g.eta, dtype=dtype, model=model,
            image_format=g.image_format, jpeg_quality=g.jpeg_quality if g.image_format == "jpeg" else None)
        for p, seed in items
    ]


@dataclass(frozen=True)
class AttackGrid:
    """The partial-diffusion attack of a suite: its psi values, the seeds attacked and the
    indices of the items with those seeds."""

    psis: tuple[float, ...]
    seeds: tuple[int, ...]
    chosen: tuple[int, ...]

    def images(self) -> int:
        return len(self.psis) * len(self.chosen)


def attack_grid(suite: Suite, items: list[tuple[Prompt, int]]) -> AttackGrid | None:
    """The grid of the suite's partial-diffusion attack metrics (psi and seeds from the suite's
    ``attacks.partial_diffusion`` block; default seeds: the suite's first two), or None when the
    suite has no such metric."""
    if not any(metrics.info(m.name).attack for m in suite.metrics):
        return None
    pd = suite.partial_diffusion
    psis = tuple(float(p) for p in pd.psi)
    seeds = set(pd.seeds if pd.seeds is not None else sorted({s for _, s in items})[:2])
    return AttackGrid(psis, tuple(sorted(seeds)), tuple(i for i, (_, s) in enumerate(items) if s in seeds))


def attack_jobs(grid: AttackGrid, base_jobs: list[Job], base_fp: str, unl_fp: str, psi: float) -> list[Job]:
    """The attacked images of one psi: the chosen base jobs, keyed by the attack's model id."""
    from harness.attacks import attack_model_id

    return [replace(base_jobs[i], model=attack_model_id(base_fp, unl_fp, psi)) for i in grid.chosen]
