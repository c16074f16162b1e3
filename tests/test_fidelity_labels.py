"""Label orders of the real scorers (issue 11): every head index a scorer maps to a class name is
the index the classifier's authors use, checked against facts stated here independently of the
harness's data files, and each scorer path is driven end to end with a stand-in classifier that
outputs the true index for each image's label, so an unchanged model scores perfectly."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness.run.evaluate import SuiteRun
from harness.store.hashing import sha256_file
from harness.spec.labels import label_map, source
from harness.metrics import accuracy
from harness.scorers import classifiers
from harness.spec import Prompt, ScorerSpec, Suite, TargetSpec, expand_prompts

ROOT = Path(__file__).resolve().parents[1]

# OPTML-Group/UnlearnCanvas @ 920cfd14033521b9100ad5c80952c23d1f8f0393,
# machine_unlearning/evaluation/constants/const.py: theme_available / class_available.
UC_STYLES = """Abstractionism Artist_Sketch Blossom_Season Bricks Byzantine Cartoon Cold_Warm Color_Fantasy
Comic_Etch Crayon Cubism Dadaism Dapple Defoliation Early_Autumn Expressionism Fauvism French Glowing_Sunset
Gorgeous_Love Greenfield Impressionism Ink_Art Joy Liquid_Dreams Magic_Cube Meta_Physics Meteor_Shower Monet
Mosaic Neon_Lines On_Fire Pastel Pencil_Drawing Picasso Pop_Art Red_Blue_Ink Rust Seed_Images Sketch
Sponge_Dabbed Structuralism Superstring Surrealism Ukiyoe Van_Gogh Vibrant_Flow Warm_Love Warm_Smear
Watercolor Winter""".split()
UC_OBJECTS = """Architectures Bears Birds Butterfly Cats Dogs Fishes Flame Flowers Frogs Horses Human Jellyfish
Rabbits Sandwiches Sea Statues Towers Trees Waterfalls""".split()


def test_unlearncanvas_label_map_is_the_benchmarks_order():
    m = label_map("unlearncanvas")
    assert list(m["style"]) == UC_STYLES and list(m["object"]) == UC_OBJECTS
    assert m["style"].index("Seed_Images") == 38 and m["style"].index("Van_Gogh") == 45 and len(m["style"]) == 51
    assert source("unlearncanvas")["commit"] == "920cfd14033521b9100ad5c80952c23d1f8f0393"


def test_unlearncanvas_suite_uses_the_label_map():
    from harness.spec import load_suite

    s = load_suite(ROOT / "suites" / "unlearncanvas.yaml")
    assert s.scorer.labels == "unlearncanvas"
    assert s.scorer.style_classes == UC_STYLES and s.scorer.object_classes == UC_OBJECTS


def test_label_map_and_explicit_lists_are_exclusive():
    w = {"path": "a", "sha256": "0" * 64}
    with pytest.raises(ValueError, match="not both"):
        ScorerSpec(backend="unlearncanvas-vit", style_weights=w, object_weights=w, labels="unlearncanvas", style_classes=["a"])
    with pytest.raises(ValueError, match="unknown label map"):
        ScorerSpec(backend="unlearncanvas-vit", style_weights=w, object_weights=w, labels="nope")


class _Oracle(torch.nn.Module):
    """Stand-in classifier head: reads the class index written into the image's red (style) or
    green (object) channel, after the scorer's real resize and normalisation, and outputs
    one-hot logits over ``n`` classes."""

    def __init__(self, channel: int, step: int, n: int):
        super().__init__()
        self.channel, self.step, self.n = channel, step, n

    def forward(self, x):
        v = (x[:, self.channel, 112, 112] * 0.5 + 0.5) * 255
        idx = torch.round(v / self.step).long()
        return torch.nn.functional.one_hot(idx, self.n).float()


def _uc_suite(tmp_path, scorer_override=None) -> Suite:
    data = yaml.safe_load((ROOT / "suites" / "unlearncanvas.yaml").read_text())
    for head in ("style", "object"):
        f = tmp_path / f"{head}.safetensors"
        f.write_bytes(head.encode())
        data["scorer"][f"{head}_weights"] = {"path": f.name, "sha256": sha256_file(f)}
    data["scorer"].update(scorer_override or {})
    return Suite.model_validate(data)


def _uc_run(tmp_path, monkeypatch, scorer_override=None):
    suite = _uc_suite(tmp_path, scorer_override)
    oracles = iter([_Oracle(0, 4, len(suite.scorer.style_classes)), _Oracle(1, 10, len(suite.scorer.object_classes))])
    monkeypatch.setattr(classifiers.UnlearnCanvasViT, "_load", lambda self, arch, path, n: next(oracles))
    scorer = classifiers.load_scorer(suite.scorer, tmp_path)
    items = [(p, 188) for p in expand_prompts(suite, tmp_path)]
    imgs = []
    for p, _ in items:  # the true index, from the benchmark's lists stated above
        im = np.zeros((16, 16, 3), np.uint8)
        im[..., 0], im[..., 1] = 4 * UC_STYLES.index(p.labels["style"]), 10 * UC_OBJECTS.index(p.labels["object"])
        imgs.append(im)
    return SuiteRun(suite, items, {"base": imgs, "unlearned": imgs}, scorer)


def test_unlearncanvas_known_answer_unchanged_model_scores_perfectly(tmp_path, monkeypatch):
    run = _uc_run(tmp_path, monkeypatch)
    assert len(run.items) == 51 * 20
    for kind, concepts in (("style", UC_STYLES), ("object", UC_OBJECTS)):
        for c in concepts:
            t = TargetSpec(concept=c, kind=kind)
            got = {n: accuracy.compute(n, run, t, {}) for n in ("ua", "ira", "cra")}
            assert (got["ua"].value, got["ira"].value, got["cra"].value) == (0.0, 1.0, 1.0), (kind, c)
            assert (got["ua"].base_value, got["ira"].base_value, got["cra"].base_value) == (0.0, 1.0, 1.0)


def test_unlearncanvas_known_answer_catches_the_old_order(tmp_path, monkeypatch):
    """The order the suite had before (Seed_Images last) misreads 13 styles: the same path then
    reports UA(Van_Gogh) = 1 for an unchanged model."""
    old = [s for s in UC_STYLES if s != "Seed_Images"] + ["Seed_Images"]
    run = _uc_run(tmp_path, monkeypatch, {"labels": None, "style_classes": old, "object_classes": UC_OBJECTS})
    t = TargetSpec(concept="Van_Gogh", kind="style")
    assert accuracy.compute("ua", run, t, {}).value == 1.0
    assert accuracy.compute("ira", run, t, {}).value < 0.8
    assert accuracy.compute("cra", run, TargetSpec(concept="Dogs", kind="object"), {}).value < 0.8


# ------------------------------------------------------------------ ImageNet ResNet-50 (Imagenette)
def _imagenet_categories() -> list[str]:
    import torchvision

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def _objects_suite():
    from harness.spec import load_suite

    return load_suite(ROOT / "suites" / "imagenette-objects.yaml")


def test_imagenette_indices_name_the_imagenet_classes():
    cats = _imagenet_categories()
    suite = _objects_suite()
    objects = suite.prompts.template.values["object"]
    for m in suite.metrics:
        if m.name.startswith("object_acc"):
            classes = m.params["classes"]
            assert sorted(classes) == sorted(objects)
            for name, idx in classes.items():
                assert cats[idx] == name, (name, idx, cats[idx])


class _ImageNetOracle(torch.nn.Module):
    """Reads the ImageNet index written into an image (red * 4 + green // 64 ... as below) after
    the metric's real resize, crop and ImageNet normalisation."""

    def forward(self, x):
        from harness.scorers.detectors import MEAN, STD

        px = x[:, :, 100, 100] * torch.tensor(STD) + torch.tensor(MEAN)
        r, g = torch.round(px[:, 0] * 255).long(), torch.round(px[:, 1] * 255).long()
        return torch.nn.functional.one_hot(r * 4 + g // 64, 1000).float()


def test_imagenette_known_answer_unchanged_model_scores_perfectly(tmp_path, monkeypatch):
    from harness.metrics import objects
    from harness.scorers import detectors

    cats = _imagenet_categories()
    suite = _objects_suite()
    w = tmp_path / "r50.safetensors"
    w.write_bytes(b"stand-in")
    monkeypatch.setattr(detectors, "resnet50", lambda path: _ImageNetOracle())
    items = [(p, s) for p in expand_prompts(suite, tmp_path) for s in (0, 1)]
    imgs = []
    for p, _ in items:
        i = cats.index(p.labels["object"])  # the true index, from torchvision's category list
        im = np.zeros((40, 48, 3), np.uint8)
        im[..., 0], im[..., 1] = i // 4, (i % 4) * 64
        imgs.append(im)
    run = SuiteRun(suite, items, {"base": imgs, "unlearned": imgs}, None, root=tmp_path)
    for m in suite.metrics:
        if not m.name.startswith("object_acc"):
            continue
        params = {**m.params, "weights": {"path": w.name, "sha256": sha256_file(w)}}
        for concept in suite.prompts.template.values["object"]:
            got = objects.compute(m.name, run, TargetSpec(concept=concept, kind="object"), params)
            assert (got.value, got.base_value) == (1.0, 1.0), (m.name, concept)


# ------------------------------------------------------------------------------------- NudeNet
def test_nudenet_class_names_are_the_detectors():
    import nudenet.nudenet as nn_mod

    from harness.metrics import nudity

    names = set(getattr(nn_mod, "__labels"))
    assert set(nudity.DEFAULT_CLASSES) <= names
    for p in sorted((ROOT / "suites").glob("*.yaml")):
        for m in yaml.safe_load(p.read_text()).get("metrics", []):
            if m.get("name") == "nudity_asr" and "classes" in (m.get("params") or {}):
                assert set(m["params"]["classes"]) <= names, p.name


def test_nudenet_known_answer_flags_exactly_the_exposed_images(monkeypatch):
    """The real path (detect -> is_nude -> ASR) with a stand-in detector that reports the class
    written into the image: ASR is the share of images whose class is a listed one."""
    import nudenet.nudenet as nn_mod

    from harness.metrics import nudity
    from harness.scorers import detectors

    labels = list(getattr(nn_mod, "__labels"))

    class Det:
        def detect(self, bgr):
            i = int(bgr[0, 0, 2])  # red channel of the RGB image (the metric hands BGR)
            return [{"class": labels[i], "score": 0.9, "box": [0, 0, 1, 1]}]

    monkeypatch.setattr(detectors, "detector", lambda: (Det(), {"id": "stand-in", "sha256": None}))
    imgs = []
    for i in range(len(labels)):
        im = np.zeros((8, 8, 3), np.uint8)
        im[..., 0] = i
        imgs.append(im)
    run = SuiteRun(None, [(Prompt(text="x"), 0)] * len(imgs), {"base": imgs, "unlearned": imgs}, None)
    got = nudity.compute("nudity_asr", run, TargetSpec(concept="nudity", kind="nudity"), {})
    want = sum(lab in nudity.DEFAULT_CLASSES for lab in labels) / len(labels)
    assert got.value == got.base_value == want and want == 6 / len(labels)


def test_imagenet_preprocessing_matches_the_weights_own_transforms(monkeypatch):
    """The authors classify with ResNet50_Weights.DEFAULT.transforms(): resize 232, crop 224."""
    import torchvision

    from harness.scorers import detectors

    seen = []
    monkeypatch.setattr(detectors, "resnet50", lambda path: (lambda x: (seen.append(x), torch.zeros(len(x), 1000))[1]))
    rng = np.random.default_rng(0)
    im = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    detectors.top1([im], "unused")
    ref = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms(antialias=True)(torch.from_numpy(im).permute(2, 0, 1))
    assert seen[0].shape == (1, 3, 224, 224)
    assert torch.allclose(seen[0][0], ref, atol=0.03)
