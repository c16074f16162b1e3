"""A method's paper preset feeds what its authors feed (``MethodInfo.authors_inputs``): the
concept phrase, their anchor and preserve set, not the toy world's templates; method.json records
the prompt source and the regression gate re-makes a checkpoint from the same source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.families.sd1 import TOY_PIPELINE
from harness.methods import REGISTRY, get_method, run_erase, uce
from harness.methods.common import ConceptPrompts, for_toy_world, text_embeddings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def captured(monkeypatch):
    """Each method's erase() replaced by one that records the prompts it is given (no training)."""
    seen: dict[str, list[ConceptPrompts]] = {}

    def fake(name):
        def erase(pipe, concepts, **params):
            seen[name] = concepts
            return {"probe.weight": torch.zeros(1)}

        return erase

    for name in ("uce", "esd", "fmn", "salun", "rece", "ca", "mace"):
        monkeypatch.setattr(get_method(name), "erase", fake(name))
    return seen


@pytest.mark.parametrize("method,concept,anchor,templates,preserve", [
    ("uce", "striped", "art", ("{}",), ("solid", "dotted", "checkered", "outline")),
    ("uce", "triangle", "", ("{}",), ()),
    ("esd", "striped", "", ("{}",), ()),
    ("fmn", "triangle", "", ("a photo of {}",), ()),
    ("fmn", "striped", "", ("a photo in the style of {}",), ()),
    ("salun", "triangle", "cross", ("an image of a {}",), ("circle", "square", "ring")),
    ("rece", "striped", "art", ("{}",), ("solid", "dotted", "checkered", "outline")),
    ("rece", "triangle", "", ("{}",), ()),
])
def test_the_paper_preset_feeds_the_authors_inputs_and_records_them(captured, tmp_path, method, concept, anchor, templates, preserve):
    rec = run_erase(method, TOY_PIPELINE, concept, tmp_path / "out", preset="paper")
    cp = captured[method][0]
    assert (cp.concept, cp.anchor, cp.templates, cp.preserve) == (concept, anchor, templates, preserve)
    on_disk = json.loads((tmp_path / "out" / "method.json").read_text())
    assert on_disk["prompt_source"] == rec["prompt_source"] == "authors"
    assert on_disk["templates"] == list(templates) and on_disk["anchor"] == anchor and on_disk["preserve"] == list(preserve)
    assert on_disk["authors_inputs"] == REGISTRY.get(method).authors_inputs.source and "@" in on_disk["authors_inputs"]
    assert on_disk["concept_kind"] == ("style" if concept == "striped" else "object")


@pytest.mark.parametrize("method", ["uce", "esd", "salun", "ca", "mace"])
def test_the_toy_preset_keeps_the_toy_worlds_templates(captured, tmp_path, method):
    """The committed toy checkpoints were made from the toy templates: the toy preset still is."""
    rec = run_erase(method, TOY_PIPELINE, "triangle", tmp_path / "out", preset="toy")
    assert captured[method][0] == for_toy_world("triangle") and rec["prompt_source"] == "toy"


def test_explicit_sources_kind_and_anchor_override_the_default(captured, tmp_path):
    run_erase("uce", TOY_PIPELINE, "striped", tmp_path / "a", preset="paper", world="toy")
    assert captured["uce"][0] == for_toy_world("striped")
    rec = run_erase("uce", TOY_PIPELINE, "striped", tmp_path / "b", preset="toy", world="authors", anchor="dotted")
    assert captured["uce"][0].anchor == "dotted" and "dotted" not in captured["uce"][0].preserve and rec["preset"] == "toy"
    # --kind object: the authors' object recipe (guide '', nothing preserved) for the same word
    run_erase("uce", TOY_PIPELINE, "striped", tmp_path / "c", preset="paper", kind="object")
    assert (captured["uce"][0].anchor, captured["uce"][0].preserve) == ("", ())


def test_a_kind_the_authors_have_no_recipe_for_falls_back_by_default_and_is_refused_when_asked(captured, tmp_path):
    """SalUn's Stable Diffusion code erases classes only: a style gets the toy templates by
    default; asking for the authors' inputs of a style is a one-line error."""
    rec = run_erase("salun", TOY_PIPELINE, "striped", tmp_path / "a", preset="paper")
    assert rec["prompt_source"] == "toy" and captured["salun"][0] == for_toy_world("striped")
    with pytest.raises(HarnessError, match=r"^--kind: the authors' recipe covers object, not 'style' \(use --prompts toy or generic\)$"):
        run_erase("salun", TOY_PIPELINE, "striped", tmp_path / "b", preset="paper", world="authors")


def test_bad_sources_and_methods_without_authors_inputs_are_one_line_errors(captured, tmp_path):
    with pytest.raises(HarnessError, match=r"^--prompts: must be one of authors, toy, generic, not 'templates'$"):
        run_erase("uce", TOY_PIPELINE, "striped", tmp_path / "a", world="templates")
    with pytest.raises(HarnessError, match=r"^--kind: must be style or object, not 'artist'$"):
        run_erase("uce", TOY_PIPELINE, "striped", tmp_path / "a", kind="artist")
    with pytest.raises(HarnessError, match=r"^--prompts authors: method ca declares no authors' inputs"):
        run_erase("ca", TOY_PIPELINE, "striped", tmp_path / "a", world="authors")
    assert not (tmp_path / "a").exists()


def test_the_cli_takes_prompts_and_kind_and_refuses_bad_values_in_one_line(tmp_path, capsys):
    from harness.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["erase", "uce", "--base", str(TOY_PIPELINE), "--concept", "striped", "--out", str(tmp_path / "o"), "--prompts", "bogus"])
    assert e.value.code == 2 and "--prompts" in capsys.readouterr().err
    rc = main(["erase", "uce", "--base", str(TOY_PIPELINE), "--concept", "triangle", "--out", str(tmp_path / "o"), "--preset", "paper",
               "--prompts", "authors", "--kind", "object"])
    assert rc == 0
    rec = json.loads((tmp_path / "o" / "method.json").read_text())
    assert (rec["prompt_source"], rec["concept_kind"], rec["templates"], rec["anchor"]) == ("authors", "object", ["{}"], "")


def test_uce_paper_on_the_authors_inputs_maps_the_concept_phrase_not_a_full_stop(tmp_path):
    """Known answer: the authors' UCE (the `last` token of the phrase 'triangle', guide '') with
    a vanishing lamb maps the phrase's embedding onto the empty prompt's through every edited
    projection (W' c = W a); the toy templates' last token is the full stop, whose mapping is the
    one that moved there."""
    from diffusers import StableDiffusionPipeline

    from harness.methods.common import cross_attention_kv
    from safetensors.torch import load_file

    rec = run_erase("uce", TOY_PIPELINE, "triangle", tmp_path / "out", preset="paper", params={"lamb": 1e-6})
    assert rec["templates"] == ["{}"] and rec["params"]["token_positions"] == "last"
    pipe = StableDiffusionPipeline.from_pretrained(str(TOY_PIPELINE), local_files_only=True)
    c, a = uce._last(pipe, ["triangle"]), uce._last(pipe, [""])
    full_stop = uce._last(pipe, ["A triangle image in striped style."])
    assert full_stop.shape == c.shape and not torch.allclose(full_stop, c)
    new = load_file(str(tmp_path / "out" / "unet.safetensors"))
    for name, lin in cross_attention_kv(pipe.unet).items():
        w, w2 = lin.weight.double(), new[f"{name}.weight"].double()
        target = a @ w.T
        assert torch.linalg.norm(c @ w2.T - target) <= 1e-3 * torch.linalg.norm(target), name
    assert text_embeddings(pipe, ["triangle"]).shape[0] == 1


def test_the_gate_remakes_a_checkpoint_from_its_recorded_prompt_source(monkeypatch, tmp_path):
    import yaml

    from harness.gate import regression
    import harness.methods as methods
    import harness.toy.submissions  # noqa: F401  (imported now: it binds run_erase_isolated at import, which must stay the real one)

    seen = {}

    def fake(method, base, concept, out, **kw):
        seen.update(kw)
        raise HarnessError("stop here")

    monkeypatch.setattr(methods, "run_erase_isolated", fake)
    sub = yaml.safe_load((ROOT / "submissions" / "toy-uce-style.yaml").read_text())
    record = regression.method_record(ROOT, sub["method_record"])
    with pytest.raises(HarnessError, match="stop here"):
        regression.remake_checkpoint(ROOT, sub, record, tmp_path)
    assert seen["world"] == "toy" and seen["kind"] is None  # a record from before prompt_source: the toy templates
    record = {**record, "prompt_source": "authors", "concept_kind": "style"}
    with pytest.raises(HarnessError, match="stop here"):
        regression.remake_checkpoint(ROOT, sub, record, tmp_path)
    assert seen["world"] == "authors" and seen["kind"] == "style"
    with pytest.raises(HarnessError, match=r"prompt_source / concept_kind: 'bogus' / 'None' is not one `unlearn erase` writes"):
        regression.remake_checkpoint(ROOT, sub, {**record, "prompt_source": "bogus", "concept_kind": None}, tmp_path)
