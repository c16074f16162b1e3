"""SPM on tiny random SD-1.x pipelines built in code: the rank-1 adapter's update and its merge
(known answers), which layers get one, the anchors and the anchor batch as the authors' code
forms them, the loss (known answer), training lowering the erasure loss while the anchoring term
holds other conditionings, identity at zero steps or lr 0, the learning-rate schedule, presets,
and the one-line errors of ``unlearn erase spm``."""

import inspect
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.families.base import call_denoiser
from harness.methods import spm
from harness.methods.common import for_toy_world
from harness.toy.model import build_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(steps=3, lr=1e-2, rank=1, alpha=1.0, guidance=1.0, la_strength=10.0, anchors=2, sample_steps=3, sample_guidance=3.0,
            warmup=0, cycles=1, weight_decay=0.01, max_grad_norm=0.0, dynamic_resolution=False, seed=0)


def test_the_adapter_adds_scaled_up_down_and_merging_gives_the_same_layer():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(6, 5)
    conv = torch.nn.Conv2d(6, 5, 1)
    x, xc = torch.randn(3, 6, generator=g), torch.randn(2, 6, 4, 4, generator=g)
    for layer, inp in ((lin, x), (conv, xc)):
        a = spm.Adapter(layer, rank=2, alpha=1.0, g=g)
        assert not a.up.weight.any() and a.scale == 0.5  # zero up-projection: the adapted layer starts as the original
        bound = 1 / math.sqrt(6)  # Kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert a.down.weight.abs().max() <= bound and a.down.weight.abs().max() > 0.5 * bound
        with torch.no_grad():
            a.up.weight.normal_(generator=g)
        handle = layer.register_forward_hook(a.hook)
        with torch.no_grad():
            hooked = layer(inp)
            a.multiplier = 0.0
            off = layer(inp)
            a.multiplier = 1.0
        handle.remove()
        up, down = a.up.weight.reshape(5, 2), a.down.weight.reshape(2, 6)
        want = 0.5 * up @ down
        assert torch.allclose(a.delta().reshape(5, 6), want)
        with torch.no_grad():
            assert torch.equal(off, layer(inp))
            layer.weight += a.delta()
            assert torch.allclose(hooked, layer(inp), atol=1e-5)


def test_every_linear_and_conv_of_the_transformer_blocks_is_adapted():
    pipe = build_pipeline(seed=1)
    names = set(spm.adapted_layers(pipe.unet))
    # per transformer block: proj_in, proj_out, attn1 / attn2 q k v out, ff in / out
    blocks = {n for n, m in pipe.unet.named_modules() if type(m).__name__ == "Transformer2DModel"}
    assert len(names) == 12 * len(blocks) and len(blocks) > 0
    assert all(any(n.startswith(b + ".") for b in blocks) for n in names)
    for end in ("proj_in", "proj_out", "attn1.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"):
        assert sum(n.endswith(end) for n in names) == len(blocks), end
    assert not any("resnets" in n or "time_emb" in n or n.endswith("conv_in") for n in names)


def test_anchors_are_rescaled_directions_and_the_batch_is_the_released_codes():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1, 16, 64, generator=g) * 3
    samples = spm.sample_anchors(target, 4, random.Random(0), g)
    assert len(samples) == 4 and all(s.shape == target.shape for s in samples)
    ratios = [float(s.norm() / target.norm()) for s in samples]
    assert all(0.8 <= r <= 1.2 for r in ratios) and len(set(ratios)) == 4
    u = torch.zeros(1, 16, 64)
    batch = spm.anchor_batch(u, samples)  # [u, s1, u, s2, u, s3, u, s4][4:] = [u, s3, u, s4]
    assert batch.shape == (4, 16, 64)
    assert torch.equal(batch[0], u[0]) and torch.equal(batch[1], samples[2][0])
    assert torch.equal(batch[2], u[0]) and torch.equal(batch[3], samples[3][0])


def test_a_direction_like_the_target_is_never_accepted():
    """Acceptance probability 1 - cos: a target whose every direction draw is the target itself
    (cos 1) would loop forever; with one coordinate the draws are +-target, and only -target
    (cos -1, probability 2 - capped at 1) is kept."""
    g = torch.Generator().manual_seed(3)
    target = torch.tensor([[[2.0]]])
    samples = spm.sample_anchors(target, 6, random.Random(1), g)
    assert all(float(s) < 0 for s in samples)


def test_the_loss_is_the_papers():
    t, p, n = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0]), torch.tensor([0.0, 1.0])
    total, erase, anchor = spm.spm_loss(t, p, n, 1.0)
    # target n - 1 * (p - n) = (-3, 1): MSE ((1 + 3)^2 + (2 - 1)^2) / 2 = 8.5
    assert float(erase) == 8.5 and float(total) == 8.5 and float(anchor) == 0
    total, erase, anchor = spm.spm_loss(t, p, n, 2.0, torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]), la_strength=10.0)
    # target n - 2 (p - n) = (-6, 1): ((7)^2 + 1) / 2 = 25; anchoring (1 + 0) / 2 = 0.5
    assert float(erase) == 25.0 and float(anchor) == 0.5 and float(total) == 30.0


def test_the_schedule_is_cosine_with_hard_restarts_after_warmup():
    f = spm._hard_restarts(10, 110, 2)
    assert f(0) == 0 and f(5) == 0.5 and f(10) == 1.0
    assert abs(f(35) - 0.5) < 1e-12 and abs(f(59) - 0.5 * (1 + math.cos(math.pi * 0.98))) < 1e-12
    assert f(60) == 1.0 and f(110) == 0.0  # the restart, the end


def test_zero_steps_or_zero_lr_change_nothing_and_training_changes_only_the_adapted_weights():
    cp = for_toy_world("triangle")
    pipe = build_pipeline(seed=2)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    te = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    for params in ({**FAST, "steps": 0}, {**FAST, "lr": 0.0}):
        changed = spm.erase(pipe, [cp], **params, progress=False)
        assert len(changed) == 84 and all(torch.equal(v, before[k]) for k, v in changed.items())
        assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    changed = spm.erase(pipe, [cp], **FAST, progress=False)
    after = pipe.unet.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == set(changed) and all(k.endswith(".weight") for k in moved)
    assert {k[: -len(".weight")] for k in moved} == set(spm.adapted_layers(pipe.unet))
    assert all(torch.equal(changed[k], after[k]) for k in changed)
    # each change is rank 1 (the merged one-dimensional adapter)
    for k in moved:
        sv = torch.linalg.svdvals((after[k] - before[k]).reshape(after[k].shape[0], -1).double())
        assert sv[0] > 0 and sv[1] < 1e-3 * sv[0], k
    assert all(torch.equal(pipe.text_encoder.state_dict()[k], v) for k, v in te.items())
    layers = spm.adapted_layers(pipe.unet)
    assert not any(m._forward_hooks for m in layers.values()) and not any(p.requires_grad for p in pipe.unet.parameters())


def _fixed_losses(unet, frozen, pipe, cp, others):
    """The erasure loss at fixed (x_t, t) for the concept's prompts, and how far the UNet's
    predictions for other prompts are from the original's."""
    from harness.families import family_of_pipeline

    fam = family_of_pipeline(pipe)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        c, c0, o = fam.encode_prompts(pipe, cp.erased()), fam.encode_prompts(pipe, [""]), fam.encode_prompts(pipe, others)
        x = torch.randn(len(c), 4, 16, 16, generator=g)
        t = torch.tensor([300] * len(c))
        e0 = call_denoiser(frozen, x, t, c0.expand(len(c), -1, -1))
        ec = call_denoiser(frozen, x, t, c)
        erase = torch.nn.functional.mse_loss(call_denoiser(unet, x, t, c), e0 - (ec - e0))
        xo = x[: len(o)]
        drift = torch.nn.functional.mse_loss(call_denoiser(unet, xo, t[: len(o)], o), call_denoiser(frozen, xo, t[: len(o)], o))
    return float(erase), float(drift)


def test_training_lowers_the_erasure_loss_and_anchoring_holds_the_rest():
    import copy

    cp = for_toy_world("triangle")
    others = [f"A {o} image in solid style." for o in ("circle", "square", "cross", "ring")]
    base = build_pipeline(seed=3)
    frozen = copy.deepcopy(base.unet)
    e_before, d_before = _fixed_losses(base.unet, frozen, base, cp, others)
    assert d_before == 0
    runs = {}
    for la in (0.0, 1000.0):
        pipe = build_pipeline(seed=3)
        h = spm.History()
        spm.erase(pipe, [cp], **{**FAST, "steps": 40, "lr": 3e-2, "la_strength": la}, progress=False, history=h)
        assert len(h) == 40 and len(h.parts) == 40
        assert all((a == 0) == (la == 0) for _e, a in h.parts[1:])  # anchors only with la_strength > 0
        runs[la] = _fixed_losses(pipe.unet, frozen, pipe, cp, others)
    assert runs[0.0][0] < 0.8 * e_before  # (at la_strength 1000 the tiny model barely moves: anchoring dominates)
    assert runs[1000.0][1] < runs[0.0][1]  # the anchored membrane moves the other prompts less


def test_deterministic_with_a_seed():
    cp = for_toy_world("striped")
    a = spm.erase(build_pipeline(seed=4), [cp], **FAST, progress=False)
    b = spm.erase(build_pipeline(seed=4), [cp], **FAST, progress=False)
    c = spm.erase(build_pipeline(seed=4), [cp], **{**FAST, "seed": 1}, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)


def test_dynamic_resolution_draws_sizes_below_the_native_one(monkeypatch):
    pipe = build_pipeline(seed=5)
    sizes = []
    pipe.unet.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[-2:])))
    spm.erase(pipe, [for_toy_world("circle")], **{**FAST, "dynamic_resolution": True}, progress=False)
    # the toy's native 16 latent cells: the bucket [8, 16) in steps of 8 leaves 8 (SD v1.4's 64: 32..56)
    assert sizes and set(sizes) == {(8, 8)}


def test_presets_cover_every_parameter_and_paper_is_the_default():
    sig = inspect.signature(spm.erase).parameters
    own = set(sig) - {"pipe", "concepts", "progress", "history"}
    assert set(spm.PRESETS) == {"paper", "toy"}
    for name, preset in spm.PRESETS.items():
        assert set(preset) == own, name
    assert {k: sig[k].default for k in own} == spm.PRESETS["paper"]
    assert spm.PRESETS["paper"]["la_strength"] == 1000.0 and spm.PRESETS["toy"]["la_strength"] == 10.0
    assert spm.INFO.families == frozenset({"sd1"}) and spm.INFO.tolerance == "long_fine_tune" and spm.INFO.committed_toy


ROOT = Path(__file__).resolve().parents[1]


def _erase(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.cli.main", "erase", "spm", *args], capture_output=True, text=True, cwd=cwd,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "UNLEARN_THREADS": "1", "PYTHONPATH": str(ROOT)})


def test_erase_command_writes_an_ordinary_unet_checkpoint(tiny_dir, tmp_path):
    fast = {"steps": 2, "sample_steps": 3, "anchors": 2}
    r = _erase("--base", str(tiny_dir), "--concept", "triangle", "--out", str(tmp_path / "out"), "--preset", "toy",
               *[x for k, v in fast.items() for x in ("--param", f"{k}={v}")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "method.json").read_text())
    assert rec["method"] == "spm" and rec["preset"] == "toy" and rec["params"] == {**spm.PRESETS["toy"], **fast}
    assert rec["checkpoint"]["kind"] == "unet" and rec["checkpoint"]["tensors"] > 0
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "out" / "unet.safetensors")
    assert all(k.endswith(".weight") and "lora" not in k for k in tensors)  # merged: the UNet's own names


@pytest.mark.parametrize(
    "args, message",
    [
        (["--param", "rank=0"], "--param rank: must be at least 1, not 0"),
        (["--param", "steps=-1"], "--param steps: must be at least 0, not -1"),
        (["--param", "sample_steps=1"], "--param sample_steps: must be at least 2, not 1"),
        (["--param", "la_strength=-1.0"], "--param la_strength: must be >= 0, not -1.0"),
        (["--param", "alpha=0.0"], "--param alpha: must be > 0, not 0.0"),
        (["--param", "anchors=0"], "--param anchors: must be at least 1, not 0"),
        (["--param", "rank=1.5"], "--param rank: '1.5' is not a whole number"),
        (["--param", "stepz=3"], "--param stepz: spm has no parameter 'stepz'"),
        (["--preset", "paper-sdxl"], "--preset: spm has no preset 'paper-sdxl'; known: paper, toy"),
    ],
)
def test_erase_command_one_line_errors(tiny_dir, tmp_path, args, message):
    short = [] if any(a.startswith("steps=") for a in args) else ["--param", "steps=1"]  # a bad value is refused before training
    r = _erase("--base", str(tiny_dir), "--out", str(tmp_path / "new"), "--concept", "triangle", *args, *short, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "new").exists()
