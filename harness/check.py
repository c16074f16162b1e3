"""What the harness verifies before it generates an image, as functions the pytest plugin and
``unlearn check`` share.

``startup`` is what the plugin checks for every submission when pytest starts (the YAML, its
suites, a local checkpoint's path, format and sha256). ``check_submission`` does that and every
other check the evaluator would otherwise only meet while a suite runs, still without loading a
model: the base folder (and its pinned hash), the checkpoint's tensor names and shapes against
the base's (read from the safetensors headers), the targets' concepts against the toy world and
the suites' label values, each suite's prompt set (CSV pinned by sha256, not empty), image size,
scorer weights (pinned), thresholds that a metric can evaluate, and the method record. The first
problem is raised as a ``HarnessError``: one line naming the field.
"""

from __future__ import annotations

from pathlib import Path

from . import metrics
from .errors import HarnessError
from .results import load_method_record
from .models import base_dir, base_fingerprint, check_tensors, checkpoint_file, tensor_shapes
from .spec import Submission, Suite, expand_prompts, load_submission, pinned_file

COMPONENTS = {"unet": "unet", "text_encoder": "text encoder"}


def startup(path: str | Path, root: Path, cache: Path, allow_pickle: bool = False) -> tuple[Submission, dict[str, Suite], Path | None]:
    """The plugin's start-up checks of one submission: (submission, its suites by id, the
    verified local checkpoint path or None for a URL, which is fetched when its suite runs)."""
    from .evaluate import resolve_suites

    sub = load_submission(path)
    suites = resolve_suites(sub, root)
    ckpt = checkpoint_file(sub.checkpoint, root, cache, allow_pickle) if sub.checkpoint.path else None
    check_method_record(sub, root)  # read again when the results are written: fail now, not after the run
    return sub, suites, ckpt


def base_shapes(sub: Submission, root: Path, component: str) -> dict[str, tuple[int, ...]] | None:
    """name -> shape of the base model's ``unet`` or ``text_encoder`` tensors, from the
    safetensors headers of its folder; None for a hub base (not read offline)."""
    d = base_dir(sub.base_model, root)
    if d is None:
        return None
    files = sorted((d / component).glob("*.safetensors"))
    if not files:
        raise HarnessError(f"base_model: {component}/ of {d.name} holds no safetensors weights")
    out: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            out.update({k: shape for k, (shape, _) in tensor_shapes(f).items()})
        except HarnessError as e:
            raise HarnessError(f"base_model: {str(e).removeprefix('checkpoint: ')}") from None
    return out


def check_checkpoint(sub: Submission, ckpt: Path, root: Path, allow_pickle: bool) -> str:
    """The checkpoint's tensors fit the base: names known, shapes equal, floating point."""
    kind = sub.checkpoint.kind
    if kind in COMPONENTS:
        if ckpt.is_dir():
            raise HarnessError(f"checkpoint.path: kind {kind} needs one safetensors file; {ckpt.name} is a folder")
        found = tensor_shapes(ckpt, allow_pickle)
        if not found:
            raise HarnessError(f"checkpoint: {ckpt.name} holds no tensors")
        if ckpt.suffix.lower() == ".safetensors":
            check_finite(ckpt)
        own = base_shapes(sub, root, kind)
        if own is None:
            return f"checkpoint: {len(found)} {COMPONENTS[kind]} tensor(s), readable (shapes not compared: hub base)"
        check_tensors(found, own, COMPONENTS[kind])
        return f"checkpoint: {len(found)} {COMPONENTS[kind]} tensor(s), names and shapes match the base"
    if kind == "pipeline":
        if not (ckpt / "model_index.json").is_file():
            raise HarnessError(f"checkpoint: kind pipeline needs a diffusers folder; {ckpt.name} has no model_index.json")
        n = 0
        for comp, what in COMPONENTS.items():
            files = sorted((ckpt / comp).glob("*.safetensors"))
            if not files:
                raise HarnessError(f"checkpoint: pipeline folder {ckpt.name} has no {comp}/*.safetensors (pickle weights are not loaded)")
            found = {k: v for f in files for k, v in tensor_shapes(f).items()}
            own = base_shapes(sub, root, comp)
            if own is not None:
                check_tensors(found, own, what)
                missing = sorted(set(own) - set(found))
                if missing:
                    raise HarnessError(f"checkpoint: {comp} of pipeline folder {ckpt.name} lacks {len(missing)} tensor(s) of the base, e.g. {missing[0]!r}")
            n += len(found)
        return f"checkpoint: pipeline folder, {n} unet + text encoder tensors" + (", names and shapes match the base" if base_dir(sub.base_model, root) else "")
    if ckpt.is_file():  # lora
        tensor_shapes(ckpt, allow_pickle)
    return "checkpoint: LoRA, readable (names not compared with the base)"


def check_finite(path: Path) -> None:
    """Every value of every tensor in a safetensors file is finite: a NaN / Inf weight makes
    non-finite images (flagged, so the metrics would be errors); refused here, before a run."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise HarnessError(f"checkpoint: tensor {k!r} of {path.name} holds NaN or infinite values")
    except HarnessError:
        raise
    except Exception as e:  # safetensors raises several types for a damaged file
        raise HarnessError(f"checkpoint: {path.name} is not a readable safetensors file ({type(e).__name__})") from None


def check_targets(sub: Submission, suites: dict[str, Suite], filtered: bool) -> None:
    """Each target's concept is one the base's world and the suites' prompts know."""
    from .toy import world

    toy_kinds = {"style": world.STYLES, "object": world.OBJECTS}
    for i, t in enumerate(sub.targets):
        if sub.base_model.builtin == "toy":
            known = toy_kinds.get(t.kind)
            if known is None:
                raise HarnessError(f"targets.{i}.kind: the toy world has no {t.kind} concepts (only object and style)")
            if t.concept not in known:
                raise HarnessError(f"targets.{i}.concept: {t.concept!r} is not a {t.kind} of the toy world ({', '.join(known)})")
        applying = [s for s in suites.values() if t.kind in s.applies_to]
        if not applying and not filtered:
            raise HarnessError(f"targets.{i}.kind: none of the submission's suites ({', '.join(suites)}) applies to kind {t.kind!r}")
        for s in applying:
            tp = s.prompts.template
            if tp is not None and t.kind in tp.values and t.concept not in tp.values[t.kind]:
                values = tp.values[t.kind]
                shown = ", ".join(values[:8]) + (", ..." if len(values) > 8 else "")
                raise HarnessError(f"targets.{i}.concept: {t.concept!r} is not a {t.kind} of suite {s.id} (its {t.kind} values: {shown})")


def tokenizer_notes(sub: Submission, root: Path) -> list[str]:
    """Concept words a local base's tokenizer splits into pieces (a note, not an error: real
    names often are several tokens; the toy world's concepts are checked above)."""
    from .methods.common import check_concept_tokens

    d = base_dir(sub.base_model, root)
    if d is None or sub.base_model.builtin or not (d / "tokenizer").is_dir():
        return []
    try:
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(str(d / "tokenizer"))
    except Exception as e:  # a tokenizer folder transformers cannot read: the run would fail later
        raise HarnessError(f"base_model: {d.name}/tokenizer cannot be loaded ({type(e).__name__})") from None
    notes = []
    for i, t in enumerate(sub.targets):
        try:
            check_concept_tokens(tok, t.concept)
        except HarnessError as e:
            notes.append(f"note: targets.{i}.concept: {str(e).split(';')[0]}")
    return notes


def check_suite(sub: Submission, suite: Suite, root: Path, cache: Path) -> str:
    """One suite as the evaluator will run it for this submission, up to generation."""
    from .evaluate import native_size

    where = f"suite {suite.id}"
    prompts = expand_prompts(suite, root, cache)
    g = suite.generation
    items = [(p, s) for p in prompts for s in ([p.seed] if p.seed is not None else g.seeds)]
    if not items:
        raise HarnessError(f"{where}: prompts: the prompt set is empty")
    needs_images = False
    for j, m in enumerate(suite.metrics):
        info = metrics.info(m.name)
        needs_images |= info.needs_images
        th = m.parsed_threshold()
        if th is not None and th.relative and not info.needs_images:
            raise HarnessError(f"{where}: metrics.{j}.threshold: {m.name} has no base-model value, so {m.threshold!r} (relative to base) cannot be evaluated")
        if m.name in ("ua", "ira", "cra") and suite.scorer is None:
            raise HarnessError(f"{where}: metrics.{j}: {m.name} needs a scorer (the suite sets none)")
    size = ""
    if needs_images:
        if g.height and g.width:
            size = f"{g.width}x{g.height}"
        else:
            try:
                n = native_size(sub, root)
            except (OSError, ValueError, KeyError) as e:
                raise HarnessError(f"base_model: cannot read its unet/vae config.json ({type(e).__name__})") from None
            except HarnessError as e:
                raise HarnessError(f"{where}: generation.height: {e}") from None
            size = f"{n}x{n} (native)"
    if suite.scorer is not None:
        for what in ("weights", "style_weights", "object_weights"):
            w = getattr(suite.scorer, what)
            if w is not None:
                pinned_file(root, w.path, w.sha256, f"{where}: scorer.{what}")
    made = f"{len(prompts)} prompt(s), {len(items)} image(s) per model at {size}" if needs_images else "no images needed"
    return f"{where}: {made}, {len(suite.metrics)} metric(s)"


def check_method_record(sub: Submission, root: Path) -> str | None:
    if not sub.method_record:
        return None
    load_method_record(root, sub.method_record)
    return f"method_record: {sub.method_record}"


def check_submission(path: str | Path, root: Path, cache: Path, allow_pickle: bool = False, only: set[str] | None = None) -> list[str]:
    """Every check short of loading a model; returns what was checked (one line each) or
    raises the first problem as one line."""
    sub, suites, ckpt = startup(path, root, cache, allow_pickle)
    if only:
        unknown = sorted(set(only) - set(suites))
        if unknown:
            raise HarnessError(f"--suite: {', '.join(unknown)} is not a suite of this submission (it has: {', '.join(sorted(suites))})")
        suites = {k: v for k, v in suites.items() if k in only}
    lines = [f"base_model: {base_fingerprint(sub.base_model, root)}"]
    if ckpt is None:  # a URL: fetched into the cache (or found there, offline), then verified
        ckpt = checkpoint_file(sub.checkpoint, root, cache, allow_pickle)
    lines.append(check_checkpoint(sub, ckpt, root, allow_pickle))
    check_targets(sub, suites, filtered=bool(only))
    lines.append("targets: " + ", ".join(f"{t.concept} ({t.kind})" for t in sub.targets))
    lines += tokenizer_notes(sub, root)
    lines += [check_suite(sub, s, root, cache) for s in suites.values()]
    record = check_method_record(sub, root)
    if record:
        lines.append(record)
    return lines
