"""Attacks on an unlearned model: each module is one attack.

- ``partial_diffusion``: the base model runs the first steps, the unlearned model finishes
  (CRS / CCS, "Unlearning or Concealment?"); its images are ordinary cached generation jobs.
- ``unlearndiffatk``: adversarial prefix tokens optimised against the unlearned UNet
  (UnlearnDiffAtk, Zhang et al., ECCV 2024).
- ``ringabell``: a genetic search over token ids toward prompt + strength x concept vector, text
  encoder only (Ring-A-Bell, Tsai et al., ICLR 2024).
- ``ti``: textual inversion on the erased model, one new token learned on the base model's
  images of the concept (CCE, Pham et al., ICLR 2024).

Every prompt attack follows ``common``: deterministic (per-item generators seeded from the
attack seed, the prompt and its image seed), budgeted (its budget is a parameter recorded with the
result, and ``asr_curve`` reads success against budget), and cached content-addressed by
(attack, params, unlearned model fingerprint, target item, seed) in ``<cache>/attacks/``, beside
the image cache, each item's record written as soon as it is final: a re-run repeats nothing, and
an interrupted one keeps every finished item.
"""

from harness.attacks.partial_diffusion import attack_model_id, run_partial_batch

__all__ = ["attack_model_id", "run_partial_batch"]
