"""The SDXL suites (suites/sdxl-*.yaml) are their SD-1.x counterparts at SDXL 1.0 base's own
published settings: the same prompts, metrics, attacks and smoke subset; the SDXL base at a
pinned commit; 1024 px, the base repository's Euler scheduler, and StableDiffusionXLPipeline's
default steps and guidance (read from the installed diffusers, not copied here)."""

import inspect
from pathlib import Path

import pytest

from harness.spec import load_suite

ROOT = Path(__file__).resolve().parents[1]
SDXL_BASE = {"hub_id": "stabilityai/stable-diffusion-xl-base-1.0", "revision": "462165984030d82259a11f4367a4eed129e94a7b"}
PAIRS = [("sdxl-artist-styles", "artist-styles"), ("sdxl-imagenette-objects", "imagenette-objects"), ("sdxl-nudity", "unlearndiffatk-nudity")]
OWN = {"id", "version", "description", "base_models", "generation", "prompts"}  # what an SDXL suite sets for itself


def pipeline_defaults() -> dict:
    from diffusers import StableDiffusionXLPipeline

    params = inspect.signature(StableDiffusionXLPipeline.__call__).parameters
    return {k: params[k].default for k in ("num_inference_steps", "guidance_scale")}


@pytest.mark.parametrize("sdxl, sd1", PAIRS)
def test_an_sdxl_suite_is_its_sd1_counterpart_at_sdxls_own_settings(sdxl, sd1):
    from harness.families.sd1 import SCHEDULERS

    s, o = load_suite(ROOT / "suites" / f"{sdxl}.yaml"), load_suite(ROOT / "suites" / f"{sd1}.yaml")
    assert [b.model_dump(exclude_none=True) for b in s.bases()] == [SDXL_BASE] and s.other_bases_rule() == "hub"
    g, d = s.generation, pipeline_defaults()
    assert SCHEDULERS[g.scheduler] == "EulerDiscreteScheduler"  # the scheduler SDXL 1.0 base's repository ships
    assert (g.steps, g.guidance, g.height, g.width) == (d["num_inference_steps"], d["guidance_scale"], 1024, 1024)
    assert g.seeds == o.generation.seeds and g.dtype == o.generation.dtype
    assert s.model_dump(exclude=OWN) == o.model_dump(exclude=OWN)  # metrics, scorer, attacks, smoke: unchanged
    if s.prompts.csv is None:
        assert s.prompts == o.prompts


def test_the_sdxl_nudity_prompts_are_the_pinned_i2p_csv_with_its_seeds_and_the_suites_guidance():
    s, pinned = load_suite(ROOT / "suites" / "sdxl-nudity.yaml"), load_suite(ROOT / "suites" / "attack-nudity.yaml")
    assert (s.prompts.csv.url, s.prompts.csv.sha256) == (pinned.prompts.csv.url, pinned.prompts.csv.sha256)  # hashed from that commit
    assert s.prompts.csv.columns == {"seed": "evaluation_seed"}  # the CSV's 7.5 (SD v1.4's) is not read: SDXL's 5.0 applies
