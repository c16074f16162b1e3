"""Loading the base pipeline and applying a submission's checkpoint to it, and the Stable
Diffusion 1.x model family (``SD1Family``, the ``sd1`` of ``harness.families``): every line that
knows SD-1.x's parts (its pipeline class, UNet, VAE, CLIP text encoder and tokenizer,
cross-attention projections, schedulers) is here; the rest of the harness asks the family.

Safety rules for weights from strangers: sha256 checked before anything is loaded; pickle
formats refused unless the local run allows them (and then loaded with ``weights_only``);
``trust_remote_code`` never; every path stays inside the repository.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from harness.errors import HarnessError
from harness.store.fetch import fetch
from harness.store.hashing import sha256_file, sha256_tree
from harness.families.base import TOY_PIPELINE as TOY_PIPELINE, base_dir as base_dir  # re-exported: the loading code names them here
from harness.families.guidance import InferenceRecipe
from harness.spec import PICKLE_SUFFIXES, BaseModelSpec, CheckpointSpec, Submission, inside



@dataclass(frozen=True)
class Placement:
    """Where the models run and in which precision (recorded in every result)."""

    device: str
    dtype: str
    compile: bool = False  # torch.compile the UNet (--unlearn-compile)

    @classmethod
    def choose(cls, device: str = "auto", dtype: str = "auto", compile: bool = False, local: bool = True) -> "Placement":
        """``local=False`` resolves for other machines (Ray workers): CUDA is not checked here."""
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if local and device.startswith("cuda") and not torch.cuda.is_available():
            raise HarnessError(f"--unlearn-device {device}: CUDA is not available on this machine")
        if dtype == "auto":
            dtype = "float16" if device.startswith("cuda") else "float32"
        if device == "cpu" and dtype == "float16":
            dtype = "float32"  # fp16 convolutions are not implemented on CPU
        return cls(device, dtype, compile)

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def quiet_loading() -> None:
    """No per-file loading bars or info chatter: the harness shows its own progress."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.disable_progress_bar()
        log.set_verbosity_error()


def dtype_kwargs(placement: "Placement") -> dict:
    """``dtype=`` on diffusers that renamed it, ``torch_dtype=`` on older ones."""
    from diffusers.utils import deprecation_utils

    key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    return {key: placement.torch_dtype}


def base_fingerprint(spec: BaseModelSpec, root: Path) -> str:
    """What identifies the base model's weights: a folder hash, or hub id @ commit."""
    d = base_dir(spec, root)
    if d is None:
        return f"hub:{spec.hub_id}@{spec.revision}"
    if not (d / "model_index.json").is_file():
        raise HarnessError(f"base_model: {d} is not a diffusers pipeline folder (model_index.json missing)")
    from harness.store.safefs import check_model_folder

    check_model_folder(d, "base_model", allow_pickle=True)  # links / FIFOs / foreign libraries; loaded with use_safetensors
    h = sha256_tree(d)
    if spec.sha256 and spec.sha256 != h:
        raise HarnessError(f"base_model.sha256: folder {spec.local_dir} has sha256 {h}, expected {spec.sha256}")
    return f"sha256:{h}"


def base_folder(spec: BaseModelSpec, root: Path) -> Path:
    """The base's local folder: its own, or the Hugging Face cache's snapshot of hub id @ commit
    (fetched when online), verified (harness/store/hub.py)."""
    d = base_dir(spec, root)
    if d is None:
        from harness.store.hub import pipeline_snapshot

        d = pipeline_snapshot(spec.hub_id, spec.revision, what="base_model")
    return d


def load_base(spec: BaseModelSpec, root: Path, placement: Placement):
    """The base pipeline, on the chosen device and dtype, with progress bars off, loaded by the
    model family that recognises its folder (``harness.families``)."""
    from harness.families import family_of

    d = base_folder(spec, root)
    return family_of(d).load(d, placement)


def accelerate(pipe, placement: Placement):
    """The fast path, in place: SDPA attention (``AttnProcessor2_0``) wherever the plain
    processor is set, channels_last UNet and VAE on CUDA, and ``torch.compile`` of the UNet
    when asked (``Module.compile``: in place, so the state dict keeps its keys and a checkpoint
    can still be applied). On CPU without compile this changes nothing, so images stay
    bitwise identical."""
    import torch

    try:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    except ImportError:  # pragma: no cover - very old or very new diffusers
        AttnProcessor = AttnProcessor2_0 = None
    if AttnProcessor is not None and hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        for module in (pipe.unet, pipe.vae):
            procs = getattr(module, "attn_processors", {})
            if any(type(p) is AttnProcessor for p in procs.values()):
                module.set_attn_processor({k: AttnProcessor2_0() if type(p) is AttnProcessor else p for k, p in procs.items()})
    if placement.device.startswith("cuda"):
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if placement.compile and getattr(pipe.unet, "_compiled_call_impl", None) is None:
        if not hasattr(pipe.unet, "compile"):
            raise HarnessError("--unlearn-compile needs torch >= 2.2 (nn.Module.compile)")
        pipe.unet.compile()
    return pipe


def describe_pipeline(pipe) -> dict:
    """What the fast path left on a pipeline (or an (original, unlearned) pair): the UNet's
    attention processor classes, channels_last, compiled."""
    import torch

    attn, channels_last, compiled = set(), False, False
    for p in pipe if isinstance(pipe, tuple) else (pipe,):
        attn |= {type(a).__name__ for a in getattr(p.unet, "attn_processors", {}).values()}
        w = p.unet.conv_in.weight
        channels_last |= w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        compiled |= getattr(p.unet, "_compiled_call_impl", None) is not None
    return {"attention": sorted(attn), "channels_last": bool(channels_last), "compiled": bool(compiled)}


def checkpoint_file(spec: CheckpointSpec, root: Path, cache_dir: Path, allow_pickle: bool = False) -> Path:
    """The checkpoint's local path, its sha256 verified (URLs are fetched into the cache)."""
    return verified_checkpoint(spec, root, cache_dir, allow_pickle)[0]


def verified_checkpoint(spec: CheckpointSpec, root: Path, cache_dir: Path, allow_pickle: bool = False) -> tuple[Path, tuple | None]:
    """``checkpoint_file`` and the checkpoint's ``file_state`` taken before its hash (None when
    it changed while being hashed): while the state is the same, the verified bytes are there."""
    if spec.url:
        path = fetch(spec.url, spec.sha256, cache_dir, "checkpoint.url")
    else:
        path = inside(root, spec.path, "checkpoint.path")
    if not path.exists():
        raise HarnessError(f"checkpoint.path: {spec.path}: no such file or folder")
    if path.is_dir():  # symlinks / FIFOs inside refused, pickles refused, model_index libraries checked
        from harness.store.safefs import check_model_folder

        check_model_folder(path, "checkpoint", allow_pickle)
    else:
        from harness.store.safefs import regular_file

        regular_file(path, "checkpoint.path")
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise HarnessError(
            f"checkpoint: {path.name} is a pickle format ({path.suffix}), which can run code when loaded; "
            "convert it to safetensors, or allow it for a local run you trust (pytest --unlearn-allow-pickle, unlearn check --allow-pickle)"
        )
    before = file_state(path)
    got = sha256_tree(path) if path.is_dir() else sha256_file(path)
    if got != spec.sha256:
        raise HarnessError(f"checkpoint.sha256: {path.name} has sha256 {got}, expected {spec.sha256}")
    return path, (before if file_state(path) == before else None)


def _read_tensors(path: Path, allow_pickle: bool) -> dict:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)  # allowed only by the caller
        return obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: Exception) -> HarnessError:
    return HarnessError(f"checkpoint: {path.name} is not a readable safetensors file ({type(e).__name__}: {e})")


def tensor_shapes(path: Path, allow_pickle: bool = False) -> dict[str, tuple[tuple[int, ...], bool]]:
    """name -> (shape, is floating point) of a checkpoint file, from the safetensors header
    alone (no tensor data is read); pickle files only where the caller allows them."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        import torch

        return {k: (tuple(v.shape), torch.is_floating_point(v)) for k, v in _read_tensors(path, allow_pickle).items()}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype().startswith(("F", "BF"))) for k in f.keys()}
    except Exception as e:  # as above
        raise _unreadable(path, e) from None


def _align_key(key: str, own: dict) -> str:
    """transformers 5 names CLIPTextModel's tensors without the ``text_model.`` prefix that its
    saved files (and older versions) use; accept either spelling."""
    if key in own:
        return key
    prefix = "text_model."
    if key.startswith(prefix) and key[len(prefix):] in own:
        return key[len(prefix):]
    if prefix + key in own:
        return prefix + key
    return key


def check_tensors(found: dict[str, tuple[tuple[int, ...], bool]], own: dict[str, tuple[int, ...]], what: str) -> None:
    """A (possibly partial) checkpoint fits a module: every tensor name exists there (either
    ``text_model.`` spelling), with the same shape, floating point. ``found``: name -> (shape,
    is float); ``own``: the module's name -> shape."""
    found = {_align_key(k, own): v for k, v in found.items()}
    unknown = [k for k in found if k not in own]
    if unknown:
        raise HarnessError(f"checkpoint: {len(unknown)} tensor(s) are not in the {what}, e.g. {unknown[0]!r}")
    for k, (shape, is_float) in found.items():
        if tuple(shape) != tuple(own[k]):
            raise HarnessError(f"checkpoint: tensor {k!r} has shape {tuple(shape)}, the {what} expects {tuple(own[k])}")
        if not is_float:
            raise HarnessError(f"checkpoint: tensor {k!r} is not floating point")


def _replace_tensors(module, tensors: dict, what: str) -> None:
    """Load a (possibly partial) state dict; every key must exist with the same shape."""
    import torch

    own = module.state_dict()
    tensors = {_align_key(k, own): v for k, v in tensors.items()}
    check_tensors({k: (tuple(v.shape), torch.is_floating_point(v)) for k, v in tensors.items()}, {k: tuple(v.shape) for k, v in own.items()}, what)
    p = next(module.parameters())
    with torch.no_grad():
        module.load_state_dict({k: v.to(device=p.device, dtype=own[k].dtype) for k, v in tensors.items()}, strict=False)


def apply_checkpoint(pipe, spec: CheckpointSpec, path: Path, placement: Placement, allow_pickle: bool = False):
    """Turn the base pipeline into the unlearned one (in place where possible), as the
    pipeline's model family applies a checkpoint of ``spec.kind``."""
    from harness.families import family_of_pipeline

    return family_of_pipeline(pipe).apply_checkpoint(pipe, spec, path, placement, allow_pickle)


def model_fingerprints(sub: Submission, root: Path, inference: InferenceRecipe | None = None) -> tuple[str, str]:
    """(base, unlearned) identities; they key the image cache. A whole-pipeline checkpoint is
    identified by its folder hash alone, like a local base, so identical weights share images."""
    base = base_fingerprint(sub.base_model, root)
    return base, unlearned_fingerprint(sub, base, inference)


def unlearned_fingerprint(sub: Submission, base: str, inference: InferenceRecipe | None = None) -> str:
    """The unlearned model's identity, given the base's (``model_fingerprints``): the checkpoint
    on the base, then an inference-time method's identity (its parameters, targets, code)."""
    c = sub.checkpoint
    fp = base if c is None else f"sha256:{c.sha256}" if c.kind == "pipeline" else f"{base}+{c.kind}:{c.sha256}"
    if sub.method.kind == "inference":
        if inference is None:
            raise HarnessError(f"method {sub.method.name}: an inference-time method's fingerprint needs its resolved recipe")
        fp += "+" + inference.identity
    return fp


@dataclass(frozen=True)
class PipelineRecipe:
    """The one description of a pipeline to load, here or in another process (a Ray worker):
    small, picklable, comparable. ``which``: ``base``, ``unlearned``, or ``pair`` (base,
    unlearned) for the partial-diffusion attack. The checkpoint's sha256 is checked again where
    it loads. ``load`` makes it; ``Pipelines`` keeps what one process loaded."""

    root: str
    base: BaseModelSpec
    placement: Placement
    which: str = "base"
    checkpoint: CheckpointSpec | None = None
    cache_dir: str | None = None
    allow_pickle: bool = False
    inference: InferenceRecipe | None = None  # an inference-time method installed on the unlearned model

    def of(self, which: str) -> "PipelineRecipe":
        """The same models, another of them (``base``, ``unlearned``, ``pair``)."""
        return replace(self, which=which)

    def load(self, base=None, verified: Path | None = None):
        """The pipeline (a (base, unlearned) tuple for ``pair``). ``base``: a base pipeline of
        this recipe already in memory, taken over (changed in place) to make the unlearned one;
        ``verified``: the checkpoint's path, its sha256 already checked in this process."""
        root = Path(self.root)
        fresh = lambda: load_base(self.base, root, self.placement)  # noqa: E731
        if self.which == "base":
            return base if base is not None else fresh()
        if self.which not in ("unlearned", "pair"):
            raise HarnessError(f"pipeline recipe: unknown model {self.which!r}")
        if self.checkpoint is None and self.inference is None:
            raise HarnessError(f"pipeline recipe {self.which!r} needs a checkpoint or an inference-time method")
        unl = base if base is not None else fresh()
        if self.checkpoint is not None:
            path = verified or checkpoint_file(self.checkpoint, root, Path(self.cache_dir or root / ".unlearn-cache"), self.allow_pickle)
            unl = apply_checkpoint(unl, self.checkpoint, path, self.placement, self.allow_pickle)
        if self.inference is not None:
            from harness.families import family_of_pipeline

            self.inference.install(unl, family_of_pipeline(unl))
        return (fresh(), unl) if self.which == "pair" else unl


def file_state(path: Path) -> tuple | None:
    """(name, inode, size, mtime_ns, ctime_ns) of a file, or of every file below a folder; None
    when unreadable. Taken when a checkpoint is verified (``ResolvedSubmission.checkpoint_state``):
    any write since changes it (ctime cannot be set back)."""
    try:
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        return tuple((str(f), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for f in files for st in [f.stat()])
    except OSError:
        return None


class Pipelines:
    """The pipelines one process loaded from recipes, each loaded on first use (a warm re-run
    loads none): the unlearned model is made from the base already in memory (which it takes
    over, so one base is in memory at a time), and ``pair`` reuses both. ``checkpoint``: the
    checkpoint's path, already verified (``checkpoint_file``), and ``seen`` its ``file_state``
    then: it is not hashed again while unchanged."""

    def __init__(self, checkpoint: Path | None = None, seen: tuple | None = None):
        self.checkpoint = checkpoint
        self._seen = seen  # file_state(checkpoint) when its sha256 was verified
        self._loaded: list[tuple[PipelineRecipe, object]] = []

    def _verified(self) -> Path | None:
        """The verified checkpoint path while its files are as they were when verified (``seen``:
        inode, size, mtime, ctime of each); None without that state or after a change, so the
        recipe hashes it again before loading."""
        if self.checkpoint is None or self._seen is None or file_state(self.checkpoint) != self._seen:
            return None
        return self.checkpoint

    def _get(self, recipe: PipelineRecipe):
        return next((p for r, p in self._loaded if r == recipe), None)

    def _pop(self, recipe: PipelineRecipe):
        for i, (r, p) in enumerate(self._loaded):
            if r == recipe:
                del self._loaded[i]
                return p
        return None

    def load(self, recipe: PipelineRecipe):
        if recipe.which == "pair":  # the unlearned first: it may take over the base in memory
            unl = self.load(recipe.of("unlearned"))
            return self.load(recipe.of("base")), unl
        got = self._get(recipe)
        if got is None:
            got = recipe.load(self._pop(recipe.of("base")) if recipe.which == "unlearned" else None, self._verified())
            self._loaded.append((recipe, got))
        return got


# ----------------------------------------------------------------------------- the SD-1.x family
LDM_UNET = "model.diffusion_model."  # CompVis / LDM checkpoint names (ESD, UnlearnCanvas)
LDM_TEXT = ("cond_stage_model.transformer.", "cond_stage_model.model.")
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "ddpm": "DDPMScheduler",
}


class SD1Family:
    """Stable Diffusion 1.x (``StableDiffusionPipeline``: a CLIP text encoder, a UNet with
    cross-attention, an AutoencoderKL); the toy world is an instance. Implements
    ``harness.families.base.ModelFamily``."""

    name = "sd1"
    title = "Stable Diffusion 1.x"
    pipeline_class = "StableDiffusionPipeline"
    features = frozenset({"unet", "cross_attention", "text_encoder", "token_embeddings", "vae", "partial_diffusion"})
    components: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    checkpoint_kinds: tuple[str, ...] = ("unet", "text_encoder")
    _configs = {"tokenizer": "tokenizer_config.json", "scheduler": "scheduler_config.json"}
    _component_files = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors"}
    _other_families: tuple[str, ...] = ("text_encoder_2", "transformer", "prior", "decoder")  # parts SD-1.x pipelines never name

    def __repr__(self) -> str:
        return f"<model family {self.name}>"

    # -- folders and checkpoints
    def recognises(self, index: dict) -> bool:
        """Its pipeline class, or (a re-saved folder of another SD-1.x pipeline class) every
        component of one and none of a larger family's."""
        if index.get("_class_name") == self.pipeline_class:
            return True
        return all(p in index for p in self.components) and not any(index.get(p) not in (None, [None, None]) for p in self._other_families)

    def config_file(self, part: str) -> str:
        return self._configs.get(part, "config.json")

    def weight_parts(self) -> tuple[str, ...]:
        return ("unet", "vae", "text_encoder")

    def native_size(self, folder: Path, what: str) -> int:
        """The UNet's sample size times the VAE's downsampling (``safefs.native_px``), from the configs."""
        from harness.store.safefs import _config, native_px

        unet, vae = _config(folder, "unet/config.json", what), _config(folder, "vae/config.json", what)
        if unet is None or vae is None:
            raise HarnessError(f"{what}: {folder.name}/{'unet' if unet is None else 'vae'}/config.json is missing")
        return native_px(unet, vae, what)

    def load(self, folder: Path, placement: Placement):
        from diffusers import StableDiffusionPipeline

        quiet_loading()
        kwargs = dict(**dtype_kwargs(placement), safety_checker=None, requires_safety_checker=False, use_safetensors=True)
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        return accelerate(pipe.to(placement.device), placement)

    def load_for_training(self, folder: Path, device: str):
        """The pipeline a method edits (``unlearn erase``): float32, the default attention
        processors, on ``device``."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, use_safetensors=True).to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load_tokenizer(self, folder: Path):
        """The (first) tokenizer of a pipeline folder alone, to check concept words before any model loads."""
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))

    def owns(self, pipe) -> bool:
        """A loaded SD-1.x pipeline: a StableDiffusionPipeline, or an object with its parts (a
        UNet, a text encoder and its tokenizer) and none of a larger family's (a second text
        encoder, a transformer), as the methods' stand-ins in tests are."""
        from diffusers import StableDiffusionPipeline

        if isinstance(pipe, StableDiffusionPipeline):
            return True
        return (all(getattr(pipe, p, None) is not None for p in ("unet", "text_encoder", "tokenizer"))
                and not any(getattr(pipe, p, None) is not None for p in self._other_families))

    def component(self, pipe, kind: str):
        from harness.families.base import check_kind

        check_kind(self, kind)
        return getattr(pipe, kind)

    def apply_checkpoint(self, pipe, spec: CheckpointSpec, path: Path, placement: Placement, allow_pickle: bool = False):
        if spec.kind == "pipeline":
            if not (path / "model_index.json").is_file():
                raise HarnessError(f"checkpoint: kind pipeline needs a diffusers folder; {path.name} has no model_index.json")
            return self.load(path, placement)
        if spec.kind == "lora":
            try:
                pipe.load_lora_weights(str(path.parent if path.is_file() else path), weight_name=path.name if path.is_file() else None)
            except (ImportError, ValueError) as e:
                raise HarnessError(f"checkpoint: could not load LoRA {path.name}: {e}") from None
            return pipe
        module = self.component(pipe, spec.kind)
        _replace_tensors(module, _read_tensors(path, allow_pickle), spec.kind.replace("_", " "))
        return pipe

    # -- converting the field's checkpoint files (``unlearn convert``)
    def component_file(self, kind: str) -> str:
        """The base folder's safetensors file of a checkpoint kind (the tensors a converted file is compared with)."""
        from harness.families.base import check_kind

        check_kind(self, kind, "--kind")
        return self._component_files[kind]

    def guess_kind(self, tensors: dict) -> str:
        """The component a checkpoint's tensors belong to, from their names."""
        if any(k.startswith(LDM_UNET) for k in tensors) or any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.", "conv_in.")) for k in tensors):
            return "unet"
        return "text_encoder"

    def layout(self, tensors: dict) -> str:
        """``compvis`` (the original LDM names) or ``diffusers``."""
        return "compvis" if any(k.startswith((LDM_UNET, *LDM_TEXT)) for k in tensors) else "diffusers"

    def to_diffusers(self, tensors: dict, kind: str, base: Path) -> dict:
        """Diffusers names for one component (CompVis / LDM layout converted by diffusers)."""
        if kind == "unet":
            if any(k.startswith(LDM_UNET) for k in tensors):
                return ldm_unet_to_diffusers(tensors, unet_config(base))  # a partial checkpoint (a method's changed tensors) too
            return {k.removeprefix("unet."): v for k, v in tensors.items() if not k.startswith(("first_stage_model.", "cond_stage_model.", "text_encoder.", "vae."))}
        if any(k.startswith(LDM_TEXT) for k in tensors):
            from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

            return convert_ldm_clip_checkpoint({k: v for k, v in tensors.items() if k.startswith("cond_stage_model.transformer.")})
        return {k.removeprefix("text_encoder."): v for k, v in tensors.items() if not k.startswith(("model.diffusion_model.", "first_stage_model.", "unet.", "vae."))}

    # -- parts methods and attacks use
    def denoiser(self, pipe):
        return pipe.unet

    def vae(self, pipe):
        return pipe.vae

    def text_encoders(self, pipe) -> list[tuple]:
        return [(pipe.tokenizer, pipe.text_encoder)]

    def cross_attention(self, denoiser) -> dict:
        """The cross-attention key/value projections (``attn2.to_k`` / ``attn2.to_v``) by name."""
        import torch

        return {
            name: mod
            for name, mod in denoiser.named_modules()
            if isinstance(mod, torch.nn.Linear) and (name.endswith("attn2.to_k") or name.endswith("attn2.to_v"))
        }

    def scheduler(self, pipe):
        return pipe.scheduler

    def set_scheduler(self, pipe, name: str) -> None:
        import diffusers

        cls = getattr(diffusers, SCHEDULERS[name])
        if type(pipe.scheduler) is not cls:
            pipe.scheduler = cls.from_config(pipe.scheduler.config)

    # -- tensors
    def device_dtype(self, pipe) -> tuple:
        """Where the denoiser runs and its dtype."""
        return pipe.unet.device, pipe.unet.dtype

    def latent_shape(self, pipe, height: int, width: int) -> tuple[int, ...]:
        scale = pipe.vae_scale_factor
        return (pipe.unet.config.in_channels, height // scale, width // scale)

    def initial_latents(self, pipe, seeds: list[int], height: int, width: int):
        import torch

        shape = self.latent_shape(pipe, height, width)
        return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])

    def encode_prompts(self, pipe, prompts: list[str]):
        """Last hidden states of the text encoder, padded to the tokenizer's max length."""
        tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt")
        return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]

    def encode_conditioning(self, pipe, prompts: list[str]):
        """The hidden states are all an SD-1.x UNet is conditioned on."""
        return self.encode_prompts(pipe, prompts)

    def unconditional(self, pipe, n: int):
        """The encoded empty prompt (what the pipeline's guidance uses for a negative prompt ``""``)."""
        return self.encode_prompts(pipe, [""] * n)

    def conditioning_settings(self, height: int, width: int) -> dict:
        return {}

    def generate(self, pipe, jobs: list, latents, generators, extra: dict):
        out = pipe(
            prompt=[j.prompt for j in jobs],
            negative_prompt=[j.negative_prompt for j in jobs],
            num_inference_steps=jobs[0].steps,
            guidance_scale=jobs[0].guidance,
            height=jobs[0].height,
            width=jobs[0].width,
            latents=latents,
            generator=generators,
            output_type="np",
            **extra,
        )
        return out.images

    def encode_ids(self, pipe, ids):
        return pipe.text_encoder(ids)[0]

    def encode_guided(self, pipe, prompts: list[str], negatives: list[str], device):
        """cat([unconditional, conditional]) as the pipeline's own classifier-free guidance builds it."""
        import torch

        cond, uncond = pipe.encode_prompt(prompts, device, 1, True, negative_prompt=negatives)
        return torch.cat([uncond, cond])

    def encode_negative(self, pipe, negatives: list[str], device):
        return pipe.encode_prompt(negatives, device, 1, False)[0]

    def conditioning_like(self, one, cond):
        from harness.families.base import repeat_conditioning

        return repeat_conditioning(one, cond.shape[0]).to(device=cond.device, dtype=cond.dtype)

    def sized(self, pipe, cond, height: int, width: int):
        """The conditioning of an image of ``height`` x ``width`` (SD-1.x's does not depend on the size)."""
        return cond

    def token_embeddings(self, text_encoder):
        """The vocabulary's input embedding matrix (V, d)."""
        return _clip_text_model(text_encoder).embeddings.token_embedding.weight

    def encode_embeds(self, text_encoder, inputs_embeds):
        """CLIP text encoder hidden states from token embeddings (B, L, d) instead of ids: the
        position embeddings, causal self-attention and final layer norm of ``CLIPTextModel``."""
        from transformers.masking_utils import create_causal_mask

        tm = _clip_text_model(text_encoder)
        h = tm.embeddings(inputs_embeds=inputs_embeds)
        mask = create_causal_mask(config=tm.config, inputs_embeds=h, attention_mask=None, cache=None)
        return tm.final_layer_norm(tm.encoder(inputs_embeds=h, attention_mask=mask, is_causal=True).last_hidden_state)

    def encode_images(self, pipe, images):
        return pipe.vae.encode(images).latent_dist

    def latent_scale(self, pipe) -> float:
        return pipe.vae.config.scaling_factor

    def decode_latents(self, pipe, latents):
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample

    def predict_noise(self, pipe, latents, t, cond):
        from harness.families.base import call_denoiser

        return call_denoiser(pipe.unet, latents, t, cond)

    def denoising_step(self, pipe, sched, latents, t, emb, guidance: float, extra: dict):
        import torch

        from harness.families.base import call_denoiser

        inp = sched.scale_model_input(torch.cat([latents, latents]), t)
        eu, ec = call_denoiser(pipe.unet, inp, t, emb).chunk(2)
        return sched.step(eu + guidance * (ec - eu), t, latents, **extra).prev_sample

    def partial_diffusion(self, pipes, jobs, psi: float):
        import numpy as np
        import torch

        base, unl = pipes
        j0 = jobs[0]
        self.set_scheduler(base, j0.scheduler)
        sched = base.scheduler
        sched.set_timesteps(j0.steps)
        device, dtype = self.device_dtype(base)
        prompts, negs = [j.prompt for j in jobs], [j.negative_prompt for j in jobs]
        with torch.inference_mode():
            emb = {name: self.sized(p, self.encode_guided(p, prompts, negs, device), j0.height, j0.width) for name, p in (("base", base), ("unl", unl))}
            lat = self.initial_latents(base, [j.seed for j in jobs], j0.height, j0.width).to(device=device, dtype=dtype) * sched.init_noise_sigma
            gens = [torch.Generator("cpu").manual_seed(j.seed + 1) for j in jobs]
            switch = int(round(psi * j0.steps))
            extra = {"eta": j0.eta, "generator": gens} if j0.scheduler == "ddim" else {}
            for i, t in enumerate(sched.timesteps):
                pipe, e = (base, emb["base"]) if i < switch else (unl, emb["unl"])
                lat = self.denoising_step(pipe, sched, lat, t, e, j0.guidance, extra)
            img = self.decode_latents(unl, lat)
        raw = (img / 2 + 0.5).permute(0, 2, 3, 1).float().cpu().numpy()
        return raw, np.round(np.clip(np.nan_to_num(raw, nan=0.0), 0, 1) * 255).astype(np.uint8)

    def images_from_conditioning(self, pipe, cond, neg, latents, generators, job, extra: dict):
        dtype = pipe.unet.dtype
        res = pipe(prompt_embeds=cond.to(dtype), negative_prompt_embeds=None if neg is None else neg.to(dtype),
                   num_inference_steps=job.steps, guidance_scale=job.guidance, height=job.height, width=job.width, latents=latents,
                   generator=generators, output_type="np", **extra)
        return res.images


def unet_config(base: Path) -> dict:
    """The base's ``unet/config.json`` (a one-line error when it is not a JSON object)."""

    try:
        config = json.loads((base / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HarnessError(f"--base: unet/config.json of {base.name} is not a readable JSON config ({type(e).__name__})") from None
    if not isinstance(config, dict):
        raise HarnessError(f"--base: unet/config.json of {base.name} is not a JSON object")
    return config


_PAD = "__harness_pad__"  # a placeholder block name (ldm_unet_to_diffusers); never in a result


def ldm_unet_to_diffusers(tensors: dict, config: dict) -> dict:
    """The ``model.diffusion_model.*`` tensors of a checkpoint under diffusers' UNet names, by
    diffusers' ``convert_ldm_unet_checkpoint`` with the base's config, made safe for a checkpoint
    that holds only some of the UNet (the tensors a method changed):

    - that converter numbers blocks by counting the distinct ``input_blocks.N`` / ``middle_block.N``
      / ``output_blocks.N`` present, so a missing block would shift every later one; each missing
      index below the highest present gets a placeholder name, removed afterwards;
    - it reads the ``label_emb`` tensors (SDXL's ``text_time`` embedding, a class embedding) without
      asking whether they are there; they are renamed here, from the same table, when present.

    Every tensor must come out under a diffusers name (the converter passes the same tensor
    objects); one it leaves behind is a one-line error, not an edit silently lost."""
    import re

    import torch
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_ldm_unet_checkpoint

    unet = {k[len(LDM_UNET):]: v for k, v in tensors.items() if k.startswith(LDM_UNET)}
    embed = ("addition_embed_type" if config.get("addition_embed_type") == "text_time"
             else "class_embed_type" if config.get("class_embed_type") in ("timestep", "projection") else None)
    out = {}
    if embed is not None:
        table: dict = DIFFUSERS_TO_LDM_MAPPING["unet"][embed]  # type: ignore[index]  # a dict of dicts of names
        out = {new: unet[old] for new, old in table.items() if old in unet}
    padded = {LDM_UNET + k: v for k, v in unet.items()}
    for part in ("input_blocks", "middle_block", "output_blocks"):
        present = {int(m[1]) for k in unet if (m := re.match(rf"{part}\.(\d+)\.", k))}
        for i in range(max(present, default=-1) + 1):
            if i not in present:
                padded[f"{LDM_UNET}{part}.{i}.{_PAD}"] = torch.empty(0)
    cfg = {k: v for k, v in config.items() if k not in ("addition_embed_type", "class_embed_type")}
    out.update({k: v for k, v in convert_ldm_unet_checkpoint(padded, cfg).items() if _PAD not in k and v is not None})
    placed = {id(v) for v in out.values()}
    left = sorted(k for k, v in unet.items() if id(v) not in placed)
    if left:
        raise HarnessError(f"convert: {len(left)} UNet tensor(s) have no diffusers name under the base's UNet config, e.g. "
                           f"{(LDM_UNET + left[0])[:120]!r} (a checkpoint of another architecture than --base?)")
    return out


def _clip_text_model(text_encoder):
    return getattr(text_encoder, "text_model", text_encoder)


SD1 = SD1Family()
FAMILY = SD1  # what harness.families registers as "sd1"
