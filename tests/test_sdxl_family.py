"""The SDXL model family (harness/families/sdxl.py) on a random-weight toy-xl pipeline: it is
recognised from its folder, encodes prompts exactly as StableDiffusionXLPipeline does, generates
the pipeline's own images from the harness's matched noise, applies each checkpoint kind and a
LoRA, refuses an SD-1.x checkpoint by the shape that differs, and shares one trajectory between
two models in partial diffusion (known answers at psi 0 and 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import families
from harness.errors import HarnessError
from harness.families.base import Conditioning
from harness.families.sd1 import Placement
from harness.run.generate import Job, run_batch

CPU = Placement("cpu", "float32")


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory) -> Path:
    from harness.toy.model import build_pipeline_xl

    d = tmp_path_factory.mktemp("xl") / "pipeline-xl"
    build_pipeline_xl(seed=3).save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture()
def pipe(xl_dir):
    return families.family_of(xl_dir).load(xl_dir, CPU)


def _jobs(prompts, seeds=(0, 1), steps=4, guidance=5.0, negative=""):
    return [Job(prompt=p, negative_prompt=negative, seed=s, scheduler="ddim", steps=steps, guidance=guidance, height=32, width=32,
                eta=0.0, dtype="float32", model="m") for p, s in zip(prompts, seeds)]


def test_an_sdxl_folder_is_the_sdxl_family_and_not_sd1(xl_dir):
    fam = families.family_of(xl_dir)
    assert fam.name == "sdxl" and fam.title == "Stable Diffusion XL"
    index = json.loads((xl_dir / "model_index.json").read_text())
    assert not families.get("sd1").recognises(index)
    resaved = {**index, "_class_name": "SomeOtherSDXLPipeline"}  # every SDXL part, no transformer
    assert families.family_of(resaved).name == "sdxl"
    from harness.toy.paths import PIPELINE_DIR

    assert families.family_of(PIPELINE_DIR).name == "sd1"


def test_prompts_are_encoded_as_the_pipeline_encodes_them(pipe):
    fam = families.family_of_pipeline(pipe)
    prompts = ["a circle in striped style", "a triangle in dotted style"]
    cond = fam.encode_conditioning(pipe, prompts)
    pe, ne, pooled, npooled = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    assert isinstance(cond, Conditioning)
    assert torch.equal(cond.hidden, pe) and torch.equal(cond.extra["text_embeds"], pooled)
    assert cond.hidden.shape[-1] == pipe.unet.config.cross_attention_dim == 64  # both encoders' 32-wide states
    assert cond.extra["time_ids"].tolist() == [[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]] * 2
    unc = fam.unconditional(pipe, 2)  # force_zeros_for_empty_prompt: the pipeline's empty negative prompt
    assert torch.equal(unc.hidden, ne) and torch.equal(unc.extra["text_embeds"], npooled) and not unc.hidden.any()
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    assert torch.equal(fam.encode_ids(pipe, ids).hidden, cond.hidden)
    assert torch.equal(fam.encode_prompts(pipe, prompts), cond.hidden)


def test_generation_is_the_pipelines_own_call_with_matched_noise(pipe):
    fam = families.family_of_pipeline(pipe)
    jobs = _jobs(["a circle in striped style", "a square in plain style"])
    raw, imgs = run_batch(pipe, jobs)
    lat = fam.initial_latents(pipe, [0, 1], 32, 32)
    own = pipe(prompt=[j.prompt for j in jobs], num_inference_steps=4, guidance_scale=5.0, latents=lat, output_type="np",
               generator=[torch.Generator().manual_seed(s + 1) for s in (0, 1)], eta=0.0).images
    np.testing.assert_array_equal(raw, own)  # an empty negative prompt is the pipeline's default (zeros)
    again, _ = run_batch(pipe, jobs)
    np.testing.assert_array_equal(raw, again)
    assert imgs.dtype == np.uint8 and imgs.shape == (2, 32, 32, 3)
    # a non-empty negative prompt is encoded (not zeros): other images
    neg, _ = run_batch(pipe, _jobs([j.prompt for j in jobs], negative="a circle"))
    assert not np.array_equal(neg, raw)


def test_family_settings_record_the_micro_conditioning():
    from harness.run.plan import family_settings

    jobs = _jobs(["x"], seeds=(0,))
    assert family_settings("sdxl", jobs) == {"conditioning": {"original_size": [32, 32], "crops_coords_top_left": [0, 0], "target_size": [32, 32]}}
    assert family_settings("sd1", jobs) == {}


def _save(tensors: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("kind", ["unet", "text_encoder", "text_encoder_2"])
def test_each_component_checkpoint_replaces_exactly_its_tensors(pipe, tmp_path, kind):
    from harness.families.sd1 import apply_checkpoint
    from harness.spec import CheckpointSpec

    fam = families.family_of_pipeline(pipe)
    module = fam.component(pipe, kind)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    name = next(k for k in before if k.endswith("weight") and before[k].dim() == 2)
    f = _save({name: before[name] + 1.0}, tmp_path / f"{kind}.safetensors")
    spec = CheckpointSpec(kind=kind, path=str(f), sha256="0" * 64)
    out = apply_checkpoint(pipe, spec, f, CPU)
    after = fam.component(out, kind).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [name] and torch.equal(after[name], before[name] + 1.0)


def test_a_component_sdxl_lacks_is_one_line(pipe, tmp_path):
    fam = families.family_of_pipeline(pipe)
    with pytest.raises(HarnessError) as e:
        fam.component(pipe, "transformer")
    assert str(e.value) == ("checkpoint.kind: transformer is not a component of a Stable Diffusion XL model "
                            "(its kinds: pipeline, lora, unet, text_encoder, text_encoder_2)")


def test_an_sd1_unet_checkpoint_on_an_sdxl_base_names_the_shape_that_differs(pipe, tmp_path):
    from harness.families.sd1 import apply_checkpoint
    from harness.spec import CheckpointSpec
    from harness.toy.model import build_pipeline

    sd1 = build_pipeline(seed=0)
    f = _save(dict(sd1.unet.state_dict()), tmp_path / "sd1-unet.safetensors")
    with pytest.raises(HarnessError) as e:
        apply_checkpoint(pipe, CheckpointSpec(kind="unet", path=str(f), sha256="0" * 64), f, CPU)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("checkpoint: ") and ("shape" in msg or "not in the unet" in msg), msg


def test_an_sdxl_lora_in_the_diffusers_layout_is_applied(pipe, xl_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from harness.families.sd1 import apply_checkpoint
    from harness.spec import CheckpointSpec

    fam = families.family_of_pipeline(pipe)
    donor = fam.load(xl_dir, CPU)
    donor.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_v", "to_q", "to_out.0"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero: give it weights, so the adapter changes the images
        for name, p in donor.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(donor.unet), safe_serialization=True)
    f = tmp_path / "pytorch_lora_weights.safetensors"
    assert f.is_file()
    jobs = _jobs(["a circle in striped style"], seeds=(0,))
    base, _ = run_batch(pipe, jobs)
    lora = apply_checkpoint(pipe, CheckpointSpec(kind="lora", path=str(f), sha256="0" * 64), f, CPU)
    got, _ = run_batch(lora, jobs)
    want, _ = run_batch(donor, jobs)
    assert not np.array_equal(got, base)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_partial_diffusion_shares_one_trajectory_known_answers(xl_dir):
    fam = families.family_of(xl_dir)
    base, unl = fam.load(xl_dir, CPU), fam.load(xl_dir, CPU)
    with torch.no_grad():
        for lin in fam.cross_attention(unl.unet).values():
            lin.weight.mul_(0.0)
    jobs = _jobs(["a circle in striped style", "a triangle in dotted style"])
    b, _ = run_batch(base, jobs)
    u, _ = run_batch(unl, jobs)
    assert not np.allclose(b, u, atol=1e-3)
    all_base, _ = fam.partial_diffusion((base, unl), jobs, 1.0)  # every step by the base, decoded by the (same) VAE
    all_unl, _ = fam.partial_diffusion((base, unl), jobs, 0.0)
    # partial diffusion returns the decoder's unclipped output; the pipeline's is clipped to [0, 1]
    np.testing.assert_allclose(np.clip(all_base, 0, 1), b, atol=1e-5)
    np.testing.assert_allclose(np.clip(all_unl, 0, 1), u, atol=1e-5)
    half, _ = fam.partial_diffusion((base, unl), jobs, 0.5)
    assert not np.allclose(half, b, atol=1e-4) and not np.allclose(half, u, atol=1e-4)
