"""Negative prompt (SD-NegP): the concept as the negative prompt of classifier-free guidance.

With the concept's conditioning c_n in place of the unconditional c_u,

    eps~ = eps(x_t, t, c_n) + w * (eps(x_t, t, c) - eps(x_t, t, c_n))

steers every step away from the concept. No weights change; the baseline that erasure papers
compare with (UnlearnDiffAtk, MACE, Receler tables: "SD-NegP", "negative prompt"), run as the
diffusers pipelines run a ``negative_prompt``: the text encoded like a prompt (on SDXL: both
encoders and the pooled embedding, the size micro-conditioning of the image). It replaces a
suite's own negative prompt, if any.
"""

from __future__ import annotations

from harness.families.guidance import Guidance
from harness.methods import MethodInfo

INFO = MethodInfo(
    name="negprompt",
    module=__name__,
    paper="https://arxiv.org/abs/2112.10752",  # classifier-free guidance's negative branch as used since LDM / SD
    code="https://github.com/huggingface/diffusers",
    kind="inference",
    on_checkpoint=True,  # a negative prompt works on any model, an erased one too
    needs=frozenset({"unet"}),
)


def concept_text(concepts: list[str], text: str | None) -> str:
    """The negative prompt: ``text`` when given, else the target concepts joined by ", "."""
    return text if text else ", ".join(concepts)


class NegativePrompt(Guidance):
    def __init__(self, pipe, family, text: str):
        import torch

        self.text, self.family = text, family
        with torch.no_grad():
            self.one = family.encode_conditioning(pipe, [text])

    def uncondition(self, cond, t, step):
        return self.family.conditioning_like(self.one, cond)

def setup(pipe, family, concepts: list[str], text: str | None = None) -> Guidance:
    """The concept (or ``text``) as every image's negative prompt."""
    return NegativePrompt(pipe, family, concept_text(concepts, text))
