"""The pytest plugin, run for real with pytester on a tiny local pipeline built in code."""

import json
import shutil

import pytest
import torch
from fixtures import KEY, local_project, mini_suite, submission

from harness.store.hashing import sha256_file, sha256_tree

SUITE = mini_suite('name: ua, threshold: ">= 1.01"', 'name: ira, threshold: ">= 0.0 * base"', 'name: cra, threshold: "<= base + 1"')


@pytest.fixture
def project(pytester, tiny_base):
    """A repository with a base pipeline, a suite, a checkpoint and a submission."""
    local_project(pytester.path, tiny_base, SUITE)
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    return pytester


def run(p, *args):
    return p.runpytest("--unlearn-device", "cpu", "--unlearn-cache", str(p.path / "cache"), *args)


def only_json(p):
    files = list((p.path / "results").rglob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_plugin_stays_out_of_ordinary_runs(pytester):
    pytester.makepyfile(test_plain="def test_a():\n    assert True\n")
    r = pytester.runpytest()
    r.assert_outcomes(passed=1)
    out = r.stdout.str()
    assert "unlearn:" not in out and "unlearn results" not in out and "test_metric" not in out


def test_cases_verdicts_summary_and_results_json(project):
    r = run(project, "--unlearn-submission", "sub.yaml", "-v")
    r.assert_outcomes(passed=2, failed=1)
    out = r.stdout.str()
    assert "test_metric[mini::UA::striped] FAILED" in out
    assert "test_metric[mini::IRA::striped] PASSED" in out and "test_metric[mini::CRA::striped] PASSED" in out
    r.stdout.fnmatch_lines(["*UA for striped = *, needs >= 1.01 (bound 1.0100; base model *)*", "*unlearn results*", "*mini*UA*striped*FAIL*"])
    data = only_json(project)
    assert data["schema_version"] == "1.0" and data["complete"] is True
    assert data["summary"] == {"pass": 2, "fail": 1, "inconclusive": 0, "error": 0, "info": 0}
    ua = next(m for m in data["metrics"] if m["metric"] == "ua")
    assert ua["ci"]["method"] == "wilson" and ua["ci"]["n_clusters"] == 2 and ua["verdict_point"] == "fail"
    assert ua["delta_ci"]["low"] <= ua["value"] - ua["base_value"] <= ua["delta_ci"]["high"] and len(ua["scores"]["keys"]) == 4
    assert data["harness"]["version"] and "git_sha" in data["harness"]
    assert {"torch", "diffusers", "transformers"} <= set(data["environment"]["libraries"])
    assert data["submission"]["checkpoint"]["sha256"] == sha256_file(project.path / "ckpt" / "unet.safetensors")
    (suite,) = data["suites"]
    assert suite["id"] == "mini" and len(suite["prompt_set_sha256"]) == 64 and suite["seeds"] == [0, 1]
    assert suite["generation"]["steps"] == 2 and suite["dtype"] == "float32" and suite["device"] == "cpu"
    assert suite["scorer"]["id"] == "toy-classifier" and len(suite["scorer"]["sha256"]) == 64
    assert suite["models"]["base"] == f"sha256:{sha256_tree(project.path / 'base')}"
    assert suite["images"]["base"]["generated"] == 8 and suite["images"]["unlearned"]["generated"] == 8
    assert [(m["label"], m["verdict"]) for m in data["metrics"]] == [("UA", "fail"), ("IRA", "pass"), ("CRA", "pass")]
    for m in data["metrics"]:
        assert {"value", "base_value", "threshold", "bound", "higher_is_better", "target", "target_kind"} <= set(m)
        assert 0.0 <= m["value"] <= 1.0 and 0.0 <= m["base_value"] <= 1.0


def test_base_as_its_own_unlearned_model_matches_base_exactly(project):
    shutil.copytree(project.path / "base", project.path / "same")
    (project.path / "sub.yaml").write_text(submission(sha256_tree(project.path / "same"), kind="pipeline", path="same"))
    run(project, "--unlearn-submission", "sub.yaml")
    data = only_json(project)
    assert all(m["value"] == m["base_value"] for m in data["metrics"])
    # Same weights (a copied folder hashes the same), so the unlearned images are the base's, from the cache.
    assert data["suites"][0]["images"]["unlearned"]["cached"] == 8


def test_second_run_generates_nothing(project):
    run(project, "--unlearn-submission", "sub.yaml", "--unlearn-results", "r1.json")
    run(project, "--unlearn-submission", "sub.yaml", "--unlearn-results", "r2.json")
    first = json.loads((project.path / "r1.json").read_text())
    second = json.loads((project.path / "r2.json").read_text())
    rep = dict(second["suites"][0]["images"]["base"])
    assert rep.pop("generation_seconds") == first["suites"][0]["images"]["base"]["generation_seconds"]  # what the images cost, not this run
    assert rep == {"generated": 0, "cached": 8, "flagged": []}
    assert [m["value"] for m in first["metrics"]] == [m["value"] for m in second["metrics"]]


def test_smoke_subset_and_suite_filter(project):
    r = run(project, "--unlearn-submission", "sub.yaml", "--unlearn-smoke", "--unlearn-suite", "mini")
    r.assert_outcomes(passed=2, failed=1)
    suite = only_json(project)["suites"][0]
    # max_prompts 1 keeps the first non-target value of each label plus the target:
    # 1 object (circle) x 2 styles (solid, striped), seed 0 only.
    assert suite["smoke"] is True and suite["n_prompts"] == 2 and suite["seeds"] == [0]


def test_a_run_hashes_the_checkpoint_and_the_base_once_for_every_suite(project, monkeypatch):
    """The start-up check resolves the submission once (``harness.resolve.resolved``): over a
    whole smoke run of two suites (start-up check, estimate line, both suites' runs, results)
    the checkpoint is hashed once and each file of the base folder once, and the base folder is
    walked by one fingerprint only (its safety check and its tree hash)."""
    import importlib

    # the modules as sys.modules holds them now (pytester's in-process runs drop modules first imported inside a run)
    sd1, hashing, safefs = (importlib.import_module(f"harness.{m}") for m in ("families.sd1", "store.hashing", "store.safefs"))

    (project.path / "suites" / "mini2.yaml").write_text(SUITE.replace("id: mini", "id: mini2").replace("seeds: [0]}", "seeds: [1]}"))
    text = (project.path / "sub.yaml").read_text().replace("suites: [mini]", "suites: [mini, mini2]")
    (project.path / "sub.yaml").write_text(text)
    files, walks = [], []
    real_file, real_walk = hashing.sha256_file, safefs.tree_files
    monkeypatch.setattr(hashing, "sha256_file", lambda p, *a, **k: files.append(str(p)) or real_file(p, *a, **k))
    monkeypatch.setattr(sd1, "sha256_file", hashing.sha256_file)
    monkeypatch.setattr(safefs, "tree_files", lambda p, *a, **k: walks.append(str(p)) or real_walk(p, *a, **k))
    monkeypatch.setattr(hashing, "tree_files", safefs.tree_files)  # hashing names it at its top
    r = run(project, "--unlearn-submission", "sub.yaml", "--unlearn-smoke")
    r.assert_outcomes(passed=4, failed=2)
    assert [s["id"] for s in only_json(project)["suites"]] == ["mini", "mini2"]
    base = str(project.path / "base")
    assert files.count(str(project.path / "ckpt" / "unet.safetensors")) == 1
    base_files = [f for f in files if f.startswith(base + "/")]
    assert base_files and len(base_files) == len(set(base_files))
    assert walks.count(base) == 2  # base_fingerprint: check_model_folder, then sha256_tree


def test_xdist_workers_records_are_merged_by_the_controller(project):
    r = run(project, "--unlearn-submission", "sub.yaml", "-n", "2")
    r.assert_outcomes(passed=2, failed=1)
    data = only_json(project)
    assert data["complete"] is True
    assert sorted(m["label"] for m in data["metrics"]) == ["CRA", "IRA", "UA"]


def test_two_submissions_get_prefixed_ids_and_one_json_each(project):
    text = (project.path / "sub.yaml").read_text().replace("name: tiny-uce", "name: tiny-two")
    (project.path / "sub2.yaml").write_text(text)
    r = run(project, "--unlearn-submission", "sub.yaml", "--unlearn-submission", "sub2.yaml", "-v")
    r.assert_outcomes(passed=4, failed=2)
    assert "test_metric[tiny-two::mini::UA::striped]" in r.stdout.str()
    assert len(list((project.path / "results").rglob("*.json"))) == 2


def _usage_error(r, *needles):
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str() + r.stderr.str()
    lines = [line for line in r.stderr.str().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in r.stderr.str()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--unlearn-device", "gpu9"], ["--unlearn-device", "'gpu9'"]),
        (["--unlearn-suite", "nosuch"], ["--unlearn-suite", "nosuch"]),
        (["--unlearn-submission", "missing.yaml"], ["missing.yaml", "no such file"]),
        (["--unlearn-submission", "sub2.yaml", "--unlearn-results", "out.json"], ["--unlearn-results", "{submission}"]),
        (["--unlearn-cache", "afile"], ["--unlearn-cache", "not a writable folder"]),
    ],
)
def test_bad_option_values_fail_at_start_up(project, args, needles):
    (project.path / "sub2.yaml").write_text((project.path / "sub.yaml").read_text().replace("tiny-uce", "other"))
    (project.path / "afile").write_text("")
    r = project.runpytest("--unlearn-submission", "sub.yaml", *args)
    _usage_error(r, *needles)


@pytest.mark.parametrize("args, needles", [
    (["--unlearn-device", "gpu9"], ["--unlearn-device: 'gpu9' is not one of auto, cpu, mps, cuda, cuda:N"]),
    (["--unlearn-executor", "gpu"], ["--unlearn-executor: 'gpu' is not one of local, ray"]),
    (["--unlearn-ray-address", "not an address"], ["--unlearn-ray-address: 'not an address' is not auto, local"]),
    (["--unlearn-results", " "], ["--unlearn-results: empty path"]),
])
def test_option_values_are_parsed_when_pytest_reads_its_command_line(pytester, args, needles):
    """The session's type= parsers (harness.plugin.session, shared with the CLI): a malformed value is
    the same one-line usage error, with or without --unlearn-submission."""
    pytester.makepyfile(test_plain="def test_a():\n    assert True\n")
    _usage_error(pytester.runpytest(*args), *needles)


def _edit_sub(old, new):
    return lambda p: (p / "sub.yaml").write_text((p / "sub.yaml").read_text().replace(old, new, 1))


def _edit_suite(old, new):
    return lambda p: (p / "suites" / "mini.yaml").write_text((p / "suites" / "mini.yaml").read_text().replace(old, new, 1))


def _sub_text(text):
    return lambda p: (p / "sub.yaml").write_text(text)


BAD = [
    (_edit_sub("name: tiny-uce", "name: tiny-uce\ncolour: red"), ["sub.yaml: colour: unknown key"]),
    (_edit_sub("name: tiny-uce\n", ""), ["sub.yaml: name: Field required"]),
    (_edit_sub("name: tiny-uce", "name: '<script>x</script>'"), ["sub.yaml: name: String should match pattern"]),
    (_edit_sub("method: {name: uce, params: {erase_scale: 1.0}}\n", ""), ["sub.yaml: method: Field required"]),
    (_edit_sub("{local_dir: base}", "{local_dir: base, builtin: toy}"), ["sub.yaml: base_model: give exactly one of"]),
    (_edit_sub("{local_dir: base}", "{hub_id: CompVis/stable-diffusion-v1-4}"), ["sub.yaml: base_model: hub_id needs a pinned revision"]),
    (_edit_sub("kind: unet", "kind: ckpt"), ["sub.yaml: checkpoint.kind: Input should be"]),
    (lambda p: _edit_sub('sha256: "', 'sha256: "xyz')(p), ["sub.yaml: checkpoint.sha256: String should match pattern"]),
    (_edit_sub("path: ckpt/unet.safetensors", "path: ../outside.safetensors"), ["sub.yaml: checkpoint.path: '../outside.safetensors' leaves the repository"]),
    (_edit_sub("path: ckpt/unet.safetensors", "path: ckpt/nope.safetensors"), ["sub.yaml: checkpoint.path: ckpt/nope.safetensors: no such file"]),
    (lambda p: (p / "ckpt" / "unet.safetensors").write_bytes(b"changed"), ["sub.yaml: checkpoint.sha256: unet.safetensors has sha256", "expected"]),
    (_edit_sub("targets: [{concept: striped, kind: style}]", "targets: []"), ["sub.yaml: targets: List should have at least 1 item"]),
    (_edit_sub("kind: style", "kind: colour"), ["sub.yaml: targets.0.kind: Input should be"]),
    (_sub_text("name: [unclosed\n"), ["sub.yaml: (yaml) line"]),
    (_sub_text("name: !!python/object/apply:os.system ['echo pwned']\n"), ["sub.yaml: (yaml)", "constructor"]),
    (_sub_text("- just\n- a list\n"), ["sub.yaml: (top level): expected a mapping"]),
    (_edit_sub("suites: [mini]", "suites: [nosuch]"), ["sub.yaml: suites: no suite 'nosuch'"]),
    (_edit_suite("name: ua,", "name: accuracy,"), ["mini.yaml: metrics.0.name: unknown metric 'accuracy'"]),
    (_edit_suite("steps: 2", "steps: -3"), ["mini.yaml: generation.steps: Input should be greater than 0"]),
    (_edit_suite("seeds: [0, 1]", "seeds: []"), ["mini.yaml: generation.seeds: List should have at least 1 item"]),
    (_edit_suite('threshold: ">= 1.01"', 'threshold: "== 1"'), ["mini.yaml: metrics.0.threshold:", "'== 1'"]),
    (_edit_suite("values: {object: [circle, square], style: [striped, solid]}", "values: {object: [circle]}"), ["mini.yaml: prompts.template: template placeholders"]),
    # read when the results are written: refused at start-up, not after the run
    (lambda p: ((p / "mr.json").write_text("[1, 2]"), _edit_sub("name: tiny-uce", "name: tiny-uce\nmethod_record: mr.json")(p)),
     ["sub.yaml", "method_record: mr.json is not a method.json"]),
    (_edit_sub("name: tiny-uce", "name: tiny-uce\nmethod_record: nope.json"), ["sub.yaml", "method_record: nope.json: no such file"]),
]


@pytest.mark.parametrize("mutate, needles", BAD, ids=[f"bad{i:02d}" for i in range(len(BAD))])
def test_bad_submission_and_suite_files_are_one_line_errors(project, mutate, needles):
    mutate(project.path)
    _usage_error(project.runpytest("--unlearn-submission", "sub.yaml"), *needles)


def test_pickle_checkpoint_is_refused_unless_allowed(project):
    torch.save({KEY: torch.zeros(32, 64)}, project.path / "ckpt" / "u.pt")
    sha = sha256_file(project.path / "ckpt" / "u.pt")
    (project.path / "sub.yaml").write_text(submission(sha, path="ckpt/u.pt"))
    _usage_error(project.runpytest("--unlearn-submission", "sub.yaml"), "sub.yaml: checkpoint: u.pt is a pickle format")
    run(project, "--unlearn-submission", "sub.yaml", "--unlearn-allow-pickle").assert_outcomes(passed=2, failed=1)


def test_suites_default_to_those_of_the_base_world_that_apply(project):
    text = (project.path / "sub.yaml").read_text().replace("suites: [mini]\n", "")
    (project.path / "sub.yaml").write_text(text)
    (project.path / "suites" / "toyonly.yaml").write_text(SUITE.replace("id: mini", "id: toyonly").replace("applies_to: [style, object]", "applies_to: [style]\nworld: toy"))
    (project.path / "suites" / "nudity.yaml").write_text(SUITE.replace("id: mini", "id: nudity").replace("applies_to: [style, object]", "applies_to: [nudity]"))
    r = run(project, "--unlearn-submission", "sub.yaml", "--collect-only", "-q")
    out = r.stdout.str()
    assert "mini::UA::striped" in out and "toyonly" not in out and "nudity::" not in out


def test_each_xdist_worker_is_pinned_to_one_gpu(project, monkeypatch):
    """With CUDA_VISIBLE_DEVICES=3,5 two workers get one GPU each (recorded in the results);
    -n auto asks for one worker per GPU. On this CPU machine the models still run on the CPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    (project.path / "suites" / "mini2.yaml").write_text(SUITE.replace("id: mini", "id: mini2"))
    text = (project.path / "sub.yaml").read_text().replace("suites: [mini]", "suites: [mini, mini2]")
    (project.path / "sub.yaml").write_text(text)
    r = run(project, "--unlearn-submission", "sub.yaml", "-n", "2")
    r.assert_outcomes(passed=4, failed=2)
    suites = only_json(project)["suites"]
    # Each worker sees exactly one of the two GPUs (which worker gets which suite is xdist's choice).
    assert {s["cuda_visible_devices"] for s in suites} <= {"3", "5"} and len(suites) == 2
    from harness.plugin.hooks import pytest_xdist_auto_num_workers

    config = type("C", (), {"getoption": lambda self, name, default=None: ["sub.yaml"]})()
    assert pytest_xdist_auto_num_workers(config) == 2  # -n auto: one worker per GPU


def test_an_inconclusive_verdict_is_a_skip_and_fails_under_strict(project):
    """The interval straddles the bound: the case is skipped with the evidence as its reason,
    the record keeps the point verdict, --unlearn-strict makes it a failure."""
    # pytester runs in this process: the stand-in verdict is put in place for the inner session
    # only and taken out when it ends (else every later test of this worker would see it)
    project.makeconftest(
        "import harness.stats.intervals as s\n"
        "_real = s.verdict\n"
        "import dataclasses\n"
        "def fake(*args):\n"
        "    v = _real(*args)\n"
        "    return dataclasses.replace(v, verdict='inconclusive') if v.verdict == 'pass' else v\n"
        "def pytest_configure(config):\n"
        "    s.verdict = fake\n"
        "def pytest_unconfigure(config):\n"
        "    s.verdict = _real\n")
    r = run(project, "--unlearn-submission", "sub.yaml", "-rs")
    r.assert_outcomes(skipped=2, failed=1)
    r.stdout.fnmatch_lines(["*IRA*striped*INCONCLUSIVE (point: PASS)*", "*inconclusive: IRA for striped = *, needs >= 0 * base*contains 0; point estimate: pass*"])
    data = only_json(project)
    assert data["summary"]["inconclusive"] == 2
    assert {m["metric"]: (m["verdict"], m["verdict_point"]) for m in data["metrics"]}["ira"] == ("inconclusive", "pass")
    r = run(project, "--unlearn-submission", "sub.yaml", "--unlearn-strict")
    r.assert_outcomes(failed=3)
    r.stdout.fnmatch_lines(["*inconclusive: IRA*(--unlearn-strict)*"])


def _probe_many(cache, n, q):
    from harness.plugin.session import probe_writable

    bad = 0
    for _ in range(n):
        try:
            probe_writable(cache)
        except OSError:
            bad += 1
    q.put(bad)


def test_concurrent_start_ups_on_one_cache_never_refuse_it(tmp_path):
    """Two processes starting at once (the xdist workers of one run) each probe the cache. With
    one fixed probe name they removed each other's probe file and the loser refused a writable
    cache: a worker's start-up usage error, which pytest-xdist reports as ``replacing crashed
    worker gw1`` (issue 18). Measured before the fix: 16 refusals in 2 x 2000 start-ups."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_probe_many, args=(tmp_path / "cache", 2000, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [q.get(timeout=10), q.get(timeout=10)] == [0, 0]
    assert list((tmp_path / "cache").iterdir()) == []  # no probe left behind


def test_progress_lines_show_without_dash_s_and_go_under_q(pytester, tiny_base):
    """Each generation phase and each prompt attack prints its line through the terminal
    reporter (output capture suspended), so a plain run shows them; ``-q`` silences them."""
    suite = mini_suite("name: pre_asr", "name: asr") + "attacks:\n  prompt: {attack: unlearndiffatk, params: {k: 2, rounds: 2, iterations: 2}}\n"
    local_project(pytester.path, tiny_base, suite)
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    r = run(pytester, "--unlearn-submission", "sub.yaml", "--unlearn-smoke")
    out = r.stdout.str()
    assert "unlearn: mini base: 2/2 images (" in out and "unlearn: mini unlearned: 2/2 images (" in out, out
    assert "unlearn: mini unlearndiffatk striped: attacking 1 item(s)" in out, out
    assert "unlearn: mini unlearndiffatk striped: 1/1 item(s) (" in out and " s per item, " in out, out
    quiet = run(pytester, "--unlearn-submission", "sub.yaml", "--unlearn-smoke", "-q", "--unlearn-cache", str(pytester.path / "cache2")).stdout.str()
    assert "unlearn: mini" not in quiet and "images (" not in quiet
