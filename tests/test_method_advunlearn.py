"""AdvUnlearn on tiny random pipelines built in code: the attack's prompt construction and
encoder path, what is trained, zero steps as the identity, the ESD loss and the attack's loss
going down, the retain set, determinism, the text-encoder checkpoint through `unlearn erase`,
the family loader and the fingerprints, the presets and the one-line errors."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.methods import advunlearn as A
from harness.methods.common import ConceptPrompts, for_toy_world
from harness.toy.model import build_pipeline

from fixtures import TINY_UNET

pytestmark = pytest.mark.usefixtures("one_thread")

# warm-up 2, then an attack of 2 steps every iteration; 2 DDIM steps for x_t
FAST = dict(steps=4, lr=1e-3, eta=1.0, sample_steps=2, sample_guidance=3.0, warmup=2, attack="pgd", attack_steps=2, attack_lr=1e-2,
            attack_tokens=1, attack_init="random", attack_every=1, retain_weight=0.3, retain_batch=2, retain_prompts=None,
            component="all", seed=0)


def _pipe(seed=0):
    return build_pipeline(seed=seed, unet=TINY_UNET)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_prefixed_inserts_after_the_start_token_and_keeps_the_length():
    e = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1)  # positions 0..5
    adv = torch.tensor([[[10.0], [11.0]]])
    assert A.prefixed(e, adv).flatten().tolist() == [0, 10, 11, 1, 2, 3]
    assert A.prefixed(e, adv[:, :1]).flatten().tolist() == [0, 10, 1, 2, 3, 4]


def test_the_attack_path_encodes_like_the_text_encoder():
    """E_theta from token embeddings (the attack's path) equals the encoder called on the ids,
    so a zero-step attack's prompt without a prefix is the plain prompt."""
    pipe = _pipe(1)
    s = A.Setting(pipe, 1.0, 2, 3.0, 0)
    prompt = "A triangle image in striped style."
    with torch.no_grad():
        plain = pipe.text_encoder(s.ids([prompt]))[0]
        via = s.encode_embeds(s.word_embeds(prompt))
    assert torch.allclose(plain, via, atol=1e-5)
    assert torch.equal(s.original([prompt]), plain)  # E_0 before training


def test_trainable_sets_follow_their_param_choices():
    te = _pipe().text_encoder
    names = [n for n, _ in te.named_parameters()]
    full = set(A.trainable_encoder(te, "all"))
    # (transformers names them with or without the ``text_model.`` prefix, by version)
    assert full == {n for n in names if n.removeprefix("text_model.").startswith(("encoder.", "final_layer_norm."))}
    assert not any("embeddings" in n for n in full) and all(te.get_parameter(n).requires_grad for n in full)
    attn = set(A.trainable_encoder(te, "attn"))
    assert attn and all(".self_attn." in n for n in attn) and not any(te.get_parameter(n).requires_grad for n in set(names) - attn)
    ffn = set(A.trainable_encoder(te, "ffn"))
    assert ffn and all(".mlp." in n for n in ffn) and not ffn & attn
    with pytest.raises(HarnessError, match=r"^--param component: must be one of all, attn, ffn, not 'x'$"):
        A.trainable_encoder(te, "x")


def test_zero_steps_is_the_identity():
    pipe = _pipe(2)
    te, unet = _state(pipe.text_encoder), _state(pipe.unet)
    changed = A.erase(pipe, [for_toy_world("triangle")], **{**FAST, "steps": 0}, progress=False)
    assert changed and all(torch.equal(v, te[k]) for k, v in changed.items())
    assert all(torch.equal(v, te[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert all(torch.equal(v, unet[k]) for k, v in pipe.unet.state_dict().items())


def test_only_the_text_encoder_changes_and_every_step_is_recorded():
    pipe = _pipe(3)
    te, unet, vae = _state(pipe.text_encoder), _state(pipe.unet), _state(pipe.vae)
    history = []
    changed = A.erase(pipe, [for_toy_world("striped")], **FAST, progress=False, history=history)
    assert len(history) == FAST["steps"] and all(h > 0 for h in history)
    moved = {k for k, v in pipe.text_encoder.state_dict().items() if not torch.equal(v, te[k])}
    assert not pipe.text_encoder.training and not any(p.requires_grad for p in pipe.text_encoder.parameters())
    assert moved and moved <= set(changed) == set(A.trainable_encoder(_pipe(3).text_encoder, "all"))
    assert all(torch.equal(v, unet[k]) for k, v in pipe.unet.state_dict().items())
    assert all(torch.equal(v, vae[k]) for k, v in pipe.vae.state_dict().items())


def _fixed_draws(s, prompt, n=6):
    """(x_t, t, e_0, e_p) at n fixed draws of the frozen model for ``prompt``."""
    emb_p = s.original([prompt])
    out = []
    with torch.no_grad():
        for _ in range(n):
            _, x_t, t = s.draw(emb_p)
            out.append((x_t, t, s.predict(x_t, t, s.emb_0), s.predict(x_t, t, emb_p)))
    return out


def test_the_esd_loss_on_the_concept_goes_down():
    """Warm-up only (no attack), nothing retained: the defender's loss l_u, measured at fixed
    (x_t, t) draws with the encoder before and after, is lower after."""
    pipe = _pipe(4)
    prompt = "A triangle image in striped style."
    cp = ConceptPrompts("triangle", "", (prompt.replace("triangle", "{}"),))
    s = A.Setting(pipe, 1.0, 4, 3.0, 11)
    draws = _fixed_draws(s, prompt)

    def l_u():
        with torch.no_grad():
            emb = pipe.text_encoder(s.ids([prompt]))[0]
            return sum(F.mse_loss(s.predict(x, t, emb), e0 - (ep - e0)).item() for x, t, e0, ep in draws)

    before = l_u()
    A.erase(pipe, [cp], **{**FAST, "steps": 30, "warmup": 30, "lr": 1e-3, "sample_steps": 4, "retain_weight": 0.0}, progress=False)
    assert l_u() < 0.8 * before


def test_the_attack_lowers_its_own_loss():
    """After some defence, the attack's vectors bring the prediction back toward the original
    model's: its loss at fixed draws is lower with the found vectors than with the start ones."""
    pipe = _pipe(5)
    prompt = "A triangle image in striped style."
    cp = ConceptPrompts("triangle", "", (prompt.replace("triangle", "{}"),))
    A.erase(pipe, [cp], **{**FAST, "steps": 20, "warmup": 20, "lr": 3e-3, "sample_steps": 4, "retain_weight": 0.0}, progress=False)
    s = A.Setting(pipe, 1.0, 4, 3.0, 12)
    table = s.fam.token_embeddings(s.enc)
    init = table[torch.tensor([[7]])].detach()
    losses = []
    embeds, adv = A.adversarial_prompt(s, prompt, 15, 5e-2, 1, "pgd", init, losses)
    assert len(losses) == 15 and adv.shape == init.shape and not torch.equal(adv, init)
    assert torch.equal(embeds, A.prefixed(s.word_embeds(prompt), adv))
    draws = _fixed_draws(s, prompt)

    def attack_loss(vec):
        with torch.no_grad():
            emb = s.encode_embeds(A.prefixed(s.word_embeds(prompt), vec))
            return sum(F.mse_loss(s.predict(x, t, emb), ep).item() for x, t, _e0, ep in draws)

    assert attack_loss(adv) < attack_loss(init)
    same, vec = A.adversarial_prompt(s, prompt, 0, 5e-2, 1, "fast_at", init)  # no steps: the start vectors
    assert torch.equal(vec, init)


def test_the_attack_gradient_accumulates_as_their_code_runs():
    """Their attack never zeroes the perturbation's gradient: the gradient each step hands to
    Adam is the sum of the per-step gradients so far (pgd), recomputed here from zero at the same
    draws; with fast_at it is that running sum signed in place (only -1, 0, 1 reach Adam)."""
    pipe = _pipe(6)
    prompt = "A ring image in solid style."
    init = A.Setting(pipe, 1.0, 3, 3.0, 0).fam.token_embeddings(pipe.text_encoder)[torch.tensor([[5]])].detach()
    seen = []
    orig_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["params"][0].grad.clone())
        return orig_step(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        _, vec = A.adversarial_prompt(A.Setting(pipe, 1.0, 3, 3.0, 0), prompt, 3, 0.0, 1, "pgd", init)  # lr 0: nothing moves
        signed = len(seen)
        A.adversarial_prompt(A.Setting(pipe, 1.0, 3, 3.0, 0), prompt, 3, 0.0, 1, "fast_at", init)
    finally:
        torch.optim.Adam.step = orig_step
    assert torch.equal(vec, init) and signed == 3 and len(seen) == 6
    s = A.Setting(pipe, 1.0, 3, 3.0, 0)  # the same draws again, each gradient on its own
    emb_p, base = s.original([prompt]), s.word_embeds(prompt)
    alone = []
    for _ in range(3):
        _, x_t, t = s.draw(emb_p)
        adv = init.clone().requires_grad_(True)
        with torch.no_grad():
            e_p = s.predict(x_t, t, emb_p)
        F.mse_loss(s.predict(x_t, t, s.encode_embeds(A.prefixed(base, adv))), e_p).backward()
        alone.append(adv.grad.clone())
    for k in range(3):
        assert torch.allclose(seen[k], sum(alone[: k + 1]), rtol=1e-4, atol=1e-10), k
    assert not torch.allclose(seen[2], alone[2], rtol=1e-3)
    assert all(set(g.unique().tolist()) <= {-1.0, 0.0, 1.0} for g in seen[3:])


def test_retain_set_defaults_to_the_other_concepts_and_refuses_bad_lists():
    cp = for_toy_world("striped")  # anchor solid, preserved dotted / checkered / outline
    got = A._retain_set([cp], None)
    assert set(got) == set(cp.preserved()) | set(cp.anchored()) and not any("striped" in p for p in got)
    assert A._retain_set([cp], ["a photo of dog", "a photo of dog", "x"]) == ["a photo of dog", "x"]
    for bad in ([], "a photo", [""], [3]):
        with pytest.raises(HarnessError, match=r"^--param retain_prompts: must be a non-empty JSON list of prompts"):
            A._retain_set([cp], bad)
    with pytest.raises(HarnessError, match=r"^advunlearn: no retain prompts"):
        A.erase(_pipe(), [ConceptPrompts("triangle")], **FAST, progress=False)
    A.erase(_pipe(), [ConceptPrompts("triangle")], **{**FAST, "steps": 1, "retain_weight": 0.0}, progress=False)  # nothing retained: fine


def test_retain_term_keeps_the_retained_prompts_closer():
    """With the retain term, the retained prompts' encodings move less than without it."""
    cp = for_toy_world("triangle")
    kw = {**FAST, "steps": 12, "warmup": 12, "lr": 3e-3}
    drift = {}
    for w in (0.0, 5.0):
        pipe = _pipe(8)
        s = A.Setting(pipe, 1.0, 2, 3.0, 0)
        retained = A._retain_set([cp], None)
        before = s.original(retained)
        A.erase(pipe, [cp], **{**kw, "retain_weight": w, "retain_batch": len(retained)}, progress=False)
        with torch.no_grad():
            drift[w] = (pipe.text_encoder(s.ids(retained))[0] - before).norm().item()
    assert drift[5.0] < drift[0.0]


def test_deterministic_with_a_seed():
    cp = for_toy_world("square")
    a = A.erase(_pipe(9), [cp], **FAST, progress=False)
    b = A.erase(_pipe(9), [cp], **FAST, progress=False)
    c = A.erase(_pipe(9), [cp], **{**FAST, "seed": 1}, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)


def test_presets_cover_every_parameter_and_paper_is_the_default():
    sig = inspect.signature(A.erase).parameters
    own = set(sig) - {"pipe", "concepts", "progress", "history"}
    assert set(A.PRESETS) == {"paper", "toy"}
    for name, preset in A.PRESETS.items():
        assert set(preset) == own, name
    assert {k: sig[k].default for k in own} == A.PRESETS["paper"]
    p = A.PRESETS["paper"]  # the README's multi-step command on the script's defaults
    assert (p["steps"], p["lr"], p["warmup"], p["attack_steps"], p["attack_lr"], p["retain_weight"], p["retain_batch"]) == \
        (1000, 1e-5, 200, 30, 1e-3, 0.3, 5)
    assert (p["attack"], p["attack_init"], p["attack_tokens"], p["sample_guidance"], p["eta"]) == ("pgd", "random", 1, 3.0, 1.0)
    assert A.INFO.checkpoint_kind == "text_encoder" and A.INFO.families == frozenset({"sd1"}) and A.INFO.tolerance == "long_fine_tune"


def test_a_method_info_with_an_unknown_checkpoint_kind_is_refused():
    from harness.methods import MethodInfo, _method_info

    info = MethodInfo(name="x", module="harness.methods.advunlearn", paper="https://arxiv.org/abs/1", code="https://github.com/a/b",
                      checkpoint_kind="vae")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="checkpoint_kind 'vae' is not one of unet, text_encoder"):
        _method_info("x", info)


ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.cli.main", *args], capture_output=True, text=True, cwd=cwd,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "UNLEARN_THREADS": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})


def _fast_args():
    fast = {"steps": 2, "warmup": 1, "attack_steps": 1, "sample_steps": 2, "retain_batch": 2}
    return fast, [x for k, v in fast.items() for x in ("--param", f"{k}={v}")]


def test_erase_writes_a_text_encoder_checkpoint_that_loads_and_fingerprints_as_one(tiny_dir, tmp_path):
    """`unlearn erase advunlearn` writes text_encoder.safetensors (kind text_encoder in
    method.json); the family loader applies it to the text encoder; the submission it makes
    passes the start-up checks, and the unlearned model's fingerprints name a text-encoder
    checkpoint (so attacks that use the text encoder alone do not share the base's cache)."""
    fast, args = _fast_args()
    out = tmp_path / "out"
    r = _cli("erase", "advunlearn", "--base", str(tiny_dir), "--concept", "triangle", "--out", str(out), "--preset", "toy", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "method.json").read_text())
    assert rec["method"] == "advunlearn" and rec["preset"] == "toy" and rec["params"] == {**A.PRESETS["toy"], **fast}
    assert rec["checkpoint"]["kind"] == "text_encoder" and rec["checkpoint"]["file"] == "text_encoder.safetensors"
    assert sorted(p.name for p in out.iterdir()) == ["method.json", "text_encoder.safetensors"]
    assert rec["efficiency"]["storage_bytes"] == (out / "text_encoder.safetensors").stat().st_size

    from safetensors.torch import load_file

    from harness.attacks.common import text_encoder_fingerprint
    from harness.families import family_of
    from harness.families.sd1 import Placement, model_fingerprints
    from harness.spec.load import load_submission
    from harness.store.hashing import sha256_file
    from harness.toy.model import load_pipeline

    tensors = load_file(str(out / "text_encoder.safetensors"))
    assert len(tensors) == rec["checkpoint"]["tensors"] and not any("embeddings" in k for k in tensors)
    assert rec["checkpoint"]["sha256"] == sha256_file(out / "text_encoder.safetensors")

    import shutil

    shutil.copytree(tiny_dir, tmp_path / "base")  # inside the "repository" (a link out of it is refused)
    sub = tmp_path / "sub.yaml"
    sub.write_text(f"name: adv\nmethod: {{name: advunlearn}}\nbase_model: {{local_dir: base}}\n"
                   f"checkpoint: {{kind: text_encoder, path: out/text_encoder.safetensors, sha256: {rec['checkpoint']['sha256']}}}\n"
                   "targets: [{concept: triangle, kind: object}]\n")
    spec = load_submission(sub)
    fam = family_of(tmp_path / "base")
    pipe = load_pipeline(tmp_path / "base")
    base_te = _state(pipe.text_encoder)
    fam.apply_checkpoint(pipe, spec.checkpoint, out / "text_encoder.safetensors", Placement.choose("cpu"))
    now = pipe.text_encoder.state_dict()
    assert all(torch.equal(now[k], v) for k, v in tensors.items())
    assert any(not torch.equal(now[k], base_te[k]) for k in tensors)
    base_fp, unl_fp = model_fingerprints(spec, tmp_path)
    assert unl_fp == f"{base_fp}+text_encoder:{rec['checkpoint']['sha256']}"
    assert text_encoder_fingerprint(spec, base_fp, unl_fp) == f"{unl_fp}:text_encoder" != f"{base_fp}:text_encoder"
    # the committed toy submissions (kind text_encoder) pass every start-up check
    for kind in ("style", "object"):
        r = _cli("check", f"submissions/toy-advunlearn-{kind}.yaml", cwd=ROOT)
        assert r.returncode == 0 and "34 text encoder tensor(s), names and shapes match the base" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--param", "attack=cw"], "--param attack: must be one of pgd, fast_at, not 'cw'"),
        (["--param", "attack_init=zero"], "--param attack_init: must be one of random, latest, not 'zero'"),
        (["--param", "component=mlp"], "--param component: must be one of all, attn, ffn, not 'mlp'"),
        (["--param", "steps=-1"], "--param steps: must be at least 0, not -1"),
        (["--param", "attack_tokens=0"], "--param attack_tokens: must be at least 1, not 0"),
        (["--param", "retain_weight=-1.0"], "--param retain_weight: must be >= 0, not -1.0"),
        (["--param", "attack_steps=1.5"], "--param attack_steps: '1.5' is not a whole number"),
        (["--param", "retain_prompts=[]"], "--param retain_prompts: must be a non-empty JSON list of prompts"),
        (["--param", "attack_tokens=20"], "advunlearn: prompt 'A triangle image in solid style.' leaves no room for 20 attack token(s)"),
        (["--world", "generic"], "advunlearn: no retain prompts (the run preserves no other concept)"),
        (["--param", "stepz=3"], "--param stepz: advunlearn has no parameter 'stepz'"),
    ],
)
def test_erase_command_one_line_errors(tiny_dir, tmp_path, args, message):
    short = [] if any(a.startswith("steps=") for a in args) else ["--param", "steps=1"]
    r = _cli("erase", "advunlearn", "--base", str(tiny_dir), "--out", str(tmp_path / "new"), "--concept", "triangle", *args, *short, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "new").exists()


def test_toy_checkpoints_for_all_worlds_skip_a_world_the_method_does_not_run_on(tmp_path, monkeypatch, capsys):
    """`unlearn toy checkpoints --world all --method advunlearn` makes the toy world's and says it
    skips toy-xl (SDXL); naming toy-xl alone is still refused in one line."""
    import harness.toy.submissions as subs
    from harness.cli.main import main

    calls = []
    monkeypatch.setattr(subs, "make_checkpoints", lambda root, methods, force=False, world="toy": calls.append((world, methods)) or [])
    monkeypatch.setattr(subs, "write_submissions", lambda root: [])
    assert main(["toy", "checkpoints", "--root", str(tmp_path), "--world", "all", "--method", "advunlearn"]) == 0
    err = capsys.readouterr().err
    assert calls == [("toy", ("advunlearn",)), ("toy-xl", ())]
    assert "skipping advunlearn on toy-xl: it does not run on that world's model family (its authors' code runs Stable Diffusion 1.x only" in err
    assert main(["toy", "checkpoints", "--root", str(tmp_path), "--world", "toy-xl", "--method", "advunlearn"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--method advunlearn: does not run on the toy-xl world's model family" in err
