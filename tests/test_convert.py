"""unlearn convert: pickles read with weights_only (a malicious one runs nothing), training state
stripped, CompVis / LDM layout renamed by diffusers, only changed tensors kept; a converted
CompVis checkpoint evaluates to the same images as the diffusers original."""

import os
import pickle

import torch
from fixtures.ldm import unet_to_ldm as to_ldm  # the LDM names, written by hand (not by the converter under test)
from safetensors.torch import load_file

from harness.cli.main import main
from harness.store.hashing import sha256_file
from harness.families.sd1 import TOY_PIPELINE

UNET_FILE = TOY_PIPELINE / "unet" / "diffusion_pytorch_model.safetensors"


def erased_unet(scale: float = 0.5) -> dict:
    """The toy UNet with its cross-attention to_k / to_v changed (an ESD-x-like edit)."""
    state = load_file(str(UNET_FILE))
    return {k: (v * scale if ".attn2.to_k." in k or ".attn2.to_v." in k else v) for k, v in state.items()}


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_malicious_pickle_runs_nothing_and_is_refused_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": {"w": Evil()}}, f)
    torch.save({"w": Evil()}, tmp_path / "evil.pt")  # torch's own zip format, same payload
    for name in ("evil.ckpt", "evil.pt"):
        rc, out, err = run(capsys, "convert", tmp_path / name, "--out", tmp_path / "x.safetensors")
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert f"{name}: refused" in err and "nothing in it was run" in err
    assert not marker.exists()
    assert not (tmp_path / "x.safetensors").exists()


def test_compvis_checkpoint_with_training_state_becomes_the_changed_tensors(tmp_path, capsys):
    new = erased_unet()
    ckpt = {"state_dict": {**to_ldm(new), "model_ema.decay": torch.tensor(0.999), "betas": torch.zeros(1000)},
            "optimizer_states": [{"state": {}}], "epoch": 3, "global_step": 1200, "lr_schedulers": []}
    torch.save(ckpt, tmp_path / "esd.ckpt")
    rc, out, err = run(capsys, "convert", tmp_path / "esd.ckpt", "--out", tmp_path / "unet.safetensors", "--base", "toy")
    assert rc == 0, err
    got = load_file(str(tmp_path / "unet.safetensors"))
    changed = {k for k in new if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert set(got) == changed  # only what the method changed, under diffusers names
    assert all(torch.equal(got[k], new[k]) for k in changed)
    assert "compvis layout" in out and f"sha256: {sha256_file(tmp_path / 'unet.safetensors')}" in out and "kind: unet" in out
    assert "5 training-state entries stripped" in out  # optimizer_states, epoch, global_step, lr_schedulers, model_ema.decay


def test_a_diffusers_pt_state_dict_and_bad_inputs(tmp_path, capsys):
    new = erased_unet(0.25)
    torch.save(new, tmp_path / "uce.pt")  # UCE-style: a plain diffusers-named state dict
    rc, out, err = run(capsys, "convert", tmp_path / "uce.pt", "--out", tmp_path / "u.safetensors")
    assert rc == 0 and "diffusers layout" in out
    assert set(load_file(str(tmp_path / "u.safetensors"))) == {k for k in new if ".attn2.to_k." in k or ".attn2.to_v." in k}
    torch.save(load_file(str(UNET_FILE)), tmp_path / "same.pt")
    rc, out, err = run(capsys, "convert", tmp_path / "same.pt", "--out", tmp_path / "s.safetensors")
    assert rc == 2 and "equals the base's" in err
    torch.save({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(3, 3)}, tmp_path / "shape.pt")
    rc, out, err = run(capsys, "convert", tmp_path / "shape.pt", "--out", tmp_path / "s.safetensors")
    assert rc == 2 and "has shape (3, 3)" in err and len(err.strip().splitlines()) == 1
    rc, out, err = run(capsys, "convert", tmp_path / "uce.pt", "--out", tmp_path / "s.bin")
    assert rc == 2 and "must end in .safetensors" in err


def test_converted_compvis_checkpoint_gives_the_same_images_as_the_diffusers_original(tmp_path, capsys):
    from harness.families.sd1 import Placement, apply_checkpoint
    from harness.spec import CheckpointSpec
    from harness.toy.model import load_pipeline

    new = erased_unet(0.5)
    torch.save({"state_dict": to_ldm(new)}, tmp_path / "esd.ckpt")
    assert run(capsys, "convert", tmp_path / "esd.ckpt", "--out", tmp_path / "unet.safetensors")[0] == 0

    def images(pipe):
        g = torch.Generator("cpu").manual_seed(0)
        return pipe(["A circle image in striped style.", "A square image in solid style."], num_inference_steps=4, guidance_scale=5.0,
                    generator=g, output_type="np").images

    original = load_pipeline()
    original.unet.load_state_dict(new)
    converted = load_pipeline()
    spec = CheckpointSpec(kind="unet", path="unet.safetensors", sha256=sha256_file(tmp_path / "unet.safetensors"))
    apply_checkpoint(converted, spec, tmp_path / "unet.safetensors", Placement("cpu", "float32"))
    a, b = images(original), images(converted)
    assert (a == b).all()
    assert not (a == images(load_pipeline())).all()  # and the edit does change the images


def test_compvis_text_encoder_and_plain_scorer_weights(tmp_path, capsys):
    te = load_file(str(TOY_PIPELINE / "text_encoder" / "model.safetensors"))
    key = next(k for k in te if k.endswith("self_attn.k_proj.weight"))
    edited = {k: (v + 1.0 if k == key else v) for k, v in te.items()}
    ldm = {"cond_stage_model.transformer." + k: v for k, v in edited.items()}  # how CompVis checkpoints hold the CLIP text model
    ldm.update(to_ldm(load_file(str(UNET_FILE))))  # an unchanged UNet beside it
    torch.save({"state_dict": ldm}, tmp_path / "adv.ckpt")
    rc, out, err = run(capsys, "convert", tmp_path / "adv.ckpt", "--kind", "text_encoder", "--out", tmp_path / "te.safetensors")
    assert rc == 0, err
    got = load_file(str(tmp_path / "te.safetensors"))
    assert list(got) == [key] and torch.equal(got[key], edited[key]) and "kind: text_encoder" in out
    rc, out, err = run(capsys, "convert", tmp_path / "adv.ckpt", "--kind", "unet", "--out", tmp_path / "u.safetensors")
    assert rc == 2 and "nothing was unlearned" in err
    # scorer weights: every tensor, names kept, the optimizer gone
    torch.save({"model": {"head.weight": torch.ones(3, 2), "head.bias": torch.zeros(3)}, "optimizer": {"lr": 0.1}}, tmp_path / "clf.pth")
    rc, out, err = run(capsys, "convert", tmp_path / "clf.pth", "--kind", "plain", "--out", tmp_path / "clf.safetensors")
    assert rc == 0 and f"sha256: {sha256_file(tmp_path / 'clf.safetensors')}" in out
    assert sorted(load_file(str(tmp_path / "clf.safetensors"))) == ["head.bias", "head.weight"]


def test_a_partial_compvis_unet_holding_only_the_changed_tensors_converts(tmp_path, capsys):
    """A CompVis file of only what a method changed (cross-attention K/V: whole blocks absent):
    diffusers' converter numbers blocks by counting those present, so the harness pads the
    missing ones (families.sd1.ldm_unet_to_diffusers); every tensor keeps its own name."""
    from safetensors.torch import save_file

    new = erased_unet()
    changed = {k: v for k, v in new.items() if ".attn2.to_k." in k or ".attn2.to_v." in k}
    ldm = {k: v for k, v in to_ldm(new).items() if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert ldm and len(ldm) == len(changed)
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(tmp_path / "partial.safetensors"))
    rc, out, err = run(capsys, "convert", tmp_path / "partial.safetensors", "--out", tmp_path / "unet.safetensors", "--base", "toy")
    assert rc == 0, err
    got = load_file(str(tmp_path / "unet.safetensors"))
    assert set(got) == set(changed) and all(torch.equal(got[k], changed[k]) for k in changed)
