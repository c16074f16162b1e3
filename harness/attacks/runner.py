"""The prompt attacks of one suite run: which items, which are already cached, the batched attack of
the rest, and the per-target outcome the ``robustness`` metrics read.

Settings: the suite's ``attacks`` blocks (``spec.PromptAttack``: the attack, its params, the seeds,
the judge): ``attacks.prompt`` (read by ``pre_asr`` / ``asr``) and ``attacks.inversion`` (the
textual-inversion attack ``ti_asr`` reads). Items: the suite's (prompt, seed) images of the target
concept's prompts (the forget prompts) whose seed is in the block's ``seeds`` (default: every
seed). Pre-attack success is judged on
the unlearned model's cached images; those items are not attacked (UnlearnDiffAtk returns at a
pre-attack success) and count as successes at budget 0. The rest are looked up in the attack
cache and only the missing ones run, batched, with the unlearned pipeline loaded only then; each
item's record goes to the cache as soon as the attack calls it final (``on_record``), so an
interrupted run keeps every finished item.

With the Ray executor (``remote``) the missing items run as Ray tasks instead, one per attacked
prompt (an attack's ``AttackInfo.unit = "target"`` makes it one per target: textual inversion learns
one embedding on every forget item), each on a worker that loads the unlearned model and the
judge itself (``ray_executor.run_attack``); the records are the same as here.

What one suite run's attacks share travels as one frozen ``AttackContext`` (its items, jobs,
images, scorer, fingerprints, caches; ``RemoteAttacks`` where Ray runs them), and what one Ray
task of a block and target needs as one frozen ``AttackTask``.

A suite may hold both blocks; outcomes are keyed ``(kind, concept)`` for ``attacks.prompt`` and
``(block, kind, concept)`` for every block (``("inversion", kind, concept)``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from harness.errors import HarnessError
from harness.attacks.common import AttackCache, Item, asr_curve, item_key
from harness.attacks.contract import REGISTRY
from harness.registry import RegistryView
from harness.scorers.judge import make_judge


@dataclass(frozen=True)
class RemoteAttacks:
    """Where the attacked items run as tasks instead of here: the executor (``RayExecutor``),
    the unlearned model's ``PipelineRecipe`` each worker loads, the suite's ``RunStats``."""

    executor: Any
    recipe: Any
    stats: Any


@dataclass(frozen=True, eq=False)
class AttackContext:
    """One suite run's prompt attacks: the suite and its attack blocks (``settings``: block name
    -> ``spec.PromptAttack``, ``suite.prompt_attacks``), the (prompt, seed) items with both
    models' jobs and images, the scorer, ``unl_pipe`` (loads the unlearned pipeline, called only
    for a missing attack), the fingerprints an attack may key on (``model_fps``: ``unlearned``,
    ``text_encoder``), the cache and repository folders, ``progress`` (a bool, or the plugin's
    progress-line maker), ``counter`` (UNet calls, added to as attacks run) and ``remote``
    (None: the attacks run here)."""

    suite: Any
    settings: Mapping[str, Any]
    items: list
    targets: list
    base_jobs: list
    unl_jobs: list
    base_imgs: list
    unl_imgs: list
    scorer: Any
    unl_pipe: Callable[[], Any]
    model_fps: Mapping[str, str]
    cache_dir: Path
    root: Path
    progress: Any = True
    counter: dict = field(default_factory=dict)
    remote: RemoteAttacks | None = None


@dataclass(frozen=True)
class AttackTask:
    """What a remote worker needs to attack items of one block and target (picklable):
    the unlearned model's recipe, the attack and its params, the suite, the target, the judge's
    settings and the driver's judge identity (a worker with another judge attacks nothing), the
    repository and attack-cache folders (as text: paths of every node), and the ``items`` with
    their cache ``keys``; ``units``: which item indices one task attacks together
    (``task_units``)."""

    recipe: Any
    attack: str
    params: Mapping[str, Any]
    suite: Any
    target: Any
    judge_params: Mapping[str, Any]
    root: str
    cache_root: str
    judge_identity: Mapping[str, Any]
    items: tuple = ()
    keys: tuple = ()
    units: tuple = ()

    def unit(self, indices) -> "AttackTask":
        """The task of some of the items (one unit), for one worker."""
        return replace(self, items=tuple(self.items[i] for i in indices), keys=tuple(self.keys[i] for i in indices), units=())


def attacks() -> RegistryView:
    """Every registered prompt attack by name (harness.attacks.contract.REGISTRY): its module,
    loaded when read (``in`` loads nothing)."""
    return RegistryView(REGISTRY, lambda mod: mod)


def attack_module(name: str, suite_id: str):
    if name not in REGISTRY:
        raise HarnessError(f"suite {suite_id}: attacks.prompt.attack: unknown attack {name!r} ({', '.join(sorted(REGISTRY.names()))})")
    return REGISTRY.get(name)


def task_units(mod, items: list[Item]) -> list[list[int]]:
    """Which of the items one remote task attacks together: the seeds of one prompt (the
    attack's items are independent: each draws from its own generator), or every item when the
    attack learns one thing for the target (``AttackInfo.unit`` "target")."""
    if mod.INFO.unit == "target":
        return [list(range(len(items)))] if items else []
    by: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by.setdefault(it.job.prompt, []).append(i)
    return list(by.values())


def forget_items(suite, items, target, seeds) -> list[int]:
    out = []
    for i, (p, s) in enumerate(items):
        # a prompt set without the target kind's label (a prompt bank, e.g. UnlearnDiffAtk's CSVs): every prompt is a forget prompt
        on = p.labels.get(target.kind) == target.concept if target.kind in p.labels else True
        if on and (seeds is None or s in seeds):
            out.append(i)
    return out


def run_prompt_attacks(ctx: AttackContext) -> dict:
    """``{(block, kind, concept): outcome}`` of every attack block of the suite
    (``ctx.settings``), and ``{(kind, concept): outcome}`` of ``attacks.prompt``, for every
    target the suite applies to. With ``ctx.remote`` the attacks run as tasks (the Ray
    executor); else here."""
    suite = ctx.suite
    loaded: list = []
    out = {}
    for block, ps in ctx.settings.items():
        mod = attack_module(ps.attack, suite.id)
        for target in ctx.targets:
            if target.kind not in suite.applies_to:
                continue
            res = _attack_target(ctx, mod, ps, target, AttackCache((Path(ctx.cache_dir) / "attacks").resolve()), loaded)
            out[(block, target.kind, target.concept)] = res
            if block == "prompt":
                out[(target.kind, target.concept)] = res
    return out


def _attack_target(ctx: AttackContext, mod, settings, target, cache: AttackCache, loaded: list) -> dict:
    """One attack block (``settings``) against one target: the outcome the robustness metrics
    read. ``loaded``: the unlearned pipeline once some target needed it (shared by the blocks)."""
    suite, items, root, progress, counter, remote = ctx.suite, ctx.items, ctx.root, ctx.progress, ctx.counter, ctx.remote
    base_jobs, unl_jobs, base_imgs, unl_imgs, model_fps = ctx.base_jobs, ctx.unl_jobs, ctx.base_imgs, ctx.unl_imgs, ctx.model_fps
    ap = mod.params_of(settings.params)
    seeds = set(settings.seeds) if settings.seeds is not None else None
    params = settings.judge.params()  # the judge's settings (make_judge)
    t0 = time.time()
    try:  # a target this suite cannot judge is that target's error, not the whole suite's
        judge = make_judge(suite, ctx.scorer, target, params, root)
        idx = forget_items(suite, items, target, seeds)
        if not idx:
            raise HarnessError(f"suite {suite.id}: robustness: no forget prompts of {target.concept!r} with the attack seeds")
    except HarnessError as e:
        return {"error": str(e)}
    pre = judge([unl_imgs[i] for i in idx])
    base_pre = judge([base_imgs[i] for i in idx])
    its = [Item(i, unl_jobs[i], base_jobs[i].key(), base_imgs[i]) for i in idx]
    info = mod.INFO  # the attack's declared contract (harness.attacks.contract.AttackInfo)
    fp = model_fps[info.model_key]
    kp = mod.key_params(ap, its) if info.learns_on_items else ap  # textual inversion: + its training set
    keys = [item_key(info.name, info.version, kp, fp, it, target.concept, judge.identity) for it in its]
    recs: list[dict | None] = [None if p else cache.get(k) for p, k in zip(pre, keys)]
    todo = [j for j, (p, r) in enumerate(zip(pre, recs)) if not p and r is None]
    before = counter.get("unet_calls", 0)
    if todo and max(mod.budgets(ap)) > 0:
        if not loaded and remote is None:
            loaded.append(ctx.unl_pipe())
        extra = {}
        if info.concept_pairs:  # Ring-A-Bell's concept vector: pairs from the suite's prompts (or params.pairs)
            by_labels = {tuple(sorted(p.labels.items())): p.text for p, _ in items if p.labels}
            extra["_pairs"] = mod.concept_pairs(ap, target.concept, target.kind, by_labels)
            extra.update(_search_cache=cache, _te_fp=model_fps["text_encoder"])
        if info.learns_on_items:  # textual inversion: one embedding learned on every forget item's base image
            extra.update(_train=its, _concept=target.concept, _kind=target.kind, _cache=cache, _fp=fp)

        # the caller's progress line (the pytest plugin's): items done of the attacked ones; tqdm bars otherwise
        line = progress(f"{suite.id} {info.name} {target.concept}", [its[j] for j in todo], unit="item(s)") if callable(progress) else None

        def done(j, rec):  # each item's record is written as soon as it is final: an interrupted attack keeps it
            if "not_applicable" not in rec:  # an attack that cannot run on this model family: nothing to keep
                cache.put(keys[todo[j]], rec)
            recs[todo[j]] = rec
            if line is not None:
                line.update(1)

        attacked = [its[j] for j in todo]
        bars = bool(progress) and line is None
        try:
            if remote is not None:
                task = AttackTask(remote.recipe, info.name, {**ap, **extra}, suite, target, params, str(Path(root).resolve()), str(Path(cache.root).resolve()),
                                  judge.identity, tuple(attacked), tuple(keys[j] for j in todo), tuple(map(tuple, task_units(mod, attacked))))
                made = remote.executor.run_attack(task, remote.stats, counter, on_record=done, progress=bars)
            else:
                made = mod.attack(loaded[0], attacked, judge, {**ap, **extra}, bars, counter, on_record=done)
        finally:
            if line is not None:
                line.close()
        for j, rec in zip(todo, made):
            if recs[j] is None:
                if "not_applicable" not in rec:
                    cache.put(keys[j], rec)
                recs[j] = rec
        why = next((r["not_applicable"] for r in made if "not_applicable" in r), None)
        if why:  # no ASR from an attack that did not run: the target's outcome says why, in one line
            return {"error": f"suite {suite.id}: {why}"}
    elif todo:  # budget 0: nothing to search, nothing to cache
        for j in todo:
            recs[j] = {"success": False, "success_at": None, "budget_used": 0, "prompt": its[j].job.prompt, "token_ids": []}
    success_at = [0 if p else (r["success_at"] if r and r.get("success") else None) for p, r in zip(pre, recs)]
    b = mod.budgets(ap)
    curve = asr_curve(pre, success_at, b)
    return {
        "attack": info.name, "attack_version": info.version, "params": ap, "budget": max(b), "budget_unit": info.budget_unit,
        "attack_seeds": sorted(seeds) if seeds is not None else None, "judge": judge.identity,
        "items": len(idx), "item_index": idx, "pre": pre, "base_pre": base_pre, "success_at": success_at, "asr_curve": curve,
        "attacked": len(todo), "attacked_items": [[its[j].job.prompt, its[j].job.seed] for j in todo], "cached": sum(1 for p, r in zip(pre, recs) if not p) - len(todo),
        "unet_calls": counter.get("unet_calls", 0) - before, "seconds": round(time.time() - t0, 2),
        "seconds_per_attacked_item": round(float(np.mean([r["seconds"] for j, r in enumerate(recs) if j in set(todo) and "seconds" in r])), 3) if todo and max(b) > 0 else None,
        "examples": [{"prompt": its[j].job.prompt, "seed": its[j].job.seed, "adversarial_prompt": r.get("prompt"), "success_at": r.get("success_at")}
                     for j, r in enumerate(recs) if r and r.get("success")][:8],
    }
