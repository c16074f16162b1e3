"""The model-family contract: what the harness, its methods and its attacks need from one
architecture of text-to-image diffusion model (Stable Diffusion 1.x, and whatever else a family
module teaches it).

A family knows how to load a base model folder into a pipeline, whether a folder's
``model_index.json`` is one of its own, which components a submission's checkpoint may replace
and how to apply one, the latent shape and native image size, how prompts become the
denoiser's conditioning, one denoising step and the partial-diffusion trajectory, its
schedulers, the cross-attention projections that editing methods change, and the text encoders
and tokenizers that prompt attacks optimise against. ``features`` names what it offers, so a
method or an attack can say what it requires (``require``).

Nothing here imports torch or diffusers: the contract is cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from harness.errors import HarnessError
from harness.toy.paths import PIPELINE_DIR as TOY_PIPELINE  # noqa: F401 (re-exported) the toy world's base (``base_model: {builtin: toy}``)
from harness.toy.paths import PIPELINES as TOY_PIPELINES  # every toy world's base by builtin name (toy, toy-xl)

# What a family may offer; methods and attacks require a subset.
FEATURES = frozenset({
    "unet",             # a UNet denoiser called as denoiser(x_t, t, encoder_hidden_states=...)
    "transformer",      # a transformer denoiser
    "cross_attention",  # to_k / to_v projections of the text conditioning (cross_attention)
    "text_encoder",     # one or more text encoders with their tokenizers (text_encoders)
    "token_embeddings", # a CLIP-like encoder that takes token embeddings instead of ids (attacks)
    "vae",              # an image autoencoder (encode_images / decode_latents)
    "partial_diffusion",  # two pipelines of the family can share one trajectory
})


@dataclass(frozen=True)
class Conditioning:
    """What a denoiser is conditioned on for a batch of prompts when the cross-attention's input
    is not all of it: ``hidden`` (N, tokens, dim), the cross-attention's input, and ``extra``,
    named tensors (N, ...) the denoiser also takes (SDXL: ``text_embeds``, the pooled projection
    of its second text encoder, and ``time_ids``, the size / crop micro-conditioning). A family
    whose denoiser reads the hidden states alone (SD-1.x) uses the bare tensor instead; the
    functions below take either."""

    hidden: Any
    extra: dict = field(default_factory=dict)

    def to(self, *args, **kwargs) -> "Conditioning":
        return Conditioning(self.hidden.to(*args, **kwargs), {k: v.to(*args, **kwargs) for k, v in self.extra.items()})

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def __getitem__(self, idx) -> "Conditioning":
        return Conditioning(self.hidden[idx], {k: v[idx] for k, v in self.extra.items()})

    @property
    def shape(self):
        return self.hidden.shape

    @property
    def device(self):
        return self.hidden.device

    @property
    def dtype(self):
        return self.hidden.dtype

    def detach(self) -> "Conditioning":
        return Conditioning(self.hidden.detach(), {k: v.detach() for k, v in self.extra.items()})

    def denoiser_kwargs(self) -> dict:
        """The keyword arguments of a diffusers UNet call."""
        return {"encoder_hidden_states": self.hidden, **({"added_cond_kwargs": dict(self.extra)} if self.extra else {})}


def cat_conditioning(items: list, dim: int = 0):
    """Batches of conditioning (tensors, or ``Conditioning``) joined along the batch dimension."""
    import torch

    if not any(isinstance(c, Conditioning) for c in items):
        return torch.cat(items, dim=dim)
    return Conditioning(torch.cat([c.hidden for c in items]), {k: torch.cat([c.extra[k] for c in items]) for k in items[0].extra})


def stack_conditioning(items: list):
    """One prompt's conditioning each (tensors (L, d), or ``Conditioning`` of one prompt) -> a batch."""
    import torch

    if not any(isinstance(c, Conditioning) for c in items):
        return torch.stack(items)
    return Conditioning(torch.stack([c.hidden for c in items]), {k: torch.stack([c.extra[k] for c in items]) for k in items[0].extra})


def repeat_conditioning(cond, n: int):
    """One prompt's conditioning (batch 1) repeated ``n`` times along the batch dimension."""
    if isinstance(cond, Conditioning):
        return Conditioning(cond.hidden.expand(n, *cond.hidden.shape[1:]),
                            {k: v.expand(n, *v.shape[1:]) for k, v in cond.extra.items()})
    return cond.expand(n, *cond.shape[1:])


def hidden_states(cond):
    """The cross-attention's input of a conditioning (the tensor itself for a bare tensor)."""
    return cond.hidden if isinstance(cond, Conditioning) else cond


def call_denoiser(denoiser, latents, t, cond):
    """A diffusers UNet's noise prediction for a conditioning (a bare tensor or ``Conditioning``)."""
    if isinstance(cond, Conditioning):
        return denoiser(latents, t, **cond.denoiser_kwargs()).sample
    return denoiser(latents, t, encoder_hidden_states=cond).sample


@runtime_checkable
class ModelFamily(Protocol):
    """One architecture of text-to-image model. ``pipe`` below is a pipeline this family loaded
    (``load``); tensors are torch tensors."""

    name: str  # the registry's key (``sd1``)
    title: str  # for messages (``Stable Diffusion 1.x``)
    features: frozenset[str]
    components: tuple[str, ...]  # the parts a base folder's model_index.json names
    checkpoint_kinds: tuple[str, ...]  # the components a checkpoint's tensors may replace

    # -- folders and checkpoints
    def recognises(self, index: dict) -> bool:
        """Whether a parsed ``model_index.json`` describes a pipeline of this family."""

    def config_file(self, part: str) -> str:
        """The config file a component's folder holds (``config.json``, ``tokenizer_config.json``...)."""

    def weight_parts(self) -> tuple[str, ...]:
        """The components whose folders must hold safetensors weights."""

    def native_size(self, folder: Path, what: str) -> int:
        """The native image size, read from the folder's configs (no weights loaded)."""

    def load(self, folder: Path, placement) -> Any:
        """The pipeline of a local folder (a base, or a whole-pipeline checkpoint), on the
        placement's device and dtype, progress bars off."""

    def load_for_training(self, folder: Path, device: str) -> Any:
        """The pipeline a method edits (``unlearn erase``): float32, default attention, on ``device``."""

    def load_tokenizer(self, folder: Path) -> Any:
        """The (first) tokenizer of a pipeline folder, without loading any model."""

    def owns(self, pipe) -> bool:
        """Whether a loaded pipeline is one of this family's."""

    def component(self, pipe, kind: str) -> Any:
        """The module a checkpoint of ``kind`` (one of ``checkpoint_kinds``) replaces tensors of."""

    def apply_checkpoint(self, pipe, spec, path: Path, placement, allow_pickle: bool = False) -> Any:
        """The unlearned pipeline: ``spec.kind`` ``pipeline`` (a folder), a component's tensors, or a LoRA."""

    # -- converting the field's checkpoint files (``unlearn convert``)
    def component_file(self, kind: str) -> str:
        """The base folder's weights file of a checkpoint kind, relative to the folder."""

    def guess_kind(self, tensors: dict) -> str:
        """The checkpoint kind a file's tensors belong to, from their names."""

    def layout(self, tensors: dict) -> str:
        """The naming layout of a checkpoint file (e.g. ``compvis`` or ``diffusers``)."""

    def to_diffusers(self, tensors: dict, kind: str, base: Path) -> dict:
        """The tensors of one component under the pipeline's own (diffusers) names."""

    # -- parts methods and attacks use
    def denoiser(self, pipe) -> Any:
        """The noise-predicting network (UNet or transformer)."""

    def vae(self, pipe) -> Any:
        """The image autoencoder."""

    def text_encoders(self, pipe) -> list[tuple[Any, Any]]:
        """(tokenizer, text encoder) pairs, the first being the one prompt attacks optimise against."""

    def cross_attention(self, denoiser) -> dict[str, Any]:
        """The cross-attention key / value projections of a denoiser, by module name."""

    def scheduler(self, pipe) -> Any:
        """The pipeline's current scheduler."""

    def set_scheduler(self, pipe, name: str) -> None:
        """Switch to a scheduler by the suite's name (``ddim``, ``pndm``, ...), same config."""

    # -- tensors
    def device_dtype(self, pipe) -> tuple:
        """(device, dtype) the denoiser runs on."""

    def latent_shape(self, pipe, height: int, width: int) -> tuple[int, ...]:
        """The shape of one image's latents (no batch dimension)."""

    def initial_latents(self, pipe, seeds: list[int], height: int, width: int) -> Any:
        """One CPU generator per image: identical noise whatever the batch, device or model."""

    def encode_prompts(self, pipe, prompts: list[str]) -> Any:
        """The cross-attention's input for prompts, padded to the tokenizer's length: (N, tokens, dim)."""

    def encode_conditioning(self, pipe, prompts: list[str]) -> Any:
        """Everything the denoiser is conditioned on for prompts: the ``encode_prompts`` tensor
        where that is all (SD-1.x), else a ``Conditioning`` (SDXL: + pooled text, micro-conditioning)."""

    def unconditional(self, pipe, n: int) -> Any:
        """The conditioning classifier-free guidance uses for an empty negative prompt, ``n`` times
        (SD-1.x: the encoded ``""``; SDXL with ``force_zeros_for_empty_prompt``: zeros)."""

    def generate(self, pipe, jobs: list, latents, generators, extra: dict) -> Any:
        """Float images (N, H, W, 3) in [0, 1] of jobs sharing settings, from the given initial
        latents, by the pipeline's own call (``extra``: scheduler step arguments such as ``eta``)."""

    def conditioning_settings(self, height: int, width: int) -> dict:
        """Settings beyond the job's that condition generation (SDXL's micro-conditioning), recorded
        with every result; empty when there are none."""

    def conditioning_like(self, one, cond) -> Any:
        """A prompt's conditioning ``one`` (batch 1) for every image of ``cond``, on its device and
        dtype, with ``cond``'s image-specific conditioning (SDXL: the size ids): an inference-time
        method's replacement branch (harness.families.guidance)."""

    def encode_ids(self, pipe, ids) -> Any:
        """The conditioning of token-id prompts (N, tokens)."""

    def encode_negative(self, pipe, negatives: list[str], device) -> Any:
        """The conditioning of negative prompts, as the pipeline's guidance uses it."""

    def token_embeddings(self, text_encoder) -> Any:
        """The vocabulary's input embedding matrix (V, d) of a text encoder."""

    def encode_embeds(self, text_encoder, inputs_embeds) -> Any:
        """The text encoder's output from token embeddings (B, L, d) instead of ids."""

    def encode_images(self, pipe, images) -> Any:
        """The latent distribution of images in [-1, 1] (N, 3, H, W), unscaled."""

    def latent_scale(self, pipe) -> float:
        """The factor between the autoencoder's latents and the denoiser's."""

    def decode_latents(self, pipe, latents) -> Any:
        """Images in [-1, 1] (N, 3, H, W) of the denoiser's latents."""

    def predict_noise(self, pipe, latents, t, cond) -> Any:
        """One call of the denoiser: its prediction for ``latents`` at timestep ``t``."""

    def denoising_step(self, pipe, sched, latents, t, emb, guidance: float, extra: dict) -> Any:
        """One classifier-free-guided step: ``emb`` = cat([unconditional, conditional])."""

    def partial_diffusion(self, pipes, jobs, psi: float) -> tuple[Any, Any]:
        """Images of (base, unlearned) sharing one trajectory, the base running the first
        round(psi * steps) steps: (float images in [0, 1], uint8 images)."""

    def images_from_conditioning(self, pipe, cond, neg, latents, generators, job, extra: dict) -> Any:
        """Float images (N, H, W, 3) of given conditioning with the job's settings."""


def check_kind(family: ModelFamily, kind: str, field: str = "checkpoint.kind") -> None:
    """A one-line error when a checkpoint replaces a component that ``family`` does not have."""
    if kind not in ("pipeline", "lora") and kind not in family.checkpoint_kinds:
        raise HarnessError(f"{field}: {kind} is not a component of a {getattr(family, 'title', family.name)} model "
                           f"(its kinds: pipeline, lora, {', '.join(family.checkpoint_kinds)})")


def require(family: ModelFamily, needs, who: str) -> None:
    """A one-line error when ``family`` lacks a feature that ``who`` (a method or attack) needs."""
    missing = sorted(set(needs) - set(family.features))
    if missing:
        raise HarnessError(f"{who} needs {', '.join(missing)}, which the {family.name} model family does not offer "
                           f"(it offers {', '.join(sorted(family.features))})")


def base_dir(spec, root: Path) -> Path | None:
    """The folder of a submission's base model (``spec``: its ``BaseModelSpec``), inside the
    repository: the toy pipeline, or ``local_dir``; None for a hub base (its snapshot is located
    by ``harness.store.hub``)."""
    from harness.store.safefs import inside

    if spec.builtin:
        return TOY_PIPELINES[spec.builtin]
    if spec.local_dir:
        return inside(root, spec.local_dir, "base_model.local_dir")
    return None
