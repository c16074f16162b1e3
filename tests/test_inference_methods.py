"""Inference-time methods (``method.kind: inference``; harness.families.guidance): known answers.

* a method that changes nothing gives the model's own outputs, bit for bit, with no extra call;
* the negative-prompt method's images are diffusers' own ``negative_prompt`` images;
* SLD's images are diffusers' ``StableDiffusionPipelineSafe`` images under each configuration;
* a single prediction (an attack's loss) is the conditional prediction that standard guidance
  turns into the method's guided one.
"""

from __future__ import annotations

import pytest
import torch

from harness.families import family_of_pipeline
from harness.families.base import call_denoiser
from harness.families.guidance import Guidance, install

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a striped triangle", "a solid circle"]


@pytest.fixture()
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(seed=11)


def images(pipe, **kw):
    gens = [torch.Generator("cpu").manual_seed(s) for s in range(len(PROMPTS))]
    return pipe(prompt=PROMPTS, num_inference_steps=6, guidance_scale=6.0, generator=gens, output_type="np", **kw).images


def test_a_method_that_changes_nothing_is_the_model_bit_for_bit(pipe):
    fam = family_of_pipeline(pipe)
    before = images(pipe)
    x = torch.randn(2, *fam.latent_shape(pipe, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = fam.encode_conditioning(pipe, PROMPTS)
        single = call_denoiser(pipe.unet, x, torch.tensor(500), cond)
    state = install(pipe, fam, Guidance(), 6.0)
    after = images(pipe)
    with torch.no_grad():
        single_after = call_denoiser(pipe.unet, x, torch.tensor(500), cond)
    assert (before == after).all() and torch.equal(single, single_after)
    assert state.calls == 6 + 1  # one denoiser call per step and one for the single prediction: nothing extra
    state.remove()
    assert "forward" not in pipe.unet.__dict__


def test_negative_prompt_is_diffusers_negative_prompt(pipe):
    from harness.methods import negprompt

    fam = family_of_pipeline(pipe)
    ref = images(pipe, negative_prompt=["striped"] * len(PROMPTS))
    plain = images(pipe)
    install(pipe, fam, negprompt.setup(pipe, fam, ["striped"]), 6.0)
    got = images(pipe)
    assert abs(got - ref).max() < 1e-5 and abs(plain - ref).max() > 1e-3


@pytest.mark.parametrize("config", ["weak", "medium", "strong", "max"])
def test_sld_is_diffusers_safe_pipeline(pipe, config):
    from diffusers import StableDiffusionPipelineSafe

    from harness.methods import sld

    fam = family_of_pipeline(pipe)
    safe = StableDiffusionPipelineSafe(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                                       scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    safe.safety_concept = "striped"
    p = sld.PRESETS[config]
    gens = [torch.Generator("cpu").manual_seed(s) for s in range(len(PROMPTS))]
    ref = safe(prompt=PROMPTS, num_inference_steps=20, guidance_scale=6.0, generator=gens, output_type="np", sld_guidance_scale=p["guidance_scale"],
               sld_warmup_steps=p["warmup_steps"], sld_threshold=p["threshold"], sld_momentum_scale=p["momentum_scale"],
               sld_mom_beta=p["mom_beta"]).images
    gens = [torch.Generator("cpu").manual_seed(s) for s in range(len(PROMPTS))]
    plain = pipe(prompt=PROMPTS, num_inference_steps=20, guidance_scale=6.0, generator=gens, output_type="np").images
    install(pipe, fam, sld.setup(pipe, fam, ["striped"], **p), 6.0)
    gens = [torch.Generator("cpu").manual_seed(s) for s in range(len(PROMPTS))]
    got = pipe(prompt=PROMPTS, num_inference_steps=20, guidance_scale=6.0, generator=gens, output_type="np").images
    assert abs(got - ref).max() < 1e-4, abs(got - ref).max()
    assert abs(plain - ref).max() > 1e-5  # the term changed the images (Weak, 5 of 20 steps after warm-up: least)


def test_a_single_prediction_is_the_guided_one_in_conditional_form(pipe):
    from harness.methods import negprompt

    fam = family_of_pipeline(pipe)
    w = 6.0
    x = torch.randn(2, *fam.latent_shape(pipe, 32, 32), generator=torch.Generator().manual_seed(1))
    t = torch.tensor(400)
    with torch.no_grad():
        cond = fam.encode_conditioning(pipe, PROMPTS)
        neg = fam.encode_conditioning(pipe, ["striped"] * 2)
        uncond = fam.unconditional(pipe, 2)
        e_n, e_c, e_u = (call_denoiser(pipe.unet, x, t, c) for c in (neg, cond, uncond))
    install(pipe, fam, negprompt.setup(pipe, fam, ["striped"]), w)
    with torch.no_grad():
        eq = call_denoiser(pipe.unet, x, t, cond)
    torch.testing.assert_close(e_u + w * (eq - e_u), e_n + w * (e_c - e_n), rtol=1e-4, atol=1e-5)
