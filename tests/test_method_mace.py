"""MACE on tiny random pipelines built in code (SD-1.x and SDXL): the matched token positions,
both closed forms as minimisers of their objectives (rows built here, independently), the LoRA
stage lowering its attention loss, several concepts in one call, the masks, what changes, the
presets and the one-line errors of ``unlearn erase mace``."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.families import family_of_pipeline
from harness.methods import mace
from harness.methods.common import ConceptPrompts, for_toy_world
from harness.toy import world
from harness.toy.model import build_pipeline, build_pipeline_xl

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(lamb=0.5, train_preserve_scale=1.0, fuse_preserve_scale=1.0, preserve_weight=1.0, steps=3, lr=1e-2, rank=1,
            batch=1, use_pooler=True, importance_sampling=True, weight_decay=0.01, max_grad_norm=1.0, mask="shape",
            n_images=2, sample_steps=2, sample_guidance=5.0, seed=0)
KV = ("attn2.to_k.weight", "attn2.to_v.weight")


def _kv(pipe):
    return {n: m.weight.detach().double().clone() for n, m in family_of_pipeline(pipe).cross_attention(pipe.unet).items()}


def _emb(pipe, prompts):
    with torch.no_grad():
        return family_of_pipeline(pipe).encode_prompts(pipe, prompts).double()


def test_matching_positions_pair_the_shared_tokens_and_align_the_padding():
    # start 0, end 1; the middle token differs, the new prompt one token shorter
    assert mace.matching_positions([0, 5, 9, 1], [0, 5, 1], 6) == ([0, 1, 3, 4, 5], [0, 1, 2, 3, 4])
    assert mace.matching_positions([0, 5, 1], [0, 5, 9, 1], 6) == ([0, 1, 2, 3, 4], [0, 1, 3, 4, 5])
    # a one-token word swapped for another: every position but the word's
    assert mace.matching_positions([0, 5, 7, 8, 1], [0, 5, 6, 8, 1], 7) == ([0, 1, 3, 4, 5, 6], [0, 1, 3, 4, 5, 6])
    assert mace.matching_positions([0, 4, 1], [0, 4, 1], 4) == ([0, 1, 2, 3], [0, 1, 2, 3])


def _word_position(pipe, prompt, word):
    ids = pipe.tokenizer(prompt).input_ids
    return ids.index(pipe.tokenizer(word, add_special_tokens=False).input_ids[0])


def test_refinement_is_the_minimiser_of_its_objective():
    """With no LoRA steps (and nothing preserved in the fusion) the result is the refinement
    alone, and its gradient vanishes for rows built here: every position of each toy prompt but
    the concept's (the anchor is one token too), mapped onto the anchored prompt's; the
    preserved prompts at every position, weighted train_preserve_scale^2 * preserve_weight."""
    pipe = build_pipeline(seed=21)
    cp = for_toy_world("striped")
    w0 = _kv(pipe)
    lamb, s, pw = 0.5, 0.7, 2.0
    changed = mace.erase(pipe, [cp], **{**FAST, "steps": 0, "lamb": lamb, "train_preserve_scale": s, "fuse_preserve_scale": 0.0,
                                        "preserve_weight": pw}, progress=False)
    old, new = _emb(pipe, cp.erased()), _emb(pipe, cp.anchored())
    cs, as_ = [], []
    for k, prompt in enumerate(cp.erased()):
        keep = [i for i in range(old.shape[1]) if i != _word_position(pipe, prompt, "striped")]
        cs.append(old[k, keep])
        as_.append(new[k, keep])
    c, a = torch.cat(cs), torch.cat(as_)
    p = _emb(pipe, cp.preserved()).reshape(-1, c.shape[1])
    k_t = s * s * pw
    for name, w in w0.items():
        new_w = changed[f"{name}.weight"].double()
        grad = lamb * (new_w - w) + (new_w @ c.T - w @ a.T) @ c + k_t * (new_w @ p.T - w @ p.T) @ p
        scale = (lamb * w + (w @ a.T) @ c + k_t * (w @ p.T) @ p).norm()  # the gradient's terms' size (W is stored in float32)
        assert grad.norm() / scale < 1e-5, name


def test_fusion_is_the_minimiser_of_its_objective_for_two_concepts(monkeypatch):
    """Stage 3 with known LoRA updates (stage 2 replaced by fixed random ones): the fused W is the
    stationary point of lamb ||W - W_cfr||^2 + sum_i sum_e ||W e - (W_cfr + D_i) e||^2
    + k_f sum_p ||W p - W0 p||^2 over both concepts' prompts at every position."""
    concepts = [for_toy_world("triangle"), for_toy_world("striped")]
    pipe = build_pipeline(seed=22)
    w0 = _kv(pipe)
    refined = mace.erase(build_pipeline(seed=22), concepts, **{**FAST, "steps": 0, "fuse_preserve_scale": 0.0}, progress=False)
    g = torch.Generator().manual_seed(0)
    deltas = [{n: 0.05 * torch.randn(w.shape, generator=g, dtype=torch.float64) for n, w in w0.items()} for _ in concepts]
    calls = []

    def fake_train(pipe_, cp, kv, **kw):
        calls.append(cp.concept)
        return deltas[kw["index"]]

    monkeypatch.setattr(mace, "train_lora", fake_train)
    lamb, f, pw = FAST["lamb"], 0.3, FAST["preserve_weight"]
    changed = mace.erase(pipe, concepts, **{**FAST, "fuse_preserve_scale": f}, progress=False)
    assert calls == ["triangle", "striped"]
    rows = [_emb(pipe, cp.erased()).reshape(-1, 64) for cp in concepts]
    p = _emb(pipe, [q for cp in concepts for q in cp.preserved()]).reshape(-1, 64)
    for name, w in w0.items():
        w_cfr, new_w = refined[f"{name}.weight"].double(), changed[f"{name}.weight"].double()
        grad = lamb * (new_w - w_cfr) + f * pw * (new_w @ p.T - w @ p.T) @ p
        scale = (lamb * w_cfr + f * pw * (w @ p.T) @ p).norm()
        for e, d in zip(rows, deltas):
            grad += (new_w @ e.T - (w_cfr + d[name]) @ e.T) @ e
            scale += (((w_cfr + d[name]) @ e.T) @ e).norm()
        assert grad.norm() / scale < 1e-5, name


def test_zero_steps_and_zero_learning_rate_give_the_same_weights():
    """An untrained LoRA (its up-projection starts at zero) adds nothing: three steps at lr 0
    give what no step gives."""
    cp = for_toy_world("circle")
    a = mace.erase(build_pipeline(seed=23), [cp], **{**FAST, "steps": 0}, progress=False)
    b = mace.erase(build_pipeline(seed=23), [cp], **{**FAST, "steps": 3, "lr": 0.0}, progress=False)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    c = mace.erase(build_pipeline(seed=23), [cp], **{**FAST, "steps": 3}, progress=False)
    assert any(not torch.allclose(a[k], c[k], atol=1e-6, rtol=0) for k in a)


def test_only_the_cross_attention_kv_change_and_the_processors_are_restored():
    pipe = build_pipeline(seed=24)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    te = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    processors = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    changed = mace.erase(pipe, [for_toy_world("triangle")], **FAST, progress=False)
    after = pipe.unet.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == set(changed) and len(changed) == 14 and all(k.endswith(KV) for k in changed)
    assert all(torch.equal(changed[k], after[k]) for k in changed)
    assert all(torch.equal(pipe.text_encoder.state_dict()[k], v) for k, v in te.items())
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == processors
    assert not any(p.requires_grad for p in pipe.unet.parameters())


def _fixed_attention_loss(pipe, cp, seed=5):
    """The attention loss of a fixed batch (two rendered images with their shape masks, fixed
    noise and timesteps) for the UNet as it is (zero LoRAs installed)."""
    fam = family_of_pipeline(pipe)
    mean, _std, masks = mace.training_images(pipe, cp, "shape", 2, 2, 5.0, seed)
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor([250, 350])
    x_t = pipe.scheduler.add_noise(mean, torch.randn(mean.shape, generator=g), t)
    prompts = cp.erased()[:2]
    pos = mace.concept_positions(pipe.tokenizer, prompts, cp.concept, True)
    kv = fam.cross_attention(pipe.unet)
    probe, _loras, original = mace.install(pipe.unet, kv, 1, torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            return mace.mace_loss(pipe.unet, probe, x_t, t, fam.encode_conditioning(pipe, prompts), pos, masks).item()
    finally:
        pipe.unet.set_attn_processor(original)


def test_the_lora_stage_lowers_the_attention_loss_inside_the_mask():
    pipe = build_pipeline(seed=25)
    cp = for_toy_world("triangle")
    kv = family_of_pipeline(pipe).cross_attention(pipe.unet)
    l0 = _fixed_attention_loss(pipe, cp)
    history = []
    deltas = mace.train_lora(pipe, cp, kv, **{k: v for k, v in FAST.items() if k not in ("lamb", "train_preserve_scale",
                             "fuse_preserve_scale", "preserve_weight")} | {"steps": 20, "lr": 3e-2}, index=0, progress=False,
                             history=history)
    assert len(history) == 20 and set(deltas) == set(kv)
    with torch.no_grad():
        for n, m in kv.items():
            m.weight += deltas[n].float()
    assert _fixed_attention_loss(pipe, cp) < 0.8 * l0


def test_two_concepts_are_erased_in_one_call():
    """Both concepts enter the refinement, each gets its own LoRA (steps after steps), and the
    result differs from erasing either alone."""
    pipe = build_pipeline(seed=26)
    concepts = [for_toy_world("triangle"), for_toy_world("striped")]
    c, _a = mace.cfr_rows(pipe, concepts)
    c1, _ = mace.cfr_rows(pipe, concepts[:1])
    c2, _ = mace.cfr_rows(pipe, concepts[1:])
    assert len(c) == len(c1) + len(c2) and torch.equal(c, torch.cat([c1, c2]))
    l_tri, l_str = _fixed_attention_loss(pipe, concepts[0]), _fixed_attention_loss(pipe, concepts[1])
    history = []
    both = mace.erase(pipe, concepts, **{**FAST, "steps": 8, "lr": 3e-2}, progress=False, history=history)
    assert len(history) == 16
    assert _fixed_attention_loss(pipe, concepts[0]) < l_tri and _fixed_attention_loss(pipe, concepts[1]) < l_str
    one = mace.erase(build_pipeline(seed=26), concepts[:1], **{**FAST, "steps": 8, "lr": 3e-2}, progress=False)
    assert both.keys() == one.keys() and any(not torch.allclose(both[k], one[k], atol=1e-5) for k in both)


def test_shape_masks_are_the_renderers_shapes_and_a_style_has_none():
    pipe = build_pipeline(seed=27)
    mean, std, masks = mace.training_images(pipe, for_toy_world("triangle"), "shape", 3, 2, 5.0, seed=4)
    rng = np.random.default_rng([4, world.OBJECTS.index("triangle")])
    for i in range(3):
        _img, shape = world.render_with_mask("triangle", world.STYLES[rng.integers(len(world.STYLES))], rng)
        assert torch.equal(masks[i].cpu(), torch.from_numpy(shape))
    assert mean.shape == (3, 4, 16, 16) and (std > 0).all() and 0.05 < masks.float().mean() < 0.6
    assert mace.training_images(pipe, for_toy_world("striped"), "shape", 2, 2, 5.0, seed=4)[2] is None  # the whole image
    x0, std0, none = mace.training_images(pipe, for_toy_world("striped"), "image", 2, 2, 5.0, seed=4)
    assert x0.shape == (2, 4, 16, 16) and not std0.any() and none is None
    with pytest.raises(HarnessError, match="renderer knows no concept 'zebra'"):
        mace.training_images(pipe, ConceptPrompts("zebra"), "shape", 2, 2, 5.0, seed=4)


def test_the_probe_keeps_only_the_masked_queries_at_the_marked_tokens():
    probe = mace.AttentionProbe()
    probs = torch.arange(2 * 2 * 16 * 3, dtype=torch.float32).reshape(4, 16, 3)  # batch 2 x 2 heads, 4x4 queries, 3 tokens
    probe.positions = torch.tensor([[False, True, False], [True, False, True]])
    probe.masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    probe.masks[0, :4, :4] = True  # top-left quarter -> query (0, 0), (0, 1), (1, 0), (1, 1) of sample 0
    probe.record(probs, 2)
    want = probs[0:2][:, [0, 1, 4, 5]][:, :, [1]].reshape(-1)
    assert torch.allclose(probe.norms[0], want.norm())
    probe.masks = None
    probe.record(probs, 2)
    whole = torch.cat([probs[0:2][:, :, [1]].reshape(-1), probs[2:4][:, :, [0, 2]].reshape(-1)])
    assert torch.allclose(probe.norms[1], whole.norm()) and torch.allclose(probe.loss(), want.norm() + whole.norm())


def test_importance_sampling_favours_timesteps_200_to_400():
    w = mace.importance_weights(1000)
    assert abs(float(w.sum()) - 1) < 1e-9 and int(w.argmax()) in (299, 300)
    assert 0.8 < float(w[200:401].sum()) < 0.95 and float(w[:100].sum()) < 0.01 and float(w[600:].sum()) < 0.01


def test_a_singular_closed_form_is_one_line():
    with pytest.raises(HarnessError, match="refinement closed form is singular") as e:
        mace.closed_form(torch.ones(3, 4, dtype=torch.float64), 0.0, [(1.0, torch.zeros(0, 4, dtype=torch.float64), torch.zeros(3, 0))],
                         "refinement")
    assert "\n" not in str(e.value)


def test_deterministic_with_a_seed():
    cp = for_toy_world("square")
    a = mace.erase(build_pipeline(seed=28), [cp], **FAST, progress=False)
    b = mace.erase(build_pipeline(seed=28), [cp], **FAST, progress=False)
    c = mace.erase(build_pipeline(seed=28), [cp], **{**FAST, "seed": 1}, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("mask", ["shape", "image"])
def test_sdxl_runs_through_the_family_contract(mask):
    """On a tiny SDXL pipeline (two encoders, 64-wide concatenated states, pooled text and
    micro-conditioning in every UNet call) two concepts are erased; only K / V change."""
    pipe = build_pipeline_xl(seed=29)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("added_cond_kwargs")), with_kwargs=True)
    history = []
    changed = mace.erase(pipe, [for_toy_world("triangle"), for_toy_world("striped")], **{**FAST, "mask": mask}, progress=False,
                         history=history)
    moved = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == set(changed) and all(k.endswith(KV) for k in changed) and len(history) == 6
    assert all(before[k].shape[1] == 64 for k in changed)
    assert calls and all(c is not None and {"text_embeds", "time_ids"} <= set(c) for c in calls)


def test_presets_cover_every_parameter_and_paper_is_the_default():
    sig = inspect.signature(mace.erase).parameters
    own = set(sig) - {"pipe", "concepts", "progress", "history"}
    assert set(mace.PRESETS) == {"paper", "toy"}
    for name, preset in mace.PRESETS.items():
        assert set(preset) == own, name
    assert {k: sig[k].default for k in own} == mace.PRESETS["paper"]
    assert mace.INFO.families is None and mace.INFO.tolerance == "long_fine_tune"


ROOT = Path(__file__).resolve().parents[1]


def _erase(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.cli.main", "erase", "mace", *args], capture_output=True, text=True, cwd=cwd,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "UNLEARN_THREADS": "1", "PYTHONPATH": str(ROOT)})


def test_erase_command_records_preset_and_params(tiny_dir, tmp_path):
    fast = {"steps": 2, "n_images": 2}
    r = _erase("--base", str(tiny_dir), "--concept", "triangle", "--out", str(tmp_path / "out"), "--preset", "toy",
               *[x for k, v in fast.items() for x in ("--param", f"{k}={v}")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "method.json").read_text())
    assert rec["method"] == "mace" and rec["preset"] == "toy" and rec["params"] == {**mace.PRESETS["toy"], **fast}
    assert rec["checkpoint"]["tensors"] == 14 and rec["checkpoint"]["kind"] == "unet"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--param", "mask=blob"], "--param mask: must be one of image, shape, not 'blob'"),
        (["--param", "rank=0"], "--param rank: must be at least 1, not 0"),
        (["--param", "steps=-1"], "--param steps: must be at least 0, not -1"),
        (["--param", "lamb=-1.0"], "--param lamb: must be >= 0, not -1.0"),
        (["--param", "rank=1.5"], "--param rank: '1.5' is not a whole number"),
        (["--param", "stepz=3"], "--param stepz: mace has no parameter 'stepz'"),
        (["--world", "generic", "--param", "mask=shape", "--concept", "image"], "--param mask=shape: the toy world's renderer knows no concept 'image'"),
    ],
)
def test_erase_command_one_line_errors(tiny_dir, tmp_path, args, message):
    concept = [] if "--concept" in args else ["--concept", "triangle"]
    short = [] if any(a.startswith("steps=") for a in args) else ["--param", "steps=1"]  # a bad value is refused before training
    r = _erase("--base", str(tiny_dir), "--out", str(tmp_path / "new"), *concept, *args, *short, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "new").exists()
