"""Checkpoints: sha256 before loading, pickle refused, partial tensors applied strictly."""

import pytest
import torch
from safetensors.torch import save_file

from harness.errors import HarnessError
from harness.store.hashing import sha256_file, sha256_tree
from harness.families.sd1 import Placement, apply_checkpoint, checkpoint_file
from harness.spec import CheckpointSpec

KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"


def _spec(kind, path, root):
    p = root / path
    sha = sha256_tree(p) if p.is_dir() else sha256_file(p)
    return CheckpointSpec(kind=kind, path=path, sha256=sha)


def test_partial_unet_checkpoint_replaces_only_its_tensors(tiny_pipe_factory, tmp_path):
    pipe = tiny_pipe_factory(seed=2)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    new = torch.full_like(before[KEY], 0.5)
    save_file({KEY: new}, tmp_path / "unet.safetensors")
    spec = _spec("unet", "unet.safetensors", tmp_path)
    path = checkpoint_file(spec, tmp_path, tmp_path / "cache")
    apply_checkpoint(pipe, spec, path, Placement("cpu", "float32"))
    after = pipe.unet.state_dict()
    assert torch.equal(after[KEY], new)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k != KEY)


def test_text_encoder_checkpoint(tiny_pipe_factory, tmp_path):
    pipe = tiny_pipe_factory(seed=2)
    key = "embeddings.token_embedding.weight"  # transformers 5's name in memory
    w = torch.zeros_like(pipe.text_encoder.state_dict()[key])
    save_file({"text_model." + key: w}, tmp_path / "te.safetensors")  # the name in saved files
    spec = _spec("text_encoder", "te.safetensors", tmp_path)
    apply_checkpoint(pipe, spec, checkpoint_file(spec, tmp_path, tmp_path), Placement("cpu", "float32"))
    assert torch.equal(pipe.text_encoder.state_dict()[key], w)


def test_wrong_sha256_is_refused_before_loading(tmp_path):
    save_file({KEY: torch.zeros(2, 2)}, tmp_path / "u.safetensors")
    spec = CheckpointSpec(kind="unet", path="u.safetensors", sha256="0" * 64)
    with pytest.raises(HarnessError, match=r"checkpoint.sha256: u.safetensors has sha256 [0-9a-f]{64}, expected 0{64}"):
        checkpoint_file(spec, tmp_path, tmp_path)


def test_pickle_checkpoints_need_the_local_flag(tiny_pipe_factory, tmp_path):
    pipe = tiny_pipe_factory(seed=2)
    torch.save({KEY: torch.ones_like(pipe.unet.state_dict()[KEY])}, tmp_path / "u.pt")
    spec = _spec("unet", "u.pt", tmp_path)
    with pytest.raises(HarnessError, match="pickle format"):
        checkpoint_file(spec, tmp_path, tmp_path)
    path = checkpoint_file(spec, tmp_path, tmp_path, allow_pickle=True)
    apply_checkpoint(pipe, spec, path, Placement("cpu", "float32"), allow_pickle=True)
    assert torch.equal(pipe.unet.state_dict()[KEY], torch.ones_like(pipe.unet.state_dict()[KEY]))


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"not.a.key": torch.zeros(1)}, "not in the unet"),
        ({KEY: torch.zeros(3, 3)}, "has shape (3, 3)"),
        ({KEY: torch.zeros(64, 64, dtype=torch.int64)}, "not floating point"),
    ],
)
def test_bad_tensors_are_one_line_errors(tiny_pipe_factory, tmp_path, tensors, message):
    pipe = tiny_pipe_factory(seed=2)
    save_file(tensors, tmp_path / "u.safetensors")
    spec = _spec("unet", "u.safetensors", tmp_path)
    with pytest.raises(HarnessError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        apply_checkpoint(pipe, spec, checkpoint_file(spec, tmp_path, tmp_path), Placement("cpu", "float32"))
    assert "\n" not in str(e.value)


def test_corrupt_safetensors_is_a_one_line_error(tiny_pipe_factory, tmp_path):
    (tmp_path / "u.safetensors").write_bytes(b"not a safetensors file at all")
    spec = _spec("unet", "u.safetensors", tmp_path)
    with pytest.raises(HarnessError, match="not a readable safetensors file"):
        apply_checkpoint(tiny_pipe_factory(seed=2), spec, checkpoint_file(spec, tmp_path, tmp_path), Placement("cpu", "float32"))


def test_pipeline_and_lora_checkpoints(tiny_pipe_factory, tmp_path):
    """A whole pipeline folder replaces the base; a LoRA (peft format, saved by diffusers) is
    fused into the UNet's attention and changes its output."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    other = tiny_pipe_factory(seed=3)
    other.save_pretrained(tmp_path / "pipe")
    spec = _spec("pipeline", "pipe", tmp_path)
    got = apply_checkpoint(tiny_pipe_factory(seed=2), spec, checkpoint_file(spec, tmp_path, tmp_path), Placement("cpu", "float32"))
    assert torch.equal(got.unet.state_dict()[KEY], other.unet.state_dict()[KEY])

    donor = tiny_pipe_factory(seed=2)
    donor.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_v"]))
    with torch.no_grad():  # peft starts B at zero (a no-op adapter): make it a real change
        for n, p in donor.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    lora = get_peft_model_state_dict(donor.unet)
    type(donor).save_lora_weights(tmp_path / "lora", unet_lora_layers=lora, safe_serialization=True)
    spec = _spec("lora", "lora/pytorch_lora_weights.safetensors", tmp_path)
    pipe = tiny_pipe_factory(seed=2)
    x = torch.randn(1, 4, 16, 16)
    ctx = torch.randn(1, 16, 64)
    with torch.no_grad():
        before = pipe.unet(x, 10, encoder_hidden_states=ctx).sample
        apply_checkpoint(pipe, spec, checkpoint_file(spec, tmp_path, tmp_path), Placement("cpu", "float32"))
        after = pipe.unet(x, 10, encoder_hidden_states=ctx).sample
    assert not torch.allclose(before, after)
