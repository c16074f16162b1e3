"""CRS/CCS separator recipes, the image_format generation setting and the fidelity record of
results (issue 11)."""

import numpy as np
import pytest
import torch

from harness.run.generate import ImageCache, Job, saved_form
from harness.metrics import separator


def test_hardest_negative_triplet_hand_case():
    a = torch.tensor([[0.0, 0.0]])
    p = torch.tensor([[3.0, 0.0]])  # |a - p| = 3
    n = torch.tensor([[[0.0, 5.0], [0.0, 2.5], [4.0, 0.0]]])  # distances 5, 2.5, 4: hardest 2.5
    assert separator.hardest_negative_triplet(a, p, n).item() == pytest.approx(3 - 2.5 + 1.0)
    far = torch.tensor([[[0.0, 9.0], [0.0, 8.0], [7.0, 0.0]]])
    assert separator.hardest_negative_triplet(a, p, far).item() == 0.0


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("r18")
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}, d / "r18.safetensors")
    return d / "r18.safetensors"


def test_paper_recipe_runs_epochs_over_the_set_at_256(resnet_weights):
    rng = np.random.default_rng(0)
    orig = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(6)]
    unl = [np.zeros((32, 48, 3), np.uint8) + 40 for _ in range(6)]
    seen = []

    def make():
        m = separator.ResNetSeparator(str(resnet_weights), 256)
        f = m.features

        def spy(x):
            seen.append(tuple(x.shape[-2:]))
            return f(x)
        m.features = spy
        return m

    log = {}
    torch.set_num_threads(1)
    model, acc = separator.train_separator_paper(orig, unl, make, epochs=2, seed=0, log=log)
    # 12 images, 80 % = 9 train -> one batch of 32 per epoch -> 2 optimizer steps
    assert log == {"recipe": "paper", "epochs": 2, "optimizer_steps": 2}
    assert 0.0 <= acc <= 1.0
    m = separator.ResNetSeparator(str(resnet_weights), 256)
    calls = []
    m.body.register_forward_pre_hook(lambda mod, inp: calls.append(tuple(inp[0].shape[-2:])))
    with torch.no_grad():
        m.features(torch.zeros(1, 3, 32, 48))
    assert calls == [(256, 384)]  # shorter side to 256, aspect kept, no crop


def test_real_suite_uses_the_paper_recipe_and_toy_keeps_its_own():
    from pathlib import Path

    from harness.spec import load_suite

    root = Path(__file__).resolve().parents[1]
    art = load_suite(root / "suites" / "artist-styles.yaml")
    p = next(m.params for m in art.metrics if m.name == "ccs_forget")
    assert p["separator"] == "resnet18" and p.get("separator_recipe", "paper") == "paper" and p["separator_epochs"] == 10
    assert art.partial_diffusion.psi == [0.001, 0.01, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55]
    toy = load_suite(root / "suites" / "toy-concealment.yaml")
    p = next(m.params for m in toy.metrics if m.name == "ccs_forget")
    assert "separator" not in p and "separator_recipe" not in p and p["separator_steps"] == 200


def _job(**kw):
    base = dict(prompt="p", negative_prompt="", seed=0, scheduler="ddim", steps=2, guidance=1.0, height=8, width=8, eta=0.0,
                dtype="float32", model="m")
    return Job(**{**base, **kw})


def test_png_cache_keys_are_unchanged_and_jpeg_keys_differ():
    from dataclasses import asdict

    from harness.run.generate import GENERATION_VERSION
    from harness.store.hashing import canonical_json, sha256_bytes

    png = _job()
    old = {k: v for k, v in asdict(png).items() if k not in ("image_format", "jpeg_quality")}
    assert png.key() == sha256_bytes(canonical_json({**old, "v": GENERATION_VERSION}).encode())
    j75, j95 = _job(image_format="jpeg", jpeg_quality=75), _job(image_format="jpeg", jpeg_quality=95)
    assert len({png.key(), j75.key(), j95.key()}) == 3


def test_jpeg_setting_changes_what_is_scored_and_is_cached_as_such(tmp_path):
    import io

    from PIL import Image

    rng = np.random.default_rng(1)
    im = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert saved_form(_job(), im) is im
    j = _job(image_format="jpeg", jpeg_quality=75)
    out = saved_form(j, im)
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="JPEG")  # PIL's defaults, as UnlearnCanvas saves .jpg
    assert np.array_equal(out, np.asarray(Image.open(buf).convert("RGB"))) and not np.array_equal(out, im)
    cache = ImageCache(tmp_path)
    cache.put(j, out)
    assert np.array_equal(cache.get(j)[0], out)


def test_suite_generation_carries_image_format_into_jobs(tmp_path):
    from harness.spec import GenerationSettings

    g = GenerationSettings(steps=2, guidance=1.0, seeds=[0], image_format="jpeg", jpeg_quality=90)
    assert (g.image_format, g.jpeg_quality) == ("jpeg", 90)
    assert GenerationSettings(steps=2, guidance=1.0, seeds=[0]).image_format == "png"
    with pytest.raises(ValueError):
        GenerationSettings(steps=2, guidance=1.0, seeds=[0], image_format="webp")


def test_results_name_their_fidelity_choices():
    from pathlib import Path

    from harness.run.fidelity import choices
    from harness.spec import load_submission, load_suite

    root = Path(__file__).resolve().parents[1]
    suite = lambda n: load_suite(root / "suites" / f"{n}.yaml")
    uce = load_submission(root / "submissions" / "toy-uce-style.yaml")
    assert choices(uce, suite("toy-canvas"), root) == {"image_format": "png", "scorer.labels": "toy classifier config",
                                                        "uce.token_positions": "all", "uce.preset": "toy"}
    esd = load_submission(root / "submissions" / "toy-esd-object.yaml")
    got = choices(esd, suite("toy-concealment"), root)
    assert got["esd.preset"] == "toy" and got["ccs.separator_recipe"] == "toy" and "uce.token_positions" not in got
    uc = suite("unlearncanvas")
    assert choices(uce, uc, root)["scorer.labels"] == "unlearncanvas"
    jpeg = uc.model_copy(update={"generation": uc.generation.model_copy(update={"image_format": "jpeg"})})
    assert choices(uce, jpeg, root)["image_format"] == "jpeg (quality 75)"
    assert choices(uce, suite("artist-styles"), root)["ccs.separator_recipe"] == "paper"
