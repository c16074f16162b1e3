"""Inference-time methods: a change to the sampling, installed on a loaded pipeline's denoiser.

Classifier-free guidance, as every family here samples, predicts

    eps~ = eps(x_t, t, c_u) + w * (eps(x_t, t, c) - eps(x_t, t, c_u))

with c_u the unconditional (or negative) conditioning and w the guidance scale. An
inference-time method changes some of it: the conditioning of either branch (negative prompt:
c_u := the concept's; SAFREE: c projected away from the concept's subspace) or the two
predictions after the denoiser (SLD: eps(x_t, t, c) minus a safety term). ``Guidance`` is that
contract; ``install`` puts it in the denoiser's own ``forward``, so every path that samples or
differentiates through the model (the pipeline's call, the harness's own denoising steps, the
partial-diffusion trajectory, every white-box attack) sees what the user of the method gets.

Two kinds of call reach the denoiser:

* a guided pair: the batch is ``cat([x, x])`` with ``cat([c_u, c])`` (the pipelines' and the
  harness's guidance): the method edits both branches and both predictions;
* a single prediction (an attack's loss, textual inversion's training step): the denoiser
  returns the conditional prediction that standard guidance at the suite's scale w would turn
  into the method's guided prediction,

      eps_eq = eps'_c - (eps'_u - eps_u) * (1 - 1/w)

  (eps'_u, eps'_c the method's predictions, eps_u the plain unconditional one), so
  eps_u + w * (eps_eq - eps_u) = eps'_u + w * (eps'_c - eps'_u). A method that changes nothing
  costs no extra denoiser call and returns the model's own output, bit for bit.

``InferenceRecipe`` is the picklable description a pipeline recipe carries (a Ray worker builds
the same guidance); the method's module is named by its import path, resolved above this layer
(harness.methods' registry).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any

from harness.families.base import Conditioning, cat_conditioning


class Guidance:
    """What an inference-time method changes; each method returns ``self``'s argument (the very
    object) for "no change", and the default of every method is no change."""

    def uncondition(self, cond, t, step: int | None):
        """The unconditional branch's conditioning (``cond``: a tensor, or a ``Conditioning``)."""
        return cond

    def condition(self, cond, t, step: int | None):
        """The conditional branch's conditioning."""
        return cond

    def adjust(self, call, x, t, cond_u, cond_c, eu, ec, step: int | None):
        """(eu, ec) after the denoiser; ``call(x, t, cond)`` runs the plain denoiser."""
        return eu, ec

    def reset(self) -> None:
        """A new sampling run starts (state kept across steps, e.g. SLD's momentum, is dropped)."""

    def remove(self) -> None:
        """Take out any hooks of the method's own (SAFREE's text-encoder and decoder hooks)."""


def _overrides(g: Guidance, name: str) -> bool:
    return getattr(type(g), name) is not getattr(Guidance, name)


@dataclass(frozen=True)
class InferenceRecipe:
    """An inference-time method as a pipeline recipe carries it: the method's name and module
    (``setup(pipe, family, concepts, **params)``), its parameters (JSON, sorted), the target
    concepts, and the guidance scale of the suite's sampling (for single predictions)."""

    name: str
    module: str
    params: str  # json.dumps(params, sort_keys=True)
    concepts: tuple[str, ...]
    guidance_scale: float = 7.5
    code: str = ""  # sha256 of the method's source (harness.methods.inference.code_digest)

    @property
    def identity(self) -> str:
        """What the unlearned model's fingerprint adds: the method, a digest of its parameters,
        targets and code (not the guidance scale: a suite's own setting, in every job's key)."""
        import hashlib

        doc = json.dumps({"params": json.loads(self.params), "concepts": list(self.concepts), "code": self.code}, sort_keys=True)
        return f"inference:{self.name}:{hashlib.sha256(doc.encode()).hexdigest()[:16]}"

    def install(self, pipe, family) -> "GuidedDenoiser":
        mod = importlib.import_module(self.module)
        guidance = mod.setup(pipe, family, list(self.concepts), **json.loads(self.params))
        return install(pipe, family, guidance, self.guidance_scale)


def _as_conditioning(hidden, added):
    return Conditioning(hidden, dict(added)) if added else hidden


def _kwargs(cond) -> dict:
    if isinstance(cond, Conditioning):
        return {"encoder_hidden_states": cond.hidden, "added_cond_kwargs": dict(cond.extra)}
    return {"encoder_hidden_states": cond}


class GuidedDenoiser:
    """The state of one installed guidance: the denoiser's original ``forward`` and where the
    current sampling run is. ``remove`` restores the denoiser."""

    def __init__(self, pipe, family, guidance: Guidance, scale: float):
        self.pipe, self.family, self.guidance, self.scale = pipe, family, guidance, float(scale)
        self.denoiser = family.denoiser(pipe)
        self.original = self.denoiser.forward
        self.prev_t: float | None = None
        self.count = 0
        self.calls = 0  # denoiser calls made (the method's own included): its sampling cost
        self.needs_uncond = _overrides(guidance, "uncondition") or _overrides(guidance, "adjust")

    # -- the plain denoiser
    def raw(self, x, t, cond, extra: dict):
        self.calls += 1
        return self.original(x, t, **_kwargs(cond), **extra, return_dict=False)[0]

    def _step(self, t) -> int:
        """The index of ``t`` in the pipeline scheduler's current timesteps (a new run when ``t``
        does not decrease); the count of guided calls when the scheduler does not hold ``t``."""
        tv = float(t.reshape(-1)[0]) if hasattr(t, "reshape") else float(t)
        if self.prev_t is None or tv >= self.prev_t:
            self.guidance.reset()
            self.count = 0
        self.prev_t = tv
        ts = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
        here = None
        if ts is not None and len(ts):
            match = (ts.float() == tv).nonzero()
            if len(match):
                here = int(match[0, 0])
        step = here if here is not None else self.count
        self.count += 1
        return step

    def forward(self, sample, timestep, encoder_hidden_states=None, *args, added_cond_kwargs=None, return_dict=True, **extra):
        import torch

        if args:  # the UNet's positional tail (class_labels, ...): passed on by name
            extra = {**dict(zip(("class_labels", "timestep_cond", "attention_mask", "cross_attention_kwargs"), args)), **extra}
        cond = _as_conditioning(encoder_hidden_states, added_cond_kwargs)
        n = sample.shape[0]
        g = self.guidance
        guided_pair = n % 2 == 0 and n > 0 and torch.equal(sample[: n // 2], sample[n // 2:])
        if guided_pair:
            step = self._step(timestep)
            h = n // 2
            cu, cc = cond[:h], cond[h:]
            cu2, cc2 = g.uncondition(cu, timestep, step), g.condition(cc, timestep, step)
            both = cond if (cu2 is cu and cc2 is cc) else cat_conditioning([cu2, cc2])
            out = self.raw(sample, timestep, both, extra)
            eu, ec = out[:h], out[h:]
            eu2, ec2 = g.adjust(lambda x, t, c: self.raw(x, t, c, extra), sample[:h], timestep, cu2, cc2, eu, ec, step)
            if not (eu2 is eu and ec2 is ec):
                out = torch.cat([eu2, ec2])
        else:
            cc2 = g.condition(cond, timestep, None)
            ec = self.raw(sample, timestep, cc2, extra)
            out = ec
            if self.needs_uncond:
                cu = self._unconditional(cond, n)
                eu = self.raw(sample, timestep, cu, extra)
                cu2 = g.uncondition(cu, timestep, None)
                eu2 = eu if cu2 is cu else self.raw(sample, timestep, cu2, extra)
                eu3, ec3 = g.adjust(lambda x, t, c: self.raw(x, t, c, extra), sample, timestep, cu2, cc2, eu2, ec, None)
                out = ec3 if eu3 is eu else ec3 - (eu3 - eu) * (1.0 - 1.0 / self.scale)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def _unconditional(self, cond, n: int):
        """The family's unconditional conditioning for the ``n`` images of ``cond`` (with their
        micro-conditioning, where the family has any)."""
        import torch

        if getattr(self, "_u1", None) is None:
            with torch.no_grad():
                self._u1 = self.family.unconditional(self.pipe, 1)
        return self.family.conditioning_like(self._u1, cond)

    def remove(self) -> None:
        """The denoiser as it was, and the guidance's own hooks taken out (``Guidance.remove``)."""
        if self.denoiser.__dict__.get("forward") is not None:
            del self.denoiser.forward
        self.denoiser.__dict__.pop("_unlearn_guidance", None)
        self.guidance.remove()


def install(pipe, family, guidance: Guidance, scale: float = 7.5) -> GuidedDenoiser:
    """Put ``guidance`` in the pipeline's denoiser (its instance ``forward``; ``remove`` takes it
    out). One guidance per denoiser: installing a second is refused."""
    state = GuidedDenoiser(pipe, family, guidance, scale)
    den = state.denoiser
    if "forward" in den.__dict__:
        raise RuntimeError("this denoiser already has an inference-time method installed")
    den.forward = state.forward
    den._unlearn_guidance = state
    return state


def installed(pipe, family) -> Any:
    """The ``GuidedDenoiser`` of a pipeline's denoiser, or None."""
    return getattr(family.denoiser(pipe), "_unlearn_guidance", None)
