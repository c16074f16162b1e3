"""Inference-time methods (``method.kind: inference``; harness.families.guidance): known answers.

* a method that changes nothing gives the model's own outputs, bit for bit, with no extra call;
* the negative-prompt method's images are diffusers' own ``negative_prompt`` images;
* SLD's images are diffusers' ``StableDiffusionPipelineSafe`` images under each configuration;
* a single prediction (an attack's loss) is the conditional prediction that standard guidance
  turns into the method's guided one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.families import family_of_pipeline
from harness.families.base import call_denoiser
from harness.families.guidance import Guidance, install, installed

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a striped triangle", "a solid circle"]
ROOT = Path(__file__).resolve().parents[1]


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
    assert "forward" not in pipe.unet.__dict__ and installed(pipe, fam) is None


def test_removing_a_method_takes_out_its_own_hooks_too(pipe):
    class Hooked(Guidance):
        removed = 0

        def remove(self):
            self.removed += 1

    fam = family_of_pipeline(pipe)
    g = Hooked()
    install(pipe, fam, g, 6.0).remove()
    assert g.removed == 1
    install(pipe, fam, Guidance(), 6.0)  # the denoiser takes a method again


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


# ---------------------------------------------------------------------------- through the evaluator
NOOP = '''
from harness.families.guidance import Guidance
from harness.methods import MethodInfo

INFO = MethodInfo(name="noop", module=__name__, paper="https://example.org/noop", code="https://example.org/noop", kind="inference")


def setup(pipe, family, concepts):
    return Guidance()
'''


@pytest.fixture()
def noop_method(tmp_path, monkeypatch):
    """A registered inference-time method that changes nothing (``noop``)."""
    from harness.methods import REGISTRY

    (tmp_path / "noop_inference.py").write_text(NOOP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRY._own, "noop", "noop_inference:INFO")
    monkeypatch.setattr(REGISTRY, "_loaded", dict(REGISTRY._loaded))
    return "noop"


def _inference_sub(tmp_path, method: str, concept="striped", kind="style", extra="") -> str:
    p = tmp_path / f"{method}.yaml"
    p.write_text(f"name: t-{method}\nmethod: {{name: {method}, kind: inference}}\nbase_model: {{builtin: toy}}\n"
                 f"targets: [{{concept: {concept}, kind: {kind}}}]\n{extra}")
    return str(p)


def test_a_do_nothing_inference_method_gives_the_control_s_numbers_attacks_included(tmp_path, noop_method):
    """Known answer: under a method that changes nothing, every number (Pre-ASR, UnlearnDiffAtk's
    ASR, textual inversion's ASR) is the no-erasure control's, exactly."""
    from test_attacks import TI, _evaluate

    params = {"attack": "unlearndiffatk", "rounds": 1, "iterations": 2, "k": 3}
    extra = [{"name": "ti_asr", "params": TI}]
    control, _, _ = _evaluate("toy-base.yaml", params, tmp_path / "c1", extra=extra)
    noop, ev, _ = _evaluate(_inference_sub(tmp_path, "noop"), params, tmp_path / "c2", extra=extra)
    for m in ("pre_asr", "asr", "ti_asr"):
        assert (noop[m]["value"], noop[m]["base_value"]) == (control[m]["value"], control[m]["base_value"]), m
    assert noop["asr"]["details"]["asr_curve"] == control["asr"]["details"]["asr_curve"]


def test_the_white_box_attack_differentiates_through_the_method(tmp_path, monkeypatch):
    """UnlearnDiffAtk's predictions under the negative prompt are the method's: each single
    prediction costs the method's extra denoiser calls (the plain and the negative unconditional
    branch), so the same attack makes more UNet calls than on the control, and its loss history
    differs."""
    from test_attacks import _evaluate

    from harness.spec import load_submission

    ck = load_submission(str(ROOT / "submissions" / "toy-uce-style.yaml")).checkpoint
    on_uce = f"checkpoint: {{kind: unet, path: {ck.path}, sha256: {ck.sha256}}}\n"  # the negative prompt on the UCE model: items get attacked
    params = {"attack": "unlearndiffatk", "rounds": 1, "iterations": 2, "k": 3}
    uce, _, calls_u = _evaluate("toy-uce-style.yaml", params, tmp_path / "c1", monkeypatch)
    n_uce = calls_u["n"]
    neg, _, calls_n = _evaluate(_inference_sub(tmp_path, "negprompt", extra=on_uce), params, tmp_path / "c2", monkeypatch)
    assert uce["asr"]["details"]["attacked"] > 0 and neg["asr"]["details"]["attacked"] > 0
    assert calls_n["n"] > n_uce


@pytest.mark.parametrize("yaml_text, needle", [
    ("method: {name: sld}\n", "checkpoint: Field required (only a method.kind: inference submission may have none)"),
    ("method: {name: uce, kind: inference}\n", "method.kind: uce makes a checkpoint"),
    ("method: {name: nosuch, kind: inference}\n", "method.name: 'nosuch' is not a registered inference-time method"),
    ("method: {name: sld, kind: inference, params: {warmup_steps: many}}\n", "method.params: warmup_steps"),
    ("method: {name: sld, kind: inference, params: {strength: 3}}\n", "method.params: strength: sld has no parameter 'strength'"),
])
def test_a_bad_inference_submission_is_one_line(tmp_path, capsys, yaml_text, needle):
    from harness.cli.main import main

    p = tmp_path / "s.yaml"
    p.write_text("name: t-bad\n" + yaml_text + "base_model: {builtin: toy}\ntargets: [{concept: striped, kind: style}]\n")
    rc = main(["check", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_unlearn_erase_refuses_an_inference_method_in_one_line(tmp_path, capsys):
    from harness.cli.main import main
    from harness.toy.paths import PIPELINE_DIR

    rc = main(["erase", "sld", "--base", str(PIPELINE_DIR), "--concept", "striped", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "sld is an inference-time method" in err and len(err.strip().splitlines()) == 1, err


def test_the_fingerprint_names_the_method_its_parameters_and_targets(tmp_path):
    from harness.resolve.resolved import resolve_models
    from harness.spec import load_submission

    root = ROOT
    fps = set()
    for extra, concept in (("", "striped"), ("", "triangle")):
        p = _inference_sub(tmp_path, "sld", concept=concept, kind="style" if concept == "striped" else "object", extra=extra)
        fps.add(resolve_models(p, load_submission(p), root, tmp_path).unlearned_fingerprint)
    p = tmp_path / "sld2.yaml"
    p.write_text("name: t-sld2\nmethod: {name: sld, kind: inference, params: {warmup_steps: 3}}\nbase_model: {builtin: toy}\n"
                 "targets: [{concept: striped, kind: style}]\n")
    fps.add(resolve_models(str(p), load_submission(str(p)), root, tmp_path).unlearned_fingerprint)
    assert len(fps) == 3 and all("+inference:sld:" in f for f in fps)


# ---------------------------------------------------------------------------- SDXL
def test_on_sdxl_the_negative_prompt_is_the_pipeline_s_and_nothing_is_bitwise_nothing(tmp_path):
    """The guidance reads and writes SDXL's whole conditioning (hidden states, pooled text, size
    ids): the negative prompt method gives StableDiffusionXLPipeline's ``negative_prompt``
    images, and a method that changes nothing its images bit for bit."""
    from harness import families
    from harness.families.sd1 import Placement
    from harness.methods import negprompt
    from harness.run.generate import Job, run_batch
    from harness.toy.model import build_pipeline_xl

    d = tmp_path / "xl"
    build_pipeline_xl(seed=3).save_pretrained(d, safe_serialization=True)
    fam = families.family_of(d)
    pipe = fam.load(d, Placement("cpu", "float32"))

    def jobs(neg=""):
        return [Job(prompt=p, negative_prompt=neg, seed=s, scheduler="ddim", steps=4, guidance=5.0, height=32, width=32, eta=0.0,
                    dtype="float32", model="m") for p, s in zip(PROMPTS, (0, 1))]

    plain, _ = run_batch(pipe, jobs())
    ref, _ = run_batch(pipe, jobs("striped"))
    state = install(pipe, fam, Guidance(), 5.0)
    same, _ = run_batch(pipe, jobs())
    state.remove()
    install(pipe, fam, negprompt.setup(pipe, fam, ["striped"]), 5.0)
    got, _ = run_batch(pipe, jobs())
    assert (same == plain).all()
    assert abs(got - ref).max() < 1e-5 and abs(plain - ref).max() > 1e-4


# ---------------------------------------------------------------------------- the board
def test_the_board_marks_an_inference_method_and_shows_no_checkpoint(tmp_path):
    """A results file of an inference-time method (``method.kind: inference``, checkpoint null)
    is accepted, its rows say "(inference-time)" wherever the method is named, and its page shows
    no checkpoint instead of failing."""
    from test_leaderboard import build, page_of, result, write

    res = tmp_path / "results"
    inf = result("t-sld")
    inf["submission"]["method"] = {"name": "sld", "kind": "inference", "params": {}}
    inf["submission"]["checkpoint"] = None
    write(res, "t-sld.json", inf)
    write(res, "t-uce.json", result("t-uce"))
    counts, lines = build(res, tmp_path / "site")
    assert counts["submissions"] == 2, lines
    index = (tmp_path / "site" / "index.html").read_text()
    assert "sld (inference-time)" in index and "uce (inference-time)" not in index
    assert "none (an inference-time method)" in page_of(tmp_path / "site", "t-sld")


def test_compare_refuses_an_inference_run_against_a_checkpoint_baseline(tmp_path):
    from harness.errors import HarnessError
    from harness.gate.compare import refuse_mismatch
    from test_leaderboard import result

    base = result("t-x")
    new = result("t-x")
    new["submission"]["method"] = {"name": "sld", "kind": "inference", "params": {}}
    new["submission"]["checkpoint"] = None
    with pytest.raises(HarnessError, match="submission.method.kind: inference is compared with a baseline of kind checkpoint"):
        refuse_mismatch(new, base)
    refuse_mismatch(base, result("t-x"))  # the same kind: no refusal
