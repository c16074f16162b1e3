"""Selective Amnesia on tiny random pipelines built in code (SD-1.x and SDXL): the Fisher diagonal
against its definition computed here, the EWC term's known answer, nothing changes at zero epochs
or zero learning rate, training lowers the objective and a large lmbda holds the weights, which
weights each train set moves, the replay prompts and surrogate images (files confined to the
repository; the authors' prompts through the one downloader, served from 127.0.0.1), the
presets, and the one-line errors of ``unlearn erase sa``."""

import hashlib
import inspect
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.families import family_of_pipeline
from harness.methods import sa
from harness.methods.common import ConceptPrompts, for_toy_world
from harness.methods.finetune import base_latents, trainable
from harness.toy import world
from harness.toy.model import build_pipeline, build_pipeline_xl

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(lmbda=0.03, gamma=1.0, lr=1e-3, batch=2, epochs=1, train="full", surrogate="anchor", n_surrogate=2,
            replay_prompts="world", n_replay=2, n_fisher=2, fisher_timesteps=4, fisher_chunk=3, sample_steps=2,
            sample_guidance=5.0, seed=0)


def _cond(pipe, prompts):
    with torch.no_grad():
        return family_of_pipeline(pipe).encode_conditioning(pipe, prompts)


def test_fisher_is_the_squared_summed_gradient_averaged_over_samples():
    """Recomputed here from the definition, one timestep at a time with torch.autograd.grad: per
    sample the gradient of sum_t MSE over 4 evenly spaced timesteps (0, 333, 666, 999), scaled by
    1000 / 4, squared, averaged over the 2 samples; the method's chunks of 3 timesteps give it."""
    pipe = build_pipeline(seed=31)
    params = trainable(pipe.unet, "xattn")
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 4, 16, 16, generator=g)
    conds = [_cond(pipe, [p]) for p in ("A circle image in solid style.", "A ring image in dotted style.")]
    got = sa.fisher_diagonal(pipe, params, x0, conds, 4, 3, torch.Generator().manual_seed(5))
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    g = torch.Generator().manual_seed(5)
    ts = [0, 333, 666, 999]
    for i in range(2):
        noise = torch.randn((4, 4, 16, 16), generator=g)
        loss = 0
        for k, t in enumerate(ts):
            tt = torch.tensor([t])
            x_t = pipe.scheduler.add_noise(x0[i : i + 1], noise[k : k + 1], tt)
            loss = loss + ((pipe.unet(x_t, tt, encoder_hidden_states=conds[i]).sample - noise[k : k + 1]) ** 2).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        for (n, _), gr in zip(params.items(), grads):
            ref[n] += (1000 / 4 * gr) ** 2 / 2
    assert got.keys() == ref.keys()
    for n in ref:
        assert torch.allclose(got[n], ref[n], rtol=1e-4, atol=1e-12 + 1e-6 * float(ref[n].abs().max())), n
    assert all(p.grad is None for p in params.values())  # nothing left behind for the optimizer


def test_ewc_penalty_known_answer():
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    fisher = {"a": torch.tensor([2.0, 0.5]), "b": torch.tensor([[4.0]])}
    star = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.0]])}
    assert float(sa.ewc_penalty(params, fisher, star)) == 2 * 1 + 0.5 * 4 + 4 * 4  # no 1/2, as the authors'


def test_zero_epochs_and_zero_learning_rate_change_nothing():
    cp = for_toy_world("triangle")
    assert sa.erase(build_pipeline(seed=32), [cp], **{**FAST, "epochs": 0}, progress=False) == {}
    history = []
    assert sa.erase(build_pipeline(seed=32), [cp], **{**FAST, "lr": 0.0, "epochs": 2}, progress=False, history=history) == {}
    assert len(history) == 2  # 2 epochs of one batch of 2 pairs
    moved = sa.erase(build_pipeline(seed=32), [cp], **FAST, progress=False)
    assert moved and all(k in dict(build_pipeline(seed=32).unet.named_parameters()) for k in moved)


def _objective(pipe, x_s, cap, x_r, rep, seed=11):
    """forget + replay diffusion losses on fixed latents, timesteps and noise (no EWC)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        f = sa.diffusion_loss(pipe.unet, pipe, x_s, cap, g)
        r = sa.diffusion_loss(pipe.unet, pipe, x_r, rep, g)
    return float(f), float(r)


def test_training_lowers_the_objective_and_a_large_lmbda_holds_the_weights():
    """On the method's own surrogate and replay latents (re-made here with its seeds) the forget
    and replay losses fall with training; with lmbda 1e4 the weights move less than with 0."""
    cp = for_toy_world("triangle")
    kw = {**FAST, "n_surrogate": 4, "n_replay": 4, "n_fisher": 2, "epochs": 6, "lr": 2e-3}
    base = build_pipeline(seed=33)
    x_s, idx = base_latents(base, cp.anchored(), 4, 2, 5.0, kw["seed"])
    replay = sa.replay_set([cp], "world")
    x_r, which = base_latents(base, replay, 4, 2, 5.0, kw["seed"] + 1)
    cap, rep = _cond(base, [cp.erased()[i] for i in idx]), _cond(base, [replay[i] for i in which])
    f0, r0 = _objective(base, x_s, cap, x_r, rep)
    before = {n: p.detach().clone() for n, p in base.unet.named_parameters()}
    history = []
    changed = sa.erase(base, [cp], **kw, progress=False, history=history)
    f1, r1 = _objective(base, x_s, cap, x_r, rep)
    assert len(history) == 12 and f1 < f0 and r1 < r0, (f0, f1, r0, r1)
    free = sum(float((changed[n] - before[n]).norm() ** 2) for n in changed)
    held = sa.erase(build_pipeline(seed=33), [cp], **{**kw, "lmbda": 1e4}, progress=False)
    assert sum(float((held[n] - before[n]).norm() ** 2) for n in held) < 0.5 * free


def test_each_train_set_moves_only_its_weights():
    pipe = build_pipeline(seed=34)
    te = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    noxattn = sa.erase(pipe, [for_toy_world("striped")], **{**FAST, "train": "noxattn"}, progress=False)
    assert noxattn and not any(".attn2." in k or k.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) for k in noxattn)
    assert any(".attn1." in k for k in noxattn) and any("resnets" in k for k in noxattn)
    assert all(torch.equal(pipe.text_encoder.state_dict()[k], v) for k, v in te.items())
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    xattn = sa.erase(build_pipeline(seed=34), [for_toy_world("striped")], **{**FAST, "train": "xattn"}, progress=False)
    assert xattn and all(".attn2." in k for k in xattn)


def test_world_replay_prompts_are_the_prompts_without_the_concepts():
    one = sa.replay_set([for_toy_world("triangle")], "world")
    assert len(one) == 20 and not any("triangle" in p for p in one)
    assert set(one) == {world.prompt_for(o, s) for o in world.OBJECTS for s in world.STYLES if o != "triangle"}
    two = sa.replay_set([for_toy_world("triangle"), for_toy_world("striped")], "world")
    assert len(two) == 16 and not any("triangle" in p or "striped" in p for p in two)
    with pytest.raises(HarnessError, match="replay_prompts=world: the run has no prompts without the concept"):
        sa.replay_set([ConceptPrompts("van gogh")], "world")


def test_prompt_files_and_image_folders_stay_inside_the_repository(tmp_path, monkeypatch):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    (repo / "pyproject.toml").write_text("")
    (repo / "prompts.txt").write_text("a red car\n\n  a blue house  \n")
    (outside / "p.txt").write_text("x\n")
    (repo / "escape.txt").symlink_to(outside / "p.txt")
    (repo / "escape").symlink_to(outside)
    (repo / "empty.txt").write_text("\n")
    monkeypatch.chdir(repo)
    cp = ConceptPrompts("van gogh")
    assert sa.replay_set([cp], "prompts.txt") == ["a red car", "a blue house"]
    for value, message in [("../outside/p.txt", "leaves the repository"), (str(outside / "p.txt"), "must be a path relative to the repository"),
                           ("escape.txt", "leaves the repository"), ("missing.txt", "no such file"),
                           (".", "is a folder, not a regular file"), ("empty.txt", "holds no prompts")]:
        with pytest.raises(HarnessError, match="--param replay_prompts") as e:
            sa.replay_set([cp], value)
        assert message in str(e.value) and "\n" not in str(e.value), (value, str(e.value))
    pipe = build_pipeline(seed=35)
    imgs = repo / "q"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 24, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    lat, caps = sa.surrogate_latents(pipe, [cp], "q", 3, 2, 5.0, 0)
    assert lat.shape == (3, 4, 16, 16) and caps is None and torch.equal(lat[0], lat[2])  # cycled in name order
    noise, _ = sa.surrogate_latents(pipe, [cp], "noise", 2, 2, 5.0, 0)
    assert noise.shape == (2, 4, 16, 16) and torch.equal(noise, sa.surrogate_latents(pipe, [cp], "noise", 2, 2, 5.0, 0)[0])
    for value, message in [("escape", "leaves the repository"), ("prompts.txt", "is not a folder inside the repository"),
                           ("../outside", "leaves the repository")]:
        with pytest.raises(HarnessError, match="--param surrogate") as e:
            sa.erase(pipe, [cp], **{**FAST, "surrogate": value, "replay_prompts": "prompts.txt"}, progress=False)
        assert message in str(e.value) and "\n" not in str(e.value), (value, str(e.value))
    (imgs / "link.png").symlink_to(outside / "p.txt")
    with pytest.raises(HarnessError, match="link.png inside q/ is a symbolic link"):
        sa.surrogate_latents(pipe, [cp], "q", 2, 2, 5.0, 0)


def test_the_authors_prompts_come_through_the_one_downloader(tmp_path, monkeypatch):
    """Served from 127.0.0.1 (no network): the pinned file is fetched into the cache and read; a
    wrong sha256 and an offline run without the file are one line each."""
    body = b"a city skyline at dusk\nan abstract marbled pattern\n"

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/fim_prompts.txt"
        monkeypatch.setenv("UNLEARN_TEST_ALLOW_LOOPBACK_HTTP", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("UNLEARN_OFFLINE", raising=False)
        got = sa.authors_prompts(url, hashlib.sha256(body).hexdigest(), cache=tmp_path / "cache")
        assert got == ["a city skyline at dusk", "an abstract marbled pattern"]
        with pytest.raises(HarnessError, match="expected " + "1" * 64) as e:
            sa.authors_prompts(url.replace("fim", "other"), "1" * 64, cache=tmp_path / "cache")
        assert "\n" not in str(e.value)
    finally:
        httpd.shutdown()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError, match="is not cached and this run is offline") as e:
        sa.authors_prompts(cache=tmp_path / "empty")
    assert sa.AUTHORS_PROMPTS_URL in str(e.value) and "\n" not in str(e.value)


def test_deterministic_with_a_seed():
    cp = for_toy_world("square")
    a = sa.erase(build_pipeline(seed=36), [cp], **FAST, progress=False)
    b = sa.erase(build_pipeline(seed=36), [cp], **FAST, progress=False)
    c = sa.erase(build_pipeline(seed=36), [cp], **{**FAST, "seed": 1}, progress=False)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)


def test_sdxl_runs_through_the_family_contract():
    """On a tiny SDXL pipeline (pooled text and micro-conditioning in every UNet call) two
    concepts are erased; the Fisher, the forget and the replay losses all call the UNet with them."""
    pipe = build_pipeline_xl(seed=37)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("added_cond_kwargs")), with_kwargs=True)
    history = []
    changed = sa.erase(pipe, [for_toy_world("triangle"), for_toy_world("striped")], **{**FAST, "train": "xattn"}, progress=False,
                       history=history)
    assert changed and all(".attn2." in k for k in changed) and len(history) == 1
    assert calls and all(c is not None and {"text_embeds", "time_ids"} <= set(c) for c in calls)


def test_presets_cover_every_parameter_and_paper_is_the_default():
    sig = inspect.signature(sa.erase).parameters
    own = set(sig) - {"pipe", "concepts", "progress", "history"}
    assert set(sa.PRESETS) == {"paper", "toy"}
    for name, preset in sa.PRESETS.items():
        assert set(preset) == own, name
    assert {k: sig[k].default for k in own} == sa.PRESETS["paper"]
    paper = sa.PRESETS["paper"]
    assert (paper["lmbda"], paper["gamma"], paper["lr"], paper["epochs"], paper["replay_prompts"]) == (50.0, 1.0, 1.6e-4, 200, "authors")
    assert sa.INFO.families is None and sa.INFO.tolerance == "long_fine_tune" and sa.INFO.committed_toy


ROOT = Path(__file__).resolve().parents[1]


def _erase(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.cli.main", "erase", "sa", *args], capture_output=True, text=True, cwd=cwd,
                          env={"HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "UNLEARN_THREADS": "1",
                               "PYTHONPATH": str(ROOT)})


def test_erase_command_records_preset_and_params(tiny_dir, tmp_path):
    fast = {"epochs": 1, "n_surrogate": 2, "n_replay": 2, "n_fisher": 1, "fisher_timesteps": 2, "batch": 2}
    r = _erase("--base", str(tiny_dir), "--concept", "triangle", "--out", str(tmp_path / "out"), "--preset", "toy",
               *[x for k, v in fast.items() for x in ("--param", f"{k}={v}")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "method.json").read_text())
    assert rec["method"] == "sa" and rec["preset"] == "toy" and rec["params"] == {**sa.PRESETS["toy"], **fast}
    assert rec["checkpoint"]["kind"] == "unet" and rec["checkpoint"]["tensors"] > 100


@pytest.mark.parametrize(
    "args, message",
    [
        (["--param", "train=attn"], "--param train: must be one of full, xattn, noxattn, not 'attn'"),
        (["--param", "lmbda=-1.0"], "--param lmbda: must be a finite number >= 0, not -1.0"),
        (["--param", "batch=0"], "--param batch: must be at least 1, not 0"),
        (["--param", "n_fisher=0"], "--param n_fisher: must be at least 1, not 0"),
        (["--param", "fisher_timesteps=1001"], "--param fisher_timesteps: must be at most the model's 1000 training timesteps"),
        (["--param", "epochs=1.5"], "--param epochs: '1.5' is not a whole number"),
        (["--param", "replay_prompts=../secret.txt"], "--param replay_prompts: '../secret.txt' leaves the repository"),
        (["--param", "replay_prompts=/etc/hostname"], "--param replay_prompts: '/etc/hostname' must be a path relative to the repository"),
        (["--param", "surrogate=nowhere"], "--param surrogate: 'nowhere' is not a folder inside the repository"),
        (["--param", "replay_prompts=authors"], "--param replay_prompts=authors: https://raw.githubusercontent.com/clear-nus/"),
        (["--param", "lambda=3"], "--param lambda: sa has no parameter 'lambda'"),
    ],
)
def test_erase_command_one_line_errors(tiny_dir, tmp_path, args, message):
    short = [] if any(a.startswith("epochs=") for a in args) else ["--param", "epochs=1"]
    r = _erase("--base", str(tiny_dir), "--out", str(tmp_path / "new"), "--concept", "triangle", "--preset", "toy", *args, *short,
               cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("world, prefix", [("toy", ""), ("toy-xl", "xl-")])
@pytest.mark.parametrize("kind, concept", [("style", "striped"), ("object", "triangle")])
def test_committed_toy_checkpoints_load_into_their_world(world, prefix, kind, concept):
    """The committed checkpoints: the toy preset, pinned by the submission's sha256, and the
    ``unet`` kind loads into its world's pipeline (every tensor replaced by the file's)."""
    import yaml
    from safetensors.torch import load_file

    from harness.families.sd1 import Placement
    from harness.spec.submission import CheckpointSpec
    from harness.store.hashing import sha256_file
    from harness.toy.model import load_pipeline
    from harness.toy.paths import PIPELINES

    d = ROOT / "submissions" / "checkpoints" / f"{prefix}sa-{kind}-{concept}"
    sub = yaml.safe_load((ROOT / "submissions" / f"{world}-sa-{kind}.yaml").read_text())
    rec = json.loads((d / "method.json").read_text())
    assert rec["preset"] == "toy" and rec["params"] == sa.PRESETS["toy"] and rec["concept"] == concept
    assert rec["base"]["path"] == f"builtin:{world}" and sub["checkpoint"]["sha256"] == sha256_file(d / "unet.safetensors")
    pipe = load_pipeline(PIPELINES[world])
    fam = family_of_pipeline(pipe)
    tensors = load_file(d / "unet.safetensors")
    fam.apply_checkpoint(pipe, CheckpointSpec(kind="unet", path=sub["checkpoint"]["path"], sha256=sub["checkpoint"]["sha256"]),
                         d / "unet.safetensors", Placement.choose("cpu"))
    own = pipe.unet.state_dict()
    assert len(tensors) == rec["checkpoint"]["tensors"] and all(torch.equal(own[k], v) for k, v in tensors.items())
