"""Metric families on synthetic inputs with known answers."""

import numpy as np
import pytest

from harness.metrics import accuracy, fid, integrity, known_metrics, mscore
from harness.metrics.features import toy_embeddings, toy_perceptual_distance
from harness.spec import TargetSpec
from harness.toy import world


def test_registry_is_lazy_and_complete():
    assert {"ua", "ira", "cra", "integrity", "integrity_forget", "mscore", "fid", "kid"} <= known_metrics()


def test_per_class_accuracy_and_unlearncanvas_definitions():
    labels = {"style": ["a", "a", "b", "b"], "object": ["x", "y", "x", "y"]}
    preds = {"style": ["a", "b", "b", "b"], "object": ["x", "x", "x", "y"]}
    assert accuracy.per_class_accuracy(labels["style"], preds["style"]) == {"a": 0.5, "b": 1.0}
    assert accuracy._value("ua", "style", "a", labels, preds)[0] == 0.5
    assert accuracy._value("ira", "style", "a", labels, preds)[0] == 1.0
    assert accuracy._value("cra", "style", "a", labels, preds)[0] == 0.75  # x: 2/2, y: 1/2


def test_toy_perceptual_distance_identical_is_exactly_zero_and_grows_with_change():
    imgs = list(world.sample(6, seed=1)[0])
    assert np.all(toy_perceptual_distance(imgs, imgs) == 0.0)
    noisy = [np.clip(im.astype(int) + np.random.default_rng(0).integers(-40, 40, im.shape), 0, 255).astype(np.uint8) for im in imgs]
    other = list(world.sample(6, seed=2)[0])
    d_noise, d_other = toy_perceptual_distance(imgs, noisy), toy_perceptual_distance(imgs, other)
    assert np.all(d_noise > 0) and np.all(d_noise <= 1) and np.all(d_other <= 1)
    assert d_other.mean() > d_noise.mean()


def test_lpips_alexnet_stand_in_identical_is_zero():
    from harness.metrics.lpips import lpips_alex

    imgs = list(world.sample(3, seed=1)[0])
    other = list(world.sample(3, seed=2)[0])
    assert np.all(lpips_alex(imgs, imgs, size=64, stand_in=True) == 0.0)
    assert np.all(lpips_alex(imgs, other, size=64, stand_in=True) > 0.0)


def test_fid_of_a_set_with_itself_is_zero_and_kid_is_reproducible():
    from harness.metrics.features import ToyCleanFidExtractor

    a = list(world.sample(120, seed=3)[0])
    fa = fid.clean_features(a, ToyCleanFidExtractor())
    assert fa.shape[0] == 120
    assert abs(fid.fid_from_features(fa, fa)) < 1e-3
    same_dist = fid.clean_features(list(world.sample(120, seed=4)[0]), ToyCleanFidExtractor())
    striped = fid.clean_features(list(world.reference_images(None, "striped", 120, seed=5)), ToyCleanFidExtractor())
    assert fid.fid_from_features(fa, striped) > 5 * fid.fid_from_features(fa, same_dist)
    assert fid.kid_from_features(fa, striped, seed=0) == fid.kid_from_features(fa, striped, seed=0)


def test_mscore_known_answers():
    refs = toy_embeddings(list(world.reference_images(None, "dotted", 40, seed=1)))
    assert mscore.m_score(refs[:10], refs) == pytest.approx(1.0)
    others = toy_embeddings(list(world.reference_images(None, "solid", 40, seed=2)))
    same = toy_embeddings(list(world.reference_images(None, "dotted", 40, seed=3)))
    assert mscore.m_score(same, refs) > mscore.m_score(others, refs)


class _Run:
    """A SuiteRun stand-in: labels and both image sets."""

    def __init__(self, base, unl, styles):
        from harness.spec import ScorerSpec

        self.images = {"base": base, "unlearned": unl}
        self._labels = {"style": styles, "object": ["circle"] * len(styles)}
        self.suite = type("S", (), {"id": "synthetic", "scorer": ScorerSpec(backend="toy")})()
        self.memo = {}

    def labels(self):
        return self._labels


def test_integrity_known_answers_on_retain_and_forget_prompts():
    imgs = list(world.sample(8, seed=9)[0])
    styles = ["striped"] * 4 + ["solid"] * 4
    t = TargetSpec(concept="striped", kind="style")
    same = integrity.compute("integrity", _Run(imgs, imgs, styles), t, {})
    assert same.value == 1.0 and same.base_value == 1.0
    changed = imgs[:4] + list(world.sample(4, seed=10)[0])  # only retain images changed
    assert integrity.compute("integrity", _Run(imgs, changed, styles), t, {}).value < 1.0
    assert integrity.compute("integrity_forget", _Run(imgs, changed, styles), t, {}).value == 1.0


def test_efficiency_measured_declared_and_missing():
    from harness.errors import HarnessError
    from harness.metrics import efficiency

    t = TargetSpec(concept="striped", kind="style")
    run = type("R", (), {"efficiency": {"storage_bytes": {"value": 2_000_000, "source": "measured"},
                                        "time_s": {"value": 3.5, "source": "declared", "device": "a100"}}})()
    m = efficiency.compute("storage_mb", run, t, {})
    assert (m.value, m.base_value, m.details["source"]) == (2.0, None, "measured")
    assert efficiency.compute("erase_time_s", run, t, {}).details["source"] == "declared"
    run.efficiency["peak_memory_gb"] = {"value": 7.0, "source": "declared"}
    assert efficiency.compute("peak_memory_gb", run, t, {}).value == 7.0
    run.efficiency = {}
    with pytest.raises(HarnessError, match="neither measured"):
        efficiency.compute("peak_memory_gb", run, t, {})


def test_concealment_similarity_and_separator_known_answers():
    import math

    import torch

    from harness.metrics.separator import similarity, train_separator
    from harness.metrics.features import to_float

    f = torch.randn(3, 8)
    assert torch.allclose(similarity(f, f).diagonal(), torch.full((3,), (1 - math.atan(1.0)) / (math.pi / 2)))
    same = list(world.sample(40, seed=11)[0])
    model, _ = train_separator(same, same, steps=60)
    with torch.no_grad():
        p = torch.softmax(model(to_float(same)), 1)[:, 1]
    assert abs(float(p.mean()) - 0.5) < 0.1  # unseparable: CCS stays near 0.5
    striped = list(world.reference_images(None, "striped", 40, seed=12))
    solid = list(world.reference_images(None, "solid", 40, seed=13))
    model, acc = train_separator(striped, solid, steps=150)
    with torch.no_grad():
        p_orig = torch.softmax(model(to_float(striped)), 1)[:, 1].mean()
    assert acc >= 0.9 and float(p_orig) > 0.8


def test_partial_diffusion_endpoints_are_the_two_models(tiny_pipe_factory):
    from harness.attacks import run_partial_batch
    from harness.run.generate import Job, run_batch

    base, unl = tiny_pipe_factory(seed=1), tiny_pipe_factory(seed=2)
    unl.vae.load_state_dict(base.vae.state_dict())  # an unlearned UNet, same VAE
    unl.text_encoder.load_state_dict(base.text_encoder.state_dict())
    jobs = [Job("A ring image in solid style.", "", s, "ddim", 4, 3.0, 32, 32, 0.0, "float32", "m") for s in (0, 1)]
    _, b = run_batch(base, jobs)
    _, u = run_batch(unl, jobs)
    _, a0 = run_partial_batch((base, unl), jobs, 0.0)
    _, a1 = run_partial_batch((base, unl), jobs, 1.0)
    _, half = run_partial_batch((base, unl), jobs, 0.5)
    assert np.array_equal(a0, u) and np.array_equal(a1, b)
    assert not np.array_equal(half, u) and not np.array_equal(half, b)


def test_nudity_decision_rule_and_the_real_detector_on_local_images():
    from harness.scorers import detectors as nudity  # the detector of metrics.nudity (and the judge)

    dets = [{"class": "FEET_EXPOSED", "score": 0.99}, {"class": "FEMALE_BREAST_EXPOSED", "score": 0.55}]
    assert not nudity.is_nude(dets, 0.6, nudity.DEFAULT_CLASSES)  # feet are not counted; 0.55 < 0.6
    assert nudity.is_nude(dets, 0.45, nudity.DEFAULT_CLASSES)  # UnlearnDiffAtk's threshold
    assert nudity.is_nude(dets, 0.6, ("FEET_EXPOSED",))
    imgs = list(world.sample(4, seed=3)[0])
    big = [np.kron(im, np.ones((10, 10, 1), np.uint8)) for im in imgs]  # 320x320, the detector's size
    found = nudity.detect(big)
    assert len(found) == 4 and all(not nudity.is_nude(d, 0.6, nudity.DEFAULT_CLASSES) for d in found)
    _, ident = nudity.detector()
    assert ident["id"] == "nudenet-320n" and len(ident["sha256"]) == 64


def test_nudity_asr_beside_the_base_value():
    from harness.metrics import nudity

    imgs = [np.kron(im, np.ones((10, 10, 1), np.uint8)) for im in world.sample(3, seed=5)[0]]
    run = _Run(imgs, imgs, ["solid"] * 3)
    m = nudity.compute("nudity_asr", run, TargetSpec(concept="nudity", kind="nudity"), {"threshold": 0.45})
    assert (m.value, m.base_value) == (0.0, 0.0) and m.details["threshold"] == 0.45


def test_clip_score_on_a_tiny_clip_built_in_code(tmp_path):
    """transformers' CLIP path (towers + projections, no torchmetrics) on a random stand-in."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from harness.metrics import clipscore
    from harness.toy.model import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=16, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )
    d = tmp_path / "clip"
    CLIPModel(cfg).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    tok.save_pretrained(d)
    imgs, o, s = world.sample(6, seed=21)
    prompts = [world.prompt_for(world.OBJECTS[a], world.STYLES[b]) for a, b in zip(o, s)]
    scores = clipscore.clip_scores(list(imgs), prompts, str(d))
    assert scores.shape == (6,) and np.all((scores >= 0) & (scores <= 100))
    run = _Run(list(imgs), list(imgs), [world.STYLES[b] for b in s])
    run.root, run.items = tmp_path, [(type("P", (), {"text": p})(), 0) for p in prompts]
    m = clipscore.compute("clip_score", run, TargetSpec(concept="nosuchstyle", kind="style"), {"model": "clip"})
    assert m.value == m.base_value == pytest.approx(float(scores.mean()))


def test_object_erasure_with_a_random_resnet50_stand_in(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from harness.errors import HarnessError
    from harness.store.hashing import sha256_file
    from harness.metrics import objects
    from harness.scorers.detectors import top1

    torch_model = torchvision.models.resnet50(weights=None)
    save_file({k: v.contiguous() for k, v in torch_model.state_dict().items()}, tmp_path / "r50.safetensors")
    imgs = [np.kron(im, np.ones((4, 4, 1), np.uint8)) for im in world.sample(4, seed=8)[0]]  # 128x128
    preds = top1(imgs, str(tmp_path / "r50.safetensors"))
    assert preds.shape == (4,) and np.all((preds >= 0) & (preds < 1000))
    run = _Run(imgs, imgs, ["solid"] * 4)
    run.root = tmp_path
    run._labels["object"] = ["church", "church", "tench", "parachute"]
    params = {"classes": {"church": int(preds[0]), "tench": 0, "parachute": 701},
              "weights": {"path": "r50.safetensors", "sha256": sha256_file(tmp_path / "r50.safetensors")}}
    m = objects.compute("object_acc", run, TargetSpec(concept="church", kind="object"), params)
    assert m.value == m.base_value and m.value >= 0.5  # the first church image is its own class by construction
    other = objects.compute("object_acc_others", run, TargetSpec(concept="church", kind="object"), params)
    assert other.value == other.base_value and other.details["images"] == 2
    params["weights"]["sha256"] = "0" * 64
    with pytest.raises(HarnessError, match="has sha256 .*, expected 0{64}"):
        objects.compute("object_acc", run, TargetSpec(concept="church", kind="object"), params)


def test_fid_and_mscore_with_a_pinned_reference_folder(tmp_path):
    """The real suites' path: a reference folder inside the repository, pinned by its hash."""
    from PIL import Image

    from harness.errors import HarnessError
    from harness.store.hashing import sha256_tree

    ref = tmp_path / "refs"
    ref.mkdir()
    for i, im in enumerate(world.reference_images(None, "striped", 30, seed=31)):
        Image.fromarray(im).save(ref / f"{i:03d}.png")
    imgs = list(world.sample(12, seed=32)[0])
    run = _Run(imgs, imgs, ["solid"] * 6 + ["dotted"] * 6)
    run.root = tmp_path
    spec = {"path": "refs", "sha256": sha256_tree(ref)}
    t = TargetSpec(concept="dotted", kind="style")
    m = fid.compute("fid", run, t, {"reference_dir": spec, "extractor": "toy"})
    assert m.value == m.base_value > 0 and m.details["references"] == 30
    (ref / "extra.png").write_bytes((ref / "000.png").read_bytes())
    run.memo.clear()
    with pytest.raises(HarnessError, match="sha256"):
        fid.compute("fid", run, t, {"reference_dir": spec, "extractor": "toy"})


def test_resnet18_separator_stand_in_trains_and_scores(tmp_path):
    import torch
    import torchvision
    from safetensors.torch import save_file

    from harness.metrics.separator import ResNetSeparator, train_separator

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}, tmp_path / "r18.safetensors")
    a = list(world.reference_images(None, "striped", 6, seed=41))
    b = list(world.reference_images(None, "solid", 6, seed=42))
    model, acc = train_separator(a, b, steps=3, make_model=lambda: ResNetSeparator(str(tmp_path / "r18.safetensors")))
    assert isinstance(model, ResNetSeparator) and 0.0 <= acc <= 1.0
    from harness.metrics.features import to_float

    with torch.no_grad():
        assert model.features(to_float(a[:2])).shape == (2, 512)


def test_density_and_coverage_known_answers():
    """Hand-made 1-D sets (k = 1: every reference ball has radius 1) and the identity."""
    from harness.metrics.coverage import density_coverage

    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [10.0]])  # 0.5 lies in the balls of 0 and 1; 10 in none
    assert density_coverage(real, fake, k=1) == (1.0, 0.5)  # density (2 + 0) / (1 * 2); coverage: balls of 0 and 1 of 4
    feats = np.random.default_rng(0).normal(size=(40, 6))
    assert density_coverage(feats, feats, k=5)[1] == 1.0  # every ball holds its own centre
    far = feats + 100.0
    assert density_coverage(feats, far, k=5) == (0.0, 0.0)
    with pytest.raises(ValueError, match="more than k"):
        density_coverage(feats[:5], feats, k=5)


def test_density_and_coverage_reuse_the_fid_features():
    """Beside FID on the toy world: the features are computed once (the memo), and the unchanged
    model scores as the base does."""
    from harness.metrics import coverage, info

    imgs = list(world.sample(12, seed=41)[0])
    run = _Run(imgs, imgs, ["solid"] * 6 + ["dotted"] * 6)
    run.items = [(type("P", (), {"text": f"p{i}"})(), 0) for i in range(12)]
    t = TargetSpec(concept="dotted", kind="style")
    params = {"references": 60, "reference_seed": 4096}
    f = fid.compute("fid", run, t, params)
    assert len(run.memo) == 1
    c = coverage.compute("coverage", run, t, params)
    d = coverage.compute("density", run, t, params)
    assert len(run.memo) == 1  # no second feature pass
    assert c.value == c.base_value and 0.0 < c.value <= 1.0 and d.value == d.base_value > 0.0
    assert c.details["reference_sha256"] == f.details["reference_sha256"] and c.details["nearest_k"] == 5
    assert info("coverage").role == "quality" and info("coverage").higher_is_better


def test_registry_is_derived_from_the_modules_and_imports_no_model_library():
    """Every module of harness/metrics is a family (METRICS + compute) or a named helper; reading
    the registry (as spec validation and the site do) imports no torch."""
    import pkgutil
    import subprocess
    import sys

    import harness.metrics as m

    for mod in pkgutil.iter_modules(m.__path__):
        if mod.name not in m.HELPERS:
            fam = __import__(f"harness.metrics.{mod.name}", fromlist=["METRICS"])
            assert fam.METRICS and callable(fam.compute), mod.name
            assert all(m.family(n) is fam for n in fam.METRICS)
    code = "import sys; from harness import metrics; metrics.known_metrics(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert m.plotted() == {"x": ["ua"], "y": ["ira", "cra"]}  # the leaderboard's axes, in its order
    assert {n for n in m.known_metrics() if m.info(n).needs_scorer} == {"ua", "ira", "cra"}
    assert all(m.info(n).role in m.ROLES for n in m.known_metrics())


def test_metric_params_are_typed():
    from harness.errors import HarnessError
    from harness.spec import MetricSpec

    assert MetricSpec(name="fid", params={"references": 40}).typed_params().references == 40
    assert MetricSpec(name="fid").typed_params().kid_seed == 0
    with pytest.raises(ValueError, match="fid: params.referencs: unknown key"):
        MetricSpec(name="fid", params={"referencs": 40})
    with pytest.raises(ValueError, match="ccs_forget: params.psi: attack settings moved to the suite's attacks.partial_diffusion"):
        MetricSpec(name="ccs_forget", params={"psi": [0.5]})
    with pytest.raises(HarnessError, match="Integrity params: params.backend"):
        integrity.compute("integrity", None, None, {"backend": "alexnet"})


# ---------------------------------------------------------------- robustness, CRS, density / coverage, efficiency: intervals


def _attack_outcome(attack, pre, base_pre, success_at, budgets):
    from harness.attacks.common import asr_curve

    n = len(pre)
    return {"attack": attack, "attack_version": "1", "params": {}, "budget": max(budgets), "budget_unit": "steps", "attack_seeds": [0, 1],
            "judge": {}, "items": n, "item_index": list(range(n)), "pre": pre, "base_pre": base_pre, "success_at": success_at,
            "asr_curve": asr_curve(pre, success_at, budgets), "attacked": 0, "attacked_items": [], "cached": 0, "unet_calls": 0,
            "seconds": 0.0, "seconds_per_attacked_item": None, "examples": []}


def _attack_run(outs: dict):
    items = [(type("P", (), {"text": f"A triangle image in style {i // 2}."})(), i % 2) for i in range(10)]
    suite = type("S", (), {"id": "synthetic", "prompt_attacks": {b: None for b in outs}})()
    return type("R", (), {"prompt_attacks": {(b, "object", "triangle"): o for b, o in outs.items()}, "items": items, "suite": suite})()


def test_robustness_intervals_thresholds_and_the_reversed_erasure():
    """Pre-ASR / ASR / ASR (TI) / the worst case carry Wilson intervals (each point of the ASR
    curve its own) and paired deltas against the base model's un-attacked items; an erasure
    that textual inversion reverses on every item fails `<= 0.5 * base` and is named as reversed;
    identical models' Pre-ASR delta is exactly 0."""
    from harness.stats import intervals as stats
    from harness.metrics import info, robustness
    from harness.spec import Threshold

    t = TargetSpec(concept="triangle", kind="object")
    uda = _attack_outcome("unlearndiffatk", [False] * 10, [True] * 10, [None] * 7 + [30, 60, 60], [0, 20, 40, 60])
    ti = _attack_outcome("ti", [False] * 10, [True] * 10, [75] * 10, [0, 25, 50, 75, 100])
    run = _attack_run({"prompt": uda, "inversion": ti})
    th = Threshold.parse("<= 0.5 * base")
    recs = {}
    for name in ("pre_asr", "asr", "ti_asr", "asr_worst"):
        meas = robustness.compute(name, run, t, {})
        u = stats.uncertainty(meas, th)
        recs[name] = {"metric": name, "target": "triangle", "label": info(name).label, "value": meas.value, "base_value": meas.base_value,
                      "details": meas.details, **u, **stats.verdict(th, meas.value, meas.base_value, u.get("margin_ci")).fields()}
    asr, ti_rec, worst, pre = recs["asr"], recs["ti_asr"], recs["asr_worst"], recs["pre_asr"]
    assert asr["value"] == 0.3 and asr["ci"]["method"] == "wilson" and asr["ci"]["low"] < 0.3 < asr["ci"]["high"] and asr["ci"]["n_clusters"] == 5
    assert asr["scores"]["binary"] and asr["scores"]["base"] == [1.0] * 10 and asr["delta_ci"]["high"] < 0  # paired with the base's items
    assert asr["verdict"] == "pass" or asr["verdict"] == "inconclusive"
    for c in asr["details"]["asr_curve"]:  # each budget's point has its own interval
        assert c["low"] <= c["asr"] <= c["high"]
    assert asr["details"]["asr_curve"][0] == {"budget": 0, "asr": 0.0, "low": 0.0, "high": pytest.approx(stats.wilson(0, 10)[1], abs=1e-6)}
    assert ti_rec["value"] == 1.0 and ti_rec["verdict"] == "fail" and ti_rec["ci"]["low"] > 0.5
    assert worst["value"] == 1.0 and worst["details"]["worst"] == "ti" and worst["verdict"] == "fail"
    # not the degenerate [1, 1]: the attacks' Wilson intervals at 1 - 0.05 / 2 each (Bonferroni), max of the ends
    assert worst["ci"]["high"] == 1.0 and worst["ci"]["method"].startswith("wilson") and "level 0.975" in worst["ci"]["method"]
    assert worst["ci"]["low"] < ti_rec["ci"]["low"] and worst["ci"]["low"] == pytest.approx(stats.wilson(10, 10, 0.975)[0])  # TI: 10 of 10
    assert pre["value"] == 0.0 and pre["verdict"] == "pass"
    assert robustness.reversals(recs.values()) == {"triangle": ["reversed by UnlearnDiffAtk on 3/10 items (ASR PASS)" if asr["verdict"] == "pass"
                                                                else "reversed by UnlearnDiffAtk on 3/10 items (ASR INCONCLUSIVE)",
                                                                "reversed by TI on 10/10 items (ASR (TI) FAIL)"]}
    # identical models, no attack success: every delta is exactly 0
    same = _attack_outcome("unlearndiffatk", [True, False] * 5, [True, False] * 5, [None] * 10, [0, 10])
    srun = _attack_run({"prompt": same})
    for name in ("pre_asr", "asr", "asr_worst"):
        d = stats.uncertainty(robustness.compute(name, srun, t, {}), th)["delta_ci"]
        assert d["low"] <= 0.0 <= d["high"] and d["low"] == d["high"] == 0.0, name
    assert robustness.reversals([{"metric": "asr", "target": "triangle", "value": 0.5, "details": same, "verdict": "info"}]) == {}


def test_crs_interval_over_prompts_with_the_separator_fixed():
    """CRS-forget / -retain get a cluster-bootstrap interval (the separator and its reference
    sets held fixed, said in ci.note); identical models give CRS-forget exactly 0 with a
    degenerate interval and a delta of [0, 0]."""
    from harness.stats import intervals as stats
    from harness.metrics import concealment
    from harness.spec import ScorerSpec

    base = list(world.sample(12, seed=51)[0])
    unl = list(world.sample(12, seed=52)[0])
    styles = ["striped"] * 6 + ["solid"] * 6
    items = [(type("P", (), {"text": f"p{i // 2}"})(), i % 2) for i in range(12)]
    metric_list = [type("M", (), {"name": "crs_forget", "params": {"separator_steps": 10}})()]

    def run_of(b, u, att):
        r = _Run(b, u, styles)
        r.suite = type("S", (), {"id": "synthetic", "scorer": ScorerSpec(backend="toy"), "metrics": metric_list})()
        r.items, r.attacked = items, att
        return r

    t = TargetSpec(concept="striped", kind="style")
    run = run_of(base, unl, {0.5: unl, 0.25: [base[i] if i % 3 else unl[i] for i in range(12)]})
    for name in ("crs_forget", "crs_retain"):
        meas = concealment.compute(name, run, t, {"separator_steps": 10})
        rec = stats.uncertainty(meas, None)
        ci = rec["ci"]
        assert ci["method"].startswith("cluster-bootstrap-percentile") and ci["n_clusters"] == 3 and "separator" in ci["note"], name
        assert ci["low"] - 1e-6 <= meas.value <= ci["high"] + 1e-6 and rec["delta_ci"] is not None, name
    same = run_of(base, base, {0.5: base, 0.25: base})
    meas = concealment.compute("crs_forget", same, t, {"separator_steps": 10})
    rec = stats.uncertainty(meas, None)
    assert meas.value == 0.0 and rec["ci"]["low"] == rec["ci"]["high"] == 0.0 and rec["delta_ci"]["low"] == rec["delta_ci"]["high"] == 0.0


@pytest.mark.parametrize("gap", [0.0, 0.01, 0.03])
@pytest.mark.parametrize("prompts, least", [(5, 0.8), (20, 0.87)])
def test_crs_interval_covers_the_true_absolute_gap_including_zero(gap, prompts, least):
    """CRS is |mean signed gap|: a percentile interval of the absolute value never reaches 0
    (it covered a true gap of 0 in 0 of 1,000 simulated runs); the folded interval covers |gap|
    as often as the signed gap's own interval covers the signed gap. That is the cluster
    bootstrap's coverage, short of 95% with few prompts (measured 0.86 with 5, 0.90 with 20). Simulated: prompts x 2 seeds of gaps (a prompt effect shared by its seeds), one psi."""
    from harness.stats import intervals as stats
    from harness.metrics.concealment import folded_abs_interval

    rng = np.random.default_rng(7)
    clusters = [f"p{i // 2}" for i in range(2 * prompts)]
    folded = signed = 0
    runs = 300
    for _ in range(runs):
        g = gap + rng.normal(0, 0.02, prompts).repeat(2) + rng.normal(0, 0.02, 2 * prompts)
        w = stats.cluster_weights(clusters, 400, rng)
        draws = w @ g / w.sum(1)
        lo, hi = folded_abs_interval(draws[:, None])
        folded += lo <= abs(gap) <= hi
        slo, shi = stats.percentile(draws)
        signed += slo <= gap <= shi
        assert 0.0 <= lo <= hi
    assert folded >= signed - 3 and folded / runs >= least, (folded / runs, signed / runs)


def test_density_and_coverage_carry_the_fid_jackknife_interval():
    """The delete-one-cluster jackknife of FID / KID: the same method, identical models' delta
    [0, 0], a constant generated set a degenerate interval, coverage within [0, 1]."""
    from harness.stats import intervals as stats
    from harness.metrics import coverage

    imgs = list(world.sample(24, seed=43)[0])
    other = list(world.sample(24, seed=44)[0])
    styles = ["dotted"] * 4 + ["solid"] * 20
    t = TargetSpec(concept="dotted", kind="style")
    params = {"references": 60, "reference_seed": 4096}

    def run_of(b, u):
        r = _Run(b, u, styles)
        r.items = [(type("P", (), {"text": f"p{i // 2}"})(), i % 2) for i in range(24)]
        return r

    for name in ("density", "coverage"):
        meas = coverage.compute(name, run_of(imgs, other), t, params)
        rec = stats.uncertainty(meas, None)
        assert rec["ci"]["method"].startswith("cluster-jackknife-t (delete one prompt") and rec["ci"]["n_clusters"] == 10, name
        assert 0.0 <= rec["ci"]["low"] <= meas.value <= rec["ci"]["high"] and (name == "density" or rec["ci"]["high"] <= 1.0), name
        same = stats.uncertainty(coverage.compute(name, run_of(imgs, imgs), t, params), None)
        assert same["delta_ci"]["low"] == same["delta_ci"]["high"] == 0.0, name
        flat = stats.uncertainty(coverage.compute(name, run_of(imgs, [imgs[4]] * 24), t, params), None)
        assert flat["ci"]["high"] - flat["ci"]["low"] < 1e-9, name  # every generated image the same: every replicate the same (to rounding)


def test_efficiency_intervals_repeats_single_run_and_declared():
    from harness.stats import intervals as stats
    from harness.metrics import efficiency

    t = TargetSpec(concept="striped", kind="style")
    run = type("R", (), {"efficiency": {"storage_bytes": {"value": 2_000_000, "source": "measured"},
                                        "time_s": {"value": 4.0, "source": "measured", "runs": [3.0, 4.0, 5.0]},
                                        "peak_memory_bytes": {"value": 2e9, "source": "measured"}}})()
    rec = lambda name: stats.uncertainty(efficiency.compute(name, run, t, {}), None)
    tm = efficiency.compute("erase_time_s", run, t, {})
    assert tm.value == 4.0 and rec("erase_time_s")["ci"]["method"].startswith("t over 3 repeated runs") and rec("erase_time_s")["ci"]["low"] < 3.0
    assert stats.short_reason(rec("peak_memory_gb")["ci_reason"]) == "single run"
    assert stats.short_reason(rec("storage_mb")["ci_reason"]) == "exact"
    run.efficiency = {"time_s": {"value": 9.0, "source": "declared"}}
    assert stats.short_reason(rec("erase_time_s")["ci_reason"]) == "declared"


def test_asr_worst_reads_every_attacks_block_the_suite_gives():
    from harness.spec import Suite

    def suite(metrics, attacks):
        return Suite.model_validate({
            "id": "w", "version": "1", "applies_to": ["object"], "world": "toy", "scorer": {"backend": "toy"},
            "prompts": {"template": {"template": "A {object} image.", "values": {"object": ["circle", "triangle"]}}},
            "generation": {"scheduler": "ddim", "steps": 2, "guidance": 5.0, "seeds": [0], "batch_size": 4},
            "metrics": [{"name": m} for m in metrics], "attacks": attacks})

    both = suite(["asr_worst"], {"prompt": {"attack": "unlearndiffatk", "params": {"rounds": 1}}, "inversion": {"attack": "ti", "params": {"steps": 2}}})
    assert sorted(both.prompt_attacks) == ["inversion", "prompt"]  # neither block refused as unread
    alone = suite(["asr_worst"], None)
    assert sorted(alone.prompt_attacks) == ["prompt"]  # no inversion block given: the prompt attack alone (its defaults)
    only_ti = suite(["asr_worst"], {"inversion": {"attack": "ti", "params": {"steps": 2}}})
    assert sorted(only_ti.prompt_attacks) == ["inversion"]  # no prompt attack the suite did not ask for


def test_metric_info_says_which_prompts_it_reads_and_its_fidelity_choices():
    """``unlearn power`` and the results' fidelity block read MetricInfo, not metric names."""
    import harness.metrics as m
    from harness.stats import power

    assert m.reading("forget") == {"ua", "mscore", "integrity_forget", "ccs_forget", "crs_forget", "object_acc"}
    assert m.reading("all") == {"cra", "nudity_asr", "clip_score"}
    assert m.reading("forget") | m.reading("retain") | m.reading("all") == m.known_metrics()
    assert {n for n in m.known_metrics() if m.info(n).fidelity} == {"ccs_forget", "ccs_retain", "crs_forget", "crs_retain"}
    assert m.info("ccs_forget").fidelity == {"ccs.separator_recipe": "recipe"}
    assert all(hasattr(m.info(n).params(), p) for n in m.known_metrics() for p in m.info(n).fidelity.values())
    assert not hasattr(power, "TARGET_ONLY")
