"""Reference unlearning methods, each a module with ``erase(pipe, concepts, **params)`` that
edits the pipeline in place and returns the changed tensors (state-dict names of the component
its ``checkpoint_kind`` names: the UNet's unless it says otherwise), and its
contract ``INFO`` (a ``MethodInfo``: paper, code, presets, committed toy parameters, tolerance
class, fidelity choices, what it needs of the model). ``REGISTRY`` finds them, and third-party
methods by the entry-point group ``unlearn_harness.methods`` (harness.registry).

``run_erase`` is what ``unlearn erase`` calls: it loads the base, runs a method, measures what
UnlearnCanvas calls efficiency (wall time, peak memory, storage) and writes only the changed
tensors (``<checkpoint_kind>.safetensors``: the UNet's for most methods, the text encoder's for
AdvUnlearn) plus ``method.json``.
"""

from __future__ import annotations

import importlib
import json
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from harness.errors import HarnessError
from harness.registry import GROUPS, Registry, RegistryView


@dataclass(frozen=True)
class AuthorsInputs:
    """What a method's authors feed their training script for one concept, which its ``paper*``
    presets feed too (``unlearn erase --prompts authors``, the default with those presets): the
    harness's own toy-world templates (``--prompts toy``) are this project's, not theirs.

    Each field is by the concept's kind (``style`` / ``object``; a kind the authors have no
    recipe for is absent). In ``templates`` ``"{}"`` is the concept phrase; an ``anchor`` of
    ``""`` is the empty prompt, ``"{next}"`` the next concept of the kind in the toy world's list
    (SalUn's next class). ``preserve``: ``none`` or ``others`` (the other concepts of its kind,
    as their scripts or documented commands list neighbours; on a real model there is no list to
    take them from: none). ``source`` cites their code."""

    templates: Mapping[str, tuple[str, ...]]
    anchor: Mapping[str, str]
    preserve: Mapping[str, Literal["none", "others"]]
    source: str = ""

    def covers(self, kind: str) -> bool:
        return kind in self.templates and kind in self.anchor and kind in self.preserve


PROMPT_SOURCES = ("authors", "toy", "generic")


@dataclass(frozen=True)
class MethodInfo:
    """What the harness knows about a method, declared as ``INFO`` in the method's own module.

    The module (``module``, its ``__name__``) defines ``erase(pipe, concepts, **params)`` and may
    define ``resolve(params, concepts)`` (defaults that depend on the run) and
    ``display_name(params)`` (how a leaderboard names the variant)."""

    name: str  # what ``unlearn erase NAME`` and method.json's ``method`` call it
    module: str  # the module defining erase(); its INFO is this
    paper: str  # the paper's URL (method.json's ``paper``, a toy submission's ``paper_url``)
    code: str  # the authors' code (a toy submission's ``code_url``)
    presets: Mapping[str, dict] | None = None  # "paper", "toy", ...: parameter sets; None: the erase() defaults
    # the parameters of the committed toy checkpoints (``unlearn toy checkpoints``) on top of the
    # toy preset; None: the toy preset as it is
    toy_params: dict | None = None
    committed_toy: bool = False  # the repository commits its toy checkpoints (submissions/checkpoints/NAME-*)
    # how close a re-made checkpoint must be on another platform (harness.run.reproduce.TOLERANCES):
    # a closed-form edit (seconds; `unlearn toy reproduce` re-makes these by default) or a long fine-tune
    tolerance: Literal["closed_form", "long_fine_tune"] = "long_fine_tune"
    # fidelity choices a result records (harness.run.fidelity; docs/fidelity.md): parameter ->
    # what a method record made before the parameter existed ran ("NAME.param" in the results)
    fidelity_params: Mapping[str, Any] = field(default_factory=dict)
    fidelity_preset: bool = False  # record "NAME.preset" even where the method record names none
    # what the method edits or uses of a model family (harness.families): "cross_attention", "unet", "text_encoder",
    # "token_embeddings" (AdvUnlearn's attack on the prompt's token embeddings)
    needs: frozenset[str] = frozenset()
    # the model families (harness.families names) the method runs on; None: every family offering
    # ``needs``. A method whose authors' code is SD-1.x only says so: (``"sd1"``,) and a reason
    families: frozenset[str] | None = None
    families_why: str = ""  # why not on the others (shown by `unlearn erase`, and "n/a" on the board)
    # checkpoint: ``erase`` makes changed tensors (``unlearn erase``); inference: the module's
    # ``setup(pipe, family, concepts, **params)`` returns the guidance that changes the sampling
    # (harness.methods.inference), submitted with ``method.kind: inference`` and no checkpoint
    kind: Literal["checkpoint", "inference"] = "checkpoint"
    on_checkpoint: bool = False  # an inference method that may run on top of a submitted checkpoint (SLD on an ESD model)
    # what the authors' script is fed (prompts, anchor, preserve set): the ``paper*`` presets feed it
    authors_inputs: AuthorsInputs | None = None
    # the component whose tensors ``erase`` returns (state-dict names of that module): the file
    # ``unlearn erase`` writes (``<kind>.safetensors``) and the submission's ``checkpoint.kind``
    # (harness.spec.submission.CheckpointKind); a family without that component is refused in one line
    checkpoint_kind: Literal["unet", "text_encoder", "text_encoder_2", "transformer"] = "unet"

    def supports(self, family) -> bool:
        """Whether the method runs on a model family (its name in ``families``, its features cover ``needs``)."""
        return (self.families is None or family.name in self.families) and set(self.needs) <= set(family.features)

    def load(self):
        """The method's module (imports torch)."""
        return importlib.import_module(self.module)

    @property
    def erase(self):
        """The method's ``erase(pipe, concepts, **params)``."""
        return self.load().erase


def _method_info(name: str, obj) -> MethodInfo:
    """An entry point's target (a ``MethodInfo`` or a module defining ``INFO``) as a checked info."""
    inf = getattr(obj, "INFO", obj)
    if not isinstance(inf, MethodInfo):
        raise TypeError(f"is a {type(inf).__name__}, not a harness.methods.MethodInfo (or a module defining INFO)")
    if inf.name != name:
        raise ValueError(f"its MethodInfo is named {inf.name!r}, not {name!r}")
    if inf.kind not in ("checkpoint", "inference"):
        raise ValueError(f"kind {inf.kind!r} is not checkpoint or inference")
    if inf.tolerance not in ("closed_form", "long_fine_tune"):
        raise ValueError(f"tolerance {inf.tolerance!r} is not closed_form or long_fine_tune")
    if inf.checkpoint_kind not in COMPONENT_KINDS:
        raise ValueError(f"checkpoint_kind {inf.checkpoint_kind!r} is not one of {', '.join(COMPONENT_KINDS)}")
    try:
        mod = inf.load()
    except Exception as e:  # a third party's module: any failure is one line naming it
        raise TypeError(f"module {inf.module} cannot be imported ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    entry = "setup(pipe, family, concepts, **params)" if inf.kind == "inference" else "erase(pipe, concepts, **params)"
    if not callable(getattr(mod, entry.split("(")[0], None)):
        raise TypeError(f"module {inf.module} defines no {entry} (a {inf.kind} method)")
    return inf


# The checkpoint kinds a method's changed tensors may be (one component's tensors; not a whole
# pipeline or a LoRA): MethodInfo.checkpoint_kind.
COMPONENT_KINDS = ("unet", "text_encoder", "text_encoder_2", "transformer")

# Modules of this package that are shared code, not methods (they declare no INFO).
HELPERS = frozenset({"common", "finetune", "inference"})

#: The method registry: every module of this package but HELPERS (its ``INFO``), then the
#: ``unlearn_harness.methods`` entry points of installed distributions. Listing names loads no
#: module: the CLI's parser reads them for its choices, and `unlearn leaderboard build` must not
#: pay for torch (a method module imports it).
REGISTRY: Registry[MethodInfo] = Registry("method", GROUPS["method"], _method_info)
for _m in sorted(__import__("pkgutil").iter_modules(__path__), key=lambda m: m.name):
    if _m.name not in HELPERS:
        REGISTRY.register(_m.name, f"{__name__}.{_m.name}:INFO")

# Views of the registry by name (each loads a method's module only when its value is read).
METHODS = RegistryView(REGISTRY, lambda i: i.module)
PAPERS = RegistryView(REGISTRY, lambda i: i.paper)
CODE = RegistryView(REGISTRY, lambda i: i.code)


def method_info(name: str) -> MethodInfo:
    """The registered method ``name``'s info; a one-line error naming close matches otherwise."""
    return REGISTRY.get(name)


def preset_params(mod, method: str, preset: str | None, base: Path, explicit: dict, family: str | None = None) -> tuple[str | None, dict]:
    """The parameters a run uses: the method's preset (``PRESETS[name]``; default ``toy`` when
    the base is a builtin toy world, else ``paper-FAMILY`` where the method has one for the
    base's model family ``family`` (ESD's ``paper-sdxl``), else ``paper``) with explicit values
    on top. Unknown parameter names are refused (one line)."""
    import inspect

    from harness.families.base import TOY_PIPELINES

    presets = REGISTRY.get(method).presets if method in REGISTRY else getattr(mod, "PRESETS", None)
    if presets is None:
        if preset:
            raise HarnessError(f"--preset: method {method!r} has no presets")
        chosen = {}
    else:
        if preset is None:
            preset = "toy" if Path(base).resolve() in {p.resolve() for p in TOY_PIPELINES.values()} else "paper"
            if preset == "paper" and family and f"paper-{family}" in presets:
                preset = f"paper-{family}"
        if preset not in presets:
            raise HarnessError(f"--preset: {method} has no preset {preset!r}; known: {', '.join(presets)}")
        chosen = dict(presets[preset])
    info = REGISTRY.get(method) if method in REGISTRY else None
    entry, first = (mod.setup, 3) if info is not None and info.kind == "inference" else (mod.erase, 2)  # after (pipe, [family,] concepts)
    sig = inspect.signature(entry).parameters
    known = [k for k in list(sig)[first:] if k not in ("progress", "history")]
    for k, v in explicit.items():
        if k not in known:
            raise HarnessError(f"--param {k}: {method} has no parameter {k!r}; known: {', '.join(known)}")
        default = chosen.get(k, sig[k].default if sig[k].default is not inspect.Parameter.empty else None)
        problem = _param_problem(v, default)
        if problem:
            raise HarnessError(f"--param {k}: {str(v)[:40]!r} {problem}")
    return preset, {**chosen, **explicit}


MAX_PARAM_INT = 1_000_000  # step counts, iterations, batch sizes: what a method.json (a PR's file) may ask of `unlearn regress`


def _param_problem(v, default) -> str | None:
    """Why ``v`` cannot be a value of a parameter whose default is ``default`` (None: it can):
    a number where the default is one, finite, whole where the default is whole, within
    +-1,000,000 (a training run of 10**9 steps from a submitted method.json is refused)."""
    import math

    if isinstance(default, bool) or default is None or not isinstance(default, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "is not a finite number"
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(default, int) and not isinstance(v, int)):
        return f"is not {'a whole number' if isinstance(default, int) else 'a number'} (the default is {default!r})"
    try:
        ok = math.isfinite(float(v)) and -MAX_PARAM_INT <= v <= MAX_PARAM_INT
    except OverflowError:
        ok = False
    return None if ok else f"is outside -{MAX_PARAM_INT}..{MAX_PARAM_INT}"


def method_tolerance(method: str):
    """How close a re-made checkpoint of ``method`` must be (``harness.run.reproduce.TOLERANCES``
    by its ``MethodInfo.tolerance``); any other name, a plugin's included (the gate reads the name
    from a file and loads no plugin for it): a long fine-tune's."""
    from harness.run.reproduce import LONG_FINE_TUNE, TOLERANCES

    info = REGISTRY.find(method, own_only=True)
    return TOLERANCES[info.tolerance] if info is not None else LONG_FINE_TUNE


def get_method(name: str):
    """The module of the registered method ``name`` (its ``erase``, ``PRESETS``, ...)."""
    return REGISTRY.get(name).load()


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux: ``/proc/self/clear_refs`` <- 5 resets VmHWM), so a
    second erasure in one process (``unlearn toy checkpoints``) is not charged the first's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_memory_bytes(device: str, reset: bool = False) -> tuple[int, str]:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    if reset:  # VmHWM since the reset before the erasure (model load included)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "peak RSS of the erasure (VmHWM after a clear_refs reset)"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "max RSS of the process (getrusage)"


def run_erase_isolated(*args, **kwargs) -> dict:
    """``run_erase`` in a fresh (spawned) process, so its peak memory is its own: in a process that
    erased before, a VmHWM reset starts from the RSS the allocator still holds (RECE after SalUn in
    one process read 1.25 GB, alone 0.91 GB). ``unlearn toy checkpoints`` and ``unlearn regress``
    erase this way. A child that dies is one line."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(run_erase, *args, **kwargs).result()
    except BrokenProcessPool:
        raise HarnessError(f"the process erasing with {args[0] if args else kwargs.get('method')} died (out of memory?)") from None


def erase_repeated(repeats: int, method: str, base, concept: str, out, **kw) -> dict:
    """``run_erase`` ``repeats`` times, each in a fresh process (its peak memory its own,
    ``run_erase_isolated``): the first writes ``out``, the others a scratch folder beside it that
    is removed. method.json's efficiency then holds the mean time / peak memory and ``repeats``:
    ``n``, every run's ``time_s``, ``cpu_s``, ``peak_memory_bytes`` and ``same_checkpoint``
    (every run wrote the same tensors, by sha256)."""
    import shutil
    import tempfile

    out = Path(out)
    recs = [run_erase_isolated(method, base, concept, out, **kw)]
    scratch = Path(tempfile.mkdtemp(prefix=".repeat-", dir=out.parent))
    try:
        for r in range(1, repeats):
            recs.append(run_erase_isolated(method, base, concept, scratch / f"run{r}", **{**kw, "force": True}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rec = recs[0]
    runs = {k: [x["efficiency"][k] for x in recs] for k in ("time_s", "cpu_s", "peak_memory_bytes")}
    eff = rec["efficiency"]
    eff.update(time_s=round(sum(runs["time_s"]) / repeats, 3), cpu_s=round(sum(runs["cpu_s"]) / repeats, 3),
               peak_memory_bytes=int(round(sum(runs["peak_memory_bytes"]) / repeats)),
               repeats={"n": repeats, **runs, "same_checkpoint": len({x["checkpoint"]["sha256"] for x in recs}) == 1})
    (out / "method.json").write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def run_erase(
    method: str,
    base: str | Path,
    concept: str,
    out: str | Path,
    *,
    anchor: str | None = None,
    world: str | None = None,
    kind: str | None = None,
    force: bool = False,
    allow_subword: bool = False,
    device: str = "cpu",
    params: dict | None = None,
    preset: str | None = None,
    threads: int | None = None,
) -> dict:
    """Erase ``concept`` from the pipeline at ``base`` with ``method``; write ``out``.

    A method with ``PRESETS`` starts from ``PRESETS[preset]`` (``toy`` on the builtin toy base,
    else ``paper``, when none is named);
    explicit ``params`` override it; method.json records the preset and every parameter used.
    ``world`` is where the prompts come from (``PROMPT_SOURCES``): ``authors`` (what the
    method's authors feed, ``MethodInfo.authors_inputs``; ``kind`` picks their anchor), ``toy``
    (the toy world's templates, every context of the concept) or ``generic`` (the bare concept,
    anchor ``''``); None: ``authors`` with a ``paper*`` preset of a method that declares them,
    else ``toy`` for a toy-world concept, else ``generic``. method.json records it
    (``prompt_source``) with the prompts.
    ``threads``: torch's intra-op threads for the erasure (restored after; None: as set). Float
    reductions differ with the thread count, so a method re-made bitwise needs the count it was
    made with: method.json records it (``efficiency.threads``) beside wall and CPU seconds."""
    import torch
    from safetensors.torch import save_file

    from harness.families import family_of
    from harness.families.base import check_kind, require
    from harness.store.hashing import sha256_file, sha256_tree
    from harness.families.sd1 import quiet_loading
    from harness.run.reproduce import fingerprint
    from harness.methods.common import ConceptPrompts, check_concept_tokens, for_authors, for_toy_world, toy_kind

    if method_info(method).kind == "inference":
        raise HarnessError(f"method {method} is an inference-time method: it changes the sampling, there is no checkpoint to make; "
                           f"submit it with `method: {{name: {method}, kind: inference}}` and no checkpoint (docs/submitting.md)")
    mod = get_method(method)
    base, out = Path(base), Path(out)
    # the base's family picks a method's default preset where it has one for it (paper-sdxl)
    family_name = family_of(base, what="--base").name if preset is None and (base / "model_index.json").is_file() else None
    preset, params = preset_params(mod, method, preset, base, dict(params or {}), family=family_name)
    if not (base / "model_index.json").is_file():
        raise HarnessError(f"--base {base}: no diffusers pipeline there (model_index.json missing)")
    if out.exists() and not force:
        raise HarnessError(f"--out {out} exists; pass --force to overwrite it")
    if out.is_symlink() or (out.exists() and not (out.is_dir() and (out / "method.json").is_file())):
        # --force replaces only an earlier erase's output folder, never another folder or file
        raise HarnessError(f"--out {out}: is not a folder `unlearn erase` wrote (no method.json in it); --force replaces only those")
    family = family_of(base, what="--base")
    info = method_info(method)
    if info.families is not None and family.name not in info.families:
        raise HarnessError(f"method {method} runs on {', '.join(sorted(info.families))} only, not on the {family.name} model family of "
                           f"{base.name}" + (f" ({info.families_why})" if info.families_why else ""))
    require(family, info.needs, f"method {method}")
    check_kind(family, info.checkpoint_kind, f"method {method}: its checkpoint kind")
    quiet_loading()
    # Check the words with the tokenizer alone, before the models load.
    tokenizer = family.load_tokenizer(base)
    check_concept_tokens(tokenizer, concept, allow_subword)
    if world is None:
        covered = info.authors_inputs is not None and info.authors_inputs.covers(kind or toy_kind(concept) or "object")
        world = "authors" if covered and (preset or "").startswith("paper") else "toy" if toy_kind(concept) else "generic"
    if world not in PROMPT_SOURCES:
        raise HarnessError(f"--prompts: must be one of {', '.join(PROMPT_SOURCES)}, not {str(world)[:40]!r}")
    if kind is not None and kind not in ("style", "object"):
        raise HarnessError(f"--kind: must be style or object, not {str(kind)[:40]!r}")
    if world == "authors":
        if info.authors_inputs is None:
            raise HarnessError(f"--prompts authors: method {method} declares no authors' inputs (MethodInfo.authors_inputs); use toy or generic")
        prompts = for_authors(info.authors_inputs, concept, kind, anchor)
    elif world == "toy":
        prompts = for_toy_world(concept, anchor)
    else:
        prompts = ConceptPrompts(concept, anchor or "")
    if prompts.anchor:
        # the authors' own default anchor is fed as they feed it, even where this tokenizer
        # splits it (the toy vocabulary has no "art"): recorded, not refused
        from_authors = world == "authors" and anchor is None
        check_concept_tokens(tokenizer, prompts.anchor, allow_subword or from_authors)
    pipe = family.load_for_training(base, device)
    if hasattr(mod, "resolve"):  # defaults that depend on the run (e.g. UCE's tail preserve scale)
        params = mod.resolve(params, [prompts])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    reset = not device.startswith("cuda") and _reset_peak_rss()  # the loaded pipeline stays counted
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used_threads = torch.get_num_threads()
        t0, c0 = time.perf_counter(), time.process_time()
        changed = mod.erase(pipe, [prompts], **params)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(before)
    peak, peak_how = _peak_memory_bytes(device, reset)

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ck_kind = info.checkpoint_kind
    ck_file = tmp / f"{ck_kind}.safetensors"  # the component's changed tensors (state-dict names of that module)
    save_file({k: v.contiguous() for k, v in changed.items()}, ck_file)
    storage = ck_file.stat().st_size
    record = {
        "method": method,
        "paper": REGISTRY.get(method).paper,
        "concept": concept,
        "anchor": prompts.anchor,
        "prompt_source": world,
        **({"concept_kind": kind or toy_kind(concept) or "object", "authors_inputs": info.authors_inputs.source} if world == "authors" and info.authors_inputs else {}),
        "templates": list(prompts.templates),
        "preserve": list(prompts.preserve),
        "preset": preset,
        "params": params,
        **({"display_name": mod.display_name(params)} if hasattr(mod, "display_name") else {}),
        "checkpoint": {"kind": ck_kind, "file": ck_file.name, "sha256": sha256_file(ck_file), "tensors": len(changed)},
        "base": {"path": str(base), "sha256": sha256_tree(base)},
        "efficiency": {
            "time_s": round(seconds, 3),
            "cpu_s": round(cpu_seconds, 3),  # process CPU time: what the wall time is under a machine's load
            "threads": used_threads,
            "peak_memory_bytes": peak,
            "peak_memory_measure": peak_how,
            "storage_bytes": storage,
            "device": device,
            "measured": True,
        },
        "versions": {"torch": torch.__version__},
        # where the tensors were made: a re-made checkpoint is bitwise this one only there
        # (harness.run.reproduce); elsewhere equal within the method's tolerance
        "platform": fingerprint(device, threads=used_threads),
    }
    (tmp / "method.json").write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return record
