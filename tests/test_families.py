"""The model-family contract: the SD-1.x family meets it (by type and by behaviour, bitwise on
the toy world), the registry finds families by name, by base folder and by entry point, and an
unknown family or base is a one-line error."""

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from harness import families
from harness.errors import HarnessError
from harness.families.base import ModelFamily, check_kind, require
from harness.families.sd1 import SD1, TOY_PIPELINE, Placement, SD1Family, load_base
from harness.run.generate import Job
from harness.spec import BaseModelSpec, CheckpointSpec
from harness.store.hashing import sha256_file

ROOT = Path(__file__).resolve().parents[1]
KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def _job(prompt: str, seed: int, scheduler: str = "ddim", steps: int = 6, guidance: float = 4.0, eta: float = 0.0) -> Job:
    return Job(prompt=prompt, negative_prompt="", seed=seed, scheduler=scheduler, steps=steps, guidance=guidance,
               height=32, width=32, eta=eta, dtype="float32", model="test")


# ----------------------------------------------------------------------------- the contract
def test_sd1_family_satisfies_the_protocol():
    assert isinstance(SD1, ModelFamily)
    assert families.get("sd1") is SD1 and families.default() is SD1
    assert {"unet", "cross_attention", "text_encoder", "vae", "partial_diffusion"} <= SD1.features
    assert SD1.checkpoint_kinds == ("unet", "text_encoder")
    assert SD1.components == ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    assert SD1.config_file("tokenizer") == "tokenizer_config.json" and SD1.config_file("unet") == "config.json"
    assert not isinstance(object(), ModelFamily)


def test_a_class_missing_part_of_the_contract_is_not_a_family():
    class Partial:
        name, title, features, components, checkpoint_kinds = "p", "P", frozenset(), (), ()

        def recognises(self, index):
            return False

    assert not isinstance(Partial(), ModelFamily)


def test_require_names_the_missing_feature_in_one_line():
    require(SD1, {"unet", "text_encoder"}, "uce")
    with pytest.raises(HarnessError) as e:
        require(SD1, {"transformer"}, "some-method")
    assert "some-method needs transformer" in _one_line(e) and "sd1" in str(e.value)


def test_a_component_the_family_lacks_is_one_line():
    check_kind(SD1, "unet")
    check_kind(SD1, "pipeline")
    for kind in ("transformer", "text_encoder_2"):
        with pytest.raises(HarnessError) as e:
            check_kind(SD1, kind)
        assert _one_line(e).startswith(f"checkpoint.kind: {kind} is not a component of a Stable Diffusion 1.x model")


# ----------------------------------------------------------------------------- the registry
def test_family_of_the_toy_base_and_its_index():
    assert families.family_of(TOY_PIPELINE) is SD1
    assert families.family_of(TOY_PIPELINE / "model_index.json") is SD1
    index = json.loads((TOY_PIPELINE / "model_index.json").read_text())
    assert families.family_of(index) is SD1
    # a re-saved folder of another SD-1.x pipeline class: recognised by its parts
    assert families.family_of({**index, "_class_name": "StableDiffusionImg2ImgPipeline"}) is SD1
    assert families.family_of_base(BaseModelSpec(builtin="toy"), ROOT) is SD1


def test_unknown_family_name_is_one_line():
    with pytest.raises(HarnessError) as e:
        families.get("sdxl-nope")
    assert _one_line(e) == "unknown model family 'sdxl-nope'; did you mean sdxl? (known: sd1, sdxl)"


def test_unrecognised_base_is_one_line(tmp_path):
    d = tmp_path / "flux"
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
                                                    "text_encoder_2": ["transformers", "T5EncoderModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    with pytest.raises(HarnessError) as e:
        families.family_of(d)
    assert _one_line(e) == "base_model: flux/model_index.json (FluxPipeline) is not a pipeline of any known model family (sd1, sdxl)"
    # an SDXL index (every SD-1.x part and a second text encoder) is not SD-1.x: the sdxl family's
    sdxl = {**json.loads((TOY_PIPELINE / "model_index.json").read_text()), "_class_name": "StableDiffusionXLPipeline",
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
    assert not families.get("sd1").recognises(sdxl) and families.family_of(sdxl).name == "sdxl"
    (d / "model_index.json").write_text("{not json")
    with pytest.raises(HarnessError) as e:
        families.family_of(d)
    assert "base_model: model_index.json is not JSON" in _one_line(e)
    with pytest.raises(HarnessError) as e:
        families.family_of(tmp_path / "nowhere")
    assert "cannot be read" in _one_line(e)


def test_family_of_a_pipeline(toy_pipe):
    assert families.family_of_pipeline(toy_pipe) is SD1
    assert families.is_pipeline(toy_pipe) and not families.is_pipeline(lambda: toy_pipe)
    with pytest.raises(HarnessError) as e:
        families.family_of_pipeline(object())
    assert _one_line(e) == "object is not a pipeline of any known model family (sd1, sdxl)"


def test_a_family_registered_in_code_is_found_by_name_folder_index_and_pipeline(monkeypatch):
    monkeypatch.setattr(families, "REGISTRY", families._new_registry())  # restored after the test

    class Other(SD1Family):
        name, title = "other", "Other"

        def recognises(self, index):
            return index.get("_class_name") == "OtherPipeline"

        def owns(self, pipe):
            return getattr(pipe, "other", False)

    other = Other()
    families.register(other)
    assert families.names() == ["other", "sd1", "sdxl"] and families.get("other") is other
    assert families.family_of({"_class_name": "OtherPipeline"}) is other and families.family_of(TOY_PIPELINE) is SD1

    class Pipe:
        other = True

    assert families.family_of_pipeline(Pipe()) is other


FAKE_MODULE = '''
from harness.families.sd1 import SD1Family


class FakeFamily(SD1Family):
    name = "fake"
    title = "Fake"

    def recognises(self, index):
        return index.get("_class_name") == "FakePipeline"

    def owns(self, pipe):
        return getattr(pipe, "fake", False)


class NotAFamily:
    name = "broken"
'''

PROBE = '''
import sys
from harness import families
from harness.errors import HarnessError
try:
    families.registry()  # loads every family, the plugins' included
    print(families.names())
    f = families.get("fake")
    print(type(f).__name__, f.name, families.family_of({"_class_name": "FakePipeline"}) is f, families.get("sd1").name)
except HarnessError as e:
    print("ERROR", e)
'''


def _dist(site: Path, entry_points: str) -> None:
    (site / "fakefam.py").write_text(textwrap.dedent(FAKE_MODULE))
    info = site / "fakefam-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakefam\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def _probe(site: Path) -> str:
    env = {"PYTHONPATH": f"{site}:{ROOT}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=site, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_family_registered_by_entry_point_is_found(tmp_path):
    _dist(tmp_path, "[unlearn_harness.families]\nfake = fakefam:FakeFamily\n")
    assert _probe(tmp_path).splitlines() == ["['fake', 'sd1', 'sdxl']", "FakeFamily fake True sd1"]


@pytest.mark.parametrize("entry, needle", [
    ("broken = fakefam:NotAFamily", "model family 'broken': entry point broken = fakefam:NotAFamily (group unlearn_harness.families): is not a ModelFamily"),
    ("gone = fakefam:Missing", "model family 'gone': entry point gone = fakefam:Missing (group unlearn_harness.families) cannot be loaded (AttributeError"),
])
def test_a_bad_entry_point_is_one_line(tmp_path, entry, needle):
    _dist(tmp_path, f"[unlearn_harness.families]\n{entry}\n")
    out = _probe(tmp_path)
    assert out.startswith("ERROR ") and needle in out and "\n" not in out, out


def test_a_plugin_cannot_take_the_name_of_a_built_in_family(tmp_path):
    _dist(tmp_path, "[unlearn_harness.families]\nsd1 = fakefam:FakeFamily\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    code = "from harness import families; print(families.names(), type(families.get('sd1')).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.stdout.strip() == "['sd1', 'sdxl'] SD1Family", out.stderr


# ----------------------------------------------------------------------------- behaviour on the toy world
def test_load_the_toy_base_through_its_family():
    pipe = load_base(BaseModelSpec(builtin="toy"), ROOT, Placement("cpu", "float32"))
    assert SD1.owns(pipe) and families.family_of_pipeline(pipe) is SD1
    direct = SD1.load(TOY_PIPELINE, Placement("cpu", "float32"))
    a, b = SD1.denoiser(pipe).state_dict(), SD1.denoiser(direct).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert SD1.latent_shape(pipe, 32, 32) == (pipe.unet.config.in_channels, 32 // pipe.vae_scale_factor, 32 // pipe.vae_scale_factor)
    assert SD1.native_size(TOY_PIPELINE, "base_model") == pipe.unet.config.sample_size * pipe.vae_scale_factor


def test_the_pipeline_a_method_edits_and_the_tokenizer_alone():
    pipe = SD1.load_for_training(TOY_PIPELINE, "cpu")
    assert SD1.owns(pipe) and SD1.denoiser(pipe).dtype == torch.float32
    tok = SD1.load_tokenizer(TOY_PIPELINE)
    assert tok("a red cube").input_ids == SD1.text_encoders(pipe)[0][0]("a red cube").input_ids


def test_apply_a_checkpoint_component(tiny_pipe_factory, tmp_path):
    pipe = tiny_pipe_factory(seed=2)
    assert SD1.component(pipe, "unet") is pipe.unet and SD1.component(pipe, "text_encoder") is pipe.text_encoder
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    new = torch.full_like(before[KEY], 0.25)
    save_file({KEY: new}, tmp_path / "unet.safetensors")
    spec = CheckpointSpec(kind="unet", path="unet.safetensors", sha256=sha256_file(tmp_path / "unet.safetensors"))
    assert SD1.apply_checkpoint(pipe, spec, tmp_path / "unet.safetensors", Placement("cpu", "float32")) is pipe
    after = pipe.unet.state_dict()
    assert torch.equal(after[KEY], new) and all(torch.equal(after[k], v) for k, v in before.items() if k != KEY)
    with pytest.raises(HarnessError) as e:
        SD1.apply_checkpoint(pipe, spec.model_copy(update={"kind": "transformer"}), tmp_path / "unet.safetensors", Placement("cpu", "float32"))
    assert _one_line(e).startswith("checkpoint.kind: transformer is not a component")


def test_encode_prompts_is_the_pipelines_own_conditioning(toy_pipe):
    prompts = ["a red cube", "a blue sphere in watercolor"]
    with torch.no_grad():
        got = SD1.encode_prompts(toy_pipe, prompts)
        own = toy_pipe.encode_prompt(prompts, "cpu", 1, False)[0]
        tok, te = SD1.text_encoders(toy_pipe)[0]
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        by_ids = SD1.encode_ids(toy_pipe, ids)
        by_embeds = SD1.encode_embeds(te, SD1.token_embeddings(te)[ids])
    assert got.shape == (2, tok.model_max_length, te.config.hidden_size)
    assert torch.equal(got, own) and torch.equal(got, by_ids)
    assert torch.allclose(got, by_embeds, atol=1e-5)


def test_cross_attention_is_the_to_k_to_v_of_every_attn2(toy_pipe):
    kv = SD1.cross_attention(SD1.denoiser(toy_pipe))
    assert kv and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in kv)
    assert {n for n, m in toy_pipe.unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))} == set(kv)
    from harness.methods.common import cross_attention_kv

    assert cross_attention_kv(toy_pipe.unet).keys() == kv.keys()


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_one_denoising_step_equals_the_pipelines_own(toy_pipe, scheduler):
    """The family's guided step from the initial latents gives the latents the pipeline itself
    leaves after a one-step run (same UNet, guidance and scheduler step), bitwise."""
    pipe = copy.deepcopy(toy_pipe)
    SD1.set_scheduler(pipe, scheduler)
    prompts, g = ["a red cube", "a green cone"], 5.0
    lat = SD1.initial_latents(pipe, [3, 4], 32, 32)
    with torch.inference_mode():
        emb = SD1.encode_guided(pipe, prompts, ["", ""], "cpu")
        uncond, cond = emb.chunk(2)
        own = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=1, guidance_scale=g, height=32, width=32,
                   latents=lat.clone(), output_type="latent").images
        sched = SD1.scheduler(pipe)
        sched.set_timesteps(1)
        t = sched.timesteps[0]
        noise = SD1.predict_noise(pipe, sched.scale_model_input(lat, t), t, cond)
        unet_own = pipe.unet(sched.scale_model_input(lat, t), t, encoder_hidden_states=cond).sample
        got = SD1.denoising_step(pipe, sched, lat * sched.init_noise_sigma, t, emb, g, {})
    assert torch.equal(got, own)
    assert torch.equal(noise, unet_own)


def _old_partial_loop(pipes, jobs, psi):
    """The partial-diffusion loop as ``attacks/partial_diffusion.py`` wrote it before the family
    held it: the reference the family's trajectory must match bitwise."""
    from harness.run.generate import initial_latents, set_scheduler

    base, unl = pipes
    j0 = jobs[0]
    set_scheduler(base, j0.scheduler)
    sched = base.scheduler
    sched.set_timesteps(j0.steps)
    device, dtype = base.unet.device, base.unet.dtype
    prompts, negs = [j.prompt for j in jobs], [j.negative_prompt for j in jobs]
    with torch.inference_mode():
        emb = {}
        for name, p in (("base", base), ("unl", unl)):
            cond, uncond = p.encode_prompt(prompts, device, 1, True, negative_prompt=negs)
            emb[name] = torch.cat([uncond, cond])
        lat = initial_latents(base, [j.seed for j in jobs], j0.height, j0.width).to(device=device, dtype=dtype) * sched.init_noise_sigma
        gens = [torch.Generator("cpu").manual_seed(j.seed + 1) for j in jobs]
        switch = int(round(psi * j0.steps))
        extra = {"eta": j0.eta, "generator": gens} if j0.scheduler == "ddim" else {}
        for i, t in enumerate(sched.timesteps):
            pipe, e = (base, emb["base"]) if i < switch else (unl, emb["unl"])
            inp = sched.scale_model_input(torch.cat([lat, lat]), t)
            eu, ec = pipe.unet(inp, t, encoder_hidden_states=e).sample.chunk(2)
            lat = sched.step(eu + j0.guidance * (ec - eu), t, lat, **extra).prev_sample
        img = unl.vae.decode(lat / unl.vae.config.scaling_factor).sample
    raw = (img / 2 + 0.5).permute(0, 2, 3, 1).float().cpu().numpy()
    return raw, np.round(np.clip(np.nan_to_num(raw, nan=0.0), 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("scheduler, eta, psi", [("ddim", 0.0, 0.5), ("ddim", 0.3, 0.34), ("pndm", 0.0, 0.67)])
def test_partial_diffusion_equals_the_old_loop_bitwise(toy_pipe, scheduler, eta, psi):
    from harness.attacks.partial_diffusion import run_partial_batch

    base = copy.deepcopy(toy_pipe)
    unl = copy.deepcopy(toy_pipe)
    with torch.no_grad():
        kv = SD1.cross_attention(unl.unet)
        for m in kv.values():
            m.weight.mul_(0.5)  # a different unlearned model: the switch point matters
    jobs = [_job("a red cube", 11, scheduler, eta=eta), _job("a blue sphere", 12, scheduler, eta=eta)]
    old_raw, old_img = _old_partial_loop((copy.deepcopy(base), unl), jobs, psi)
    new_raw, new_img = SD1.partial_diffusion((base, unl), jobs, psi)
    via_attack = run_partial_batch((copy.deepcopy(base), unl), jobs, psi)
    assert np.array_equal(old_raw, new_raw) and np.array_equal(old_img, new_img)
    assert np.array_equal(via_attack[0], old_raw) and np.array_equal(via_attack[1], old_img)
    only_base = SD1.partial_diffusion((copy.deepcopy(base), unl), jobs, 1.0)[1]
    assert not np.array_equal(only_base, new_img)  # psi moves the switch: the test sees the two models


def test_sd1family_instances_are_interchangeable():
    assert isinstance(SD1Family(), ModelFamily) and SD1Family().name == SD1.name


# ----------------------------------------------------------------------------- the callers
def _submission(local_dir: str, kind: str = "unet", concept: str = "cube"):
    from harness.spec import Submission

    return Submission(name="x", method={"name": "m"}, base_model={"local_dir": local_dir},
                      checkpoint={"kind": kind, "path": "c.safetensors", "sha256": "0" * 64},
                      targets=[{"concept": concept, "kind": "object"}])


def test_check_reads_the_base_through_its_family(tmp_path):
    """``unlearn check``'s base checks ask the base's family: its parts, its tokenizer, the
    checkpoint kinds it has, its native size."""
    import shutil

    from harness.resolve.check import check_base, check_checkpoint, tokenizer_notes
    from harness.run.plan import native_size

    shutil.copytree(TOY_PIPELINE, tmp_path / "base")
    sub = _submission("base", concept="xqzvbnmw")
    assert check_base(sub, tmp_path) == []
    assert native_size(sub, tmp_path) == SD1.native_size(TOY_PIPELINE, "base_model")
    notes = tokenizer_notes(sub, tmp_path)
    assert len(notes) == 1 and notes[0].startswith("note: targets.0.concept: concept word 'xqzvbnmw' is not a single token")
    with pytest.raises(HarnessError) as e:
        check_checkpoint(_submission("base", kind="transformer"), tmp_path / "c.safetensors", tmp_path, False)
    assert _one_line(e).startswith("checkpoint.kind: transformer is not a component of a Stable Diffusion 1.x model")
    index = json.loads((tmp_path / "base" / "model_index.json").read_text())
    del index["vae"]
    (tmp_path / "base" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(HarnessError) as e:
        check_base(sub, tmp_path)
    assert _one_line(e) == "base_model: base/model_index.json names no vae (not a Stable Diffusion 1.x pipeline)"
    (tmp_path / "base" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": ["diffusers", "X"]}))
    with pytest.raises(HarnessError) as e:
        check_base(sub, tmp_path)
    assert _one_line(e) == "base_model: base/model_index.json (FluxPipeline) is not a pipeline of any known model family (sd1, sdxl)"


def test_convert_asks_the_family_for_the_component_and_its_layout():
    assert SD1.component_file("unet") == "unet/diffusion_pytorch_model.safetensors"
    assert SD1.guess_kind({"model.diffusion_model.input_blocks.0.0.weight": 0}) == "unet"
    assert SD1.guess_kind({"text_model.embeddings.token_embedding.weight": 0}) == "text_encoder"
    assert SD1.layout({"cond_stage_model.transformer.x": 0}) == "compvis" and SD1.layout({"conv_in.weight": 0}) == "diffusers"
    with pytest.raises(HarnessError) as e:
        SD1.component_file("transformer")
    assert _one_line(e).startswith("--kind: transformer is not a component")


def test_a_checkpoint_changed_after_its_check_is_hashed_again(tmp_path):
    """``Pipelines`` skips the hash of a checkpoint only while its files are as they were when its
    sha256 was verified (``verified_checkpoint``'s state, carried by ``ResolvedSubmission``): a
    file rewritten since, even with its modification time put back, or no recorded state at all,
    sends the unlearned model's load back to the sha256 check, which refuses the new bytes."""
    import hashlib
    import os

    from harness.errors import HarnessError
    from harness.families.sd1 import Pipelines, checkpoint_file, file_state, verified_checkpoint
    from harness.spec import CheckpointSpec

    f = tmp_path / "unet.safetensors"
    f.write_bytes(b"x" * 16)
    spec = CheckpointSpec(kind="unet", path="unet.safetensors", sha256=hashlib.sha256(b"x" * 16).hexdigest())
    path, state = verified_checkpoint(spec, tmp_path, tmp_path / "cache")
    assert path == f and state == file_state(f) and state is not None
    pipes = Pipelines(f, state)
    assert pipes._verified() == f
    assert Pipelines(f)._verified() is None and Pipelines(None, state)._verified() is None  # no state: hash again
    st = f.stat()
    f.write_bytes(b"y" * 16)  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime: the inode's ctime still moved
    assert pipes._verified() is None
    with pytest.raises(HarnessError, match="^checkpoint.sha256: unet.safetensors has sha256 "):
        checkpoint_file(spec, tmp_path, tmp_path / "cache")  # what the recipe runs when _verified() is None
    d = tmp_path / "folder"
    d.mkdir()
    (d / "a.bin").write_bytes(b"a")
    pipes = Pipelines(d, file_state(d))
    assert pipes._verified() == d
    (d / "b.bin").write_bytes(b"b")  # a file added to a folder checkpoint
    assert pipes._verified() is None


def test_a_suite_whose_attack_needs_a_feature_the_family_lacks_is_refused_at_start_up(monkeypatch, tmp_path):
    """``check_suite`` (the start-up check) asks the base's family for what each prompt attack
    of the suite needs (``AttackInfo.needs``): one line before any image is made."""
    from harness.resolve.check import check_suite
    from harness.spec import load_submission, load_suite

    monkeypatch.setattr(families, "REGISTRY", families._new_registry())

    class TextOnly(SD1Family):
        name, title = "textonly", "no token embeddings"
        features = frozenset({"unet", "text_encoder"})

    families.register(TextOnly())
    sub = load_submission(ROOT / "submissions" / "toy-uce-style.yaml")
    suite = load_suite(ROOT / "suites" / "toy-robustness.yaml")
    with pytest.raises(HarnessError) as e:
        check_suite(sub, suite, ROOT, tmp_path, None, "textonly")
    msg = _one_line(e)
    assert msg.startswith("suite toy-robustness: attacks.") and "needs token_embeddings" in msg and "textonly" in msg, msg
    assert check_suite(sub, suite, ROOT, tmp_path, None, "sd1").startswith("suite toy-robustness: ")
