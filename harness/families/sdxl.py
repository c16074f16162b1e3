"""The Stable Diffusion XL model family (``sdxl`` of ``harness.families``): every line that knows
SDXL's parts is here; loading, checkpoint checks and the rest of the harness are shared with
SD-1.x (``harness.families.sd1``) and ask the family.

What differs from SD-1.x (Podell et al., 2023, "SDXL"):

    prompt_embeds = concat(h1[-2], h2[-2])          (N, 77, 768 + 1280 = 2048)
    text_embeds   = proj(pool(h2[-1]))              (N, 1280), the second encoder's projected pooled output
    time_ids      = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)
    eps = UNet(x_t, t, prompt_embeds, added_cond_kwargs={text_embeds, time_ids})

``h1`` / ``h2`` are the hidden states of the two CLIP text encoders (``text_encoder``,
``text_encoder_2``; ``[-2]`` the penultimate layer). An empty negative prompt is all zeros when
the pipeline's ``force_zeros_for_empty_prompt`` is set (the base model's is): the harness
passes the pipeline's default (no negative prompt) for a job whose negative prompt is ``""``, so
generation is what ``pipe(prompt)`` gives. Micro-conditioning is the job's size, uncropped
(``conditioning_settings``), recorded with every result.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError
from harness.families.base import Conditioning
from harness.families.sd1 import LDM_UNET, SD1Family, accelerate, dtype_kwargs, ldm_unet_to_diffusers, quiet_loading, unet_config

# SDXL single-file / CompVis-style (generative-models) checkpoint names
SGM_TEXT = "conditioner.embedders.0.transformer."  # the first text encoder (HF CLIP layout)
SGM_TEXT_2 = "conditioner.embedders.1.model."  # the second (OpenCLIP layout)
# names of a single file that belong to no diffusers component a checkpoint kind names
FOREIGN = (LDM_UNET, "conditioner.", "first_stage_model.", "cond_stage_model.", "denoiser.", "model_ema.")


class SDXLFamily(SD1Family):
    """Stable Diffusion XL (``StableDiffusionXLPipeline``: two CLIP text encoders, the second with a
    projection; a UNet with ``text_time`` addition embeddings; an AutoencoderKL); the toy-xl world
    is an instance. Implements ``harness.families.base.ModelFamily``."""

    name = "sdxl"
    title = "Stable Diffusion XL"
    pipeline_class = "StableDiffusionXLPipeline"
    features = frozenset({"unet", "cross_attention", "text_encoder", "token_embeddings", "vae", "partial_diffusion"})
    components = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    checkpoint_kinds = ("unet", "text_encoder", "text_encoder_2")
    _configs = {"tokenizer": "tokenizer_config.json", "tokenizer_2": "tokenizer_config.json", "scheduler": "scheduler_config.json"}
    _component_files = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors",
                        "text_encoder_2": "text_encoder_2/model.safetensors"}
    _other_families = ("transformer", "prior", "decoder")  # parts SDXL pipelines never name

    # -- folders and checkpoints
    def recognises(self, index: dict) -> bool:
        """Its pipeline class, or (a re-saved folder of another SDXL text-to-image class) every
        component of one, a second text encoder included, and no transformer."""
        if index.get("_class_name") == self.pipeline_class:
            return True
        present = lambda p: index.get(p) not in (None, [None, None])  # noqa: E731
        return all(present(p) for p in self.components) and not any(present(p) for p in self._other_families)

    def weight_parts(self) -> tuple[str, ...]:
        return ("unet", "vae", "text_encoder", "text_encoder_2")

    def _pipeline_class(self):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    def load(self, folder: Path, placement):
        quiet_loading()
        pipe = self._pipeline_class().from_pretrained(str(folder), local_files_only=True, use_safetensors=True, add_watermarker=False,
                                                      **dtype_kwargs(placement))
        pipe.set_progress_bar_config(disable=True)
        return accelerate(pipe.to(placement.device), placement)

    def load_for_training(self, folder: Path, device: str):
        pipe = self._pipeline_class().from_pretrained(str(folder), local_files_only=True, use_safetensors=True, add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    def owns(self, pipe) -> bool:
        """A loaded SDXL pipeline, or an object with its parts (a UNet, two text encoders and
        their tokenizers) and no transformer."""
        if isinstance(pipe, self._pipeline_class()):
            return True
        return (all(getattr(pipe, p, None) is not None for p in ("unet", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"))
                and not any(getattr(pipe, p, None) is not None for p in self._other_families))

    # -- converting the field's checkpoint files (``unlearn convert``)
    def guess_kind(self, tensors: dict) -> str:
        """The component a checkpoint's tensors belong to: the UNet by its LDM or diffusers names,
        the second text encoder by its OpenCLIP prefix or its projection (``text_projection.weight``),
        else the first text encoder. A single file holding every component guesses ``unet``
        (``--kind`` picks another)."""
        if any(k.startswith(LDM_UNET) or k.startswith(("down_blocks.", "up_blocks.", "mid_block.", "conv_in.", "unet.")) for k in tensors):
            return "unet"
        if any(k.startswith(SGM_TEXT_2) or k.startswith("text_encoder_2.") or k == "text_projection.weight" for k in tensors):
            return "text_encoder_2"
        return "text_encoder"

    def layout(self, tensors: dict) -> str:
        """``compvis`` (SDXL's generative-models names) or ``diffusers``."""
        return "compvis" if any(k.startswith((LDM_UNET, SGM_TEXT, SGM_TEXT_2)) for k in tensors) else "diffusers"

    def to_diffusers(self, tensors: dict, kind: str, base: Path) -> dict:
        """Diffusers names for one component of a generative-models checkpoint, a single file of
        every component included (the others' tensors are left out): the UNet from
        ``model.diffusion_model.`` (``ldm_unet_to_diffusers`` with the base's UNet config), the first
        text encoder from ``conditioner.embedders.0.transformer.`` (Hugging Face CLIP names), the
        second from the OpenCLIP names under ``conditioner.embedders.1.model.``. A diffusers-named
        file keeps its names (a ``unet.`` / ``text_encoder.`` / ``text_encoder_2.`` prefix dropped,
        the other components' tensors left out)."""
        if kind == "unet" and any(k.startswith(LDM_UNET) for k in tensors):
            return ldm_unet_to_diffusers(tensors, unet_config(base))
        if kind == "text_encoder" and any(k.startswith(SGM_TEXT) for k in tensors):
            from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

            return convert_ldm_clip_checkpoint({k: v for k, v in tensors.items() if k.startswith(SGM_TEXT)})
        if kind == "text_encoder_2" and any(k.startswith(SGM_TEXT_2) for k in tensors):
            return _open_clip_to_diffusers(tensors, base)
        own = f"{kind}."
        others = tuple(f"{c}." for c in ("unet", "vae", "text_encoder", "text_encoder_2") if c != kind)
        return {k.removeprefix(own): v for k, v in tensors.items() if not k.startswith((*others, *FOREIGN))}

    # -- parts methods and attacks use
    def text_encoders(self, pipe) -> list[tuple]:
        return [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]

    # -- tensors
    def encode_prompts(self, pipe, prompts: list[str]):
        """The UNet's cross-attention input: both encoders' penultimate hidden states, concatenated."""
        return self.encode_conditioning(pipe, prompts).hidden

    def encode_conditioning(self, pipe, prompts: list[str]) -> Conditioning:
        """As the pipeline encodes a (positive) prompt: ``prompt_embeds``, ``text_embeds`` and the
        micro-conditioning of the native size."""
        ids = [tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
               for tok, _ in self.text_encoders(pipe)]
        return self._from_ids(pipe, ids)

    def _from_ids(self, pipe, ids_per_encoder: list) -> Conditioning:
        import torch

        states, pooled = [], None
        for (_, te), ids in zip(self.text_encoders(pipe), ids_per_encoder):
            out = te(ids.to(te.device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]
        hidden = torch.cat(states, dim=-1)
        return Conditioning(hidden, {"text_embeds": pooled, "time_ids": self._time_ids(pipe, hidden.shape[0], hidden)})

    def _time_ids(self, pipe, n: int, like, height: int | None = None, width: int | None = None):
        """(n, 6): original size, crop top-left (0, 0), target size: the job's size, or the native one."""
        import torch

        native = self._native_px(pipe)
        h, w = height or native, width or native
        return torch.tensor([h, w, 0, 0, h, w], dtype=like.dtype, device=like.device).expand(n, 6)

    def _native_px(self, pipe) -> int:
        return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)

    def conditioning_settings(self, height: int, width: int) -> dict:
        """SDXL's micro-conditioning as the harness runs it: the image's own size, no crop."""
        return {"original_size": [height, width], "crops_coords_top_left": [0, 0], "target_size": [height, width]}

    def unconditional(self, pipe, n: int):
        """Zeros (embeddings and pooled) under ``force_zeros_for_empty_prompt``, else the encoded ``""``."""
        import torch

        if getattr(pipe.config, "force_zeros_for_empty_prompt", True):
            one = self.encode_conditioning(pipe, [""])
            zeros = Conditioning(torch.zeros_like(one.hidden), {"text_embeds": torch.zeros_like(one.extra["text_embeds"]),
                                                                "time_ids": one.extra["time_ids"]})
            return Conditioning(zeros.hidden.expand(n, -1, -1), {k: v.expand(n, -1) for k, v in zeros.extra.items()})
        return self.encode_conditioning(pipe, [""] * n)

    def encode_ids(self, pipe, ids):
        """The conditioning of first-tokenizer ids (N, tokens): the second encoder reads the same
        tokens with its own padding after the end token (SDXL's ``tokenizer_2`` pads with ``!``)."""
        return self._from_ids(pipe, [ids, self._repad(pipe, ids)])

    def _repad(self, pipe, ids):
        import torch

        tok1, tok2 = pipe.tokenizer, pipe.tokenizer_2
        pad2 = tok2.pad_token_id if tok2.pad_token_id is not None else tok2.eos_token_id
        if pad2 == (tok1.pad_token_id if tok1.pad_token_id is not None else tok1.eos_token_id):
            return ids
        eos = (ids == tok1.eos_token_id).int()
        after = torch.cumsum(eos, dim=1) - eos > 0  # positions after the first end token
        return torch.where(after, torch.full_like(ids, pad2), ids)

    def encode_guided(self, pipe, prompts: list[str], negatives: list[str], device):
        """cat([unconditional, conditional]) as the pipeline's guidance builds it (an empty
        negative prompt: the pipeline's default)."""
        from harness.families.base import cat_conditioning

        cond = self.encode_conditioning(pipe, prompts).to(device)
        return cat_conditioning([self.encode_negative(pipe, negatives, device), cond])

    def encode_negative(self, pipe, negatives: list[str], device):
        if all(n == "" for n in negatives):
            return self.unconditional(pipe, len(negatives)).to(device)
        return self.encode_conditioning(pipe, list(negatives)).to(device)

    def encode_embeds(self, text_encoder, inputs_embeds):
        """The penultimate hidden states of one encoder from token embeddings (B, L, d): what SDXL's
        cross-attention reads of it (``conditioning_from_embeds`` adds the pooled output)."""
        return self._embeds_outputs(text_encoder, inputs_embeds)[0]

    def _embeds_outputs(self, text_encoder, inputs_embeds):
        """(penultimate hidden states, final normed hidden states) of a CLIP text encoder from embeddings."""
        from transformers.masking_utils import create_causal_mask

        tm = getattr(text_encoder, "text_model", text_encoder)
        h = tm.embeddings(inputs_embeds=inputs_embeds)
        mask = create_causal_mask(config=tm.config, inputs_embeds=h, attention_mask=None, cache=None)
        # hidden_states[-2] is the last layer's input; transformers 5 records hidden states only on
        # the whole model's call (the bare encoder returns none), so it is taken where it enters
        seen = []
        hook = tm.encoder.layers[-1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            out = tm.encoder(inputs_embeds=h, attention_mask=mask, is_causal=True)
        finally:
            hook.remove()
        return seen[-1], tm.final_layer_norm(out.last_hidden_state)

    def conditioning_from_embeds(self, pipe, embeds: list, ids):
        """The conditioning of prompts given as token embeddings, one (B, L, d) per text encoder
        (``ids``: the first tokenizer's ids, which place the end token whose state is pooled)."""
        import torch

        states = []
        pooled = None
        for (_, te), e in zip(self.text_encoders(pipe), embeds):
            pen, last = self._embeds_outputs(te, e)
            states.append(pen)
            if hasattr(te, "text_projection"):
                eos = (ids == pipe.tokenizer.eos_token_id).int().argmax(dim=-1)
                pooled = te.text_projection(last[torch.arange(last.shape[0], device=last.device), eos.to(last.device)])
        hidden = torch.cat(states, dim=-1)
        return Conditioning(hidden, {"text_embeds": pooled, "time_ids": self._time_ids(pipe, hidden.shape[0], hidden)})

    def decode_latents(self, pipe, latents):
        """Images in [-1, 1]; an fp16 VAE with ``force_upcast`` (SDXL's) decodes in float32, as the pipeline does."""
        import torch

        vae = pipe.vae
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            return vae.to(torch.float32).decode(latents.float() / vae.config.scaling_factor).sample.to(latents.dtype)
        return vae.decode(latents / vae.config.scaling_factor).sample

    def conditioning_like(self, one, cond):
        """``one`` repeated, with ``cond``'s size ids (the prompt's hidden states and pooled text are ``one``'s)."""
        from harness.families.base import repeat_conditioning

        out = repeat_conditioning(one, len(cond))
        return Conditioning(out.hidden, {**out.extra, "time_ids": cond.extra["time_ids"]}).to(device=cond.device, dtype=cond.dtype)

    def _with_time_ids(self, pipe, cond, height: int, width: int):
        if isinstance(cond, Conditioning):
            return Conditioning(cond.hidden, {**cond.extra, "time_ids": self._time_ids(pipe, len(cond), cond.hidden, height, width)})
        return cond

    def generate(self, pipe, jobs: list, latents, generators, extra: dict):
        j0 = jobs[0]
        negs = [j.negative_prompt for j in jobs]
        size = (j0.height, j0.width)
        out = pipe(
            prompt=[j.prompt for j in jobs],
            negative_prompt=None if all(n == "" for n in negs) else negs,
            num_inference_steps=j0.steps,
            guidance_scale=j0.guidance,
            height=j0.height,
            width=j0.width,
            latents=latents,
            generator=generators,
            original_size=size,
            target_size=size,
            crops_coords_top_left=(0, 0),
            output_type="np",
            **extra,
        )
        return out.images

    def predict_noise(self, pipe, latents, t, cond):
        from harness.families.base import call_denoiser

        if not isinstance(cond, Conditioning):
            raise HarnessError("an SDXL UNet needs its pooled text and micro-conditioning: pass a Conditioning (encode_conditioning)")
        return call_denoiser(pipe.unet, latents, t, cond)

    def sized(self, pipe, cond, height: int, width: int):
        """The conditioning with the micro-conditioning of an image of ``height`` x ``width``."""
        return self._with_time_ids(pipe, cond, height, width)

    def images_from_conditioning(self, pipe, cond, neg, latents, generators, job, extra: dict):
        dtype = pipe.unet.dtype
        size = (job.height, job.width)
        kw = {}
        if neg is not None:
            kw = {"negative_prompt_embeds": neg.hidden.to(dtype), "negative_pooled_prompt_embeds": neg.extra["text_embeds"].to(dtype)}
        res = pipe(prompt_embeds=cond.hidden.to(dtype), pooled_prompt_embeds=cond.extra["text_embeds"].to(dtype), **kw,
                   num_inference_steps=job.steps, guidance_scale=job.guidance, height=job.height, width=job.width, latents=latents,
                   generator=generators, original_size=size, target_size=size, crops_coords_top_left=(0, 0), output_type="np", **extra)
        return res.images


def _open_clip_to_diffusers(tensors: dict, base: Path) -> dict:
    """The second text encoder's tensors from SDXL's OpenCLIP names, by diffusers' converter with
    the width of the base's ``text_encoder_2`` config (no model built, no download)."""
    import json
    from types import SimpleNamespace

    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    try:
        config = json.loads((base / "text_encoder_2" / "config.json").read_text(encoding="utf-8"))
        width = int(config["hidden_size"])
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as e:
        raise HarnessError(f"--base: text_encoder_2/config.json of {base.name} is not a readable CLIP config ({type(e).__name__})") from None
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=width))
    return convert_open_clip_checkpoint(model, {k: v for k, v in tensors.items() if k.startswith(SGM_TEXT_2)}, prefix=SGM_TEXT_2)


SDXL = SDXLFamily()
FAMILY = SDXL  # what harness.families registers as "sdxl"
