"""The partial-diffusion attack of "Unlearning or Concealment?" (arXiv 2409.05668).

For a ratio psi, the ORIGINAL model runs the first round(psi * steps) denoising steps and the
UNLEARNED model finishes the same trajectory (same scheduler, guidance and noise). If the
unlearned model only hides the concept, a small head start from the original brings it back.
Attacked images are generation jobs like any other (their model fingerprint names both models
and psi), so they are cached and never regenerated.
"""

from __future__ import annotations

from harness.run.generate import Job


def attack_model_id(base_fp: str, unl_fp: str, psi: float) -> str:
    return f"partial-diffusion:{base_fp}->{unl_fp}@psi={psi:g}"


def run_partial_batch(pipes, jobs: list[Job], psi: float):
    """One batch of attacked images; ``pipes`` = (base pipeline, unlearned pipeline). The
    trajectory is the model family's (``ModelFamily.partial_diffusion``): the base's scheduler,
    both models' classifier-free guidance, the unlearned model's decoder."""
    from harness.families import family_of_pipeline
    from harness.families.base import require

    fam = family_of_pipeline(pipes[0])
    require(fam, {"partial_diffusion"}, "the partial-diffusion attack")
    return fam.partial_diffusion(pipes, jobs, psi)
