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

``prepare`` makes the run's ``ResolvedSubmission`` (``harness.resolve.resolved``) as it checks:
the base is located and hashed once (``BaseView`` keeps its folder, tensor shapes and native
size for the checks), the checkpoint verified once, and what every check verified is kept with it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from harness import metrics
from harness.errors import HarnessError
from harness.results.assemble import load_method_record
from harness.families.sd1 import base_dir, base_fingerprint, check_tensors, tensor_shapes, unlearned_fingerprint, verified_checkpoint
from harness.resolve.resolved import ResolvedSubmission, cached_base_folder, family_name, read_native_size, resolve_inference
from harness.run.plan import native_size, native_size_at, resolve_suites, suite_items
from harness.spec import Submission, Suite, expand_prompts, load_submission, pinned_file

COMPONENTS = {"unet": "unet", "text_encoder": "text encoder"}


def startup(path: str | Path, root: Path, cache: Path, allow_pickle: bool = False) -> tuple[Submission, dict[str, Suite], Path | None, tuple | None]:
    """The plugin's start-up checks of one submission: (submission, its suites by id, the
    verified local checkpoint path or None for a URL, which is fetched later, and the
    checkpoint's ``file_state`` when verified)."""
    sub = load_submission(path)
    suites = resolve_suites(sub, root)
    ckpt, state = verified_checkpoint(sub.checkpoint, root, cache, allow_pickle) if sub.checkpoint and sub.checkpoint.path else (None, None)
    check_method_record(sub, root)  # read again when the results are written: fail now, not after the run
    return sub, suites, ckpt, state


class BaseView:
    """The base model as the checks read it: its folder located once (a local folder or the
    cached hub snapshot, ``resolved.cached_base_folder``), each component's tensor shapes and the
    native image size read at most once."""

    def __init__(self, sub: Submission, root: Path):
        self.sub, self.root = sub, root
        self.folder = cached_base_folder(sub, root)
        self.shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self.native: int | None = None

    def native_size(self) -> int:
        if self.native is None:
            self.native = native_size_at(self.folder) if self.folder is not None else native_size(self.sub, self.root)
        return self.native


def base_shapes(sub: Submission, root: Path, component: str, base: BaseView | None = None) -> dict[str, tuple[int, ...]] | None:
    """name -> shape of the base model's ``unet`` or ``text_encoder`` tensors, from the
    safetensors headers of its folder; a hub base from the Hugging Face cache (offline, a missing
    file is the error; online and not cached yet: None, shapes not compared). ``base``: the base
    already located (its shapes kept there)."""
    if base is not None:
        if base.folder is None:  # a hub base not cached (offline, check_base refused it already)
            return None
        if component not in base.shapes:
            base.shapes[component] = _component_shapes(base.folder, component)
        return base.shapes[component]
    d = base_dir(sub.base_model, root)
    if d is None:
        from harness.store.fetch import offline
        from harness.store.hub import pipeline_snapshot

        try:
            d = pipeline_snapshot(sub.base_model.hub_id, sub.base_model.revision, download=False)
        except HarnessError:
            if offline():
                raise
            return None
    return _component_shapes(d, component)


def _component_shapes(d: Path, component: str) -> dict[str, tuple[int, ...]]:
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


def check_checkpoint(sub: Submission, ckpt: Path, root: Path, allow_pickle: bool, base: BaseView | None = None) -> str:
    """The checkpoint's tensors fit the base: names known, shapes equal, floating point."""
    kind = sub.checkpoint.kind
    if kind not in ("pipeline", "lora"):
        from harness.families import family_of_base

        from harness.families.base import check_kind

        check_kind(family_of_base(sub.base_model, root), kind)
    if kind in COMPONENTS:
        if ckpt.is_dir():
            raise HarnessError(f"checkpoint.path: kind {kind} needs one safetensors file; {ckpt.name} is a folder")
        found = tensor_shapes(ckpt, allow_pickle)
        if not found:
            raise HarnessError(f"checkpoint: {ckpt.name} holds no tensors")
        if ckpt.suffix.lower() == ".safetensors":
            check_finite(ckpt)
        own = base_shapes(sub, root, kind, base)
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
            own = base_shapes(sub, root, comp, base)
            if own is not None:
                check_tensors(found, own, what)
                missing = sorted(set(own) - set(found))
                if missing:
                    raise HarnessError(f"checkpoint: {comp} of pipeline folder {ckpt.name} lacks {len(missing)} tensor(s) of the base, e.g. {missing[0]!r}")
            n += len(found)
        return f"checkpoint: pipeline folder, {n} unet + text encoder tensors" + (", names and shapes match the base" if base_dir(sub.base_model, root) else "")
    return check_lora(sub, ckpt, root, allow_pickle, base)


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
    from harness.toy import world

    toy_kinds = {"style": world.STYLES, "object": world.OBJECTS}
    for i, t in enumerate(sub.targets):
        if sub.base_model.builtin:  # a toy world's (toy, toy-xl): one procedural world
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
                near = difflib.get_close_matches(t.concept, values, n=1, cutoff=0.6)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise HarnessError(f"targets.{i}.concept: {t.concept!r} is not a {t.kind} of suite {s.id} ({hint}its {t.kind} values: {shown})")


def tokenizer_notes(sub: Submission, root: Path) -> list[str]:
    """Concept words a local base's tokenizer splits into pieces (a note, not an error: real
    names often are several tokens; the toy world's concepts are checked above)."""
    from harness.methods.common import check_concept_tokens

    d = base_dir(sub.base_model, root)
    if d is None or sub.base_model.builtin or not (d / "tokenizer").is_dir():
        return []
    from harness.families import family_of

    fam = family_of(d)
    try:
        tok = fam.load_tokenizer(d)
    except Exception as e:  # a tokenizer folder transformers cannot read: the run would fail later
        raise HarnessError(f"base_model: {d.name}/tokenizer cannot be loaded ({type(e).__name__})") from None
    notes = []
    for i, t in enumerate(sub.targets):
        try:
            check_concept_tokens(tok, t.concept)
        except HarnessError as e:
            notes.append(f"note: targets.{i}.concept: {str(e).split(';')[0]}")
    return notes


def check_suite(sub: Submission, suite: Suite, root: Path, cache: Path, base: BaseView | None = None, family: str | None = None) -> str:
    """One suite as the evaluator will run it for this submission, up to generation (``base``:
    the base already located, its native size read once for every suite; ``family``: the base's
    model family, which must offer what each of the suite's prompt attacks needs)."""
    where = f"suite {suite.id}"
    if family is not None:
        from harness import families
        from harness.attacks.runner import attacks
        from harness.families.base import require

        fam = families.get(family)
        for block, pa in suite.prompt_attacks.items():
            if pa.attack in attacks():
                require(fam, attacks()[pa.attack].INFO.needs, f"{where}: attacks.{block}: {pa.attack}")
    prompts = expand_prompts(suite, root, cache)
    g = suite.generation
    items = suite_items(suite, prompts)
    if not items:
        raise HarnessError(f"{where}: prompts: the prompt set is empty")
    needs_images = False
    for j, m in enumerate(suite.metrics):
        info = metrics.info(m.name)
        needs_images |= info.needs_images
        th = m.parsed_threshold()
        if th is not None and th.relative and not info.needs_images:
            raise HarnessError(f"{where}: metrics.{j}.threshold: {m.name} has no base-model value, so {m.threshold!r} (relative to base) cannot be evaluated")
        if info.needs_scorer and suite.scorer is None:
            raise HarnessError(f"{where}: metrics.{j}: {m.name} needs a scorer (the suite sets none)")
    size = ""
    if needs_images:
        if g.height and g.width:
            size = f"{g.width}x{g.height}"
        else:
            try:
                n = base.native_size() if base is not None else native_size(sub, root)
            except (OSError, ValueError, KeyError) as e:
                raise HarnessError(f"base_model: cannot read its unet/vae config.json ({type(e).__name__})") from None
            except HarnessError as e:
                raise HarnessError(f"{where}: generation.height: {e}") from None
            size = f"{n}x{n} (native)"
    check_pins(sub, suite, root)
    if suite.scorer is not None:
        for what in ("weights", "style_weights", "object_weights"):
            w = getattr(suite.scorer, what)
            if w is not None:
                if w.hub is not None:
                    from harness.store.hub import pinned_path

                    pinned_path(root, w, f"{where}: scorer.{what}")
                else:
                    pinned_file(root, w.path, w.sha256, f"{where}: scorer.{what}")
    made = f"{len(prompts)} prompt(s), {len(items)} image(s) per model at {size}" if needs_images else "no images needed"
    return f"{where}: {made}, {len(suite.metrics)} metric(s)"


def check_method_record(sub: Submission, root: Path) -> str | None:
    if not sub.method_record:
        return None
    load_method_record(root, sub.method_record)
    return f"method_record: {sub.method_record}"


def prepare(path: str | Path, root: Path, cache: Path, allow_pickle: bool = False, only: set[str] | None = None,
            strict_only: bool = True) -> ResolvedSubmission:
    """Every check short of loading a model, for one submission: the one start-up path of both
    ``unlearn check`` and the pytest plugin. Returns the submission resolved (its suites by id,
    all of them; what was checked, one line each, in ``checked``) or raises the first problem as
    one line. ``only``: check only those suites; with ``strict_only`` a suite id the submission
    lacks is an error (the plugin, given several submissions, checks its ``--unlearn-suite``
    against all of them instead)."""
    sub, every, ckpt, state = startup(path, root, cache, allow_pickle)
    suites = every
    if only:
        unknown = sorted(set(only) - set(suites))
        if unknown and strict_only:
            raise HarnessError(f"--suite: {', '.join(unknown)} is not a suite of this submission (it has: {', '.join(sorted(suites))})")
        suites = {k: v for k, v in suites.items() if k in only}
    base_fp = base_fingerprint(sub.base_model, root)  # the base folder hashed: once per run
    lines = [f"base_model: {base_fp}"]
    base = BaseView(sub, root)
    lines += check_base(sub, root, base)
    family = family_name(base.folder)
    if ckpt is None and sub.checkpoint is not None:  # a URL: fetched into the cache (or found there, offline), then verified
        ckpt, state = verified_checkpoint(sub.checkpoint, root, cache, allow_pickle)
    if ckpt is not None:
        lines.append(check_checkpoint(sub, ckpt, root, allow_pickle, base))
    recipe, preset = resolve_inference(sub, base.folder)
    if recipe is not None:
        lines.append(f"method: {recipe.name}, an inference-time method (preset {preset}; parameters {recipe.params})"
                     + ("" if ckpt is None else ", on the checkpoint"))
    check_targets(sub, suites, filtered=bool(only))
    lines.append("targets: " + ", ".join(f"{t.concept} ({t.kind})" for t in sub.targets))
    lines += tokenizer_notes(sub, root)
    lines += [check_suite(sub, s, root, cache, base, family) for s in suites.values()]
    record = check_method_record(sub, root)
    if record:
        lines.append(record)
    native = base.native if base.native is not None else read_native_size(base.folder)
    return ResolvedSubmission(path=str(path), spec=sub, checkpoint=ckpt, checkpoint_sha256=sub.checkpoint.sha256 if sub.checkpoint else None,
                              base_folder=base.folder, base_fingerprint=base_fp, unlearned_fingerprint=unlearned_fingerprint(sub, base_fp, recipe),
                              family=family, native_size=native, shapes=dict(base.shapes), suites=every, checked=tuple(lines),
                              checkpoint_state=state, inference=recipe, inference_preset=preset)


def check_submission(path: str | Path, root: Path, cache: Path, allow_pickle: bool = False, only: set[str] | None = None) -> list[str]:
    """``prepare``'s lines (``unlearn check``)."""
    return list(prepare(path, root, cache, allow_pickle, only).checked)


# ----------------------------------------------------------------------------- bases, pins, LoRA
PLACEHOLDER = "0" * 64


def check_hub_model(repo_id: str, revision: str | None, what: str, kind: str = "pipeline") -> str:
    """A hub model the run will load (``kind``: a diffusers ``pipeline`` or a transformers
    ``model``): found complete in the local Hugging Face cache (``harness.store.hub``, the loader the
    run uses), or refused when the run is offline, naming the missing file and the
    ``unlearn fetch`` command that gets it (the run would otherwise fail at load time, once per
    case)."""
    from harness.store.fetch import offline
    from harness.store.hub import model_snapshot, pipeline_snapshot

    at = f"{repo_id}@{revision[:12]}" if revision else repo_id
    if not revision:
        if offline():
            raise HarnessError(f"{what}: {at} has no pinned revision, so it cannot be found in the Hugging Face cache offline")
        return f"{what}: {at} not pinned; downloaded when a suite first needs it"
    try:
        (pipeline_snapshot if kind == "pipeline" else model_snapshot)(repo_id, revision, what=what, download=False)
        return f"{what}: {at} found in the local Hugging Face cache"
    except HarnessError:
        if offline():
            raise
    return f"{what}: {at} not cached; downloaded when a suite first needs it"


def check_base(sub: Submission, root: Path, base: BaseView | None = None) -> list[str]:
    """The base model can be loaded: a folder (or cached hub snapshot) with model_index.json
    that parses and every component's config; a hub base that is not cached while the hub is
    off is refused. ``base``: the base already located (not looked up again)."""
    import json

    b = sub.base_model
    lines = []
    if b.hub_id:
        if base is not None and base.folder is not None:  # found complete in the cache (cached_base_folder)
            lines.append(f"base_model.hub_id: {b.hub_id}@{b.revision[:12]} found in the local Hugging Face cache")
        else:
            lines.append(check_hub_model(b.hub_id, b.revision, "base_model.hub_id"))
    if base is not None:
        d = base.folder
    else:
        d = base_dir(b, root)
        if d is None and b.hub_id and b.revision:
            from harness.store.hub import pipeline_snapshot

            try:
                d = pipeline_snapshot(b.hub_id, b.revision, download=False)
            except HarnessError:  # not cached and online: the run downloads it (offline was refused above)
                d = None
    if d is None:
        return lines
    name = d.name if b.hub_id is None else b.hub_id
    try:
        index = json.loads((d / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise HarnessError(f"base_model: {name}/model_index.json cannot be read ({type(e).__name__})") from None
    if not isinstance(index, dict):
        raise HarnessError(f"base_model: {name}/model_index.json is not a JSON object")
    from harness.families import family_of

    fam = family_of(index, "base_model", where=f"{name}/model_index.json")
    for part in fam.components:
        if part not in index:
            raise HarnessError(f"base_model: {name}/model_index.json names no {part} (not a {fam.title} pipeline)")
        cfg = fam.config_file(part)
        f = d / part / cfg
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            what = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({type(e).__name__})"
            raise HarnessError(f"base_model: {name}/{part}/{cfg} is {what}: the pipeline cannot load") from None
    for part in fam.weight_parts():
        if not sorted((d / part).glob("*.safetensors")):
            raise HarnessError(f"base_model: {name}/{part}/ holds no safetensors weights (pickle weights are not loaded)")
    return lines


def _pins(obj, where: str, parts: tuple = ()):
    """(field path, its components, {path, sha256} mapping) of every pinned file in a suite's
    data (components kept apart: a concept key may hold a ``.``)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("sha256"), str):
            yield where, list(parts), obj
        for k, v in obj.items():
            yield from _pins(v, f"{where}.{k}" if where else str(k), (*parts, str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _pins(v, f"{where}.{i}", (*parts, str(i)))


def check_pins(sub: Submission, suite: Suite, root: Path) -> None:
    """Every sha256 pin of the suite that this submission's run would use: an all-zero
    placeholder stops the suite (it cannot run until a maintainer pins the real file); a pinned
    metric file or folder must exist and match; a scorer model on the hub must be cached when
    the hub is off. ``references_by_concept`` entries count only for the submission's targets."""
    from harness.store.hashing import sha256_file, sha256_tree
    from harness.spec import inside

    where = f"suite {suite.id}"
    concepts = {t.concept for t in sub.targets}
    data = suite.model_dump(mode="json")
    for field, parts, pin in _pins(data, ""):
        if "references_by_concept" in parts:
            i = parts.index("references_by_concept")
            if len(parts) > i + 1 and parts[i + 1] not in concepts:
                continue
        if pin["sha256"] == PLACEHOLDER:
            what = pin.get("path") or pin.get("url") or "the file"
            raise HarnessError(f"{where}: {field}.sha256: placeholder (all zeros) for {what}: not runnable here until a maintainer "
                               "pins the real file (see the suite file's comments)")
        if field.startswith(("metrics.", "attacks.")) and pin.get("path"):
            p = inside(root, pin["path"], f"{where}: {field}.path")
            if not p.exists():
                raise HarnessError(f"{where}: {field}.path: {pin['path']}: no such file or folder")
            got = sha256_tree(p) if p.is_dir() else sha256_file(p)
            if got != pin["sha256"]:
                raise HarnessError(f"{where}: {field}.sha256: {pin['path']} has sha256 {got}, expected {pin['sha256']}")
    for j, m in enumerate(data.get("metrics", [])):
        params = m.get("params") or {}
        if isinstance(params.get("model"), str) and "/" in params["model"] and isinstance(params.get("revision"), str):
            check_hub_model(params["model"], params["revision"], f"{where}: metrics.{j}.params.model", kind="model")


def check_lora(sub: Submission, ckpt: Path, root: Path, allow_pickle: bool, base: BaseView | None = None) -> str:
    """A LoRA's tensors must adapt modules the base has: each ``<module>.lora_A/B`` (peft) or
    ``<module>.lora.down/up`` (diffusers) name, with its ``unet.`` / ``text_encoder.`` prefix
    removed, must name a Linear / Conv module of the base (its ``.weight`` tensor), and the
    ranks' outer sizes must fit it."""
    files = [ckpt] if ckpt.is_file() else sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise HarnessError(f"checkpoint: LoRA folder {ckpt.name} holds no *.safetensors")
    found: dict = {}
    for f in files:
        found.update(tensor_shapes(f, allow_pickle))
    if not found:
        raise HarnessError(f"checkpoint: LoRA {ckpt.name} holds no tensors")
    bases = {comp: base_shapes(sub, root, comp, base) for comp in COMPONENTS}
    if all(v is None for v in bases.values()):
        return f"checkpoint: LoRA, {len(found)} tensor(s), readable (names not compared: base not available here)"
    import re

    pat = re.compile(r"^(?:base_model\.model\.)?(?P<comp>unet|text_encoder)?\.?(?P<mod>.+?)\.(?:lora_(?P<ab>[AB])(?:\.default)?|lora\.(?P<du>down|up)|lora_(?P<du2>down|up))\.weight$")
    adapted, kohya = 0, 0
    for name, (shape, _) in found.items():
        if name.endswith("alpha") or "lora_magnitude" in name:
            continue
        if name.startswith(("lora_unet_", "lora_te")):  # kohya names (diffusers converts them): not compared
            kohya += 1
            continue
        m = pat.match(name)
        if not m:
            raise HarnessError(f"checkpoint: LoRA tensor {name!r} is not named <module>.lora_A/.lora_B (peft) or <module>.lora.down/.up (diffusers)")
        comp = m.group("comp") or "unet"
        own = bases.get(comp)
        if own is None:
            continue
        mod = m.group("mod")
        key = mod + ".weight"
        if key not in own:
            alt = f"text_model.{key}" if not key.startswith("text_model.") else key.removeprefix("text_model.")
            key = alt if alt in own else None
        if key is None:
            near = difflib.get_close_matches(mod + ".weight", list(own), n=1, cutoff=0.8)
            hint = f" (nearest: {near[0].removesuffix('.weight')!r})" if near else ""
            raise HarnessError(f"checkpoint: LoRA tensor {name!r} adapts {mod!r}, which is not a module of the base's {COMPONENTS[comp]}{hint}")
        w = own[key]
        down = m.group("ab") == "A" or "down" in (m.group("du"), m.group("du2"))
        outer = shape[1] if down else shape[0]
        need = w[1] if down else w[0]
        if len(shape) >= 2 and outer != need:
            raise HarnessError(f"checkpoint: LoRA tensor {name!r} has shape {tuple(shape)}, but {mod!r} of the base is {tuple(w)}")
        adapted += 1
    note = f"; {kohya} kohya-format tensor(s) not compared" if kohya else ""
    return f"checkpoint: LoRA, {adapted} tensor(s), names and sizes match the base's modules{note}"
