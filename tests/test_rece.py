"""RECE (harness.methods.rece): UCE iterated against closed-form adversarial embeddings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.methods import rece, uce
from harness.methods.common import cross_attention_kv, for_toy_world, text_embeddings

REPO = Path(__file__).resolve().parents[1]
SMALL = {"rounds": 3, "regular_scale": 1e-3, "lamb": 0.1, "erase_scale": 1.0, "preserve_scale": 0.1,
         "uce_token_positions": "all", "uce_erase_scale": 1.0, "uce_preserve_scale": 1.0, "uce_lamb": 0.5}


def _flat(pipe, prompts):
    return text_embeddings(pipe, prompts).reshape(-1, pipe.text_encoder.config.hidden_size).double()


def test_rece_changes_only_cross_attention_kv(tiny_pipe_factory):
    pipe = tiny_pipe_factory(seed=4)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    changed = rece.erase(pipe, [for_toy_world("striped")], progress=False, **SMALL)
    after = pipe.unet.state_dict()
    kv = {f"{n}.weight" for n in cross_attention_kv(pipe.unet)}
    assert set(changed) == kv and len(changed) == 14
    assert all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in changed)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == kv
    assert all(torch.equal(after[k], v) for k, v in changed.items())
    assert all(torch.equal(v, pipe.text_encoder.state_dict()[k]) for k, v in text_before.items())


def test_each_round_lowers_its_objective_and_the_adversarial_response(tiny_pipe_factory):
    pipe = tiny_pipe_factory(seed=4)
    cp = for_toy_world("triangle")
    history = []
    rece.erase(pipe, [cp], progress=False, history=history, **SMALL)
    assert [h["round"] for h in history] == [1, 2, 3]
    for h in history:
        # the round's edit lowers the objective it minimises (at W_k it is the erase term alone)
        assert h["objective_after"] < 0.2 * h["objective_before"], h
        # the adversarial embedding regenerates the concept far better than the concept's own
        # prompt does on the edited model (that is what makes it adversarial) ...
        assert h["adv_residual_before"] < 0.5 * h["concept_residual"], h
        # ... and no longer does once the round has erased it
        assert h["adv_residual_after"] > 5 * h["adv_residual_before"], h
    # the best adversarial embedding gets worse round after round: the model is harder to attack
    before = [h["adv_residual_before"] for h in history]
    assert before == sorted(before) and before[-1] > before[0]


def test_adversarial_embedding_and_edit_are_the_closed_form_minimisers(tiny_pipe_factory):
    pipe = tiny_pipe_factory(seed=9)
    cp = for_toy_world("dotted")
    base = rece._weights(pipe.unet)
    uce.erase(pipe, [cp], erase_scale=1.0, preserve_scale=1.0, lamb=0.5, token_positions="all")
    cur = rece._weights(pipe.unet)
    c = _flat(pipe, cp.erased())
    reg = 1e-2
    adv = rece.adversarial_embedding(cur, base, c, reg)
    # gradient of sum_l ||W_k x - W_0 c||^2 + reg ||x||^2 vanishes at x = c' (row by row)
    grad = sum((w @ adv.T - base[n] @ c.T).T @ w for n, w in cur.items()) + reg * adv
    scale = sum((base[n] @ c.T).T @ w for n, w in cur.items())
    assert grad.norm() / scale.norm() < 1e-8
    # the edit: lamb (W - W_k) + s_e (W c' - W_k a) c'^T + s_p (W p - W_k p) p^T = 0
    a = _flat(pipe, cp.anchored())
    p = _flat(pipe, [""] + cp.preserved())
    uce.edit_kv(pipe.unet, adv, a, p, 1.0, 0.1, 0.1)
    for name, w in cross_attention_kv(pipe.unet).items():
        new, w0 = w.weight.detach().double(), cur[name]
        g = 0.1 * (new - w0) + (new @ adv.T - w0 @ a.T) @ adv + 0.1 * (new @ p.T - w0 @ p.T) @ p
        assert g.norm() / ((w0 @ a.T) @ adv).norm() < 1e-5


def test_zero_rounds_is_the_uce_edit_bitwise(tiny_pipe_factory):
    cp = for_toy_world("striped")
    a = rece.erase(tiny_pipe_factory(seed=5), [cp], progress=False, **{**SMALL, "rounds": 0})
    b = uce.erase(tiny_pipe_factory(seed=5), [cp], erase_scale=1.0, preserve_scale=1.0, lamb=0.5, token_positions="all")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = rece.erase(tiny_pipe_factory(seed=5), [cp], progress=False, **SMALL)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_rece_is_deterministic(tiny_pipe_factory):
    cp = for_toy_world("triangle")
    a = rece.erase(tiny_pipe_factory(seed=5), [cp], progress=False, **SMALL)
    b = rece.erase(tiny_pipe_factory(seed=5), [cp], progress=False, **SMALL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_presets_record_the_authors_settings():
    p = rece.PRESETS["paper"]
    assert (p["rounds"], p["regular_scale"], p["lamb"], p["preserve_scale"], p["uce_token_positions"]) == (1, 1e-3, 0.1, 0.1, "tail")
    assert rece.PAPER_NUDITY == {"rounds": 3, "regular_scale": 0.1}
    # the toy preset starts from the committed toy UCE edit
    toy = rece.PRESETS["toy"]
    from harness.toy.submissions import PARAMS

    assert {k[4:]: v for k, v in toy.items() if k.startswith("uce_")} == PARAMS["uce"]


def test_committed_toy_checkpoints_are_remade(tmp_path):
    """Bitwise where the committed method.json records this platform, else within the
    closed-form tolerance (harness.run.reproduce)."""
    from harness.methods import method_tolerance
    from harness.run.reproduce import CLOSED_FORM, compare_checkpoint
    from harness.toy.submissions import make_checkpoints

    (tmp_path / "submissions" / "checkpoints").mkdir(parents=True)
    for d in make_checkpoints(tmp_path, ("rece",)):
        committed_dir = REPO / "submissions" / "checkpoints" / d.name
        committed = json.loads((committed_dir / "method.json").read_text())
        made = json.loads((d / "method.json").read_text())
        c = compare_checkpoint(d, committed_dir, method_tolerance)
        print(d.name, c.line())
        assert c.ok and c.tolerance == CLOSED_FORM, (d.name, c.line())
        if c.same_platform:
            assert made["checkpoint"]["sha256"] == committed["checkpoint"]["sha256"], d.name
        assert made["platform"]["threads"] == made["efficiency"]["threads"] == 1
        assert made["params"] == committed["params"] and made["preset"] == "toy"
        eff = made["efficiency"]
        assert eff["measured"] and eff["time_s"] > 0 and eff["storage_bytes"] == (d / "unet.safetensors").stat().st_size


def _erase(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.cli.main", "erase", "rece", *args], capture_output=True, text=True, cwd=cwd,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "UNLEARN_THREADS": "1", "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_pipe_factory):
    d = tmp_path_factory.mktemp("tiny") / "pipe"
    tiny_pipe_factory(seed=7).save_pretrained(d)
    return d


def test_erase_rece_command_writes_method_json(tiny_dir, tmp_path):
    r = _erase("--base", str(tiny_dir), "--concept", "triangle", "--world", "generic", "--preset", "paper", "--param", "rounds=2", "--param", "regular_scale=0.1", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "method.json").read_text())
    assert rec["method"] == "rece" and rec["preset"] == "paper" and rec["params"]["rounds"] == 2
    assert rec["params"]["regular_scale"] == 0.1 and rec["params"]["uce_token_positions"] == "tail"
    assert rec["params"]["uce_preserve_scale"] == 1.0  # the paper-era UCE rule (1 retained text), resolved and recorded
    assert rec["templates"] == ["{}"] and rec["anchor"] == ""
    assert rec["checkpoint"]["tensors"] == 14 and rec["display_name"] == "RECE"
    eff = rec["efficiency"]
    assert eff["storage_bytes"] == (tmp_path / "out" / "unet.safetensors").stat().st_size
    assert eff["time_s"] > 0 and eff["peak_memory_bytes"] > 10 * 2**20


@pytest.mark.parametrize(
    "args, message",
    [
        # (the errors every method shares: tests/test_methods.py, parametrized over the methods)
        (["--concept", "striped", "--param", "epochs=3"], "--param epochs: rece has no parameter 'epochs'"),
        (["--concept", "striped", "--param", "rounds=-1"], "--param rounds: must be >= 0"),
    ],
)
def test_erase_rece_one_line_errors(tiny_dir, tmp_path, args, message):
    r = _erase("--base", str(tiny_dir), "--out", str(tmp_path / "new"), *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "new").exists()
