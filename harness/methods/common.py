"""What every reference unlearning method shares: prompts for a concept, text embeddings,
the cross-attention projections, and the check that a concept word is a known token."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.errors import HarnessError


@dataclass
class ConceptPrompts:
    """Prompts that mention the concept ("{}" in a template is replaced by the concept word).

    ``templates`` say in which contexts the concept is erased; the toy world uses its own
    prompt form for every other factor (e.g. every object for a style), a generic run the bare
    concept ("{}"). ``preserve`` lists concepts whose behaviour must not change.
    """

    concept: str
    anchor: str = ""
    templates: tuple[str, ...] = ("{}",)
    preserve: tuple[str, ...] = field(default_factory=tuple)

    def erased(self) -> list[str]:
        return [t.format(self.concept) for t in self.templates]

    def anchored(self) -> list[str]:
        return [t.format(self.anchor) for t in self.templates]

    def preserved(self) -> list[str]:
        return [t.format(p) for p in self.preserve for t in self.templates]


def for_toy_world(concept: str, anchor: str | None = None) -> ConceptPrompts:
    """The toy world's prompts for erasing one object or one style (anchor defaults to another
    concept of the same kind, so erased prompts are steered to something the model can draw)."""
    from harness.toy.world import OBJECTS, PROMPT_TEMPLATE, STYLES

    if concept in STYLES:
        templates = tuple(PROMPT_TEMPLATE.format(object=o, style="{}") for o in OBJECTS)
        others = tuple(s for s in STYLES if s != concept)
    elif concept in OBJECTS:
        templates = tuple(PROMPT_TEMPLATE.format(object="{}", style=s) for s in STYLES)
        others = tuple(o for o in OBJECTS if o != concept)
    else:
        raise HarnessError(f"concept {concept!r} is not in the toy world (objects: {', '.join(OBJECTS)}; styles: {', '.join(STYLES)})")
    anchor = anchor if anchor is not None else others[0]
    return ConceptPrompts(concept, anchor, templates, tuple(o for o in others if o != anchor))


def check_bounds(at_least=(), nonnegative=()) -> None:
    """One-line errors for a method's numeric parameters: each ``(name, value, low)`` of
    ``at_least`` must be at least ``low``, each ``(name, value)`` of ``nonnegative`` >= 0 (NaN is not)."""
    for k, v, lo in at_least:
        if v < lo:
            raise HarnessError(f"--param {k}: must be at least {lo}, not {v}")
    for k, x in nonnegative:
        if not x >= 0:
            raise HarnessError(f"--param {k}: must be >= 0, not {x}")


def toy_kind(concept: str) -> str | None:
    """``style`` / ``object`` for a toy-world concept; None for any other word."""
    from harness.toy.world import OBJECTS, STYLES

    return "style" if concept in STYLES else "object" if concept in OBJECTS else None


def for_authors(inputs, concept: str, kind: str | None, anchor: str | None = None) -> ConceptPrompts:
    """The prompts a method's authors feed (``MethodInfo.authors_inputs``, an ``AuthorsInputs``)
    for ``concept`` of ``kind`` (default: its toy-world kind, else ``object``); ``anchor``
    overrides theirs. Preserve ``others`` takes the toy world's other concepts of the kind (none
    for a word outside the toy world)."""
    from harness.toy.world import OBJECTS, STYLES

    kind = kind or toy_kind(concept) or "object"
    if not inputs.covers(kind):
        raise HarnessError(f"--kind: the authors' recipe covers {', '.join(sorted(inputs.templates)) or 'no kind'}, not {kind!r} "
                           "(use --prompts toy or generic)")
    world = tuple(STYLES if kind == "style" else OBJECTS) if toy_kind(concept) == kind else ()
    chosen = inputs.anchor[kind] if anchor is None else anchor
    if chosen == "{next}":
        chosen = world[(world.index(concept) + 1) % len(world)] if world else ""
    others = tuple(c for c in world if c not in (concept, chosen)) if inputs.preserve[kind] == "others" else ()
    return ConceptPrompts(concept, chosen, tuple(inputs.templates[kind]), others)


def check_concept_tokens(tokenizer, word: str, allow_subword: bool = False) -> None:
    """Refuse a concept the tokenizer splits into sub-word pieces: its 'embedding' would be that
    of unrelated fragments, and the erasure would silently target the wrong thing."""
    if not word.strip():
        raise HarnessError("concept is empty")
    for w in word.split():
        pieces = tokenizer.tokenize(w)
        if len(pieces) != 1 and not allow_subword:
            raise HarnessError(
                f"concept word {w!r} is not a single token for this tokenizer (it splits into {pieces}); "
                "pass --allow-subword to erase it anyway"
            )


@torch.no_grad()
def text_embeddings(pipe, prompts: list[str]) -> torch.Tensor:
    """Last hidden states of the text encoder, padded to the tokenizer's max length, as the
    UNet sees them: (N, tokens, dim) (the pipeline's model family encodes them)."""
    from harness.families import family_of_pipeline

    return family_of_pipeline(pipe).encode_prompts(pipe, prompts)


def denoiser(pipe):
    """The pipeline's denoiser, the network a method edits or trains, as its model family names it
    (SD-1.x: the UNet)."""
    from harness.families import family_of_pipeline

    return family_of_pipeline(pipe).denoiser(pipe)


def cross_attention_kv(denoiser, family=None) -> dict[str, torch.nn.Linear]:
    """The cross-attention key/value projections of a denoiser by name, as its model family
    names them (``family``: the default family when None; SD-1.x's ``attn2.to_k`` / ``attn2.to_v``)."""
    from harness.families import default

    return (family or default()).cross_attention(denoiser)

