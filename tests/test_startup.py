"""One start-up path: the pytest plugin makes every check `unlearn check` makes (one function,
``harness.resolve.check.prepare``), before any model loads, and both refuse a bad submission with the
same one line. Run for real: `unlearn check` through ``harness.cli.main.main``, pytest with pytester
(in-process), on stand-ins built in code (a tiny pipeline in a Hugging Face cache layout for
the hub base of CONTRIBUTING's example)."""

import re
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import local_project, mini_suite, unet_checkpoint
from safetensors.torch import save_file

from harness.cli.main import main
from harness.store.hashing import sha256_file

REPO = Path(__file__).resolve().parents[1]
REV = "0123456789abcdef0123456789abcdef01234567"


def contributing_example() -> dict:
    """The submission YAML of CONTRIBUTING.md, step 3, as written there."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    return yaml.safe_load(textwrap.dedent(block))


def check(*args, capsys=None):
    rc = main(["check", *args])
    out = capsys.readouterr() if capsys else None
    return rc, out


def pytest_refusal(pytester, *args) -> str:
    r = pytester.runpytest("--unlearn-device", "cpu", *args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str() + r.stderr.str()
    err = [ln for ln in r.stderr.str().splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("ERROR: "), err
    assert "Traceback" not in r.stdout.str() + r.stderr.str()
    return err[0].removeprefix("ERROR: ")


def check_refusal(capsys, *args) -> str:
    rc = main(["check", *args])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("unlearn: error: "), (rc, err)
    return err[0].removeprefix("unlearn: error: ")


@pytest.fixture
def hub_project(pytester, tiny_base, monkeypatch):
    """CONTRIBUTING's example in a repository with the project's real suites: its hub base is a
    tiny pipeline in a local Hugging Face cache, its checkpoint URL already in the download
    cache (offline)."""
    root = pytester.path
    shutil.copytree(REPO / "suites", root / "suites")
    hub = root / "hf-hub"
    shutil.copytree(tiny_base, hub / "models--CompVis--stable-diffusion-v1-4" / "snapshots" / REV)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(root)
    ck = root / "unet.safetensors"
    sha = unet_checkpoint(ck)
    (root / "cache" / "downloads" / sha).mkdir(parents=True)
    shutil.move(ck, root / "cache" / "downloads" / sha / "unet.safetensors")
    sub = contributing_example()
    sub["base_model"]["revision"] = REV
    sub["checkpoint"].update(url="https://example.org/unet.safetensors", sha256=sha)
    (root / "submissions").mkdir()
    (root / "submissions" / "my-method.yaml").write_text(yaml.safe_dump(sub, sort_keys=False))
    pytester.makeini("[pytest]\n")
    return pytester


def test_contributing_example_same_one_line_refusal_from_check_and_pytest(hub_project, capsys):
    sub = "submissions/my-method.yaml"
    from_check = check_refusal(capsys, sub, "--cache", "cache")
    from_pytest = pytest_refusal(hub_project, "--unlearn-submission", sub, "--unlearn-cache", "cache")
    assert from_check == from_pytest
    assert "targets.0.concept: 'Van Gogh' is not a style of suite unlearncanvas" in from_check
    assert "did you mean 'Van_Gogh'?" in from_check


def test_placeholder_pins_stop_check_and_pytest_alike(hub_project, capsys):
    """With the concept fixed, the next stop is the suites' all-zero placeholder pins: an error
    in both (never "ok"), naming the field."""
    p = hub_project.path / "submissions" / "my-method.yaml"
    sub = yaml.safe_load(p.read_text())
    sub["targets"] = [{"concept": "Van_Gogh", "kind": "style"}]
    sub["suites"] = ["unlearncanvas"]
    p.write_text(yaml.safe_dump(sub))
    from_check = check_refusal(capsys, str(p.relative_to(hub_project.path)), "--cache", "cache")
    from_pytest = pytest_refusal(hub_project, "--unlearn-submission", "submissions/my-method.yaml", "--unlearn-cache", "cache")
    assert from_check == from_pytest
    assert "suite unlearncanvas: scorer.style_weights.sha256: placeholder (all zeros)" in from_check
    assert "not runnable here" in from_check


def test_every_real_suite_with_placeholders_is_refused_by_check(hub_project, capsys):
    p = hub_project.path / "submissions" / "my-method.yaml"
    sub = yaml.safe_load(p.read_text())
    for suite, target in [("artist-styles", "Van Gogh"), ("identities", "Elon Musk"), ("imagenette-objects", "church")]:
        kind = {"artist-styles": "style", "identities": "identity", "imagenette-objects": "object"}[suite]
        p.write_text(yaml.safe_dump({**sub, "targets": [{"concept": target, "kind": kind}], "suites": [suite]}))
        msg = check_refusal(capsys, "submissions/my-method.yaml", "--cache", "cache")
        assert f"suite {suite}: " in msg and ("placeholder (all zeros)" in msg or "Hugging Face cache" in msg), msg


def test_hub_base_missing_from_the_cache_offline_is_one_line(hub_project, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_project.path / "empty-hub"))
    msg = check_refusal(capsys, "submissions/my-method.yaml", "--cache", "cache")
    assert msg == pytest_refusal(hub_project, "--unlearn-submission", "submissions/my-method.yaml", "--unlearn-cache", "cache")
    assert "base_model.hub_id: CompVis/stable-diffusion-v1-4@" in msg and "not in the" in msg and "Hugging Face" in msg and "unlearn fetch hub:CompVis/stable-diffusion-v1-4@" in msg


def _local_project(pytester, tiny_base, suite_text=None):
    suite = suite_text or mini_suite('name: ua, threshold: ">= 1.01"', 'name: ira, threshold: ">= 0.0 * base"')
    root = local_project(pytester.path, tiny_base, suite, name="tiny", method="{name: uce}")
    pytester.makeini("[pytest]\n")
    return root


@pytest.mark.parametrize("damage, needle", [
    (lambda b: (b / "vae" / "config.json").unlink(), "base_model: base/vae/config.json is missing: the pipeline cannot load"),
    (lambda b: (b / "model_index.json").write_text("{not json"), "base_model: model_index.json is not JSON"),
    (lambda b: [f.unlink() for f in (b / "text_encoder").glob("*.safetensors")], "base_model: base/text_encoder/ holds no safetensors weights"),
])
def test_unloadable_base_stops_both_in_one_line(pytester, tiny_base, capsys, monkeypatch, damage, needle):
    root = _local_project(pytester, tiny_base)
    monkeypatch.chdir(root)
    damage(root / "base")
    msg = check_refusal(capsys, "sub.yaml")
    assert needle in msg, msg
    assert msg == pytest_refusal(pytester, "--unlearn-submission", "sub.yaml", "--unlearn-cache", str(root / "cache"))


def test_an_exception_escaping_a_case_is_one_line_and_the_suite_runs_once(pytester, tiny_base, monkeypatch):
    root = _local_project(pytester, tiny_base)
    monkeypatch.chdir(root)
    calls = []

    def boom(self, *a, **k):
        calls.append(1)
        raise RuntimeError("CUDA driver exploded\n" + "  frame\n" * 500)

    from harness.run.evaluate import Evaluator

    monkeypatch.setattr(Evaluator, "result", boom)  # what a case calls (``run`` is its JSON view)
    r = pytester.runpytest("--unlearn-submission", "sub.yaml", "--unlearn-cache", str(root / "cache"), "--unlearn-device", "cpu")
    out = r.stdout.str()
    r.assert_outcomes(failed=2)
    assert len(calls) == 1  # the second case reports the first one's error without re-running the suite
    assert out.count("error: RuntimeError: CUDA driver exploded") >= 2
    assert "Traceback" not in out and "frame\n" not in out and len(out.splitlines()) < 80, out
    table = out.split("unlearn results")[-1]
    assert "ERROR" in table and "    error: RuntimeError: CUDA driver exploded" in table  # error verdicts and why
    calls.clear()
    r = pytester.runpytest("--unlearn-submission", "sub.yaml", "--unlearn-cache", str(root / "cache"), "--unlearn-device", "cpu", "--unlearn-debug")
    assert "Traceback" in r.stdout.str() or "raise RuntimeError" in r.stdout.str()


def test_missing_submission_suggests_the_nearest_names(pytester, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    msg = check_refusal(capsys, "submissions/uce.yml")
    assert msg.startswith("submissions/uce.yml: no such file (did you mean submissions/uce.yaml")
    r = pytester.runpytest("--rootdir", str(REPO), "--unlearn-submission", "submissions/toy-uce.yaml")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "submissions/toy-uce.yaml: no such file (did you mean submissions/" in r.stderr.str()


def test_submission_sets_expand_to_their_members(capsys, monkeypatch):
    """submissions/uce.yaml and esd.yaml: both toy targets, each member an ordinary submission."""
    monkeypatch.chdir(REPO)
    from harness.spec.bundle import expand

    assert expand("submissions/uce.yaml", REPO) == ["submissions/toy-uce-style.yaml", "submissions/toy-uce-object.yaml"]
    assert expand("submissions/esd.yaml", REPO) == ["submissions/toy-esd-style.yaml", "submissions/toy-esd-object.yaml"]
    assert main(["validate", "submissions/uce.yaml"]) == 0
    assert main(["check", "--suite", "toy-efficiency", "submissions/uce.yaml"]) == 0
    out = capsys.readouterr().out
    assert "submissions/toy-uce-style.yaml: ok" in out and "submissions/toy-uce-object.yaml: ok" in out
    assert "estimate: 0 image(s) to make" in out  # toy-efficiency makes no images


@pytest.mark.parametrize("text, needle", [
    ("submissions: []\n", "submissions: expected a non-empty list"),
    ("submissions: [submissions/nope.yaml]\n", "submissions.0: submissions/nope.yaml: no such file"),
    ("submissions: [/etc/passwd]\n", "submissions.0"),
    ("submissions: [submissions/uce.yaml]\n", "is itself a submission set"),
    ("submissions: [submissions/toy-uce-style.yaml]\nextra: 1\n", "extra: unknown key in a submission set"),
])
def test_bad_submission_sets_are_one_line_errors(tmp_path, capsys, text, needle):
    root = tmp_path
    shutil.copytree(REPO / "submissions", root / "submissions", ignore=shutil.ignore_patterns("checkpoints"))
    (root / "submissions" / "set.yaml").write_text(text)
    rc = main(["check", "--root", str(root), str(root / "submissions" / "set.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_check_from_a_subfolder_finds_the_repository_root(capsys, monkeypatch):
    monkeypatch.chdir(REPO / "submissions")
    assert main(["check", "--suite", "toy-efficiency", "toy-uce-style.yaml"]) == 0
    assert "suite toy-efficiency" in capsys.readouterr().out


def test_lora_tensor_names_are_compared_with_the_base(tmp_path, capsys):
    """A LoRA adapting modules the base lacks, or with sizes that do not fit, is refused by
    `check` (before, it passed and failed at run time); a well-named one passes."""
    (tmp_path / "suites").mkdir()
    for name in ("toy-efficiency", "toy-canvas"):
        shutil.copy(REPO / "suites" / f"{name}.yaml", tmp_path / "suites")
    mod = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    good = {f"{mod}.lora_A.weight": torch.zeros(4, 64), f"{mod}.lora_B.weight": torch.zeros(64, 4)}
    cases = [("good", good, None), ("bad", {k.replace("attn2", "attn9"): v for k, v in good.items()}, "attn9"),
             ("shape", {**good, f"{mod}.lora_A.weight": torch.zeros(4, 65)}, "has shape (4, 65)")]
    for name, tensors, needle in cases:
        f = tmp_path / f"{name}.safetensors"
        save_file(tensors, f)
        sub = tmp_path / f"{name}.yaml"
        sub.write_text(yaml.safe_dump({"name": "lora-test", "method": {"name": "x"}, "base_model": {"builtin": "toy"},
                                       "checkpoint": {"kind": "lora", "path": f.name, "sha256": sha256_file(f)},
                                       "targets": [{"concept": "striped", "kind": "style"}], "suites": ["toy-efficiency"]}))
        rc = main(["check", "--root", str(tmp_path), str(sub)])
        cap = capsys.readouterr()
        if needle is None:
            assert rc == 0 and "names and sizes match the base's modules" in cap.out, cap
        else:
            assert rc == 2 and needle in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err


# ----------------------------------------------------------------------------- pytest habits
def test_last_failed_reruns_only_the_failing_case(pytester, tiny_base, monkeypatch):
    """The cache provider is on (no ``-p no:cacheprovider`` in addopts): ``--lf`` after a run
    with one failing case re-runs that case alone, and its results JSON says it is incomplete
    (a partial re-run never passes for a whole run)."""
    import json

    root = _local_project(pytester, tiny_base)
    monkeypatch.chdir(root)
    args = ["--unlearn-submission", "sub.yaml", "--unlearn-cache", str(root / "cache"), "--unlearn-device", "cpu"]
    first = pytester.runpytest(*args, "--unlearn-results", "first.json")
    first.assert_outcomes(passed=1, failed=1)  # UA >= 1.01 cannot hold
    again = pytester.runpytest(*args, "--unlearn-results", "again.json", "--lf", "-v")
    again.assert_outcomes(failed=1, deselected=1)
    assert "test_metric[mini::UA::striped] FAILED" in again.stdout.str()
    assert json.loads((root / "first.json").read_text())["complete"] is True
    assert json.loads((root / "again.json").read_text())["complete"] is False
    ff = pytester.runpytest(*args, "--unlearn-results", "ff.json", "--ff", "-v")
    ff.assert_outcomes(passed=1, failed=1)
    lines = [ln for ln in ff.stdout.str().splitlines() if "test_metric[" in ln and ("PASSED" in ln or "FAILED" in ln)]
    assert "UA" in lines[0], lines


def test_junitxml_has_values_as_properties_and_no_warnings(pytester, tiny_base, monkeypatch):
    """Run in a fresh process, as a user runs it: an in-process run inherits the worker's modules
    and sys.path, so whether pytest warns "already imported, cannot be rewritten" for ``harness``
    would depend on which tests ran before it in the same xdist worker."""
    import xml.etree.ElementTree as ET

    root = _local_project(pytester, tiny_base)
    monkeypatch.chdir(root)
    monkeypatch.setenv("UNLEARN_THREADS", "1")
    r = pytester.runpytest_subprocess("--unlearn-submission", "sub.yaml", "--unlearn-cache", str(root / "cache"), "--unlearn-device", "cpu",
                           "--junitxml", "out.xml", "-W", "error::pytest.PytestWarning")
    r.assert_outcomes(passed=1, failed=1)
    assert "warnings summary" not in r.stdout.str() and "PytestWarning" not in r.stdout.str()
    cases = ET.parse(root / "out.xml").getroot().iter("testcase")
    props = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")} for c in cases}
    ua = props["test_metric[mini::UA::striped]"]
    assert ua["unlearn.threshold"] == ">= 1.01" and ua["unlearn.verdict"] == "fail"
    assert float(ua["unlearn.value"]) >= 0 and ua["unlearn.base_value"] != ""


def test_threads_follow_the_load_workers_and_the_override(monkeypatch):
    from harness.run import threads

    monkeypatch.delenv("UNLEARN_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 8)
    assert threads.choose(workers=1, load=0.0)[0] == 8
    assert threads.choose(workers=2, load=0.0)[0] == 4  # xdist workers share the cores
    assert threads.choose(workers=1, load=5.2)[0] == 3  # what the other processes leave free
    assert threads.choose(workers=1, load=30.0)[0] == 1  # never 0
    monkeypatch.setenv("UNLEARN_THREADS", "5")
    assert threads.choose(workers=2, load=30.0) == (5, "UNLEARN_THREADS")


def test_estimate_counts_the_prompt_attacks_and_learns_their_speed(tmp_path, monkeypatch):
    """toy-robustness cold: UnlearnDiffAtk on 10 forget items x 80 iterations and textual
    inversion on 5 x 100 steps per target, at the attack modules' guesses; a finished run's
    attack seconds become this device's figure (and leave the suite's scoring time); a suite
    whose unlearned images are cached has its attacks counted as done."""
    from harness.run import estimate
    from harness.attacks import ti, unlearndiffatk
    from harness.run.generate import ImageCache
    from harness.spec import load_submission, load_suite

    sub = load_submission(str(REPO / "submissions" / "toy-uce-object.yaml"))
    suites = {"toy-robustness": load_suite(REPO / "suites" / "toy-robustness.yaml")}
    (p,) = estimate.plan("x.yaml", sub, suites, REPO, tmp_path)
    assert p.prompt_attacks == (("unlearndiffatk", 10, 80), ("ti", 5, 100))
    gen = 400 * 20 * estimate.GUESS_S_PER_STEP_PIXEL * 32 * 32
    secs, src = estimate.seconds([p], tmp_path, "cpu/2t")
    assert src.startswith("a guess") and secs == pytest.approx(gen + 10 * 80 * unlearndiffatk.GUESS_S_PER_ITEM_UNIT + 5 * 100 * ti.GUESS_S_PER_ITEM_UNIT)
    assert "400 image(s) to make and 15 prompt-attack item(s)" in estimate.summary_line([p], tmp_path, "cpu/2t")
    # what a run measured: its details (pre_asr and asr share one attack, counted once)
    d = {"attack": "unlearndiffatk", "attacked": 10, "budget": 80, "seconds": 40.0, "params": {"k": 5}}
    from harness.results.assemble import SuiteResult
    from harness.results.model import MetricRecord, SuiteRecord

    rec = lambda m, details: MetricRecord(suite="toy-robustness", metric=m, target="triangle", verdict="info", details=details)  # noqa: E731
    result = SuiteResult(SuiteRecord(id="toy-robustness", generation={"height": 32, "width": 32}),
                         [rec(m, d) for m in ("pre_asr", "asr")]
                         + [rec("ti_asr", {"attack": "ti", "attacked": 5, "budget": 100, "seconds": 10.0, "params": {}}), rec("ua", {})])
    assert estimate.note_attacks(tmp_path, "cpu/2t", result) == 50.0
    assert estimate.seconds_per_item_unit(tmp_path, "cpu/2t", "unlearndiffatk", 32, 32) == (pytest.approx(0.05), "measured on this device")
    assert estimate.seconds_per_item_unit(tmp_path, "cpu/2t", "ti", 64, 64) == (pytest.approx(0.02 * 4), "scaled from another size on this device")
    # warm: every unlearned image cached, the attack records with them
    monkeypatch.setattr(ImageCache, "png_sha256", lambda self, job: "f" * 64)
    (warm,) = estimate.plan("x.yaml", sub, suites, REPO, tmp_path)
    assert warm.prompt_attacks == () and warm.to_make == 0


def test_the_load_is_the_other_processes_cpu_now_not_this_ones(monkeypatch):
    """``threads.others_load``: the busy share of this process's cores over the sample, less this
    process's own CPU time; the 1-minute load average (which counts this process's own start-up
    and whatever ran before it) only where /proc/stat is missing."""
    from harness.run import threads

    monkeypatch.delenv("UNLEARN_THREADS", raising=False)
    monkeypatch.setattr(threads, "_SAMPLED", None)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    clock = {"t": 100.0}  # time passes in the sample's sleep only
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads.time, "sleep", lambda s: clock.update(t=clock["t"] + s))
    jiffies = iter([(1000, 5000), (1075, 5100)])  # 75 of 100 core-jiffies busy: 1.5 of 2 cores
    monkeypatch.setattr(threads, "_cpu_times", lambda cpus: next(jiffies))
    own = iter([(10.0, 1.0), (10.2, 1.1)])  # this process used 0.3 CPU-s in the 0.3 s sample: one core of the 1.5
    monkeypatch.setattr(threads.os, "times", lambda: next(own))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # not read
    assert threads.others_load() == pytest.approx(0.5)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    assert threads.choose(workers=1) == (2, "2 core(s), 1 worker(s), other processes' load 0.5")  # the memoised sample
    # no /proc/stat: the load average
    monkeypatch.setattr(threads, "_SAMPLED", None)
    monkeypatch.setattr(threads, "_cpu_times", lambda cpus: None)
    monkeypatch.setattr(threads.os, "times", lambda: (0.0, 0.0))
    assert threads.choose(workers=1) == (1, "2 core(s), 1 worker(s), load average 9.0")


def test_a_proc_stat_of_another_shape_falls_back_to_the_load_average(monkeypatch):
    import io

    from harness.run import threads

    cases = {"cpu  1 2 3 4 5 6 7 8\n\ncpu0 1 2 3 4 5 6 7 8\n": (1 + 2 + 3 + 6 + 7 + 8, 36),  # a blank line: skipped
             "cpu0 a b c\n": None, "cpuX 1 2 3 4 5\n": None, "cpu0 1 2\n": None}  # malformed: the load average instead
    for text, want in cases.items():
        monkeypatch.setattr(threads, "open", lambda path, t=text: io.StringIO(t), raising=False)
        assert threads._cpu_times({0}) == want, text


@pytest.mark.skipif(not __import__("os").path.exists("/proc/stat"), reason="Linux /proc/stat")
def test_proc_stat_is_read_for_this_process_cores():
    import os

    from harness.run import threads

    busy, total = threads._cpu_times(set(os.sched_getaffinity(0)))
    assert 0 <= busy <= total and total > 0
    assert threads._cpu_times({10**6}) is None  # a core this machine lacks: nothing read


def test_estimate_uses_the_speed_measured_on_this_device(tmp_path):
    from harness.run import estimate

    plan = [estimate.SuitePlan("s", 2, 2, 20, 32, 32, frozenset({"a", "b"}), frozenset({"a", "b"}), 0)]
    secs, src = estimate.seconds(plan, tmp_path, "cpu/1t")
    assert src.startswith("a guess") and secs == pytest.approx(2 * 20 * estimate.GUESS_S_PER_STEP_PIXEL * 32 * 32 * estimate.GUESS_ONE_THREAD)
    assert estimate.seconds(plan, tmp_path, "cpu/2t")[0] == pytest.approx(2 * 20 * estimate.GUESS_S_PER_STEP_PIXEL * 32 * 32)
    estimate.note(tmp_path, estimate.gen_key("cpu/1t", 32, 32), 8.0, 40)  # 0.2 s per image-step
    estimate.note(tmp_path, "score|cpu/1t|s", 3.0, 1)
    secs, src = estimate.seconds(plan, tmp_path, "cpu/1t")
    assert src == "measured on this device" and secs == pytest.approx(2 * 20 * 0.2 + 3.0)
    secs, src = estimate.seconds([estimate.SuitePlan("t", 1, 1, 10, 64, 64, frozenset({"c"}), frozenset({"c"}), 0)], tmp_path, "cpu/1t")
    assert src == "scaled from another size on this device" and secs == pytest.approx(10 * 0.2 * 4)
    # an image two suites share is made once
    twice = plan + [estimate.SuitePlan("u", 1, 1, 20, 32, 32, frozenset({"a"}), frozenset({"a"}), 0)]
    assert estimate.counts(twice) == (2, 0)


def test_the_family_of_a_base_is_named_from_its_model_index(tmp_path):
    """``family_name``: sd1 for a StableDiffusionPipeline folder (the toy base; a hub base not in
    the cache is loaded by the default family); a pipeline no family recognises is one line
    naming the folder."""
    import json

    from harness.errors import HarnessError
    from harness.families.sd1 import TOY_PIPELINE
    from harness.resolve.resolved import family_name

    assert family_name(TOY_PIPELINE) == "sd1" and family_name(None) == "sd1"
    index = json.loads((TOY_PIPELINE / "model_index.json").read_text())
    (tmp_path / "xl").mkdir()
    (tmp_path / "xl" / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline",
                                                                  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}))
    assert family_name(tmp_path / "xl") == "sdxl"
    for name, data, needle in (("flux", {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]},
                                "flux/model_index.json (FluxPipeline) is not a pipeline of any known model family"),):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(json.dumps(data))
        with pytest.raises(HarnessError, match=r"^base_model: ") as e:
            family_name(tmp_path / name)
        assert needle in str(e.value) and "\n" not in str(e.value)
