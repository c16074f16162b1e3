"""Inference-time methods as a submission declares them (``method.kind: inference``): the
registered method, its parameters (its preset for the base, the submission's values on top),
its code version, checked once and carried by the pipeline recipe
(``harness.families.guidance.InferenceRecipe``), whose identity enters the unlearned model's
fingerprint, so a change of method, parameter, target or code makes new images, never reuses old.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness.errors import HarnessError
from harness.families.guidance import InferenceRecipe


def code_digest(module: str) -> str:
    """sha256 of the method module's source and of the guidance machinery's: its code version."""
    import importlib.util

    import harness.families.guidance as guidance

    h = hashlib.sha256()
    for name in (module, guidance.__name__):
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        h.update(Path(origin).read_bytes() if origin and Path(origin).is_file() else name.encode())
    return h.hexdigest()


def inference_recipe(sub, base_folder: Path | None, family, guidance_scale: float = 7.5) -> tuple[InferenceRecipe | None, str | None]:
    """(recipe, preset) of a submission's inference-time method; (None, None) for a checkpoint
    method. One-line errors name the submission's field: an unknown method, a checkpoint method
    declared as inference (or the reverse), a checkpoint under a method that cannot run on one,
    a family the method does not run on, an unknown or ill-typed parameter."""
    from harness.methods import REGISTRY, get_method, preset_params

    m = sub.method
    if m.kind != "inference":
        if m.name in REGISTRY.names() and REGISTRY.get(m.name).kind == "inference":
            raise HarnessError(f"method.kind: {m.name} is an inference-time method; declare `kind: inference` (it has no checkpoint of its own)")
        return None, None
    if m.name not in REGISTRY.names():
        raise HarnessError(f"method.name: {m.name!r} is not a registered inference-time method "
                           f"(known: {', '.join(n for n in REGISTRY.names() if REGISTRY.get(n).kind == 'inference')})")
    info = REGISTRY.get(m.name)
    if info.kind != "inference":
        raise HarnessError(f"method.kind: {m.name} makes a checkpoint (`unlearn erase {m.name}`), it is not an inference-time method")
    if sub.checkpoint is not None and not info.on_checkpoint:
        raise HarnessError(f"checkpoint: the inference-time method {m.name} does not run on top of a checkpoint; remove it")
    if family is not None and not info.supports(family):
        why = f" ({info.families_why})" if info.families_why else ""
        raise HarnessError(f"method.name: {m.name} does not run on the {family.name} model family{why}")
    try:
        preset, params = preset_params(get_method(m.name), m.name, None, Path(base_folder) if base_folder else Path("."), dict(m.params),
                                       family=family.name if family is not None else None)
    except HarnessError as e:
        raise HarnessError(f"method.params: {str(e).removeprefix('--param ').removeprefix('--preset: ')}") from None
    recipe = InferenceRecipe(m.name, info.module, json.dumps(params, sort_keys=True), tuple(t.concept for t in sub.targets),
                             float(guidance_scale), code_digest(info.module))
    return recipe, preset
