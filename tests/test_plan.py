"""The planning layer (``harness.run.plan``): suites, cases, smoke subsets, items, sizes and jobs from
the specs alone; and the import rule that keeps data flowing one way (check does not import the
evaluator; no lower stage imports a higher one)."""

import ast
from pathlib import Path

import pytest

from harness.run import plan
from harness.errors import HarnessError
from harness.families.sd1 import model_fingerprints
from harness.spec import Prompt, TargetSpec, load_submission, load_suite

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "harness"


@pytest.fixture(scope="module")
def uce_style():
    return load_submission(ROOT / "submissions" / "toy-uce-style.yaml")


def suite(sid):
    return load_suite(ROOT / "suites" / f"{sid}.yaml")


# ----------------------------------------------------------------------------- import rule
def imported(path: Path) -> set[str]:
    """The harness modules a file imports anywhere (module level or inside a function), as
    dotted names below ``harness`` (``from . import plan`` gives ``plan``)."""
    rel = path.relative_to(HARNESS).with_suffix("")
    package = list(rel.parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.removeprefix("harness.") for a in node.names if a.name.startswith("harness.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("harness"):
                mod = node.module.removeprefix("harness").lstrip(".")
            else:
                continue
            if node.module is None or not mod:  # from . import plan, stats
                out |= {".".join(filter(None, [mod, a.name])) for a in node.names}
            else:
                out.add(mod)
    return out


def hits(names: set[str], higher: set[str]) -> set[str]:
    """The names that are one of ``higher`` or inside one of them (``run.plan`` is inside ``run``)."""
    return {n for n in names for h in higher if n == h or n.startswith(h + ".")}


# (module, modules of a higher stage it must not import), as dotted names below ``harness``.
# Stages, low to high: specs -> plan -> check -> families / generation -> scores and verdicts ->
# the evaluator -> plugin / CLI / site.
HIGHER = {
    "run.plan": {"resolve.check", "run.evaluate", "run.estimate", "plugin", "cli", "run.ray_executor", "results", "site", "gate"},
    "resolve.check": {"run.evaluate", "run.estimate", "plugin", "cli", "site", "gate"},
    "run.estimate": {"run.evaluate", "resolve.check", "plugin", "cli"},
    "families.sd1": {"run.plan", "resolve.check", "run.evaluate", "plugin", "cli", "run.ray_executor"},
    "run.generate": {"run.plan", "resolve.check", "run.evaluate", "plugin", "cli", "run.ray_executor"},
    "run.ray_executor": {"run.plan", "resolve.check", "run.evaluate", "plugin", "cli"},
    "stats.intervals": {"run", "resolve.check", "plugin", "cli", "results"},
    "run.evaluate": {"resolve.check", "plugin", "cli", "site", "gate"},
}


@pytest.mark.parametrize("module", sorted(HIGHER))
def test_no_lower_stage_imports_a_higher_one(module):
    path = HARNESS / (module.replace(".", "/") + ".py")
    bad = hits(imported(path), HIGHER[module])
    assert not bad, f"harness/{module}.py imports {sorted(bad)} (a higher stage)"


def test_check_imports_nothing_from_the_evaluator():
    names = imported(HARNESS / "resolve" / "check.py")
    assert names and not hits(names, {"run.evaluate"}), names


# ----------------------------------------------------------------------------- suites and cases
def test_suites_of_the_toy_world_that_apply_to_a_target_kind(uce_style):
    suites = plan.resolve_suites(uce_style, ROOT)
    assert set(suites) == {"toy-canvas", "toy-concealment", "toy-efficiency", "toy-fid", "toy-integrity", "toy-mscore", "toy-robustness"}
    assert all(s.world == "toy" and "style" in s.applies_to for s in suites.values())


def test_a_declared_suite_that_does_not_exist_is_one_line(uce_style):
    sub = uce_style.model_copy(update={"suites": ["no-such-suite"]})
    with pytest.raises(HarnessError, match=r"^suites: no suite 'no-such-suite' \(expected suites/no-such-suite.yaml\)$"):
        plan.resolve_suites(sub, ROOT)
    assert plan.suite_path(ROOT, "toy-canvas") == ROOT / "suites" / "toy-canvas.yaml"


def test_one_case_per_metric_and_applicable_target(uce_style):
    suites = plan.resolve_suites(uce_style, ROOT)
    cases = plan.plan_cases("s.yaml", uce_style, suites)
    assert len(cases) == sum(len(s.metrics) for s in suites.values())  # one target, a style: every suite applies
    only = plan.plan_cases("s.yaml", uce_style, suites, only={"toy-canvas"})
    assert [c.metric for c in only] == [m.name for m in suites["toy-canvas"].metrics]
    assert only[0].id() == "toy-canvas::UA::striped" and only[0].id(True) == "toy-uce-style::toy-canvas::UA::striped"
    nudity = uce_style.model_copy(update={"targets": [TargetSpec(concept="nudity", kind="nudity")]})
    assert plan.plan_cases("s.yaml", nudity, suites) == []  # no toy suite applies to nudity


# ----------------------------------------------------------------------------- prompts and items
def test_the_smoke_subset_keeps_the_targets_and_the_first_values():
    s = suite("toy-canvas")
    values, n = s.prompts.template.values, s.smoke.max_prompts
    striped = [TargetSpec(concept="striped", kind="style")]
    prompts = plan.suite_prompts(s, striped, ROOT, None)
    smoke = plan.suite_prompts(s, striped, ROOT, None, smoke=True)
    assert len(prompts) == 25 and {p.text for p in smoke} < {p.text for p in prompts}
    assert {p.labels["style"] for p in smoke} == {*[v for v in values["style"] if v != "striped"][:n], "striped"}
    assert {p.labels["object"] for p in smoke} == set(values["object"][:n])
    none = plan.smoke_prompts(s, prompts, [])
    assert len(none) == n * n and {p.labels["style"] for p in none} == set(values["style"][:n])
    assert plan.suite_prompts(s, striped, ROOT, None, smoke=False) == prompts


def test_items_use_a_prompts_own_seed_else_the_suite_seeds():
    s = suite("toy-canvas")
    ps = [Prompt(text="a"), Prompt(text="b", seed=42)]
    assert plan.suite_items(s, ps) == [(ps[0], x) for x in s.generation.seeds] + [(ps[1], 42)]
    assert plan.suite_items(s, ps, smoke=True) == [(ps[0], x) for x in s.smoke.seeds] + [(ps[1], 42)]


# ----------------------------------------------------------------------------- sizes and jobs
def test_jobs_of_base_and_unlearned_differ_in_the_model_alone(uce_style):
    s = suite("toy-canvas")
    items = plan.suite_items(s, plan.suite_prompts(s, uce_style.targets, ROOT, None))
    base_fp, unl_fp = model_fingerprints(uce_style, ROOT)
    size = plan.image_size(uce_style, s, ROOT)
    base, unl = (plan.suite_jobs(s, items, fp, "float32", size) for fp in (base_fp, unl_fp))
    assert len(base) == len(items) == 200 and len({j.key() for j in base + unl}) == 400
    assert all({**vars(b), "model": None} == {**vars(u), "model": None} for b, u in zip(base, unl))
    assert (base[0].steps, base[0].height, base[0].width, base[0].dtype) == (s.generation.steps, 32, 32, "float32")
    smoke = plan.suite_jobs(s, items[:1], base_fp, "float32", size, smoke=True)
    assert smoke[0].steps == (s.smoke.steps or s.generation.steps)


def test_the_native_size_is_read_only_where_the_suite_sets_none(uce_style):
    s = suite("toy-canvas")
    assert plan.native_size(uce_style, ROOT) == 32
    fixed = s.model_copy(update={"generation": s.generation.model_copy(update={"height": 64, "width": 48})})
    assert plan.image_size(uce_style, fixed, ROOT) == 0
    job = plan.suite_jobs(fixed, [(Prompt(text="a"), 0)], "m", "float32", 0)[0]
    assert (job.height, job.width) == (64, 48)


def test_the_attack_grid_and_its_jobs(uce_style):
    assert plan.attack_grid(suite("toy-canvas"), []) is None
    s = suite("toy-concealment")
    items = plan.suite_items(s, plan.suite_prompts(s, uce_style.targets, ROOT, None))
    grid = plan.attack_grid(s, items)
    assert grid.psis == (0.05, 0.15, 0.35, 0.55) and grid.seeds == (0, 1)
    assert [items[i][1] for i in grid.chosen] == [x for _, x in items if x in (0, 1)] and grid.images() == 4 * 50
    base = plan.suite_jobs(s, items, "b", "float32", 32)
    jobs = plan.attack_jobs(grid, base, "b", "u", 0.35)
    assert [j.model for j in jobs] == ["partial-diffusion:b->u@psi=0.35"] * 50
    assert [j.seed for j in jobs] == [base[i].seed for i in grid.chosen]
    # no attacks.partial_diffusion block: the suite's first two seeds, the default psi grid
    bare = plan.attack_grid(s.model_copy(update={"attacks": None}), [(Prompt(text="a"), 5), (Prompt(text="a"), 3), (Prompt(text="a"), 9)])
    assert bare.psis == plan.DEFAULT_PSI and bare.seeds == (3, 5) and bare.chosen == (0, 1)
