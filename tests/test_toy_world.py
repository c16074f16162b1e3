"""The toy concept world: procedural data, tokenizer, committed classifier and pipeline."""

import json
import time

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.toy import world
from harness.toy.classifier import DEFAULT_DIR as CLF_DIR
from harness.toy.classifier import load_classifier, predict
from harness.toy.model import DEFAULT_DIR as PIPE_DIR
from harness.toy.tokenizer import WORDS

SETTINGS = dict(num_inference_steps=20, guidance_scale=5.0)


def test_dataset_is_deterministic_from_its_seed():
    a = world.sample(32, seed=7)
    b = world.sample(32, seed=7)
    c = world.sample(32, seed=8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    imgs, o, s = a
    assert imgs.shape == (32, 32, 32, 3) and imgs.dtype == np.uint8
    assert set(o) <= set(range(len(world.OBJECTS))) and set(s) <= set(range(len(world.STYLES)))


def test_world_has_five_objects_and_five_styles_with_unlearncanvas_prompts():
    assert len(world.OBJECTS) >= 5 and len(world.STYLES) >= 5
    assert world.prompt_for("ring", "dotted") == "A ring image in dotted style."
    assert len(world.all_prompts()) == len(world.OBJECTS) * len(world.STYLES)


def test_reference_images_hold_the_concept(toy_clf):
    """M-Score and FID references: every image shows the asked concept, the other factor varies."""
    striped = world.reference_images(None, "striped", 40, seed=1)
    assert striped.shape == (40, 32, 32, 3)
    po, ps = predict(toy_clf, striped)
    assert (ps == world.STYLES.index("striped")).all() and len(set(po)) >= 3
    po, ps = predict(toy_clf, world.reference_images("ring", None, 40, seed=2))
    assert (po == world.OBJECTS.index("ring")).all() and len(set(ps)) >= 3


def test_every_world_word_is_one_token(toy_pipe):
    tok = toy_pipe.tokenizer
    for w in WORDS:
        assert tok.tokenize(w) == [w + "</w>"], w
    assert len(tok.tokenize("zebra")) > 1  # an unknown word falls apart into byte pieces
    assert tok.model_max_length == 16


def test_classifier_loads_fast_and_is_accurate_on_fresh_images():
    t0 = time.perf_counter()
    clf = load_classifier(CLF_DIR)
    assert time.perf_counter() - t0 < 1.0
    imgs, o, s = world.sample(500, seed=4242)
    po, ps = predict(clf, imgs)
    assert (po == o).mean() >= 0.98 and (ps == s).mean() >= 0.98
    feats = clf.features(torch.from_numpy(imgs[:4]).permute(0, 3, 1, 2).float() / 255)
    assert feats.shape == (4, clf.config["widths"][-1])
    cfg = json.loads((CLF_DIR / "config.json").read_text())
    assert cfg["heldout_accuracy"]["object"] >= 0.98 and cfg["heldout_accuracy"]["style"] >= 0.98
    assert (CLF_DIR / "model.safetensors").stat().st_size < 5 * 2**20


def test_pipeline_loads_with_plain_from_pretrained_and_is_small():
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline.from_pretrained(str(PIPE_DIR))
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    size = sum(f.stat().st_size for f in PIPE_DIR.rglob("*") if f.is_file())
    assert size < 20 * 2**20


def _gen(pipe, prompts, seeds):
    from harness.run.generate import initial_latents

    lat = initial_latents(pipe, seeds, 32, 32)
    with torch.inference_mode():
        out = pipe(prompts, latents=lat, output_type="np", **SETTINGS).images
    return np.round(out * 255).astype(np.uint8)


def test_same_seed_same_image_and_different_prompts_differ(toy_pipe):
    p = "A cross image in checkered style."
    a = _gen(toy_pipe, [p, p], [5, 6])
    b = _gen(toy_pipe, [p], [5])
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], a[1])
    c = _gen(toy_pipe, ["A ring image in solid style."], [5])
    assert np.abs(a[0].astype(int) - c[0].astype(int)).mean() > 5


def test_generations_are_classified_as_prompted(toy_pipe, toy_clf):
    """One seed per prompt (25 images): the measured full-grid rate (docs/toy-world.md: 1.00 / 1.00) minus a
    margin of two images."""
    prompts = world.all_prompts()
    imgs = _gen(toy_pipe, [p for _, _, p in prompts], [1000 + i for i in range(len(prompts))])
    po, ps = predict(toy_clf, imgs)
    o = np.array([world.OBJECTS.index(x[0]) for x in prompts])
    s = np.array([world.STYLES.index(x[1]) for x in prompts])
    assert (po == o).mean() >= 0.92
    assert (ps == s).mean() >= 0.92


def test_training_commands_run_and_write_loadable_models(tmp_path):
    """A few steps of each trainer: the files they write load with the plain loaders."""
    from harness.toy.model import load_pipeline
    from harness.toy.train import train_classifier, train_model

    acc = train_classifier(tmp_path / "clf", steps=3, batch=8, pool=64)
    assert set(acc) == {"object", "style"}
    load_classifier(tmp_path / "clf")
    meta = train_model(tmp_path / "pipe", vae_steps=2, unet_steps=2, batch=4, pool=32, snapshot_every=0)
    assert meta["recipe"]["unet_steps"] == 2
    pipe = load_pipeline(tmp_path / "pipe")
    assert pipe.vae.config.scaling_factor == pytest.approx(meta["vae_scaling_factor"])


# ----------------------------------------------------------------------------- toy-xl (SDXL's architecture)
def test_toy_xl_loads_with_plain_from_pretrained_is_sdxl_shaped_and_small():
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from harness.families import family_of
    from harness.toy.paths import PIPELINE_DIR, PIPELINE_XL_DIR

    pipe = StableDiffusionXLPipeline.from_pretrained(str(PIPELINE_XL_DIR), add_watermarker=False)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == width and pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.config.force_zeros_for_empty_prompt
    assert family_of(PIPELINE_XL_DIR).name == "sdxl"
    # the toy world's own VAE, reused as it is
    vae = lambda d: (d / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()  # noqa: E731
    assert vae(PIPELINE_XL_DIR) == vae(PIPELINE_DIR)
    size = sum(f.stat().st_size for f in PIPELINE_XL_DIR.rglob("*") if f.is_file())
    assert size < 20 * 2**20


def test_toy_xl_generations_are_classified_as_prompted(toy_clf):
    """As the toy world's test: one seed per prompt, through the harness's SDXL batch runner."""
    from harness.families import family_of
    from harness.families.sd1 import Placement
    from harness.run.generate import Job, run_batch
    from harness.toy.paths import PIPELINE_XL_DIR

    pipe = family_of(PIPELINE_XL_DIR).load(PIPELINE_XL_DIR, Placement("cpu", "float32"))
    prompts = world.all_prompts()
    jobs = [Job(p, "", 1000 + i, "ddim", SETTINGS["num_inference_steps"], SETTINGS["guidance_scale"], 32, 32, 0.0, "float32", "x")
            for i, (_, _, p) in enumerate(prompts)]
    _, imgs = run_batch(pipe, jobs)
    po, ps = predict(toy_clf, imgs)
    o = np.array([world.OBJECTS.index(x[0]) for x in prompts])
    s = np.array([world.STYLES.index(x[1]) for x in prompts])
    assert (po == o).mean() >= 0.92
    assert (ps == s).mean() >= 0.92


def test_toy_xl_training_runs_and_writes_a_loadable_sdxl_pipeline(tmp_path):
    from harness.families import family_of
    from harness.toy.model import load_pipeline
    from harness.toy.paths import PIPELINE_DIR
    from harness.toy.train import train_model

    meta = train_model(tmp_path / "xl", unet_steps=2, batch=4, pool=32, snapshot_every=0, xl=True, vae_from=PIPELINE_DIR)
    assert meta["recipe"]["world"] == "toy-xl" and meta["recipe"]["vae_steps"] == 0
    pipe = load_pipeline(tmp_path / "xl")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and family_of(tmp_path / "xl").name == "sdxl"


def test_toy_checkpoints_refuse_a_method_the_worlds_family_cannot_run(tmp_path, capsys):
    from harness.cli.main import main

    rc = main(["toy", "checkpoints", "--root", str(tmp_path), "--world", "toy-xl", "--method", "ca"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--method ca: does not run on the toy-xl world's model family" in err, err
    assert "Stable Diffusion 1.x only" in err
    from harness.toy.submissions import committed_methods_of

    assert committed_methods_of("toy-xl") == ["esd", "mace", "sa", "uce"] and "ca" in committed_methods_of("toy")


def test_toy_checkpoints_for_every_world_skip_the_worlds_a_method_cannot_run(tmp_path, capsys, monkeypatch):
    """`--world all --method ca` (SD-1.x only): toy-xl is skipped with one notice line before any
    erasure, the toy checkpoints are made and the submissions are written (before the fix, toy-xl
    failed after the toy checkpoints and before the submissions)."""
    from harness.cli.main import main
    from harness.toy import submissions

    made = []

    def fake_make(root, methods, force=False, world="toy"):
        made.append((world, methods))
        return []

    written = []
    monkeypatch.setattr(submissions, "make_checkpoints", fake_make)
    monkeypatch.setattr(submissions, "write_submissions", lambda root: written.append(root) or [])
    rc = main(["toy", "checkpoints", "--root", str(tmp_path), "--world", "all", "--method", "ca"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0 and made == [("toy", ("ca",)), ("toy-xl", ())] and written == [tmp_path.resolve()]
    assert len(err) == 1 and err[0].startswith("skipping ca on toy-xl: it does not run on that world's model family"), err
    # a method every world runs is made in both; the plan is decided before the first erasure
    plan, notices = submissions.plan_worlds(["toy", "toy-xl"], ["esd", "ca"], every_world=True)
    assert plan == {"toy": ["esd", "ca"], "toy-xl": ["esd"]} and len(notices) == 1
    with pytest.raises(HarnessError, match="--method ca: does not run on the toy-xl world's model family"):
        submissions.plan_worlds(["toy", "toy-xl"], ["esd", "ca"], every_world=False)
    with pytest.raises(HarnessError, match="--method ca: runs on none of the worlds toy-xl"):
        submissions.plan_worlds(["toy-xl"], ["ca"], every_world=True)
