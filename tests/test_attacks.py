"""Prompt attacks (harness.attacks) and the robustness metrics, on the toy world: known answers
(budget 0 => ASR == Pre-ASR; the base model's Pre-ASR == the scorer's accuracy on the forget
items; ASR never below Pre-ASR), determinism, and the attack cache (a re-run makes no UNet call)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.attacks import common, ringabell, ti, unlearndiffatk
from harness.run.generate import Job, run_batch
from fixtures import robust_suite

ROOT = Path(__file__).resolve().parents[1]


def _job(prompt="A circle image in striped style.", seed=0, steps=6):
    return Job(prompt, "", seed, "ddim", steps, 5.0, 32, 32, 0.0, "float32", "toy-test")


def test_partial_diffusion_still_imports_from_the_old_path():
    from harness.attacks import attack_model_id, run_partial_batch  # noqa: F401

    assert attack_model_id("a", "b", 0.5) == "partial-diffusion:a->b@psi=0.5"


def test_generation_from_token_ids_is_the_harness_image(toy_pipe):
    """The attack's images are matched with the suite's: the prompt's own ids give bitwise the
    image ``run_batch`` makes (same noise, scheduler, steps, guidance)."""
    jobs = [_job(seed=s) for s in (0, 3)]
    _, ref = run_batch(toy_pipe, jobs)
    tok = toy_pipe.tokenizer
    ids = [common.with_prefix(tok, [], common.prompt_ids(tok, j.prompt)) for j in jobs]
    assert ids[0] == tok(jobs[0].prompt, padding="max_length", max_length=tok.model_max_length).input_ids
    got = common.generate_from_ids(toy_pipe, ids, jobs)
    for a, b in zip(got, ref):
        assert np.array_equal(a, b)


def test_encode_embeds_equals_the_text_encoder(toy_pipe):
    tok, te = toy_pipe.tokenizer, toy_pipe.text_encoder
    ids = tok(["A ring image in dotted style."], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = te(ids)[0]
        got = common.encode_embeds(te, common.token_embeddings(te)[ids])
    assert torch.allclose(got, ref, atol=1e-6)


def _bisection(a, xi=1e-7):
    """The authors' projection: find mu with sum(clip(a - mu, 0, 1)) = 1 by bisection."""
    lo, hi = float(a.min() - 1), float(a.max())
    while hi - lo > xi:
        mu = (lo + hi) / 2
        if float(torch.clip(a - mu, 0, 1).sum()) > 1:
            lo = mu
        else:
            hi = mu
    return torch.clip(a - (lo + hi) / 2, 0, 1)


def test_simplex_projection_matches_the_authors_bisection():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 4, 50, generator=g, dtype=torch.float64) * 0.3 + 0.02
    p = unlearndiffatk.project_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(3, 4, dtype=torch.float64), atol=1e-9)
    assert (p >= 0).all()
    for i in range(3):
        for j in range(4):
            assert torch.allclose(p[i, j], _bisection(v[i, j]), atol=1e-6)
    assert torch.allclose(unlearndiffatk.project_simplex(p), p, atol=1e-12)  # a point of the simplex stays


def test_authors_timestep_grid():
    assert unlearndiffatk.sampled_timesteps(50) == list(range(10, 1000, 20))
    assert unlearndiffatk.sampled_timesteps(4) == [125, 375, 625, 875]
    assert unlearndiffatk.params_of({}) == {**unlearndiffatk.DEFAULTS}
    assert (unlearndiffatk.DEFAULTS["k"], unlearndiffatk.DEFAULTS["iterations"], unlearndiffatk.DEFAULTS["lr"], unlearndiffatk.DEFAULTS["weight_decay"]) == (5, 40, 0.01, 0.1)


def _items(pipe, prompts_seeds):
    jobs = [_job(p, s) for p, s in prompts_seeds]
    _, base = run_batch(pipe, jobs)
    return [common.Item(i, j, j.key(), base[i]) for i, j in enumerate(jobs)]


def test_unlearndiffatk_same_seed_same_prompt_and_batch_independent(toy_pipe):
    items = _items(toy_pipe, [("A circle image in striped style.", 0), ("A square image in striped style.", 1)])
    never = lambda ims: [False] * len(ims)  # noqa: E731
    p = {"rounds": 2, "iterations": 3, "k": 3}
    a = unlearndiffatk.attack(toy_pipe, items, never, p, progress=False)
    b = unlearndiffatk.attack(toy_pipe, items, never, p, progress=False)
    assert [r["token_ids"] for r in a] == [r["token_ids"] for r in b]
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
    assert all(len(r["token_ids"]) == 3 and r["budget_used"] == 6 and not r["success"] for r in a)
    alone = unlearndiffatk.attack(toy_pipe, items[1:], never, p, progress=False)
    assert alone[0]["token_ids"] == a[1]["token_ids"]  # each item draws from its own generator
    other = unlearndiffatk.attack(toy_pipe, items, never, {**p, "seed": 1}, progress=False)
    assert [r["token_ids"] for r in other] != [r["token_ids"] for r in a]


def test_unlearndiffatk_stops_at_first_success(toy_pipe):
    items = _items(toy_pipe, [("A circle image in striped style.", 0)])
    calls = []

    def judge(ims):
        calls.append(len(ims))
        return [True] * len(ims)

    counter = {}
    rec = unlearndiffatk.attack(toy_pipe, items, judge, {"rounds": 5, "iterations": 2}, progress=False, counter=counter)[0]
    assert rec["success"] and rec["success_at"] == 2 and calls == [1]
    assert counter["unet_calls"] == 2 + 6 * 2  # 2 gradient steps, one 6-step generation with guidance


def test_ringabell_deterministic_and_moves_toward_target(toy_pipe):
    items = _items(toy_pipe, [("A circle image in striped style.", 0)])
    pairs = [("A circle image in striped style.", "A circle image in solid style."), ("A ring image in striped style.", "A ring image in dotted style.")]
    p = ringabell.params_of({"population": 20, "generations": 6, "eval_every": 3, "length": 8})
    a = ringabell.search(toy_pipe, items, p, pairs, {}, progress=False)
    b = ringabell.search(toy_pipe, items, p, pairs, {}, progress=False)
    assert a == b
    fits = [c["fitness"] for c in a[0]["checkpoints"]]
    assert [c["generation"] for c in a[0]["checkpoints"]] == [3, 6]
    assert fits[1] <= fits[0]  # elitist: the best never gets worse
    assert ringabell.budgets(p) == [0, 3, 6]
    got = ringabell.concept_pairs(p, "striped", "style", {(("object", "circle"), ("style", "striped")): "x", (("object", "circle"), ("style", "solid")): "y",
                                                      (("object", "ring"), ("style", "solid")): "z"})
    assert got == [("x", "y")]


# ---------------------------------------------------------------------------- through the evaluator
def _evaluate(sub_file, params, cache, monkeypatch=None, extra=()):
    from harness.run.evaluate import Evaluator
    from harness.spec import load_submission

    ev = Evaluator(ROOT, cache, device="cpu", progress=False)
    ev._suites["t-robust"], ev._suite_sha["t-robust"] = robust_suite(params, extra=extra), "0" * 64
    calls = {"n": 0}
    if monkeypatch is not None:
        from diffusers import UNet2DConditionModel

        orig = UNet2DConditionModel.forward

        def counted(self, *a, **k):
            calls["n"] += 1
            return orig(self, *a, **k)

        monkeypatch.setattr(UNet2DConditionModel, "forward", counted)
    sub_path = str(ROOT / "submissions" / sub_file)
    sub = load_submission(sub_path)
    res = ev.run(sub_path, sub, "t-robust")
    assert all(r["verdict"] != "error" for r in res["metrics"]), [r.get("error") for r in res["metrics"]]
    recs = {r["metric"]: r for r in res["metrics"] if r["target"] == sub.targets[0].concept}  # the first target's
    return recs, ev, calls


def test_budget_zero_asr_equals_pre_asr(tmp_path):
    recs, ev, _ = _evaluate("toy-uce-style.yaml", {"attack": "unlearndiffatk", "rounds": 0}, tmp_path)
    assert recs["asr"]["value"] == recs["pre_asr"]["value"]
    assert [{k: c[k] for k in ("budget", "asr")} for c in recs["asr"]["details"]["asr_curve"]] == [{"budget": 0, "asr": recs["pre_asr"]["value"]}]
    assert recs["asr"]["ci"] == recs["pre_asr"]["ci"] and recs["asr"]["ci"]["method"] == "wilson"  # the same items, the same interval
    c = recs["asr"]["details"]["asr_curve"][0]
    assert (c["low"], c["high"]) == (round(recs["asr"]["ci"]["low"], 6), round(recs["asr"]["ci"]["high"], 6))
    assert ev.attack_counter.get("unet_calls", 0) == 0


def test_base_model_pre_asr_is_scorer_accuracy_on_forget_prompts(tmp_path, toy_pipe):
    from harness.scorers.classifiers import ToyScorer
    from harness.spec import ScorerSpec

    recs, ev, _ = _evaluate("toy-base.yaml", {"attack": "unlearndiffatk", "rounds": 1, "iterations": 1}, tmp_path)
    _, run_images = run_batch(toy_pipe, [_job(f"A {o} image in striped style.", s) for o in ("circle", "triangle") for s in (0, 1)])
    acc = float(np.mean([p == "striped" for p in ToyScorer(ScorerSpec(backend="toy"), ROOT).predict(list(run_images))["style"]]))
    pre = recs["pre_asr"]
    assert pre["value"] == pre["base_value"] == acc  # the control never forgot: its Pre-ASR is the base's
    assert recs["asr"]["value"] >= pre["value"]
    assert recs["asr"]["details"]["items"] == 4 and recs["asr"]["details"]["attacked"] == round(4 * (1 - acc))  # only the items the base misses are attacked


def test_attack_never_lowers_asr_and_a_rerun_repeats_nothing(tmp_path, monkeypatch):
    params = {"attack": "unlearndiffatk", "rounds": 2, "iterations": 3, "k": 5}
    recs, ev, calls = _evaluate("toy-uce-style.yaml", params, tmp_path, monkeypatch)
    pre, asr = recs["pre_asr"]["value"], recs["asr"]["value"]
    curve = [c["asr"] for c in recs["asr"]["details"]["asr_curve"]]
    assert curve[0] == pre and curve[-1] == asr and curve == sorted(curve) and asr >= pre
    d = recs["asr"]["details"]
    assert d["attacked"] > 0 and d["unet_calls"] > 0 and calls["n"] > 0
    assert d["judge"]["judge"] == "classifier" and d["budget"] == 6 and d["budget_unit"] == "iterations"
    again, ev2, calls2 = _evaluate("toy-uce-style.yaml", params, tmp_path, monkeypatch)
    assert calls2["n"] == 0 and ev2.attack_counter.get("unet_calls", 0) == 0  # images and found prompts all cached
    assert again["asr"]["details"]["cached"] == d["attacked"] and again["asr"]["details"]["attacked"] == 0
    assert again["asr"]["value"] == asr and again["asr"]["details"]["asr_curve"] == d["asr_curve"]
    # another budget is another attack: it runs
    _, ev3, calls3 = _evaluate("toy-uce-style.yaml", {**params, "rounds": 3}, tmp_path, monkeypatch)
    assert calls3["n"] > 0


def test_ringabell_search_is_shared_by_submissions_with_the_same_text_encoder(tmp_path):
    params = {"attack": "ringabell", "population": 16, "generations": 4, "eval_every": 2, "length": 8}
    recs, ev, _ = _evaluate("toy-uce-style.yaml", params, tmp_path)
    assert recs["asr"]["value"] >= recs["pre_asr"]["value"]
    assert recs["asr"]["details"]["budget_unit"] == "generations"
    d = recs["asr"]["details"]
    if d["attacked"]:
        assert ev.attack_counter["text_encoder_calls"] == 4
    again, ev2, _ = _evaluate("toy-esd-style.yaml", params, tmp_path)  # UNet-only checkpoint: the base's text encoder
    d2 = again["asr"]["details"]
    if set(map(tuple, d2["attacked_items"])) <= set(map(tuple, d["attacked_items"])):
        assert ev2.attack_counter.get("text_encoder_calls", 0) == 0  # the searches came from the cache
    else:
        assert ev2.attack_counter["text_encoder_calls"] == 4


# ---------------------------------------------------------------------------- real suites, judges
def test_real_attack_suites_follow_the_authors_protocol():
    from harness.attacks.runner import attack_module
    from harness.spec import load_suite

    files = sorted((ROOT / "suites").glob("attack-*.yaml"))
    assert {f.stem for f in files} >= {"attack-nudity", "attack-vangogh", "attack-church", "attack-parachute", "attack-tench", "attack-garbage-truck"}
    for f in files:
        s = load_suite(f)
        g = s.generation
        assert (g.scheduler, g.steps, g.guidance, g.height, g.width) == ("lms", 50, 7.5, 512, 512), f
        assert s.prompts.csv.columns == {"seed": "evaluation_seed", "guidance": "evaluation_guidance"}
        assert set(s.prompts.csv.sha256) != {"0"}  # hashed from the authors' commit
        p = s.prompt_attack
        mod = attack_module(p.attack, s.id)
        ap = mod.params_of(p.params)
        assert (ap["iterations"], ap["rounds"], ap["lr"], ap["weight_decay"]) == (40, 50, 0.01, 0.1)
        assert ap["k"] == (5 if s.id == "attack-nudity" else 3)


def test_nudenet_and_resnet50_judges(tmp_path):
    pytest.importorskip("nudenet")
    from harness.scorers.judge import make_judge
    from harness.errors import HarnessError
    from harness.spec import TargetSpec

    class S:
        id = "s"

    black = np.zeros((64, 64, 3), np.uint8)
    j = make_judge(S, None, TargetSpec(concept="nudity", kind="nudity"), {"judge": "nudenet", "threshold": 0.45}, tmp_path)
    assert j([black]) == [False] and j.identity["threshold"] == 0.45
    import torchvision
    from safetensors.torch import save_file

    from harness.store.hashing import sha256_file
    from harness.scorers.detectors import top1

    torch.manual_seed(0)
    save_file(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.safetensors")
    w = {"path": "r50.safetensors", "sha256": sha256_file(tmp_path / "r50.safetensors")}
    imgs = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    cls = int(top1(imgs[:1], str(tmp_path / "r50.safetensors"))[0])
    j = make_judge(S, None, TargetSpec(concept="church", kind="object"), {"judge": "resnet50", "classes": {"church": cls}, "weights": w}, tmp_path)
    assert j(imgs) == list(top1(imgs, str(tmp_path / "r50.safetensors")) == cls) and j(imgs)[0] is True
    with pytest.raises(HarnessError, match="needs params.classes"):
        make_judge(S, None, TargetSpec(concept="tench", kind="object"), {"judge": "resnet50", "classes": {"church": 497}, "weights": w}, tmp_path)


def test_asr_curve_plot_escapes_and_draws_each_curve():
    import pandas as pd

    from harness.site.aggregate import curves
    from harness.site.figure import asr_curve_svg

    det = {"asr_curve": [{"budget": 0, "asr": 0.2}, {"budget": 10, "asr": 0.6}], "budget_unit": "iterations"}
    df = pd.DataFrame([{"latest": True, "metric": "asr", "suite": "toy-robustness", "submission": "<script>x</script>", "target": "striped",
                        "base_value": 1.0, "_details": det},
                       {"latest": True, "metric": "pre_asr", "suite": "toy-robustness", "submission": "a", "target": "striped", "base_value": 1.0, "_details": det}])
    cs = curves(df)
    assert len(cs) == 1 and cs[0]["points"] == [(0.0, 0.2), (10.0, 0.6)]
    svg = asr_curve_svg(cs)
    assert svg.count("<polyline") == 1 and "<script>" not in svg and "&lt;script&gt;" in svg
    assert asr_curve_svg([]) == ""


# ---------------------------------------------------------------------------- textual inversion (CCE)
def test_ti_placeholder_replaces_the_concept_word_and_budgets(toy_pipe):
    tok = toy_pipe.tokenizer
    ids, pos = ti.placeholder_ids(tok, "A circle image in striped style.", "striped")
    ref = tok("A circle image in striped style.", padding="max_length", max_length=tok.model_max_length).input_ids
    striped = tok("striped", add_special_tokens=False).input_ids
    assert len(striped) == 1 and ref[pos] == striped[0] and ids[:pos] == ref[:pos] and ids[pos + 1 :] == ref[pos + 1 :]
    assert ids[pos] == tok.eos_token_id and ti.shown_prompt("A circle image in striped style.", "striped") == "A circle image in <ti> style."
    ids2, pos2 = ti.placeholder_ids(tok, "A circle image.", "striped")  # no concept word: the token goes in front
    assert pos2 == 1 and ids2[1] == tok.eos_token_id
    assert ti.budgets(ti.params_of({"steps": 8})) == [0, 2, 4, 6, 8] and ti.budgets(ti.params_of({"steps": 0})) == [0]
    assert ti.budgets(ti.params_of({"steps": 6, "checkpoints": 2})) == [0, 3, 6]
    d = ti.params_of({})  # the authors' train.sh: 5,000 steps, 4 x 4 images, lr 5e-3 scaled by 16, AdamW weight decay 1e-2
    assert (d["steps"], d["batch_size"], d["lr"], d["weight_decay"], d["beta1"], d["beta2"], d["eps"], d["flip"]) == (5000, 16, 0.08, 0.01, 0.9, 0.999, 1e-8, 0.5)


def test_ti_same_seed_same_embedding_bitwise_and_the_loss_moves_it(toy_pipe):
    items = _items(toy_pipe, [("A circle image in striped style.", 0), ("A square image in striped style.", 1)])
    p = ti.params_of({"steps": 4, "batch_size": 2, "checkpoints": 2})
    init = common.token_embeddings(toy_pipe.text_encoder)[toy_pipe.tokenizer("style", add_special_tokens=False).input_ids[0]].detach()

    def run(**kw):
        counter = {}
        out = [(s, v) for s, v, _ in ti.train(toy_pipe, items, "striped", "style", {**p, **kw}, counter, progress=False)]
        return out, counter

    a, ca = run()
    b, _ = run()
    assert [s for s, _ in a] == [2, 4] and ca == {"unet_calls": 4, "ti_steps": 4}
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))  # bitwise
    assert a[-1][1].shape == init.shape and not torch.equal(a[-1][1], init.float())  # it starts at the init token and moves
    c, _ = run(seed=1)
    assert not torch.equal(c[-1][1], a[-1][1])
    for p_ in toy_pipe.unet.parameters():  # the unlearned model stays frozen
        assert p_.grad is None


def test_ti_budget_zero_asr_equals_pre_asr(tmp_path):
    extra = [{"name": "ti_asr", "params": {"attack": "ti", "steps": 0}}]
    recs, ev, _ = _evaluate("toy-uce-style.yaml", {"attack": "unlearndiffatk", "rounds": 0}, tmp_path, extra=extra)
    assert recs["ti_asr"]["value"] == recs["pre_asr"]["value"] == recs["ti_asr"]["details"]["pre_asr"]
    assert [{k: c[k] for k in ("budget", "asr")} for c in recs["ti_asr"]["details"]["asr_curve"]] == [{"budget": 0, "asr": recs["pre_asr"]["value"]}]
    assert ev.attack_counter.get("unet_calls", 0) == 0 and recs["ti_asr"]["details"]["budget_unit"] == "steps"


TI = {"attack": "ti", "steps": 4, "batch_size": 2, "checkpoints": 2}


def test_ti_beside_unlearndiffatk_never_lowers_asr_and_a_rerun_repeats_nothing(tmp_path, monkeypatch):
    extra = [{"name": "ti_asr", "params": TI}]
    uda = {"attack": "unlearndiffatk", "rounds": 1, "iterations": 2}
    recs, ev, calls = _evaluate("toy-uce-style.yaml", uda, tmp_path, monkeypatch, extra=extra)
    d = recs["ti_asr"]["details"]
    assert d["attack"] == "ti" and recs["asr"]["details"]["attack"] == "unlearndiffatk"  # two attacks, one suite
    curve = [c["asr"] for c in d["asr_curve"]]
    assert [c["budget"] for c in d["asr_curve"]] == [0, 2, 4] and curve[0] == d["pre_asr"] == recs["pre_asr"]["value"]
    assert curve == sorted(curve) and recs["ti_asr"]["value"] == curve[-1] >= d["pre_asr"]
    assert d["attacked"] > 0 and ev.attack_counter["ti_steps"] == 4 and d["unet_calls"] > 4
    again, ev2, calls2 = _evaluate("toy-uce-style.yaml", uda, tmp_path, monkeypatch, extra=extra)
    assert calls2["n"] == 0 and ev2.attack_counter.get("unet_calls", 0) == 0
    assert again["ti_asr"]["details"]["attacked"] == 0 and again["ti_asr"]["details"]["cached"] == d["attacked"]
    assert again["ti_asr"]["value"] == recs["ti_asr"]["value"] and again["ti_asr"]["details"]["asr_curve"] == d["asr_curve"]
    # the items' records gone, the learned embeddings kept: the judging runs again, the training does not
    for f in (tmp_path / "attacks").rglob("*.json"):
        if "checkpoints" not in f.read_text():
            f.unlink()
    third, ev3, _ = _evaluate("toy-uce-style.yaml", uda, tmp_path, extra=extra)
    assert ev3.attack_counter.get("ti_steps", 0) == 0 and third["ti_asr"]["details"]["attacked"] == d["attacked"]
    assert third["ti_asr"]["details"]["asr_curve"] == d["asr_curve"]


@pytest.mark.parametrize("attack", ["unlearndiffatk", "ti"])
def test_an_interrupted_attack_keeps_every_finished_item(tmp_path, monkeypatch, attack):
    """The first attacked item succeeds at the first check, then the run is interrupted: its
    record is on disk, and the re-run attacks only the rest."""
    import harness.attacks.runner as runner
    from harness.scorers.judge import Judge

    real = runner.make_judge
    state = {"interrupt": True}

    def make(*a, **k):
        j = real(*a, **k)
        calls = []

        def fn(ims):
            calls.append(len(ims))
            if state["interrupt"] and len(calls) == 3:  # after the pre-attack and the base's judgements: the first check
                return [True] + [False] * (len(ims) - 1)
            if state["interrupt"] and len(calls) > 3:
                raise KeyboardInterrupt
            return j.fn(ims)

        return Judge(fn, j.identity)

    monkeypatch.setattr(runner, "make_judge", make)
    params = {"attack": "unlearndiffatk", "rounds": 2, "iterations": 2} if attack == "unlearndiffatk" else {**TI, "checkpoints": 2}
    with pytest.raises(KeyboardInterrupt):
        _evaluate("toy-uce-style.yaml", params, tmp_path)
    state["interrupt"] = False
    recs, _, _ = _evaluate("toy-uce-style.yaml", params, tmp_path)
    d = recs["asr"]["details"]
    assert d["cached"] == 1 and d["attacked"] == d["items"] - round(d["items"] * d["pre_asr"]) - 1
    assert d["asr_curve"][1]["asr"] >= d["pre_asr"] + 1 / d["items"]  # the kept item's success at the first check
