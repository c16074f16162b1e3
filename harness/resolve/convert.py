"""``unlearn convert``: the field's checkpoint formats -> the harness's safetensors diff.

ESD and UnlearnCanvas publish CompVis / LDM ``.ckpt`` / ``.pth`` files (``model.diffusion_model.*``,
``cond_stage_model.transformer.*``), UCE ``.pt`` state dicts with diffusers names. This command:

1. reads a pickle with ``torch.load(weights_only=True)`` only: PyTorch's restricted unpickler
   builds tensors and plain containers and refuses every other global, so a pickle whose
   ``__reduce__`` would run a command is refused (one line) and nothing in it runs;
   ``.safetensors`` inputs are read as such;
2. strips training state: everything that is not a tensor (epoch, step, config), the optimizer,
   LR schedulers, callbacks, and the EMA copy (``model_ema.*``);
3. renames the CompVis / LDM layout to diffusers names with diffusers' own single-file
   conversion, as the base's model family asks (``harness.families``: ``to_diffusers``):
   ``convert_ldm_unet_checkpoint`` with the base's UNet config, ``convert_ldm_clip_checkpoint``
   for a CLIP text encoder, ``convert_open_clip_checkpoint`` for SDXL's second (OpenCLIP) one;
   an SDXL single file (``sd_xl_base_1.0.safetensors``: UNet, both text encoders and the VAE)
   gives the one component ``--kind`` names; diffusers-named files pass through;
4. keeps only the tensors that differ from the base model's (compared in the checkpoint's
   dtype; ``--atol`` for a tolerance), so a full-UNet ESD file becomes the small set of changed
   tensors a submission ships; every kept name must exist in the base with the same shape;
5. writes safetensors atomically and prints its sha256 and the submission's ``checkpoint:`` block.

``--kind plain`` does steps 1, 2 and 5 only (every tensor, names kept): scorer weights such as
UnlearnCanvas' ViT-L/16 ``.pth`` classifiers become the safetensors file a suite pins.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError
from harness.store.hashing import sha256_file

TRAINING_STATE = ("optimizer", "optimizer_states", "optimizers", "lr_schedulers", "lr_scheduler", "scheduler", "callbacks", "loops",
                  "epoch", "global_step", "hyper_parameters", "hparams", "pytorch-lightning_version", "ema", "ema_state_dict", "model_ema")


def read_checkpoint(path: Path) -> tuple[dict, list[str]]:
    """name -> tensor of a checkpoint file, training state stripped; and what was stripped."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: no such file")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as e:  # safetensors raises several types for a damaged file
            raise HarnessError(f"{path.name}: not a readable safetensors file ({type(e).__name__})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, ModuleNotFoundError, TypeError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise HarnessError(f"{path.name}: refused: not a plain tensor checkpoint (torch.load weights_only=True: {first}); nothing in it was run") from None
        except (EOFError, OSError) as e:
            raise HarnessError(f"{path.name}: not a readable checkpoint ({type(e).__name__})") from None
    stripped: list[str] = []
    if isinstance(obj, dict):
        for k in ("state_dict", "model_state_dict", "model", "module", "unet"):  # Lightning / trainer wrappers
            if isinstance(obj.get(k), dict) and any(isinstance(v, torch.Tensor) for v in obj[k].values()):
                stripped += [f"{x} (training state)" for x in obj if x != k]
                obj = obj[k]
                break
    if not isinstance(obj, dict):
        raise HarnessError(f"{path.name}: holds a {type(obj).__name__}, not a name -> tensor mapping")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            stripped.append(f"{k} (not a tensor)")
        elif k.split(".")[0] in TRAINING_STATE or k.startswith("model_ema."):
            stripped.append(k)
        else:
            _stored_size(path, k, v)
            out[k] = v
    if not out:
        raise HarnessError(f"{path.name}: holds no tensors")
    return out, stripped


def _stored_size(path: Path, name: str, t) -> None:
    """A tensor no larger than the bytes stored for it: a view with a zero or overlapping stride
    (``torch.empty(1).expand(10**12)``) would need its whole logical size when made contiguous
    and written; refused in one line instead of exhausting memory."""
    try:
        logical = t.numel() * t.element_size()
        stored = t.untyped_storage().nbytes()
    except Exception:  # noqa: BLE001 (a tensor whose storage cannot be read is not a plain stored tensor)
        raise HarnessError(f"{path.name}: tensor {str(name)[:80]!r} has no readable storage") from None
    if logical > stored:
        raise HarnessError(f"{path.name}: tensor {str(name)[:80]!r} is a view of {logical} bytes over {stored} stored "
                           "(a zero or overlapping stride); refused")


def _made_by_convert(out: Path) -> bool:
    """``out`` is a file this command wrote earlier (its safetensors metadata says so)."""
    try:
        from safetensors import safe_open

        with safe_open(str(out), framework="numpy") as f:
            return "converted_from" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 (not a readable safetensors file: not ours)
        return False


def layout_of(tensors: dict) -> str:
    """``compvis`` (original LDM names) or ``diffusers``, as the default model family reads the
    names (plain scorer weights, converted without a base)."""
    from harness.families import default

    return default().layout(tensors)


def changed_tensors(new: dict, base_file: Path, kind: str, atol: float = 0.0) -> tuple[dict, int]:
    """The tensors of ``new`` that differ from the base's (names and shapes must fit it). A
    ``position_ids`` index buffer that the base's file does not hold (CLIP text models saved by
    older transformers carry one; it is no weight) is left out."""
    import torch
    from safetensors.torch import load_file

    from harness.families.sd1 import _align_key

    own = load_file(str(base_file))
    what = kind.replace("_", " ")
    keep, same = {}, 0
    for k, v in new.items():
        key = _align_key(k, own)
        if key not in own and k.endswith("position_ids") and not torch.is_floating_point(v):
            continue
        if key not in own:
            raise HarnessError(f"convert: tensor {k!r} is not in the base's {what} (a different architecture, or the wrong --kind)")
        b = own[key]
        if tuple(v.shape) != tuple(b.shape):
            raise HarnessError(f"convert: tensor {k!r} has shape {tuple(v.shape)}, the base's {what} has {tuple(b.shape)} "
                               "(a checkpoint of another architecture than --base?)")
        if not torch.is_floating_point(v):
            continue
        bb = b.to(v.dtype)
        if torch.equal(v, bb) or (atol > 0 and torch.allclose(v.float(), bb.float(), rtol=0, atol=atol)):
            same += 1
        else:
            keep[key] = v.contiguous()
    return keep, same


def base_folder(base: str, root: Path) -> Path:
    """``toy`` / ``toy-xl``, a diffusers folder, or ``hub:REPO@COMMIT`` (from the Hugging Face cache)."""
    import re

    from harness.families.base import TOY_PIPELINES

    if base in TOY_PIPELINES:
        return TOY_PIPELINES[base]
    m = re.fullmatch(r"hub:(\w[\w.-]*/\w[\w.-]*)@([0-9a-f]{40})", base)
    if m:
        from harness.store.hub import pipeline_snapshot

        return pipeline_snapshot(m.group(1), m.group(2), what="--base")
    p = Path(base)
    if not (p / "model_index.json").is_file():
        raise HarnessError(f"--base {base}: not a diffusers pipeline folder (model_index.json missing), "
                           f"{' or '.join(repr(t) for t in TOY_PIPELINES)} or hub:REPO@COMMIT")
    from harness.store.safefs import check_configs

    check_configs(p, f"--base {base}")  # configs that parse, within a suite's bounds: one line, not a traceback
    return p


def convert(src: str | Path, out: str | Path, base: str = "toy", kind: str = "auto", atol: float = 0.0, root: Path = Path(".")) -> dict:
    from safetensors.torch import save_file

    from harness.store.fsutil import atomic_write

    out = Path(out)
    if out.suffix != ".safetensors":
        raise HarnessError(f"--out {out}: must end in .safetensors")
    if out.is_symlink() or (out.exists() and not (out.is_file() and _made_by_convert(out))):
        raise HarnessError(f"--out {out}: exists and was not written by `unlearn convert`; give a new file name")
    tensors, stripped = read_checkpoint(Path(src))
    fam = None
    if kind == "plain":  # scorer weights (UnlearnCanvas' ViT .pth, torchvision .pth): every tensor, names kept
        keep, same = {k: v.contiguous() for k, v in tensors.items()}, 0
    else:
        from harness.families import family_of

        base_dir = base_folder(base, root)
        fam = family_of(base_dir, "--base")
        kind = fam.guess_kind(tensors) if kind == "auto" else kind
        component_file = base_dir / fam.component_file(kind)
        try:
            named = fam.to_diffusers(tensors, kind, base_dir)
        except HarnessError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:  # diffusers' conversion on a config or layout it does not expect
            raise HarnessError(f"{Path(src).name}: cannot be converted with the base's {kind.replace('_', ' ')} config "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e).strip() else 'no detail'})") from None
        if not named:
            raise HarnessError(f"{Path(src).name}: holds no {kind.replace('_', ' ')} tensors")
        keep, same = changed_tensors(named, component_file, kind, atol)
    if not keep:
        raise HarnessError(f"{Path(src).name}: every {kind.replace('_', ' ')} tensor equals the base's: nothing was unlearned")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / "x.safetensors"
        save_file(keep, str(tmp), metadata={"converted_from": Path(src).name, "kind": kind})
        atomic_write(out, tmp.read_bytes())
    return {"out": str(out), "sha256": sha256_file(out), "kind": kind, "changed": len(keep), "unchanged": same,
            "stripped": len(stripped), "layout": fam.layout(tensors) if fam is not None else layout_of(tensors)}
