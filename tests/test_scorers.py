"""Scorer backends: the toy classifier, and UnlearnCanvas' ViT-L/16 on a random stand-in of the
same architecture built in code (the real weights cannot be fetched here)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from harness.errors import HarnessError
from harness.store.hashing import sha256_file
from harness.scorers.classifiers import load_scorer
from harness.spec import ScorerSpec
from harness.toy import world


def test_toy_scorer_names_its_classes_and_weights(tmp_path):
    s = load_scorer(ScorerSpec(backend="toy"), tmp_path)
    imgs, o, st = world.sample(20, seed=77)
    preds = s.predict(list(imgs))
    assert preds["object"] == [world.OBJECTS[i] for i in o]
    assert preds["style"] == [world.STYLES[i] for i in st]
    assert s.identity["id"] == "toy-classifier" and len(s.identity["sha256"]) == 64


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    """Random ViT-L/16 weights with a 3-way style head and a 2-way object head."""
    import timm

    d = tmp_path_factory.mktemp("uc")
    torch.manual_seed(0)
    model = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "style.safetensors")
    model.reset_classifier(2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "object.safetensors")
    return d


def _spec(d, style_sha=None):
    return ScorerSpec(
        backend="unlearncanvas-vit",
        style_weights={"path": "style.safetensors", "sha256": style_sha or sha256_file(d / "style.safetensors")},
        object_weights={"path": "object.safetensors", "sha256": sha256_file(d / "object.safetensors")},
        style_classes=["Van_Gogh", "Monet", "Seed_Images"],
        object_classes=["Cats", "Dogs"],
    )


def test_unlearncanvas_vit_stand_in_classifies_at_224(vit_files):
    s = load_scorer(_spec(vit_files), vit_files)
    imgs = [np.full((64, 64, 3), v, np.uint8) for v in (0, 128, 255)]  # resized to 224 inside
    preds = s.predict(imgs)
    assert len(preds["style"]) == 3 and set(preds["style"]) <= {"Van_Gogh", "Monet", "Seed_Images"}
    assert set(preds["object"]) <= {"Cats", "Dogs"}
    assert s.identity["sha256"]["style"] == sha256_file(vit_files / "style.safetensors")


def test_unlearncanvas_vit_refuses_a_wrong_hash_before_loading(vit_files):
    with pytest.raises(HarnessError, match="scorer.style_weights.sha256"):
        load_scorer(_spec(vit_files, style_sha="0" * 64), vit_files)
