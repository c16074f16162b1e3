"""unlearn convert on SDXL: a generative-models checkpoint (``model.diffusion_model.*``,
``conditioner.embedders.0.transformer.*`` in Hugging Face CLIP names, ``conditioner.embedders.1.model.*``
in OpenCLIP names) and a single file holding every component give back the diffusers tensors
bit for bit, one component per ``--kind``; an SD-1.x checkpoint on an SDXL base is a one-line
shape error from ``convert`` and from ``check``.

The files are made here from a random toy-xl pipeline by the hand-written reverse mappings of
``tests/fixtures/ldm.py``; nothing is downloaded."""

import shutil

import pytest
import torch
from fixtures import mini_suite, submission
from fixtures.ldm import LDM_UNET, SGM_TEXT, SGM_TEXT_2, clip_to_open_clip, sdxl_single_file, unet_to_ldm
from safetensors.torch import load_file, save_file

from harness.cli.main import main
from harness.families.sd1 import TOY_PIPELINE
from harness.store.hashing import sha256_file

FILES = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors",
         "text_encoder_2": "text_encoder_2/model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors"}


@pytest.fixture(scope="module")
def xl_base(tmp_path_factory):
    """A random toy-xl pipeline saved as a diffusers folder (the ``--base``)."""
    from harness.toy.model import build_pipeline_xl

    d = tmp_path_factory.mktemp("xl") / "base"
    build_pipeline_xl(seed=5).save_pretrained(str(d))
    return d


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *needles):
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def component(base, kind) -> dict:
    return load_file(str(base / FILES[kind]))


def edited(state: dict, seed: int, only=lambda k: True) -> dict:
    """``state`` with every floating tensor that ``only`` selects moved by seeded noise."""
    g = torch.Generator().manual_seed(seed)
    return {k: (v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() and only(k) else v) for k, v in state.items()}


def test_a_single_sdxl_file_gives_each_component_back_bit_for_bit(xl_base, tmp_path, capsys):
    """Every tensor of every component changed (a full fine-tune); each ``--kind`` takes its own
    component out of the one file, under the base's names, equal to the diffusers original."""
    new = {kind: edited(component(xl_base, kind), seed=i) for i, kind in enumerate(("unet", "text_encoder", "text_encoder_2"))}
    single = sdxl_single_file(new["unet"], new["text_encoder"], new["text_encoder_2"], component(xl_base, "vae"))
    assert any(k.startswith("first_stage_model.") for k in single) and f"{SGM_TEXT_2}transformer.resblocks.0.attn.in_proj_weight" in single
    assert single[f"{SGM_TEXT}text_model.embeddings.position_ids"].dtype == torch.int64  # a buffer older transformers saved; no weight
    save_file(single, str(tmp_path / "sd_xl_finetuned.safetensors"))
    for kind in ("unet", "text_encoder", "text_encoder_2"):
        out_file = tmp_path / f"{kind}.safetensors"
        rc, out, err = run(capsys, "convert", tmp_path / "sd_xl_finetuned.safetensors", "--kind", kind, "--base", xl_base, "--out", out_file)
        assert rc == 0, err
        got, want = load_file(str(out_file)), new[kind]
        assert set(got) == set(want)  # every tensor, named as the base's file names it
        assert all(torch.equal(got[k], want[k]) for k in want), kind
        assert f"kind: {kind}" in out and "compvis layout" in out and f"sha256: {sha256_file(out_file)}" in out
    rc, out, err = run(capsys, "convert", tmp_path / "sd_xl_finetuned.safetensors", "--base", xl_base, "--out", tmp_path / "auto.safetensors")
    assert rc == 0 and "kind: unet" in out  # a file of every component: the UNet unless --kind says otherwise


def test_a_generative_models_checkpoint_keeps_only_what_the_method_changed(xl_base, tmp_path, capsys):
    """An ESD-x-like edit (cross-attention keys / values only) in a Lightning ``.ckpt`` with its
    training state; and a second-encoder file alone in which one attention's query changed: the
    OpenCLIP ``in_proj_weight`` splits back into q / k / v, only q differs."""
    unet = component(xl_base, "unet")
    cross = lambda k: ".attn2.to_k." in k or ".attn2.to_v." in k  # noqa: E731
    new_unet = edited(unet, 7, cross)
    te, te2 = component(xl_base, "text_encoder"), component(xl_base, "text_encoder_2")
    state = sdxl_single_file(new_unet, te, te2, component(xl_base, "vae"))
    torch.save({"state_dict": state, "optimizer_states": [{}], "global_step": 10, "epoch": 1}, tmp_path / "esd-x.ckpt")
    rc, out, err = run(capsys, "convert", tmp_path / "esd-x.ckpt", "--base", xl_base, "--out", tmp_path / "u.safetensors")
    assert rc == 0, err
    got = load_file(str(tmp_path / "u.safetensors"))
    assert set(got) == {k for k in unet if cross(k)} and all(torch.equal(got[k], new_unet[k]) for k in got)
    assert "3 training-state entries stripped" in out
    # only the cross-attention tensors of the UNet, under LDM names (a file a method saved partially)
    partial = {k: v for k, v in unet_to_ldm(new_unet).items() if ".attn2.to_k." in k}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    rc, out, err = run(capsys, "convert", tmp_path / "partial.safetensors", "--base", xl_base, "--out", tmp_path / "p.safetensors")
    assert rc == 0, err
    got = load_file(str(tmp_path / "p.safetensors"))
    assert set(got) == {k for k in unet if ".attn2.to_k." in k} and all(torch.equal(got[k], new_unet[k]) for k in got)
    # the second text encoder alone: --kind auto finds it by its OpenCLIP prefix
    q = "text_model.encoder.layers.1.self_attn.q_proj.weight"
    new_te2 = {k: (v * 2 if k == q else v) for k, v in te2.items()}
    save_file(clip_to_open_clip(new_te2), str(tmp_path / "te2.safetensors"))
    rc, out, err = run(capsys, "convert", tmp_path / "te2.safetensors", "--base", xl_base, "--out", tmp_path / "t2.safetensors")
    assert rc == 0 and "kind: text_encoder_2" in out, err
    got = load_file(str(tmp_path / "t2.safetensors"))
    assert list(got) == [q] and torch.equal(got[q], new_te2[q])


def test_the_reverse_mapping_names_sdxls_own_blocks_and_converts_back():
    """The UNet at SDXL-base's block structure (a first level without attention, 2 resnets per
    level, 1 / 2 / many transformer layers, text_time embedding), small: the LDM names are the
    ones ``sd_xl_base_1.0.safetensors`` holds, and the family's converter maps them back exactly."""
    import json

    from diffusers import UNet2DConditionModel

    from harness.families.sdxl import ldm_unet_to_diffusers

    torch.manual_seed(0)
    u = UNet2DConditionModel(sample_size=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                             up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32, 32),
                             layers_per_block=2, transformer_layers_per_block=(1, 2, 3), attention_head_dim=(2, 4, 4), cross_attention_dim=16,
                             addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=8 + 6 * 4,
                             use_linear_projection=True, norm_num_groups=8)
    sd = u.state_dict()
    ldm = unet_to_ldm(sd)
    for name in ("input_blocks.3.0.op.weight", "input_blocks.6.0.op.weight", "input_blocks.8.1.transformer_blocks.2.attn2.to_k.weight",
                 "middle_block.1.transformer_blocks.2.attn2.to_v.weight", "output_blocks.2.2.conv.weight", "output_blocks.5.2.conv.weight",
                 "output_blocks.8.0.skip_connection.weight", "label_emb.0.0.weight", "label_emb.0.2.bias", "time_embed.2.weight"):
        assert LDM_UNET + name in ldm, name
    assert not any(k.startswith(LDM_UNET + "input_blocks.1.1.") for k in ldm)  # SDXL's first level has no attention
    got = ldm_unet_to_diffusers(ldm, json.loads(json.dumps(dict(u.config))))
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    # a tensor the base's config gives no diffusers name is an error, not an edit silently lost
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="have no diffusers name under the base's UNet config"):
        ldm_unet_to_diffusers({**ldm, LDM_UNET + "input_blocks.4.2.conv.weight": torch.zeros(4)}, dict(u.config))


def test_an_sd1_checkpoint_on_an_sdxl_base_is_a_one_line_shape_error(xl_base, tmp_path, capsys):
    """A fine-tuned SD-1.x UNet, converted for the SD-1.x toy base, then given an SDXL base; its
    CompVis original too; and a second text encoder asked of an SD-1.x base."""
    sd1 = edited(load_file(str(TOY_PIPELINE / "unet" / "diffusion_pytorch_model.safetensors")), 3)
    save_file(sd1, str(tmp_path / "sd1-full.safetensors"))
    rc, out, err = run(capsys, "convert", tmp_path / "sd1-full.safetensors", "--base", "toy", "--out", tmp_path / "sd1.safetensors")
    assert rc == 0, err
    rc, out, err = run(capsys, "convert", tmp_path / "sd1.safetensors", "--base", xl_base, "--out", tmp_path / "x.safetensors")
    one_line_error(rc, err, "has shape", "the base's unet has", "another architecture than --base")
    torch.save({"state_dict": unet_to_ldm(sd1)}, tmp_path / "sd1.ckpt")
    rc, out, err = run(capsys, "convert", tmp_path / "sd1.ckpt", "--base", xl_base, "--out", tmp_path / "x.safetensors")
    one_line_error(rc, err, "has shape", "another architecture than --base")
    rc, out, err = run(capsys, "convert", tmp_path / "sd1.safetensors", "--kind", "text_encoder_2", "--base", "toy", "--out", tmp_path / "x.safetensors")
    one_line_error(rc, err, "--kind: text_encoder_2 is not a component of a Stable Diffusion 1.x model")
    assert not (tmp_path / "x.safetensors").exists()


def test_check_refuses_an_sd1_unet_file_on_an_sdxl_base_in_one_line(xl_base, tmp_path, capsys):
    """``unlearn check`` of a submission on a local SDXL base whose checkpoint is the SD-1.x toy
    UNet: the names fit, a shape does not; one line naming it, before any model loads."""
    shutil.copytree(xl_base, tmp_path / "base")
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "mini.yaml").write_text(mini_suite('name: ua, threshold: ">= 0.8"'))
    (tmp_path / "ckpt").mkdir()
    shutil.copy(TOY_PIPELINE / "unet" / "diffusion_pytorch_model.safetensors", tmp_path / "ckpt" / "unet.safetensors")
    (tmp_path / "sub.yaml").write_text(submission(sha256_file(tmp_path / "ckpt" / "unet.safetensors")))
    rc, out, err = run(capsys, "check", tmp_path / "sub.yaml", "--root", tmp_path)
    one_line_error(rc, err, "sub.yaml", "checkpoint: tensor", "has shape", "the unet expects")
    # the same submission with an SDXL-shaped checkpoint passes that check
    new = {k: v for k, v in edited(component(xl_base, "unet"), 1).items() if ".attn2.to_k." in k}
    save_file(new, str(tmp_path / "ckpt" / "unet.safetensors"))
    (tmp_path / "sub.yaml").write_text(submission(sha256_file(tmp_path / "ckpt" / "unet.safetensors")))
    rc, out, err = run(capsys, "check", tmp_path / "sub.yaml", "--root", tmp_path)
    assert rc == 0 and f"{len(new)} unet tensor(s), names and shapes match the base" in out, err
