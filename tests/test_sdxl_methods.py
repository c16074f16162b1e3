"""Reference methods on the SDXL model family: UCE's closed form on the concatenated embedding,
ESD-x with SDXL's whole conditioning, ``unlearn erase`` on a saved toy-xl folder, and the
one-line refusal of the methods whose authors' code is SD-1.x only. Random-weight toy-xl
pipelines (``build_pipeline_xl``: two 32-wide encoders, a 64-wide cross-attention input)."""

import json

import pytest
import torch

from harness.families import family_of_pipeline
from harness.families.sdxl import SDXL
from harness.methods import REGISTRY, esd, preset_params, run_erase, uce
from harness.methods.common import ConceptPrompts, cross_attention_kv
from harness.toy.model import build_pipeline_xl

pytestmark = pytest.mark.usefixtures("one_thread")

KV = ("attn2.to_k.weight", "attn2.to_v.weight")


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    """A saved random toy-xl pipeline folder (what ``unlearn erase --base`` reads)."""
    d = tmp_path_factory.mktemp("toy-xl") / "base"
    build_pipeline_xl(seed=2).save_pretrained(d)
    return d


def _hidden(pipe, prompt: str) -> torch.Tensor:
    """The cross-attention input of one prompt (tokens, 64), straight from the two encoders:
    each one's penultimate hidden states, concatenated (SDXL's ``prompt_embeds``)."""
    states = []
    with torch.no_grad():
        for tok, te in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
            states.append(te(ids, output_hidden_states=True).hidden_states[-2][0])
    return torch.cat(states, dim=-1).double()


# The rows each variant maps, for one-word prompts (start token, word, end token, padding): the
# word's position 1 (``last``: mask sum 3 - 2), positions 1.. (``tail``), every position (``all``).
ROWS = {"last": slice(1, 2), "tail": slice(1, None), "all": slice(0, None)}


@pytest.mark.parametrize("variant", sorted(ROWS))
def test_uce_on_sdxl_maps_the_erased_embedding_onto_the_anchors_in_every_kv_projection(variant):
    """Only the cross-attention K / V weights change, every one of them reads the 64-wide
    concatenation of both encoders' states, and with nothing preserved and lamb 1e-6 the edit
    solves W' c = W a for the erased rows c and the anchor's rows a (the closed form's limit:
    relative residual ||W' c - W a|| / ||W c - W a|| below 1e-3; it is O(lamb / sigma_min(c)^2),
    about 1e-5 here). ``tail`` also keeps the empty prompt's rows: W' e = W e."""
    pipe = build_pipeline_xl(seed=7)
    assert family_of_pipeline(pipe) is SDXL
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    texts = {k: v.clone() for k, v in pipe.text_encoder_2.state_dict().items()}
    kv = cross_attention_kv(pipe.unet, SDXL)
    old = {n: m.weight.detach().double().clone() for n, m in kv.items()}
    assert kv and all(m.in_features == 2 * pipe.text_encoder.config.hidden_size == 64 for m in kv.values())

    changed = uce.erase(pipe, [ConceptPrompts("striped", "solid")], erase_scale=1.0, preserve_scale=1.0, lamb=1e-6,
                        token_positions=variant)

    after = pipe.unet.state_dict()
    assert set(changed) == {f"{n}.weight" for n in kv} and all(k.endswith(KV) for k in changed)
    assert all(not torch.equal(after[k], before[k]) for k in changed)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k not in changed)
    assert all(torch.equal(pipe.text_encoder_2.state_dict()[k], v) for k, v in texts.items())
    c, a = _hidden(pipe, "striped")[ROWS[variant]], _hidden(pipe, "solid")[ROWS[variant]]
    empty = _hidden(pipe, "")
    for name, w in old.items():
        new = changed[f"{name}.weight"].double()
        assert (new @ c.T - w @ a.T).norm() / (w @ c.T - w @ a.T).norm() < 1e-3, name
        if variant == "tail":
            assert (new @ empty.T - w @ empty.T).norm() / (w @ empty.T).norm() < 1e-3, name


def test_uce_on_sdxl_is_the_minimiser_of_its_objective_with_preserved_concepts():
    """With preserved concepts and lamb 0.5 the edit is the objective's stationary point (its
    gradient vanishes), for the rows ``uce.rows`` takes from the family's embeddings."""
    pipe = build_pipeline_xl(seed=8)
    cp = ConceptPrompts("striped", "solid", preserve=("dotted", "checkered"))
    c, a, p = uce.rows(pipe, [cp], "last")
    assert c.shape == (1, 64) and p.shape == (2, 64)
    assert torch.allclose(c[0], _hidden(pipe, "striped")[1]) and torch.allclose(p[1], _hidden(pipe, "checkered")[1])
    old = {n: m.weight.detach().double().clone() for n, m in cross_attention_kv(pipe.unet, SDXL).items()}
    changed = uce.erase(pipe, [cp], erase_scale=1.0, preserve_scale=1.0, lamb=0.5, token_positions="last")
    for name, w in old.items():
        new = changed[f"{name}.weight"].double()
        grad = 0.5 * (new - w) + (new @ c.T - w @ a.T) @ c + (new @ p.T - w @ p.T) @ p
        assert grad.norm() / (0.5 * w).norm() < 1e-5, name


def test_esd_on_sdxl_trains_cross_attention_with_the_whole_conditioning():
    """A few ESD-x steps on toy-xl: the losses are finite, only ``attn2`` parameters move, and
    every UNet call (the frozen copy's targets and the sampling) carries the pooled text and
    micro-conditioning. The frozen copy's null is the encoded empty prompt (the authors'
    ``negative_prompt=""``), the sampling's unconditional branch the pipeline's zeros."""
    pipe = build_pipeline_xl(seed=9)
    with torch.no_grad():
        null = SDXL.encode_conditioning(pipe, [""])
        concept = SDXL.encode_conditioning(pipe, ["striped"])
    calls = []

    def spy(module, args, kwargs):
        extra = kwargs.get("added_cond_kwargs")
        calls.append((module, kwargs["encoder_hidden_states"].detach().clone(), {k: v.detach().clone() for k, v in (extra or {}).items()}))

    pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)  # the frozen copy (a deepcopy) keeps the hook
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    history = []
    changed = esd.erase(pipe, [ConceptPrompts("striped")], steps=3, lr=1e-3, batch=2, sample_steps=4, sample_guidance=3.0,
                        seed=1, progress=False, history=history)

    assert len(history) == 3 and all(torch.isfinite(torch.tensor(history)))
    after = pipe.unet.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".attn2." in k for k in moved)
    assert set(changed) == {k for k in before if ".attn2." in k}

    assert calls and all(set(extra) == {"text_embeds", "time_ids"} for _, _, extra in calls)
    assert all(torch.equal(extra["time_ids"], torch.tensor([[32.0, 32, 0, 0, 32, 32]] * len(h))) for _, h, extra in calls)
    frozen = [(h, extra) for m, h, extra in calls if m is not pipe.unet]
    trained = [(h, extra) for m, h, extra in calls if m is pipe.unet]
    assert len(frozen) == 2 * 3  # e*(x_t, c0) and e*(x_t, c) each step

    def is_(cond, h, extra):  # every row of a batch is this prompt's conditioning
        return torch.allclose(h, cond.hidden.expand_as(h)) and torch.allclose(extra["text_embeds"], cond.extra["text_embeds"].expand_as(extra["text_embeds"]))

    assert null.extra["text_embeds"].abs().sum() > 0  # the encoded '' is not the zeros of force_zeros_for_empty_prompt
    assert sum(is_(null, h, x) for h, x in frozen) == 3 and sum(is_(concept, h, x) for h, x in frozen) == 3
    sampling = [(h, x) for h, x in trained if len(h) == 4]  # cat([unconditional, concept]) of a batch of 2
    assert sampling, "the seed drew no sampling step"
    for h, x in sampling:
        assert torch.equal(h[:2], torch.zeros_like(h[:2])) and torch.equal(x["text_embeds"][:2], torch.zeros_like(x["text_embeds"][:2]))
        assert torch.allclose(h[2:], concept.hidden.expand_as(h[2:]))


def test_esd_defaults_to_the_authors_sdxl_preset_on_an_sdxl_base(tmp_path):
    from harness.families.base import TOY_PIPELINES

    assert preset_params(esd, "esd", None, tmp_path, {}, family="sdxl") == ("paper-sdxl", esd.PRESETS["paper-sdxl"])
    assert preset_params(esd, "esd", None, tmp_path, {}, family="sd1")[0] == "paper"
    assert preset_params(esd, "esd", None, TOY_PIPELINES["toy-xl"], {}, family="sdxl")[0] == "toy"
    assert preset_params(uce, "uce", None, tmp_path, {}, family="sdxl")[0] == "paper"  # UCE's SDXL settings are its SD ones
    assert esd.PRESETS["paper-sdxl"] == {"steps": 200, "lr": 2e-4, "eta": 1.0, "batch": 1, "sample_steps": 50, "sample_guidance": 2.0, "seed": 0}


def _checkpoint(out, unet_keys: dict) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    rec = json.loads((out / "method.json").read_text())
    tensors = load_file(str(out / "unet.safetensors"))
    assert rec["checkpoint"]["kind"] == "unet" and rec["checkpoint"]["tensors"] == len(tensors)
    assert all(k in unet_keys and tuple(v.shape) == unet_keys[k] for k, v in tensors.items())
    return rec, tensors


def test_erase_on_a_saved_toy_xl_folder_writes_a_unet_checkpoint(xl_dir, tmp_path):
    """``run_erase`` (what ``unlearn erase`` and, in a spawned process, ``run_erase_isolated`` run)
    with UCE and with ESD (tiny steps) on a saved SDXL folder: unet.safetensors of UNet tensors,
    method.json of kind unet; ESD's default preset there is the authors' SDXL one."""
    from diffusers import UNet2DConditionModel

    unet_keys = {k: tuple(v.shape) for k, v in UNet2DConditionModel.from_pretrained(str(xl_dir / "unet")).state_dict().items()}
    rec = run_erase("uce", xl_dir, "striped", tmp_path / "uce", world="generic")
    on_disk, tensors = _checkpoint(tmp_path / "uce", unet_keys)
    assert on_disk == rec and rec["preset"] == "paper" and rec["params"]["token_positions"] == "last"
    assert set(tensors) == {k for k in unet_keys if k.endswith(KV)}

    rec = run_erase("esd", xl_dir, "striped", tmp_path / "esd", world="generic", params={"steps": 2, "batch": 1, "sample_steps": 2})
    on_disk, tensors = _checkpoint(tmp_path / "esd", unet_keys)
    assert on_disk == rec and rec["preset"] == "paper-sdxl"
    assert rec["params"] == {**esd.PRESETS["paper-sdxl"], "steps": 2, "batch": 1, "sample_steps": 2}
    assert set(tensors) == {k for k in unet_keys if ".attn2." in k}


SD1_ONLY = sorted(n for n in REGISTRY.names() if not REGISTRY.get(n).supports(SDXL) and REGISTRY.get(n).kind == "checkpoint")  # erasable ones


def test_some_methods_are_sd1_only():
    assert {"ca", "fmn", "rece", "salun"} <= set(SD1_ONLY) and not {"uce", "esd"} & set(SD1_ONLY)


@pytest.mark.parametrize("method", SD1_ONLY)
def test_erase_refuses_an_sd1_only_method_on_an_sdxl_base_in_one_line(xl_dir, tmp_path, monkeypatch, capsys, method):
    from harness.cli import main as cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["erase", method, "--base", str(xl_dir), "--concept", "striped", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"unlearn: error: method {method} runs on sd1 only"), err
    assert "sdxl model family" in err[0] and "Stable Diffusion 1.x only" in err[0], err
    assert not (tmp_path / "out").exists()
