"""SAFREE (harness/methods/safree.py): the math on small tensors with known answers, and the
guidance on the toy pipeline against an independent re-statement of the authors' steps
(jaehong31/SAFREE ``models/modified_stable_diffusion_pipeline.py``: ``projection_matrix``,
``_masked_encode_prompt``, ``safree_projection``, ``projection_and_orthogonal``, ``f_beta``)."""

from __future__ import annotations

import math

import pytest
import torch

from harness.errors import HarnessError
from harness.methods import safree as S

pytestmark = pytest.mark.usefixtures("one_thread")


def _e(d: int, *idx: int) -> torch.Tensor:
    v = torch.zeros(d)
    for i in idx:
        v[i] = 1.0
    return v


# ---------------------------------------------------------------------------- projections
def test_projection_matrix_is_the_orthogonal_projection_onto_the_columns():
    g = torch.Generator().manual_seed(0)
    E = torch.randn(8, 3, generator=g, dtype=torch.float64)
    P = S.projection_matrix(E)
    assert torch.allclose(P, P.T, atol=1e-12)
    assert torch.allclose(P @ P, P, atol=1e-12)
    assert torch.allclose(P @ E, E, atol=1e-12)
    v = torch.randn(8, generator=g, dtype=torch.float64)
    v = v - P @ v  # orthogonal to the columns
    assert torch.allclose(P @ v, torch.zeros(8, dtype=torch.float64), atol=1e-12)


def test_a_row_in_the_prompt_span_orthogonal_to_the_concept_is_unchanged():
    d = 6
    P_C = S.projection_matrix(_e(d, 0)[:, None])  # the toxic subspace: e0
    M = torch.stack([_e(d, 1), _e(d, 1, 2)])  # the prompt's span: e1, e2 (independent rows: see projection_matrix)
    h = 2 * _e(d, 1) - _e(d, 2)
    assert torch.allclose(S.project_tokens(h[None], M, P_C)[0], h, atol=1e-6)


def test_a_row_in_the_toxic_subspace_loses_that_component():
    d = 6
    P_C = S.projection_matrix(_e(d, 0)[:, None])
    M = torch.stack([_e(d, 0), _e(d, 1)])  # the prompt spans e0 and e1
    h = torch.stack([3 * _e(d, 0), 3 * _e(d, 0) + _e(d, 1), _e(d, 0) + _e(d, 4)])
    out = S.project_tokens(h, M, P_C)
    assert torch.allclose(out[0], torch.zeros(d), atol=1e-6)  # all toxic: nothing left
    assert torch.allclose(out[1], _e(d, 1), atol=1e-6)  # the toxic part goes, the rest stays
    assert torch.allclose(out[2], torch.zeros(d), atol=1e-6)  # e4 is outside the prompt's span: P_M drops it too
    assert torch.allclose(out @ _e(d, 0), torch.zeros(3), atol=1e-6)


def test_trigger_tokens_known_answers():
    d = 4
    P_C = S.projection_matrix(_e(d, 0)[:, None])
    dist = torch.tensor([1.0, 1.0, 3.0, 1.0])  # residual lengths off the toxic subspace
    pooled = torch.stack([5 * _e(d, 0) + r * _e(d, 1) for r in dist])
    # token 3: 3 >= 1.01 * mean(1, 1, 1); the others: 1 < 1.01 * mean(1, 3, 1)
    assert S.trigger_tokens(pooled, P_C, 0.01).tolist() == [False, False, True, False]
    assert S.trigger_tokens(pooled, P_C, 5.0).tolist() == [False] * 4  # 3 < 6 * 1
    same = torch.stack([7 * _e(d, 0) + _e(d, 2)] * 3)
    assert S.trigger_tokens(same, P_C, 0.01).tolist() == [False] * 3  # 1 < 1.01
    assert S.trigger_tokens(same, P_C, 0.0).tolist() == [True] * 3  # 1 < 1 is false
    assert S.trigger_tokens(pooled[:1], P_C, 0.01).tolist() == [True]  # one token: empty mean, NaN


# ---------------------------------------------------------------------------- self-validating filter
def test_svf_beta_is_one_minus_the_mean_cosine():
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert S.svf_beta(h, h.clone()) == pytest.approx(0.0, abs=1e-7)
    assert S.svf_beta(h, -h) == pytest.approx(2.0, abs=1e-7)
    assert S.svf_beta(h, torch.tensor([[0.0, 1.0], [0.0, 5.0]])) == pytest.approx(0.5, abs=1e-7)  # cos 0 and 1


def test_svf_steps_formula():
    # round(upper_t * sigmoid(2 k (10 beta - m))): nudity k 2.5, m 5.333; artists k 3.5, m 5.5
    assert S.svf_steps(0.5333, 10, "nudity") == 5  # sigmoid(0) = 0.5
    assert S.svf_steps(0.5333, 5, "nudity") == 2  # round(2.5): Python rounds half to even
    assert S.svf_steps(0.5333, 3, "nudity") == 2  # round(1.5)
    assert S.svf_steps(0.55, 10, "nudity") == 7  # sigmoid(0.835) = 0.697
    assert S.svf_steps(0.6, 10, "nudity") == 10  # sigmoid(3.335) = 0.966
    assert S.svf_steps(0.0, 10, "nudity") == 0
    assert S.svf_steps(0.55, 10, "artist") == 5
    assert S.svf_steps(0.5, 10, "artist") == 0  # sigmoid(-3.5) = 0.029
    assert S.svf_steps(0.6, 10, "artist") == 10  # sigmoid(3.5) = 0.971
    assert S.svf_steps(2.0, 0, "artist") == 0


# ---------------------------------------------------------------------------- latent re-attention
def test_fourier_filter_with_scale_one_is_the_identity():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(S.lowfreq_reattention(x, ref, 1.0), x, atol=1e-5)


def test_fourier_filter_scales_the_low_frequencies_where_the_reference_is_not_above():
    const = torch.full((1, 2, 8, 8), 3.0)  # a constant map: all its energy at DC
    assert torch.allclose(S.lowfreq_reattention(const, const, 0.2), torch.full_like(const, 0.6), atol=1e-5)  # equal: scaled
    assert torch.allclose(S.lowfreq_reattention(const, const + 1.0, 0.2), const, atol=1e-5)  # the reference's DC is above: kept
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]).remainder(2).float()[None, None] * 2 - 1
    assert torch.allclose(S.lowfreq_reattention(checker, checker, 0.0), checker, atol=1e-5)  # Nyquist: outside the window
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    S.lowfreq_reattention(x, x.detach(), 0.5).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_skip_scales_follow_the_widest_channels():
    assert S.skip_scales((320, 640, 1280, 1280), 0.9, 0.2) == {1280: 0.9, 640: 0.2}  # SD-1.x: FreeU's 1280 / 640
    assert S.skip_scales((320, 640, 1280), 0.9, 0.2) == {1280: 0.9, 640: 0.2}  # SDXL
    assert S.skip_scales((64, 64), 0.9, 0.2) == {64: 0.9, 32: 0.2}


# ---------------------------------------------------------------------------- keywords
def test_keywords_for_nudity_and_other_concepts():
    assert S.concept_keywords(["nudity"]) == list(S.NUDITY_KEYWORDS) and len(S.NUDITY_KEYWORDS) == 17
    assert S.concept_keywords(["Van Gogh"]) == ["Van Gogh"]
    assert S.concept_keywords(["striped"], ["stripes", "zebra"]) == ["stripes", "zebra"]
    assert S.svf_shape_of(["nudity"]) == "nudity" and S.svf_shape_of(["Van Gogh"]) == "artist"
    assert S.svf_shape_of(["nudity", "striped"]) == "artist" and S.svf_shape_of(["striped"], "nudity") == "nudity"
    with pytest.raises(HarnessError, match="keywords"):
        S.concept_keywords(["striped"], [""])
    with pytest.raises(HarnessError, match="svf_shape"):
        S.svf_shape_of(["striped"], "violence")


# ---------------------------------------------------------------------------- on the toy pipeline
PROMPTS = ["A triangle image in striped style.", "A circle image in dotted style.", "striped", ""]


@pytest.fixture(scope="module")
def toy(toy_pipe):
    from harness.families import family_of_pipeline

    return toy_pipe, family_of_pipeline(toy_pipe)


@pytest.fixture
def guard(toy):
    pipe, fam = toy
    g = S.setup(pipe, fam, ["striped"])
    yield g
    g.remove()


def _authors_steps(pipe, prompt: str, keywords: list[str], alpha: float, upper_t: int):
    """The authors' computation for one prompt, restated step by step: the keywords' pooler
    outputs, the prompt's ids padded to "longest" with token i+1 set to 0, their pooler outputs,
    both projection matrices, the leave-one-out means, the merged embedding, f_beta (artists)."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    with torch.no_grad():
        kw = tok(keywords, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        C = te(kw.input_ids).pooler_output  # (K, d)
        cs = C.T @ torch.pinverse(C @ C.T) @ C
        ids = tok(prompt, padding="longest", return_tensors="pt").input_ids
        n = ids.shape[1] - 2
        masked = ids.repeat(n, 1)
        for i in range(n):
            masked[i, i + 1] = 0
        p_emb = te(masked).pooler_output  # (n, d)
        ms = p_emb.T @ torch.pinverse(p_emb @ p_emb.T) @ p_emb
        full = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        text_e = te(full.input_ids)[0][0]
        eye = torch.eye(cs.shape[0])
        dist = torch.norm((eye - cs) @ p_emb.T, dim=0)
        means = torch.tensor([torch.mean(torch.cat((dist[:i], dist[i + 1:]))) for i in range(n)])
        safe = (dist < (1.0 + alpha) * means).float()
        ones = torch.ones(text_e.shape[0])
        ones[1:n + 1] = safe
        new = ((eye - cs) @ ms @ text_e.T).T
        merged = torch.where(ones[:, None].bool(), text_e, new)
        act = full.attention_mask[0] == 1
        beta = 1 - torch.nn.functional.cosine_similarity(new[act], text_e[act]).mean().item()
        z = 2.0 * 3.5 * (10 * beta - 5.5)
        T = round(upper_t * (1 / (1 + math.exp(-z))))
    return text_e, merged, (safe == 0), beta, T


def test_guidance_matches_the_authors_steps_on_the_toy_pipeline(toy, guard):
    pipe, fam = toy
    with torch.no_grad():
        cond = fam.encode_conditioning(pipe, PROMPTS[:3])
    out = guard.condition(cond, torch.tensor(999), 0)
    for b, prompt in enumerate(PROMPTS[:3]):
        text_e, merged, trig, beta, T = _authors_steps(pipe, prompt, ["striped"], 0.01, 10)
        assert torch.allclose(cond[b], text_e, atol=1e-6)
        st = guard.state(cond[b])
        n = len(trig)
        assert st.n == n and st.trigger[1:n + 1].tolist() == trig.tolist() and not st.trigger[n + 1:].any() and not st.trigger[0]
        assert st.beta == pytest.approx(beta, abs=1e-4) and st.last_step == T
        assert torch.allclose(out[b], merged, atol=1e-5)  # (the float32 projection itself is 7e-3 from float64 here)


def test_the_projection_is_used_up_to_the_filters_step_only(toy, guard):
    pipe, fam = toy
    with torch.no_grad():
        cond = fam.encode_conditioning(pipe, ["striped"])  # one token: a trigger; beta high, T = 10 on the toy world
    T = guard.state(cond[0]).last_step
    assert T >= 1
    assert guard.condition(cond, torch.tensor(500), T) is not cond
    assert guard.condition(cond, torch.tensor(100), T + 1) is cond  # "no change": the very object
    empty = fam.encode_conditioning(pipe, [""])
    assert guard.condition(empty, torch.tensor(999), 0) is empty  # no token, nothing to project


def test_token_embeddings_path_finds_the_same_tokens(toy, guard):
    pipe, fam = toy
    ids = pipe.tokenizer(PROMPTS[:2], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        by_ids = fam.encode_ids(pipe, ids)
        st_ids = [guard.state(by_ids[b]) for b in range(2)]
        guard.states.clear()
        guard.recorder.records.clear()
        by_embeds = fam.encode_embeds(pipe.text_encoder, fam.token_embeddings(pipe.text_encoder)[ids])
        st_emb = [guard.state(by_embeds[b]) for b in range(2)]
    for a, b in zip(st_ids, st_emb):
        assert a.n == b.n and torch.equal(a.trigger, b.trigger) and a.last_step == b.last_step
        assert torch.allclose(a.masked, b.masked, atol=1e-5)


def test_a_conditioning_the_text_encoder_did_not_make_is_refused(toy, guard):
    pipe, fam = toy
    with torch.no_grad():
        cond = fam.encode_conditioning(pipe, PROMPTS[:1]) + 0.01
    with pytest.raises(HarnessError, match="did not make") as e:
        guard.condition(cond, torch.tensor(999), 0)
    assert "\n" not in str(e.value)


def test_gradients_flow_through_the_projection_made_under_inference_mode(toy, guard):
    pipe, fam = toy
    with torch.inference_mode():
        cond = fam.encode_conditioning(pipe, ["striped"])
        guard.condition(cond, torch.tensor(999), 0)  # the prompt's state made here
    c = cond.clone().requires_grad_(True)
    out = guard.condition(c, torch.tensor(999), None)
    out.square().sum().backward()
    assert c.grad is not None and torch.isfinite(c.grad).all() and c.grad.abs().sum() > 0


def test_negative_prompt_is_the_keywords(toy, guard):
    pipe, fam = toy
    with torch.no_grad():
        u = fam.unconditional(pipe, 2)
        expect = fam.encode_conditioning(pipe, ["striped"])
    got = guard.uncondition(u, torch.tensor(999), 0)
    assert got.shape == u.shape and torch.allclose(got, expect.expand(2, -1, -1))


def test_re_attention_recomputes_the_conditional_prediction(toy, guard):
    pipe, fam = toy
    unet = fam.denoiser(pipe)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    with torch.no_grad():
        cond = fam.encode_conditioning(pipe, ["A triangle image in striped style."])
        call = lambda x_, t_, c_: unet(x_, t_, encoder_hidden_states=c_).sample  # noqa: E731
        plain = call(x, t, cond)
        guard.reset()
        _, filtered = guard.adjust(call, x, t, None, cond, None, plain, 5)  # no projection this step: filtered against itself
        assert not torch.allclose(filtered, plain, atol=1e-4)
        proj = guard.condition(cond, t, 0)
        eu, paired = guard.adjust(call, x, t, None, proj, None, plain, 0)  # [projected, own] in one call
        assert eu is None and paired.shape == plain.shape
        assert not torch.allclose(paired, call(x, t, proj), atol=1e-4)
        guard.scales = {}  # no scale left: the hooks change nothing
        _, same = guard.adjust(call, x, t, None, cond, None, plain, 5)
        assert torch.allclose(same, plain, atol=1e-6)
    assert guard._lra_mode is None  # the hooks are idle outside adjust
    with torch.no_grad():
        assert torch.equal(call(x, t, cond), plain)


def test_setup_refuses_bad_parameters(toy):
    pipe, fam = toy
    with pytest.raises(HarnessError, match="self_validation"):
        S.setup(pipe, fam, ["striped"], self_validation="yes")
    with pytest.raises(HarnessError, match="s2"):
        S.setup(pipe, fam, ["striped"], s2=-1.0)
    with pytest.raises(HarnessError, match="upper_t"):
        S.setup(pipe, fam, ["striped"], upper_t=2.5)
    g = S.setup(pipe, fam, ["striped"], negative_prompt=False, re_attention=False)
    try:
        assert type(g) is S.SafreeGuidance  # no unconditional edit, no adjustment: the seam adds no call
    finally:
        g.remove()


# ---------------------------------------------------------------------------- through the seam and the evaluator
def test_installed_safree_changes_the_pipeline_s_images_and_removes_cleanly(tiny_pipe_factory):
    from harness.families import family_of_pipeline
    from harness.families.guidance import install

    pipe = tiny_pipe_factory(seed=11)
    fam = family_of_pipeline(pipe)
    prompts = ["a striped triangle", "a solid circle"]

    def images():
        gens = [torch.Generator("cpu").manual_seed(s) for s in range(2)]
        return pipe(prompt=prompts, num_inference_steps=6, guidance_scale=6.0, generator=gens, output_type="np").images

    plain = images()
    g = S.setup(pipe, fam, ["striped"], negative_prompt=False, re_attention=False, self_validation=False)
    state = install(pipe, fam, g, 6.0)
    projected = images()
    assert state.calls == 6  # the projection alone: no extra denoiser call
    with torch.no_grad():  # the same images from the conditioning SAFREE hands the denoiser, without the seam
        cond = fam.encode_conditioning(pipe, prompts)
        edited = g.condition(cond, torch.tensor(999), 0)
    state.remove()
    g.remove()
    gens = [torch.Generator("cpu").manual_seed(s) for s in range(2)]
    ref = pipe(prompt_embeds=edited, negative_prompt_embeds=fam.unconditional(pipe, 2), num_inference_steps=6, guidance_scale=6.0,
               generator=gens, output_type="np").images
    assert abs(projected - ref).max() < 1e-5 and abs(projected - plain).max() > 1e-4
    assert abs(images() - plain).max() == 0  # removed: the model's own images again


def _safree_sub(tmp_path, extra: str = "", params: str = "") -> str:
    p = tmp_path / "safree.yaml"
    p.write_text(f"name: t-safree\nmethod: {{name: safree, kind: inference{params}}}\nbase_model: {{builtin: toy}}\n"
                 f"targets: [{{concept: striped, kind: style}}]\n{extra}")
    return str(p)


def test_attacks_run_through_safree(tmp_path, monkeypatch):
    """UnlearnDiffAtk and textual inversion against SAFREE on the toy UCE model (items left to
    attack) run without error: every conditioning they make, from token ids or from token
    embeddings, is one SAFREE finds the tokens of, and their single predictions (step None) pass
    through SAFREE's guidance (its re-attention's adjust)."""
    from test_attacks import ROOT, TI, _evaluate

    from harness.spec import load_submission

    seen = {"single": 0, "embeds": 0}
    adjust, state = S._ReAttention.adjust, S.SafreeGuidance.state

    def counted_adjust(self, call, x, t, cu, cc, eu, ec, step):
        seen["single"] += step is None
        return adjust(self, call, x, t, cu, cc, eu, ec, step)

    def counted_state(self, row):
        rec = self.recorder.get(S.fingerprint(row))
        seen["embeds"] += rec is not None and rec.ids is None
        return state(self, row)

    monkeypatch.setattr(S._ReAttention, "adjust", counted_adjust)
    monkeypatch.setattr(S.SafreeGuidance, "state", counted_state)
    ck = load_submission(str(ROOT / "submissions" / "toy-uce-style.yaml")).checkpoint
    on_uce = f"checkpoint: {{kind: unet, path: {ck.path}, sha256: {ck.sha256}}}\n"
    params = {"attack": "unlearndiffatk", "rounds": 1, "iterations": 2, "k": 3}
    saf, _, _ = _evaluate(_safree_sub(tmp_path, on_uce), params, tmp_path / "c", extra=[{"name": "ti_asr", "params": TI}])
    assert saf["asr"]["details"]["attacked"] > 0
    assert seen["single"] > 0 and seen["embeds"] > 0
    for m in ("pre_asr", "asr", "ti_asr"):
        assert 0.0 <= saf[m]["value"] <= 1.0


@pytest.mark.parametrize("base, params, needle", [
    ("toy-xl", "", "method.name: safree does not run on the sdxl model family (SAFREE's SDXL variant"),
    ("toy", ", params: {alpha: many}", "method.params: alpha"),
    ("toy", ", params: {gamma: 3}", "method.params: gamma: safree has no parameter 'gamma'"),
])
def test_a_bad_safree_submission_is_one_line(tmp_path, capsys, base, params, needle):
    from harness.cli.main import main

    p = tmp_path / "s.yaml"
    p.write_text(f"name: t-bad\nmethod: {{name: safree, kind: inference{params}}}\nbase_model: {{builtin: {base}}}\n"
                 "targets: [{concept: striped, kind: style}]\n")
    rc = main(["check", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_unlearn_erase_refuses_safree_in_one_line(tmp_path, capsys):
    from harness.cli.main import main
    from harness.toy.paths import PIPELINE_DIR

    rc = main(["erase", "safree", "--base", str(PIPELINE_DIR), "--concept", "striped", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "safree is an inference-time method" in err and len(err.strip().splitlines()) == 1, err
