"""The evaluator (``harness.run.evaluate``) on the toy world's mini suite (2 steps, 32 x 32): the
suite record and its metric records, results reused within a session, pipelines loaded only for
missing images and made once per suite run (the unlearned one from the base in memory), and the
verdict of every record the one ``stats.verdict`` gives."""

import math

import pytest
from test_bad_inputs import EFFICIENCY, SUITE, repo  # noqa: F401 (repo is a fixture)

from harness.families import sd1 as models
from harness.stats import intervals as stats
from harness.run.evaluate import CONVENTIONS, Evaluator, library_versions
from harness.spec import load_submission


@pytest.fixture
def loads(monkeypatch):
    """Counts base pipelines loaded (``PipelineRecipe.load`` calls the module's ``load_base``)."""
    calls = []
    real = models.load_base

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(models, "load_base", counting)
    return calls


def evaluator(repo, cache=".cache", **kw):
    return Evaluator(repo, repo / cache, device="cpu", smoke=kw.pop("smoke", True), progress=False, **kw)


def test_a_suite_run_records_provenance_and_one_record_per_metric_and_target(repo, loads):
    sub = load_submission(repo / "sub.yaml")
    ev = evaluator(repo)
    out = ev.run("sub.yaml", sub, "mini")
    s = out["suite"]
    # smoke: max_prompts 1 keeps one object and, per style, the target (striped) and the first other one
    assert (s["id"], s["n_prompts"], s["n_images_per_model"], s["seeds"], s["smoke"]) == ("mini", 2, 2, [0], True)
    assert s["images"]["base"] == {"generated": 2, "cached": 0, "flagged": [], "generation_seconds": s["images"]["base"]["generation_seconds"]}
    assert s["images"]["unlearned"]["generated"] == 2 and "attack" not in s["images"]
    assert (s["generation"]["steps"], s["generation"]["height"], s["generation"]["width"]) == (2, 32, 32)  # the toy base's native size
    assert s["models"]["base"].startswith("sha256:") and s["models"]["unlearned"].startswith(s["models"]["base"] + "+unet:")
    assert s["device"] == "cpu" and s["dtype"] == "float32" and s["executor"]["name"] == "local" and s["scorer"] is not None
    assert s["conventions"] == CONVENTIONS and len(s["prompt_set_sha256"]) == 64
    assert [(r["metric"], r["target"]) for r in out["metrics"]] == [("ua", "striped"), ("ira", "striped")]
    # one base pipeline loaded for the whole run: the unlearned model is made from it
    assert len(loads) == 1
    # the session keeps the result: a second case of the suite does not run it again
    assert ev.run("sub.yaml", sub, "mini") is out and len(loads) == 1


def test_every_records_verdict_is_the_one_stats_verdict_gives(repo):
    out = evaluator(repo).run("sub.yaml", load_submission(repo / "sub.yaml"), "mini")
    for r in out["metrics"]:
        assert math.isfinite(r["value"]) and math.isfinite(r["base_value"])
        v = stats.verdict(r["threshold"], r["value"], r["base_value"], r.get("margin_ci"), r.get("flagged_images") or 0)
        assert (r["verdict"], r.get("verdict_point"), r["bound"], r.get("error")) == (v.verdict, v.point, v.bound, v.error)
        assert r["verdict"] in ("pass", "fail", "inconclusive")


def test_a_warm_rerun_loads_no_model_and_gives_the_same_values(repo, loads):
    sub = load_submission(repo / "sub.yaml")
    cold = evaluator(repo).run("sub.yaml", sub, "mini")
    n = len(loads)
    warm = evaluator(repo).run("sub.yaml", sub, "mini")  # a new session, the same cache
    assert len(loads) == n
    assert warm["suite"]["images"]["base"]["cached"] == 2 and warm["suite"]["images"]["unlearned"]["generated"] == 0
    assert [(r["value"], r["base_value"], r["verdict"]) for r in warm["metrics"]] == [(r["value"], r["base_value"], r["verdict"]) for r in cold["metrics"]]


def test_pipelines_are_loaded_per_suite_run_not_kept_across_suites(repo, loads):
    """A second suite with other images loads its base again (the docstring's promise)."""
    (repo / "suites" / "mini2.yaml").write_text(SUITE.replace("id: mini", "id: mini2").replace("seeds: [0]}", "seeds: [1]}"))
    sub = load_submission(repo / "sub.yaml")
    ev = evaluator(repo)
    ev.run("sub.yaml", sub, "mini")
    ev.run("sub.yaml", sub, "mini2")
    assert len(loads) == 2


def test_a_full_run_differs_from_smoke_in_prompts_and_seeds(repo):
    out = evaluator(repo, smoke=False).run("sub.yaml", load_submission(repo / "sub.yaml"), "mini")
    assert (out["suite"]["n_prompts"], out["suite"]["n_images_per_model"], out["suite"]["seeds"], out["suite"]["smoke"]) == (4, 8, [0, 1], False)


def test_a_suite_of_submission_metrics_makes_no_image(repo, loads):
    assert "storage_mb" in EFFICIENCY
    out = evaluator(repo).run("sub.yaml", load_submission(repo / "sub.yaml"), "eff")
    assert loads == [] and out["suite"]["images"]["base"] == {"generated": 0, "cached": 0, "flagged": []}
    (r,) = out["metrics"]
    assert r["metric"] == "storage_mb" and r["verdict"] == "info" and r["bound"] is None and r["value"] > 0
    assert out["suite"]["samples"] == [] and out["suite"]["generation"]["height"] is None  # no native size read


def test_an_unknown_suite_is_one_line(repo):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match=r"^suite 'nope': no file suites/nope.yaml$"):
        evaluator(repo).run("sub.yaml", load_submission(repo / "sub.yaml"), "nope")


def test_library_versions_name_the_libraries_a_result_depends_on():
    v = library_versions()
    assert {"python", "torch", "diffusers", "numpy"} <= set(v) and all(isinstance(x, str) and x for x in v.values())


CONCEAL = SUITE.replace("id: mini", "id: conceal").replace(
    '  - {name: ua, threshold: ">= 0.8"}\n  - {name: ira, threshold: ">= 0.8 * base"}\n',
    "  - {name: ccs_forget, params: {separator_steps: 5}}\n"
    "attacks:\n  partial_diffusion: {psi: [0.5, 0.25], seeds: [0]}\n")


def test_the_partial_diffusion_attack_loads_the_pair_once_for_its_grid(repo, loads):
    """Base images load the base; the unlearned model takes it over; the attack's (base,
    unlearned) pair reuses the unlearned one and loads one more base, once for every psi."""
    (repo / "suites" / "conceal.yaml").write_text(CONCEAL)
    sub = load_submission(repo / "sub.yaml")
    out = evaluator(repo, smoke=False).run("sub.yaml", sub, "conceal")
    att = out["suite"]["images"]["attack"]
    assert (att["psi"], att["seeds"], att["generated"], att["cached"]) == ([0.5, 0.25], [0], 2 * 4, 0)  # 4 prompts x seed 0, per psi
    assert len(loads) == 2
    (r,) = out["metrics"]
    assert r["metric"] == "ccs_forget" and r["verdict"] == "info" and set(r["details"]["per_psi"]) == {"0.5", "0.25"}
    warm = evaluator(repo, smoke=False).run("sub.yaml", sub, "conceal")
    assert len(loads) == 2 and warm["suite"]["images"]["attack"]["generated"] == 0 and warm["metrics"][0]["value"] == r["value"]


@pytest.fixture
def hashed(monkeypatch):
    """Every file the run hashes (``sha256_file``: a checkpoint file, each file of a base folder's
    tree hash) and every folder it walks (``safefs.tree_files``), in order."""
    from harness.store import hashing, safefs

    files, walks = [], []
    real_file, real_walk = hashing.sha256_file, safefs.tree_files

    def file(path, *a, **k):
        files.append(str(path))
        return real_file(path, *a, **k)

    def walk(path, *a, **k):
        walks.append(str(path))
        return real_walk(path, *a, **k)

    monkeypatch.setattr(hashing, "sha256_file", file)
    monkeypatch.setattr(models, "sha256_file", file)  # checkpoint_file's own name for it
    monkeypatch.setattr(safefs, "tree_files", walk)
    return files, walks


def test_two_suites_of_one_submission_hash_the_checkpoint_and_the_base_once(repo, hashed):
    """A bare Submission is resolved once per evaluator (``resolve_models``): the second suite
    neither hashes the checkpoint nor fingerprints the base folder again."""
    (repo / "suites" / "mini2.yaml").write_text(SUITE.replace("id: mini", "id: mini2").replace("seeds: [0]}", "seeds: [1]}"))
    files, walks = hashed
    sub = load_submission(repo / "sub.yaml")
    ev = evaluator(repo)
    first = ev.run("sub.yaml", sub, "mini")
    n_files, n_walks = len(files), len(walks)
    toy = str(models.TOY_PIPELINE)
    assert files.count(str(repo / "ckpt" / "unet.safetensors")) == 1
    base_files = [f for f in files if f.startswith(toy)]
    assert base_files and len(base_files) == len(set(base_files))  # each file of the base read once
    second = ev.run("sub.yaml", sub, "mini2")
    assert (len(files), len(walks)) == (n_files, n_walks)  # nothing hashed or walked for the second suite
    assert second["suite"]["models"] == first["suite"]["models"]


def test_a_resolved_submission_is_taken_as_it_is(repo, hashed):
    """The start-up check's ``ResolvedSubmission`` handed to the evaluator: the suite run hashes
    no checkpoint and walks no folder; its fingerprints key the images."""
    from harness.resolve.check import prepare

    files, walks = hashed
    resolved = prepare("sub.yaml", repo, repo / ".cache")
    assert resolved.family == "sd1" and resolved.native_size == 32 and resolved.checkpoint == repo / "ckpt" / "unet.safetensors"
    assert resolved.checked[0] == f"base_model: {resolved.base_fingerprint}" and set(resolved.suites) == {"mini", "eff"}
    del files[:], walks[:]
    out = evaluator(repo).run("sub.yaml", resolved, "mini")
    assert files == [] and walks == []
    assert out["suite"]["models"] == {"base": resolved.base_fingerprint, "unlearned": resolved.unlearned_fingerprint}
    with pytest.raises(Exception):  # frozen
        resolved.native_size = 64
