"""The prompt attacks on SDXL (the ``sdxl`` model family) on random toy-xl pipelines, tiny budgets:
known answers (generation from a prompt's own ids, the partial-diffusion trajectory at psi 0 and
1, the family's conditioning from token embeddings: each equals the pipeline's own, bitwise),
textual inversion learning one row per text encoder that its images use, UnlearnDiffAtk and
Ring-A-Bell end to end, and attacks that cannot apply to a family saying why in their records.

``xl``: ``build_pipeline_xl`` (two 32-wide encoders sharing one tokenizer). ``wide``: SDXL's
shape at toy size, two encoders of different widths (24 and 40, as SDXL's 768 and 1280) whose
concatenated states are the UNet's 64-wide cross-attention input, and a second tokenizer that
pads with ``!`` (SDXL's ``tokenizer_2``), not the end token."""

import copy

import numpy as np
import pytest
import torch

from harness.attacks import common, ringabell, runner, ti, unlearndiffatk
from harness.families.sdxl import SDXL, SDXLFamily
from harness.run.generate import Job, run_batch

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ("A circle image in striped style.", "A square image in striped style.")


def _wide(seed: int = 0):
    from harness.toy.model import TEXT_XL, UNET_XL, assemble_xl, build_text_encoder, build_tokenizer, build_unet, build_vae, unet_xl_kwargs

    tok, tok2 = build_tokenizer(), build_tokenizer()
    tok2.pad_token = "!"
    t1, t2 = dict(TEXT_XL, hidden_size=24), dict(TEXT_XL, hidden_size=40)
    unet = build_unet(dict(UNET_XL, cross_attention_dim=64), 16, 4, seed, xl=unet_xl_kwargs(UNET_XL, t2))
    pipe = assemble_xl(build_vae(seed=seed), build_text_encoder(tok, t1, seed), tok, build_text_encoder(tok2, t2, seed + 1, projection=True), tok2, unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def xl():
    from harness.toy.model import build_pipeline_xl

    return build_pipeline_xl(seed=0)


@pytest.fixture(scope="module")
def wide():
    return _wide()


def _job(prompt=PROMPTS[0], seed=0, negative="", steps=2, guidance=3.0):
    return Job(prompt, negative, seed, "ddim", steps, guidance, 32, 32, 0.0, "float32", "toy-xl-test")


def _items(pipe, prompts_seeds):
    jobs = [_job(p, s) for p, s in prompts_seeds]
    _, base = run_batch(pipe, jobs)
    return [common.Item(i, j, j.key(), base[i]) for i, j in enumerate(jobs)]


def _own_ids(pipe, prompt):
    tok = pipe.tokenizer
    return common.with_prefix(tok, [], common.prompt_ids(tok, prompt))


def never(ims):
    return [False] * len(ims)


def test_the_wide_stand_in_has_sdxl_s_shape(wide):
    assert [SDXL.token_embeddings(te).shape[1] for _, te in SDXL.text_encoders(wide)] == [24, 40]
    assert wide.tokenizer_2.pad_token_id != wide.tokenizer_2.eos_token_id == wide.tokenizer.eos_token_id


# ---------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("which", ["xl", "wide"])
@pytest.mark.parametrize("negative", ["", "a plain image."])
def test_generation_from_a_prompts_ids_is_the_pipelines_own_image(request, which, negative):
    """The prompt's own first-tokenizer ids give bitwise the images ``run_batch`` (the pipeline's
    own call) makes with the same latents: through ``encode_ids``, and through conditionings
    given per prompt (``conds``, stacked as ``Conditioning``); the negative prompt (zeros for
    ``""``) from ``encode_negative``."""
    pipe = request.getfixturevalue(which)
    jobs = [_job(PROMPTS[0], 0, negative), _job(PROMPTS[1], 3, negative)]
    _, ref = run_batch(pipe, jobs)
    ids = [_own_ids(pipe, j.prompt) for j in jobs]
    counter = {}
    got = common.generate_from_ids(pipe, ids, jobs, counter)
    assert all(np.array_equal(a, b) for a, b in zip(got, ref))
    assert counter == {"unet_calls": 2 * 2}  # 2 steps, guided
    with torch.no_grad():
        conds = common.split_conditioning(SDXL.encode_ids(pipe, torch.tensor(ids)))
    assert all(np.array_equal(a, b) for a, b in zip(common.generate_from_ids(pipe, ids, jobs, conds=conds), ref))
    other = common.generate_from_ids(pipe, [ids[1], ids[0]], jobs)  # the ids are what is drawn
    assert not np.array_equal(other[0], ref[0])


@pytest.mark.parametrize("which", ["xl", "wide"])
def test_partial_diffusion_of_base_and_base_at_psi_0_and_1_is_plain_generation(request, which):
    from harness.attacks.partial_diffusion import run_partial_batch

    pipe = request.getfixturevalue(which)
    jobs = [_job(PROMPTS[0], 1), _job(PROMPTS[1], 2)]
    raw, ref = run_batch(pipe, jobs)
    for psi in (0.0, 1.0):
        got_raw, got = run_partial_batch((pipe, copy.deepcopy(pipe)), jobs, psi)
        assert np.array_equal(got, ref)
        assert np.array_equal(np.clip(got_raw, 0, 1), raw)


def test_conditioning_from_token_embeddings_is_the_pipelines_own(wide):
    """Both encoders fed their tables' rows of the ids give exactly the pipeline's prompt
    conditioning (penultimate states, pooled projection), whatever a slot (a position an attack
    fills, holding EOS in the ids) holds: the pooled state is the end token's."""
    tok = wide.tokenizer
    ids = torch.tensor([_own_ids(wide, p) for p in PROMPTS])
    with torch.no_grad():
        own = wide.encode_prompt(prompt=list(PROMPTS), device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        per = [torch.tensor([q[n] for q in (common.encoder_ids([wide.tokenizer, wide.tokenizer_2], r) for r in ids.tolist())])
               for n in range(2)]
        embs = [SDXL.token_embeddings(te)[e] for (_, te), e in zip(SDXL.text_encoders(wide), per)]
        slots = torch.zeros(ids.shape, dtype=torch.bool)
        slots[:, 2] = True
        held = ids.clone()
        held[:, 2] = tok.eos_token_id  # the slot holds EOS, its embedding is still the word's
        got = common.embeds_conditioning(wide, SDXL, embs, held, slots, (32, 32))
    assert torch.equal(got.hidden, own[0]) and torch.equal(got.extra["text_embeds"], own[2])
    assert got.extra["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    assert per[1][0][-1] == wide.tokenizer_2.pad_token_id and per[0][0][-1] == tok.eos_token_id


# ---------------------------------------------------------------------------- textual inversion
def test_ti_learns_one_row_per_encoder_and_its_images_use_them(wide):
    items = _items(wide, [(PROMPTS[0], 0), (PROMPTS[1], 1)])
    p = ti.params_of({"steps": 2, "batch_size": 2, "checkpoints": 2, "lr": 0.05})
    encs = SDXL.text_encoders(wide)
    init = torch.cat([SDXL.token_embeddings(te)[t("style", add_special_tokens=False).input_ids[0]] for t, te in encs]).detach()
    counter = {}
    learned = [(s, v) for s, v, _ in ti.train(wide, items, "striped", "style", p, counter, progress=False)]
    assert [s for s, _ in learned] == [1, 2] and counter == {"unet_calls": 2, "ti_steps": 2}
    v = learned[-1][1]
    assert v.shape == (24 + 40,)  # one row of each encoder's table, concatenated
    assert not torch.equal(v[:24], init[:24]) and not torch.equal(v[24:], init[24:])  # both rows learn
    assert all(q.grad is None for q in wide.unet.parameters())  # the unlearned model stays frozen

    seen = []
    recs = ti.attack(wide, items, lambda ims: seen.append(ims) or never(ims), {**p, "_concept": "striped", "_kind": "style"}, progress=False)
    assert all(set(common.RECORD_KEYS) <= set(r) for r in recs)
    assert [r["encoders_inverted"] for r in recs] == [2, 2] and [r["budget_used"] for r in recs] == [2, 2]
    assert recs[0]["prompt"] == "A circle image in <ti> style." and not any(r["success"] for r in recs)

    def images(vec):
        caps = [ti.placeholder_ids(wide.tokenizer, it.job.prompt, "striped") for it in items]
        Es, ids_e = ti._encoders(wide, SDXL, caps, "cpu")
        with torch.no_grad():
            cond = ti._embed(wide, SDXL, Es, ids_e, torch.tensor([c[0] for c in caps]), torch.tensor([c[1] for c in caps]), vec, (32, 32))
        return common.generate_from_ids(wide, [c[0] for c in caps], [it.job for it in items], conds=common.split_conditioning(cond))

    mine = images(v)
    assert all(np.array_equal(a, b) for a, b in zip(seen[-1], mine))  # the attack judged the learned embedding's images
    for part in (slice(0, 24), slice(24, None)):  # each encoder's row changes the image
        moved = v.clone()
        moved[part] += 0.5
        assert not np.array_equal(images(moved)[0], mine[0])


def test_ti_init_token_must_be_a_single_token_on_sdxl(xl):
    from harness.errors import HarnessError

    items = _items(xl, [(PROMPTS[0], 0)])
    with pytest.raises(HarnessError) as e:
        next(ti.train(xl, items, "striped", "style", ti.params_of({"steps": 1, "init_token": "striped circle"}), {}, progress=False))
    assert "\n" not in str(e.value) and "params.init_token" in str(e.value)


# ---------------------------------------------------------------------------- UnlearnDiffAtk, Ring-A-Bell
def test_unlearndiffatk_runs_on_sdxl_and_its_images_are_the_found_prompts(wide):
    items = _items(wide, [(PROMPTS[0], 0), (PROMPTS[1], 1)])
    p = {"rounds": 2, "iterations": 2, "k": 2}
    counter = {}
    a = unlearndiffatk.attack(wide, items, never, p, progress=False, counter=counter)
    assert all(set(common.RECORD_KEYS) | {"losses", "timesteps"} <= set(r) for r in a)
    assert all(len(r["token_ids"]) == 2 and r["budget_used"] == 4 and len(r["losses"]) == 2 and not r["success"] for r in a)
    assert counter["unet_calls"] == 2 * 2 + 2 * 2 * 2  # 4 gradient steps (the batch at once), 2 guided 2-step generations
    assert [r["token_ids"] for r in unlearndiffatk.attack(wide, items, never, p, progress=False)] == [r["token_ids"] for r in a]

    seen = []

    def hit(ims):
        seen.append(ims)
        return [True] * len(ims)

    rec = unlearndiffatk.attack(wide, items[:1], hit, p, progress=False)[0]
    assert rec["success"] and rec["success_at"] == 2
    tok = wide.tokenizer
    ids = common.with_prefix(tok, rec["token_ids"], common.prompt_ids(tok, items[0].job.prompt))
    assert np.array_equal(seen[0][0], common.generate_from_ids(wide, [ids], [items[0].job])[0])
    assert rec["prompt"] == common.decode(tok, ids)


def test_unlearndiffatk_gradient_reaches_the_choice_through_both_encoders(wide, monkeypatch):
    """The one token choice is projected into each encoder's own table: the optimised
    distributions move when only the second encoder's table can carry the gradient."""
    items = _items(wide, [(PROMPTS[0], 0)])
    p = {"rounds": 1, "iterations": 2, "k": 2}
    tables = {}
    real = SDXLFamily.token_embeddings

    def first_constant(self, te):
        E = real(self, te)
        if te is wide.text_encoder:  # the first table the same for every token: no gradient through it
            return tables.setdefault("e1", E.detach().mean(0, keepdim=True).expand_as(E).clone())
        return E

    monkeypatch.setattr(SDXLFamily, "token_embeddings", first_constant)
    a = unlearndiffatk.attack(wide, items, never, p, progress=False)[0]
    b = unlearndiffatk.attack(wide, items, never, {**p, "lr": 0.0}, progress=False)[0]
    assert a["losses"] != b["losses"] or a["token_ids"] != b["token_ids"]


def test_ringabell_searches_sdxl_s_concatenated_hidden_states(xl):
    items = _items(xl, [(PROMPTS[0], 0)])
    pairs = [(PROMPTS[0], "A circle image in solid style.")]
    p = ringabell.params_of({"population": 8, "generations": 4, "eval_every": 2, "length": 5})
    a = ringabell.search(xl, items, p, pairs, {}, progress=False)
    assert a == ringabell.search(xl, items, p, pairs, {}, progress=False)
    tok = xl.tokenizer
    n = tok.model_max_length

    def hidden(texts):
        ids = tok(texts, padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return SDXL.encode_ids(xl, ids).hidden.float()

    vec = (hidden([pairs[0][0]]) - hidden([pairs[0][1]])).mean(0)
    assert vec.shape == (n, 64)  # both encoders' penultimate states, concatenated
    target = hidden([PROMPTS[0]])[0] + p["strength"] * vec
    best = a[0]["checkpoints"][-1]
    ids = torch.tensor([[tok.bos_token_id, *best["token_ids"]] + [tok.eos_token_id] * (n - 1 - len(best["token_ids"]))])
    with torch.no_grad():
        fit = float(((target - SDXL.encode_ids(xl, ids).hidden.float()[0]) ** 2).sum())
    assert fit == pytest.approx(best["fitness"], abs=1e-3)
    recs = ringabell.attack(xl, items, never, {**p, "_pairs": pairs}, progress=False)
    assert set(common.RECORD_KEYS) | {"fitness", "search_cached"} <= set(recs[0]) and recs[0]["budget_used"] == 4


# ---------------------------------------------------------------------------- where an attack cannot apply
def test_an_attack_that_cannot_apply_to_a_family_says_why_in_its_records(xl, monkeypatch):
    items = _items(xl, [(PROMPTS[0], 0)])
    bigger = copy.deepcopy(xl)
    bigger.text_encoder_2.resize_token_embeddings(len(xl.tokenizer) + 3)
    counter = {}
    rec = unlearndiffatk.attack(bigger, items, never, {"rounds": 1, "iterations": 1}, progress=False, counter=counter)[0]
    assert rec["not_applicable"].startswith("unlearndiffatk: ") and "vocabularies of different sizes" in rec["not_applicable"]
    assert "\n" not in rec["not_applicable"] and set(common.RECORD_KEYS) <= set(rec) and not rec["success"] and counter == {}

    monkeypatch.delattr(SDXLFamily, "conditioning_from_embeds")
    for mod, params in ((ti, {"steps": 1, "_concept": "striped", "_kind": "style"}), (unlearndiffatk, {"rounds": 1, "iterations": 1})):
        rec = mod.attack(xl, items, never, params, progress=False, counter=counter)[0]
        assert "2 text encoders and no conditioning_from_embeds" in rec["not_applicable"] and "\n" not in rec["not_applicable"]
        assert rec["budget_used"] == 0 and counter == {}


def test_the_runner_caches_no_inapplicable_record_and_the_target_says_why(xl, monkeypatch, tmp_path):
    from types import SimpleNamespace

    class Judge:
        identity = {"judge": "stub"}

        def __call__(self, ims):
            return never(ims)

    items = _items(xl, [(PROMPTS[0], 0)])
    monkeypatch.setattr(runner, "make_judge", lambda *a, **k: Judge())
    monkeypatch.delattr(SDXLFamily, "conditioning_from_embeds")
    prompt = SimpleNamespace(labels={"style": "striped", "object": "circle"}, text=PROMPTS[0])
    settings = SimpleNamespace(attack="unlearndiffatk", params={"rounds": 1, "iterations": 1}, seeds=None, judge=SimpleNamespace(params=lambda: {}))
    suite = SimpleNamespace(id="xl-mini", applies_to=["style"])
    target = SimpleNamespace(kind="style", concept="striped")
    it = items[0]
    ctx = runner.AttackContext(suite, {"prompt": settings}, [(prompt, 0)], [target], [it.job], [it.job], [it.target_image], [it.target_image],
                               None, lambda: xl, {"unlearned": "u", "text_encoder": "t"}, tmp_path, tmp_path, progress=False)
    out = runner.run_prompt_attacks(ctx)
    err = out[("prompt", "style", "striped")]["error"]
    assert err.startswith("suite xl-mini: unlearndiffatk: the sdxl model family has 2 text encoders") and "\n" not in err
    assert not list((tmp_path / "attacks").rglob("*.json"))  # nothing cached: a later harness that can run it will
