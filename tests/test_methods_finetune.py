"""FMN, CA and SalUn on a tiny random pipeline built in code: what they train, that their loss
goes down, that they are deterministic, their presets and the one-line errors of ``unlearn erase``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.methods import ca, fmn, salun
from harness.methods.common import for_toy_world, text_embeddings
from harness.methods.finetune import base_latents, noisy

import reference_outputs

FAST = {
    "fmn": dict(steps=4, lr=1e-3, batch=2, n_images=4, sample_steps=2, sample_guidance=5.0),
    "ca": dict(steps=4, lr=1e-3, batch=2, n_images=4, sample_steps=2, sample_guidance=5.0),
    "salun": dict(epochs=1, lr=1e-3, batch=2, n_images=4, sample_steps=2, sample_guidance=5.0),
}
MODS = {"fmn": fmn, "ca": ca, "salun": salun}


def _moved(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize(
    "method, params, allowed",
    [
        ("fmn", {"train": "xattn"}, lambda k: ".attn2." in k),
        ("fmn", {"train": "full"}, lambda k: True),
        ("ca", {"train": "kv"}, lambda k: k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))),
        ("ca", {"train": "xattn"}, lambda k: ".attn2." in k),
        ("salun", {"train": "full"}, lambda k: True),
        ("salun", {"train": "xattn"}, lambda k: ".attn2." in k),
    ],
)
def test_only_the_trained_parameters_change(tiny_pipe_factory, method, params, allowed):
    pipe = tiny_pipe_factory(seed=11)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    te = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    changed = MODS[method].erase(pipe, [for_toy_world("striped")], **{**FAST[method], **params}, progress=False)
    after = pipe.unet.state_dict()
    moved = _moved(before, after)
    assert moved and all(allowed(k) for k in moved), sorted(k for k in moved if not allowed(k))[:5]
    assert set(changed) == moved  # exactly the tensors that moved are returned
    assert all(torch.equal(changed[k], after[k]) for k in changed)
    assert not _moved(te, pipe.text_encoder.state_dict())  # the text encoder is never trained
    # The processors are restored: the pipeline is a plain diffusers pipeline again.
    assert all(type(p).__name__ != "AttentionProbe" for p in pipe.unet.attn_processors.values())
    if params["train"] == "full" and method == "fmn":
        # the loss is attention probabilities: what comes after the last cross-attention gets no
        # gradient (None), and AdamW skips it, as in the authors' run
        assert "conv_out.weight" not in moved and "down_blocks.0.resnets.0.conv1.weight" in moved


def test_salun_trains_only_the_salient_fraction(tiny_pipe_factory):
    pipe = tiny_pipe_factory(seed=12)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    salun.erase(pipe, [for_toy_world("triangle")], **{**FAST["salun"], "threshold": 0.2}, progress=False)
    after = pipe.unet.state_dict()
    total = sum(v.numel() for k, v in before.items() if v.is_floating_point())
    moved = sum(int((before[k] != after[k]).sum()) for k in before)
    assert 0 < moved <= 0.2 * total + 1


def test_saliency_mask_is_one_global_top_fraction():
    # Known answer: the top half of |g| over both tensors together, not per tensor.
    m = salun.top_fraction({"a": torch.tensor([0.1, -5.0, 0.2, 3.0]), "b": torch.tensor([[-4.0, 0.0]])}, 0.5)
    assert m["a"].tolist() == [0.0, 1.0, 0.0, 1.0] and m["b"].tolist() == [[1.0, 0.0]]
    m = salun.top_fraction({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0])}, 0.5)
    assert m["a"].sum() == 0 and m["b"].tolist() == [1.0, 1.0]


def _fixed_batch(pipe, prompts, seed=3):
    x0, which = base_latents(pipe, prompts, 4, 2, 5.0, seed)
    x_t, t, _ = noisy(pipe, x0, torch.Generator().manual_seed(seed))
    return x_t, t, which


def test_fmn_lowers_its_loss(tiny_pipe_factory):
    pipe = tiny_pipe_factory(seed=13)
    cp = for_toy_world("dotted")
    prompts = cp.erased()
    x_t, t, which = _fixed_batch(pipe, prompts)
    emb = text_embeddings(pipe, prompts)[which]
    pos = fmn.concept_positions(pipe.tokenizer, [prompts[i] for i in which], "dotted", True)
    assert pos.sum(1).min() >= 2  # the concept token and at least the end-of-text token

    def loss():
        probe, orig = fmn.install_probe(pipe.unet)
        with torch.no_grad():
            v = fmn.fmn_loss(pipe.unet, probe, x_t, t, emb, pos).item()
        pipe.unet.set_attn_processor(orig)
        return v

    l0 = loss()
    fmn.erase(pipe, [cp], **{**FAST["fmn"], "steps": 15, "train": "xattn"}, progress=False)
    assert loss() < 0.8 * l0


def test_ca_lowers_its_loss(tiny_pipe_factory):
    pipe = tiny_pipe_factory(seed=14)
    cp = for_toy_world("circle")
    x_t, t, which = _fixed_batch(pipe, cp.anchored())
    emb_c, emb_a = text_embeddings(pipe, cp.erased())[which], text_embeddings(pipe, cp.anchored())[which]
    with torch.no_grad():
        l0 = ca.ca_loss(pipe.unet, x_t, t, emb_c, emb_a).item()
    ca.erase(pipe, [cp], **{**FAST["ca"], "steps": 15, "lr": 3e-3}, progress=False)
    with torch.no_grad():
        l1 = ca.ca_loss(pipe.unet, x_t, t, emb_c, emb_a).item()
    assert l1 < 0.7 * l0


def test_salun_lowers_its_forget_loss(tiny_pipe_factory):
    pipe = tiny_pipe_factory(seed=15)
    cp = for_toy_world("checkered")
    x_t, t, which = _fixed_batch(pipe, cp.erased())
    emb_f, emb_p = text_embeddings(pipe, cp.erased())[which], text_embeddings(pipe, cp.anchored())[which]
    with torch.no_grad():
        l0 = salun.forget_loss(pipe.unet, x_t, t, emb_f, emb_p).item()
    salun.erase(pipe, [cp], **{**FAST["salun"], "epochs": 6, "lr": 3e-3, "alpha": 0.1}, progress=False)
    with torch.no_grad():
        l1 = salun.forget_loss(pipe.unet, x_t, t, emb_f, emb_p).item()
    assert l1 < 0.7 * l0


@pytest.mark.parametrize("method", ["fmn", "ca", "salun"])
def test_deterministic_with_a_seed(tiny_pipe_factory, method):
    cp = for_toy_world("square")
    a = MODS[method].erase(tiny_pipe_factory(seed=16), [cp], **FAST[method], seed=3, progress=False)
    b = MODS[method].erase(tiny_pipe_factory(seed=16), [cp], **FAST[method], seed=3, progress=False)
    c = MODS[method].erase(tiny_pipe_factory(seed=16), [cp], **FAST[method], seed=4, progress=False)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters



@pytest.mark.parametrize("case", sorted(reference_outputs.CASES))
def test_the_shared_loop_reproduces_each_methods_reference_tensors(case):
    """A few steps of each method through the one ``finetune.fit`` (tests/reference_outputs.py)
    give the committed reference tensors: every tensor bitwise (the recorded digest) on the
    platform that made them, else the committed ones within the case's stated tolerance."""
    from safetensors.torch import load_file

    from harness.run.reproduce import compare_tensors, fingerprint, same_platform

    doc = json.loads((reference_outputs.REFERENCE / "platform.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(reference_outputs.THREADS)  # the references are one-thread runs
    try:
        out = reference_outputs.make(case)
        here = fingerprint(threads=reference_outputs.THREADS)
    finally:
        torch.set_num_threads(threads)
    ref = load_file(str(reference_outputs.REFERENCE / f"{case}.safetensors"))
    assert set(ref) <= set(out)
    same = same_platform(doc["platform"], here)
    c = compare_tensors({k: out[k] for k in ref}, ref, reference_outputs.tolerance(case), same)
    print(case, c.line())
    assert c.ok, c.line()
    if same:
        assert reference_outputs.digest(out) == doc["sha256"][case]


@pytest.mark.parametrize("method", ["fmn", "ca", "salun"])
def test_presets_cover_every_parameter_and_paper_is_the_default(method):
    import inspect

    mod = MODS[method]
    sig = inspect.signature(mod.erase).parameters
    own = set(sig) - {"pipe", "concepts", "progress", "history"}
    assert set(mod.PRESETS) == {"paper", "toy"}
    for name, preset in mod.PRESETS.items():
        assert set(preset) == own, name
    assert {k: sig[k].default for k in own} == mod.PRESETS["paper"]


ROOT = Path(__file__).resolve().parents[1]


def _erase(*args, cwd):
    # PYTHONPATH: this checkout's harness, whatever the environment has installed
    return subprocess.run([sys.executable, "-m", "harness.cli.main", "erase", *args], capture_output=True, text=True, cwd=cwd,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "UNLEARN_THREADS": "1", "PYTHONPATH": str(ROOT)})


def test_erase_command_records_preset_and_full_params(tiny_dir, tmp_path):
    args = [f"{k}={v}" for k, v in FAST["ca"].items()]
    r = _erase("ca", "--base", str(tiny_dir), "--concept", "striped", "--out", str(tmp_path / "out"), "--preset", "toy",
               *[x for a in args for x in ("--param", a)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "method.json").read_text())
    assert rec["preset"] == "toy" and rec["method"] == "ca"
    assert rec["params"] == {**ca.PRESETS["toy"], **FAST["ca"]}
    assert rec["checkpoint"]["tensors"] == 14  # to_k, to_v of 7 cross-attention layers
    assert rec["efficiency"]["time_s"] > 0 and rec["efficiency"]["storage_bytes"] > 0


@pytest.mark.parametrize("method", ["fmn", "ca", "salun"])
@pytest.mark.parametrize(
    "args, message",
    [
        (["--concept", "zebra"], "concept word 'zebra' is not a single token"),
        (["--concept", "striped", "--base", "/nonexistent"], "--base /nonexistent: no diffusers pipeline there"),
        (["--concept", "striped", "--out", "EXISTING"], "exists; pass --force"),
        (["--concept", "striped", "--preset", "fast"], "--preset: invalid choice: 'fast'"),
        (["--concept", "striped", "--param", "stepz=3"], "--param stepz: "),
    ],
)
def test_erase_command_one_line_errors(tiny_dir, tmp_path, method, args, message):
    (tmp_path / "EXISTING").mkdir()
    base = ["--base", str(tiny_dir)] if "--base" not in args else []
    out = ["--out", str(tmp_path / "new")] if "--out" not in args else []
    args = [str(tmp_path / "EXISTING") if a == "EXISTING" else a for a in args]
    r = _erase(method, *base, *out, *args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    # argparse's own usage errors (an unknown --preset) say "unlearn erase: error: ..."
    assert len(lines) == 1 and lines[0].startswith(("unlearn: error: ", "unlearn erase: error: ")) and message in lines[0], r.stderr
