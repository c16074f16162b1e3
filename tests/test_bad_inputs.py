"""Bad input, table-driven: each row spoils one thing in a small repository (a submission on the
toy base, a suite, a checkpoint) and ``unlearn check`` must exit 2 with exactly one line on
stderr, no traceback, naming the file and the field. Most rows call ``harness.cli.main.main`` in
process (the code the console script runs); a few run the real ``unlearn`` console script.
"""

import contextlib
import functools
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import KEY, mini_suite, submission
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from harness.cli.main import main
from harness.store.hashing import sha256_file

UNLEARN = Path(sys.executable).with_name("unlearn")

SUITE = mini_suite('name: ua, threshold: ">= 0.8"', 'name: ira, threshold: ">= 0.8 * base"', world="toy")

EFFICIENCY = """\
id: eff
version: "1.0"
include: mini
applies_to: [style, object]
metrics:
  - {name: storage_mb}
"""


# the toy base, the mini suite and an efficiency suite, the method record beside the checkpoint
toy_submission = functools.partial(submission, base="{builtin: toy}", suites="[mini, eff]", extra="method_record: ckpt/method.json\n")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository that passes ``unlearn check``; the cwd is its root."""
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "mini.yaml").write_text(SUITE)
    (tmp_path / "suites" / "eff.yaml").write_text(EFFICIENCY)
    (tmp_path / "ckpt").mkdir()
    save_file({KEY: torch.zeros(64, 64)}, tmp_path / "ckpt" / "unet.safetensors")
    (tmp_path / "ckpt" / "method.json").write_text('{"efficiency": {"time_s": 0.1}}')
    (tmp_path / "sub.yaml").write_text(toy_submission(sha256_file(tmp_path / "ckpt" / "unet.safetensors")))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def check(*extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["check", "sub.yaml", "--root", ".", *extra])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def assert_one_line(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], lines[0]


def test_the_good_repository_passes(repo):
    rc, out, err = check()
    assert (rc, err) == (0, ""), err
    assert out.startswith("sub.yaml: ok") and "1 unet tensor(s), names and shapes match the base" in out
    assert "suite mini: 4 prompt(s), 8 image(s) per model at 32x32 (native), 2 metric(s)" in out


# ----------------------------------------------------------------------------- the table
def text(rel: str, content: str | bytes):
    def f(root: Path):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    return f


def edit(rel: str, old: str, new: str):
    def f(root: Path):
        p = root / rel
        s = p.read_text()
        assert old in s, (rel, old)
        p.write_text(s.replace(old, new, 1))
    return f


def sub(old: str, new: str):
    return edit("sub.yaml", old, new)


def suite(old: str, new: str):
    return edit("suites/mini.yaml", old, new)


def checkpoint(name: str, write, kind: str = "unet"):
    """Write ckpt/<name> with ``write(path)`` and point the submission at it, sha256 right."""
    def f(root: Path):
        p = root / "ckpt" / name
        write(p)
        sha = sha256_file(p) if p.is_file() else "0" * 64
        (root / "sub.yaml").write_text(toy_submission(sha, path=f"ckpt/{name}", kind=kind))
    return f


def pinned_sub(path: str):
    """The submission pointing at ``path`` (sha256 of the good checkpoint)."""
    def f(root: Path):
        (root / "sub.yaml").write_text(toy_submission(sha256_file(root / "ckpt" / "unet.safetensors"), path=path))
    return f


def pinned_sha(change):
    """The good checkpoint, its sha256 written as ``change(sha256)``."""
    def f(root: Path):
        (root / "sub.yaml").write_text(toy_submission(change(sha256_file(root / "ckpt" / "unet.safetensors"))))
    return f


def symlink_out(root: Path):
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    save_file({KEY: torch.zeros(64, 64)}, outside / "u.safetensors")
    (root / "ckpt" / "link").symlink_to(outside)
    pinned_sub("ckpt/link/u.safetensors")(root)


def csv_prompts(content: str, right_sha: bool = True):
    def f(root: Path):
        (root / "p.csv").write_text(content)
        sha = sha256_file(root / "p.csv") if right_sha else "1" * 64
        suite("  template:\n    template: \"A {object} image in {style} style.\"\n    values: {object: [circle, square], style: [striped, solid]}\n",
              f"  csv: {{path: p.csv, sha256: \"{sha}\"}}\n")(root)
    return f


def save(tensors):
    return lambda p: save_file(tensors, p)


SHA_GOOD = "a" * 64

BAD = [
    # YAML itself
    ("yaml-malformed", text("sub.yaml", "name: [unclosed\n"), ["sub.yaml: (yaml) line 2"]),
    ("yaml-python-tag", text("sub.yaml", "name: !!python/object/apply:os.system ['echo pwned']\n"), ["sub.yaml: (yaml)", "constructor"]),
    ("yaml-python-name", text("sub.yaml", "name: !!python/name:os.system\n"), ["sub.yaml: (yaml)", "python/name"]),
    ("yaml-top-level-list", text("sub.yaml", "- just\n- a list\n"), ["sub.yaml: (top level): expected a mapping, got list"]),
    ("yaml-top-level-scalar", text("sub.yaml", "42\n"), ["sub.yaml: (top level): expected a mapping, got int"]),
    ("yaml-empty-file", text("sub.yaml", ""), ["sub.yaml: (top level): expected a mapping, got NoneType"]),
    ("yaml-not-utf8", text("sub.yaml", b"name: caf\xe9\xff\n"), ["sub.yaml: not UTF-8 text"]),
    ("yaml-nul-byte", text("sub.yaml", "name: a\x00b\n"), ["sub.yaml: (yaml)", "unacceptable character"]),
    ("yaml-duplicate-key", sub("suites: [mini, eff]", "suites: [mini, eff]\nsuites: [eff]"), ["sub.yaml: (yaml) line 7: key 'suites' is given twice"]),
    ("yaml-too-deep", text("sub.yaml", "name: " + "[" * 3000 + "]" * 3000 + "\n"), ["sub.yaml: (yaml): nested too deeply"]),
    ("suite-not-utf8", text("suites/mini.yaml", b"\xff\xfe\x00i\x00d"), ["unlearn: error: suites/mini.yaml: not UTF-8 text"]),
    # the submission's fields
    ("unknown-key-top", sub("name: tiny-uce", "name: tiny-uce\ncolour: red"), ["sub.yaml: colour: unknown key"]),
    ("unknown-key-method", sub("{name: uce,", "{name: uce, colour: red,"), ["sub.yaml: method.colour: unknown key"]),
    ("unknown-key-checkpoint", sub("{kind: unet,", "{kind: unet, trust_remote_code: true,"), ["sub.yaml: checkpoint.trust_remote_code: unknown key"]),
    ("missing-name", sub("name: tiny-uce\n", ""), ["sub.yaml: name: Field required"]),
    ("missing-checkpoint", lambda r: (r / "sub.yaml").write_text("\n".join(ln for ln in (r / "sub.yaml").read_text().splitlines() if not ln.startswith("checkpoint"))), ["sub.yaml: checkpoint: Field required"]),
    ("name-is-a-list", sub("name: tiny-uce", "name: [a, b]"), ["sub.yaml: name: Input should be a valid string"]),
    ("name-has-markup", sub("name: tiny-uce", "name: '<script>x</script>'"), ["sub.yaml: name: String should match pattern"]),
    ("method-name-empty", sub("{name: uce,", "{name: '',"), ["sub.yaml: method.name: String should have at least 1 character"]),
    ("base-two-sources", sub("{builtin: toy}", "{builtin: toy, local_dir: base}"), ["sub.yaml: base_model: give exactly one of builtin, local_dir, hub_id"]),
    ("base-hub-unpinned", sub("{builtin: toy}", "{hub_id: CompVis/stable-diffusion-v1-4}"), ["sub.yaml: base_model: hub_id needs a pinned revision"]),
    ("base-builtin-unknown", sub("{builtin: toy}", "{builtin: sd15}"), ["sub.yaml: base_model.builtin: Input should be 'toy'"]),
    ("base-folder-on-a-toy-suite", sub("{builtin: toy}", "{local_dir: ckpt}"), ["sub.yaml: base_model:", "is not allowed there"]),
    ("checkpoint-kind-unknown", sub("kind: unet", "kind: ckpt"), ["sub.yaml: checkpoint.kind: Input should be"]),
    ("checkpoint-url-not-https", sub("path: ckpt/unet.safetensors", "url: http://example.org/u.safetensors"), ["sub.yaml: checkpoint.url: 'http://example.org/u.safetensors' is not an https URL"]),
    ("checkpoint-path-and-url", sub("path: ckpt/unet.safetensors", "path: ckpt/unet.safetensors, url: https://example.org/u.safetensors"), ["sub.yaml: checkpoint: give exactly one of path, url"]),
    ("sha256-not-hex", sub('sha256: "', 'sha256: "zz'), ["sub.yaml: checkpoint.sha256: String should match pattern"]),
    ("sha256-too-short", pinned_sha(lambda h: h[:63]), ["sub.yaml: checkpoint.sha256: String should match pattern"]),
    ("sha256-upper-case", pinned_sha(str.upper), ["sub.yaml: checkpoint.sha256: String should match pattern"]),
    ("sha256-wrong", lambda r: (r / "ckpt" / "unet.safetensors").write_bytes(b"changed"), ["sub.yaml: checkpoint.sha256: unet.safetensors has sha256", "expected"]),
    ("targets-empty", sub("targets: [{concept: striped, kind: style}]", "targets: []"), ["sub.yaml: targets: List should have at least 1 item"]),
    ("target-kind-unknown", sub("kind: style}", "kind: colour}"), ["sub.yaml: targets.0.kind: Input should be"]),
    ("target-kind-not-in-toy-world", sub("{concept: striped, kind: style}", "{concept: nudity, kind: nudity}"), ["sub.yaml: targets.0.kind: the toy world has no nudity concepts"]),
    ("concept-unknown-word", sub("concept: striped", "concept: zebra"), ["sub.yaml: targets.0.concept: 'zebra' is not a style of the toy world"]),
    ("concept-of-the-other-kind", sub("concept: striped", "concept: triangle"), ["sub.yaml: targets.0.concept: 'triangle' is not a style"]),
    ("concept-not-in-suite", suite("style: [striped, solid]", "style: [dotted, solid]"), ["sub.yaml: targets.0.concept: 'striped' is not a style of suite mini"]),
    ("suite-unknown", sub("suites: [mini, eff]", "suites: [mini, nosuch]"), ["sub.yaml: suites: no suite 'nosuch'"]),
    ("method-record-missing", sub("method_record: ckpt/method.json", "method_record: ckpt/nope.json"), ["sub.yaml: method_record: ckpt/nope.json: no such file"]),
    ("method-record-not-json", text("ckpt/method.json", "{not json"), ["sub.yaml: method_record: ckpt/method.json is not JSON"]),
    # paths
    ("path-dotdot", pinned_sub("../outside.safetensors"), ["sub.yaml: checkpoint.path: '../outside.safetensors' leaves the repository"]),
    ("path-dotdot-inside", pinned_sub("ckpt/../../x.safetensors"), ["sub.yaml: checkpoint.path:", "leaves the repository"]),
    ("path-absolute", pinned_sub("/etc/passwd"), ["sub.yaml: checkpoint.path: '/etc/passwd' must be a path relative to the repository"]),
    ("path-symlink-escapes", symlink_out, ["sub.yaml: checkpoint.path: 'ckpt/link/u.safetensors' leaves the repository"]),
    ("path-missing-file", pinned_sub("ckpt/nope.safetensors"), ["sub.yaml: checkpoint.path: ckpt/nope.safetensors: no such file"]),
    ("method-record-outside", sub("method_record: ckpt/method.json", "method_record: ../method.json"), ["sub.yaml: method_record: '../method.json' leaves the repository"]),
    # the checkpoint's contents
    ("pickle-ckpt", checkpoint("u.ckpt", lambda p: torch.save({KEY: torch.zeros(64, 64)}, p)), ["sub.yaml: checkpoint: u.ckpt is a pickle format (.ckpt)"]),
    ("pickle-bin", checkpoint("u.bin", lambda p: torch.save({KEY: torch.zeros(64, 64)}, p)), ["sub.yaml: checkpoint: u.bin is a pickle format (.bin)"]),
    ("pickle-pt", checkpoint("u.pt", lambda p: torch.save({KEY: torch.zeros(64, 64)}, p)), ["sub.yaml: checkpoint: u.pt is a pickle format (.pt)"]),
    ("tensor-wrong-shape", checkpoint("u.safetensors", save({KEY: torch.zeros(3, 3)})), ["sub.yaml: checkpoint: tensor", "has shape (3, 3), the unet expects (64, 64)"]),
    ("tensor-unknown-name", checkpoint("u.safetensors", save({"not.a.key": torch.zeros(1)})), ["sub.yaml: checkpoint: 1 tensor(s) are not in the unet, e.g. 'not.a.key'"]),
    ("tensor-integer", checkpoint("u.safetensors", save({KEY: torch.zeros(64, 64, dtype=torch.int64)})), ["sub.yaml: checkpoint: tensor", "is not floating point"]),
    ("tensor-none", checkpoint("u.safetensors", save({})), ["sub.yaml: checkpoint: u.safetensors holds no tensors"]),
    ("tensors-for-the-other-module", checkpoint("u.safetensors", save({KEY: torch.zeros(64, 64)}), kind="text_encoder"), ["sub.yaml: checkpoint:", "not in the text encoder"]),
    ("safetensors-garbage", checkpoint("u.safetensors", lambda p: p.write_bytes(b"not a safetensors file at all")), ["sub.yaml: checkpoint: u.safetensors is not a readable safetensors file"]),
    ("safetensors-truncated", checkpoint("u.safetensors", lambda p: (save({KEY: torch.zeros(64, 64)})(p), p.write_bytes(p.read_bytes()[:-100]))), ["sub.yaml: checkpoint: u.safetensors is not a readable safetensors file"]),
    ("pipeline-kind-on-a-file", checkpoint("u.safetensors", save({KEY: torch.zeros(64, 64)}), kind="pipeline"), ["sub.yaml: checkpoint: kind pipeline needs a diffusers folder"]),
    # the suite's fields
    ("suite-unknown-key-top", suite("world: toy", "world: toy\nthresholds: {ua: '>= 0.8'}"), ["mini.yaml: thresholds: unknown key"]),
    ("suite-unknown-key-nested", suite("batch_size: 4}", "batch_size: 4, sampler: euler}"), ["mini.yaml: generation.sampler: unknown key"]),
    ("suite-missing-seeds", suite(" seeds: [0, 1],", ""), ["mini.yaml: generation.seeds: Field required"]),
    ("suite-version-bad", suite('version: "1.0"', 'version: "one"'), ["mini.yaml: version: String should match pattern"]),
    ("applies-to-empty", suite("applies_to: [style, object]", "applies_to: []"), ["mini.yaml: applies_to: List should have at least 1 item"]),
    ("steps-a-string", suite("steps: 2", "steps: many"), ["mini.yaml: generation.steps: Input should be a valid integer"]),
    ("steps-zero", suite("steps: 2", "steps: 0"), ["mini.yaml: generation.steps: Input should be greater than 0"]),
    ("steps-negative", suite("steps: 2", "steps: -3"), ["mini.yaml: generation.steps: Input should be greater than 0"]),
    ("steps-huge", suite("steps: 2", "steps: 100000"), ["mini.yaml: generation.steps: Input should be less than or equal to 1000"]),
    ("guidance-negative", suite("guidance: 3.0", "guidance: -1"), ["mini.yaml: generation.guidance: Input should be greater than or equal to 0"]),
    ("guidance-nan", suite("guidance: 3.0", "guidance: .nan"), ["mini.yaml: generation.guidance: Input should be a finite number"]),
    ("size-zero", suite("steps: 2,", "steps: 2, height: 0, width: 0,"), ["unlearn: error: suites/mini.yaml: generation.height: Input should be greater than 0", "(and 1 more: `unlearn validate suites/mini.yaml` lists them)"]),
    ("size-huge", suite("steps: 2,", "steps: 2, height: 1048576, width: 1048576,"), ["mini.yaml: generation.height: Input should be less than or equal to 4096"]),
    ("size-not-multiple-of-8", suite("steps: 2,", "steps: 2, height: 33, width: 32,"), ["mini.yaml: generation.height: Input should be a multiple of 8"]),
    ("scheduler-unknown", suite("scheduler: ddim", "scheduler: magic"), ["mini.yaml: generation.scheduler: Input should be"]),
    ("seeds-none", suite("seeds: [0, 1]", "seeds: []"), ["mini.yaml: generation.seeds: List should have at least 1 item"]),
    ("seeds-duplicate", suite("seeds: [0, 1]", "seeds: [0, 1, 1]"), ["mini.yaml: generation.seeds: seed 1 is listed twice"]),
    ("seeds-negative", suite("seeds: [0, 1]", "seeds: [-1]"), ["mini.yaml: generation.seeds.0: Input should be greater than or equal to 0"]),
    ("smoke-seeds-empty", suite("seeds: [0]}", "seeds: []}"), ["mini.yaml: smoke.seeds: List should have at least 1 item"]),
    ("prompts-inline-empty", suite("  template:\n", "  inline: []\n  template:\n"), ["mini.yaml: prompts: give exactly one of inline, template, csv"]),
    ("prompts-values-empty", suite("style: [striped, solid]", "style: []"), ["mini.yaml: prompts.template: values.style is empty"]),
    ("prompts-placeholder-mismatch", suite("values: {object: [circle, square], style: [striped, solid]}", "values: {object: [circle]}"), ["mini.yaml: prompts.template: template placeholders"]),
    ("prompts-csv-no-rows", csv_prompts("prompt,seed\n"), ["sub.yaml: suite mini: prompts.csv:", "has no rows"]),
    ("prompts-csv-wrong-sha", csv_prompts("prompt\nA ring image in solid style.\n", right_sha=False), ["sub.yaml: suite mini: prompts.csv.sha256:", "has sha256"]),
    ("metric-unknown", suite("name: ua,", "name: accuracy,"), ["mini.yaml: metrics.0.name: unknown metric 'accuracy'"]),
    ("metric-twice", suite("name: ira,", "name: ua,"), ["mini.yaml: metrics: metric 'ua' is listed twice"]),
    ("threshold-malformed", suite('threshold: ">= 0.8"', 'threshold: "== 1"'), ["mini.yaml: metrics.0.threshold:", "'== 1'"]),
    ("threshold-relative-without-base", edit("suites/eff.yaml", "{name: storage_mb}", '{name: storage_mb, threshold: "<= 0.5 * base"}'), ["sub.yaml: suite eff: metrics.0.threshold: storage_mb has no base-model value"]),
    ("accuracy-without-scorer", suite("scorer: {backend: toy}\n", ""), ["sub.yaml: suite mini: metrics.0: ua needs a scorer"]),
    # typed metric params (MetricInfo.params) and the suite's attacks block
    ("metric-param-unknown", suite("{name: ira,", "{name: ira, params: {refrences: 5},"), ["mini.yaml: metrics.1: ira: params.refrences: unknown key"]),
    ("metric-param-mistyped", edit("suites/eff.yaml", "{name: storage_mb}", "{name: storage_mb, params: {bootstrap_resamples: many}}"),
     ["eff.yaml: metrics.0: storage_mb: params.bootstrap_resamples: Input should be a valid integer"]),
    ("attack-settings-old-style", suite("{name: ira,", "{name: asr, params: {attack: unlearndiffatk, rounds: 2}}\n  - {name: ira,"),
     ["mini.yaml: metrics.1: asr: params.attack: attack settings moved to the suite's attacks.prompt block"]),
    ("attack-param-unknown", suite("smoke:", "  - {name: asr}\nattacks: {prompt: {attack: unlearndiffatk, params: {roundz: 2}}}\nsmoke:"),
     ["mini.yaml: attacks.prompt: params.roundz: not a parameter of unlearndiffatk"]),
    ("attack-block-unused", suite("smoke:", "attacks: {partial_diffusion: {psi: [0.5]}}\nsmoke:"), ["mini.yaml: attacks.partial_diffusion: no metric of this suite reads it"]),
    ("scorer-backend-unknown", suite("backend: toy", "backend: resnet"), ["mini.yaml: scorer.backend: Input should be"]),
    ("scorer-weights-missing", suite("{backend: toy}", "{backend: toy, weights: {path: clf/model.safetensors, sha256: '" + SHA_GOOD + "'}}"), ["sub.yaml: suite mini: scorer.weights.path: clf/model.safetensors: no such file"]),
    ("include-missing", edit("suites/eff.yaml", "include: mini", "include: nosuch"), ["eff.yaml: include: no suite 'nosuch' beside this file"]),
]


@pytest.mark.parametrize("mutate, needles", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2(repo, mutate, needles):
    mutate(repo)
    rc, out, err = check()
    assert_one_line(rc, err, *needles)
    assert "ok" not in out


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--suite", "nosuch"], ["sub.yaml: --suite: nosuch is not a suite of this submission (it has: eff, mini)"]),
        (["--bogus"], ["unlearn: error: unrecognized arguments: --bogus"]),
    ],
    ids=["suite-filter-unknown", "unknown-option"],
)
def test_bad_command_line_is_one_line_exit_2(repo, args, needles):
    rc, _, err = check(*args)
    assert_one_line(rc, err, *needles)


def test_missing_or_folder_submission_is_one_line(repo):
    (repo / "adir.yaml").mkdir()
    for name, needle in (("missing.yaml", "no such file"), ("adir.yaml", "not a regular file")):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["check", name])
        assert_one_line(rc, err.getvalue(), f"{name}: {needle}")


def test_pickle_passes_only_with_allow_pickle(repo):
    checkpoint("u.pt", lambda p: torch.save({KEY: torch.zeros(64, 64)}, p))(repo)
    assert check()[0] == 2
    rc, out, err = check("--allow-pickle")
    assert (rc, err) == (0, "") and "1 unet tensor(s), names and shapes match the base" in out


def test_bad_tensor_shape_in_a_pickle_is_found_too(repo):
    checkpoint("u.pt", lambda p: torch.save({KEY: torch.zeros(2, 64)}, p))(repo)
    rc, _, err = check("--allow-pickle")
    assert_one_line(rc, err, "has shape (2, 64), the unet expects (64, 64)")


def test_several_problems_in_one_file_are_still_one_line(repo):
    sub("name: tiny-uce", "name: [x]\ncolour: red\nshape: round")(repo)
    rc, _, err = check()
    assert_one_line(rc, err, "sub.yaml: ", "(and 2 more: `unlearn validate sub.yaml` lists them)")


# ----------------------------------------------------------------------------- the real console script
def run_unlearn(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(UNLEARN), *args], capture_output=True, text=True, cwd=root, env=env, timeout=120)


@pytest.mark.skipif(not UNLEARN.exists(), reason="the unlearn console script is not installed beside this Python")
@pytest.mark.parametrize("row", ["yaml-python-tag", "tensor-wrong-shape", "concept-unknown-word", "path-symlink-escapes"])
def test_console_script_exit_code(repo, row):
    mutate, needles = next(b[1:] for b in BAD if b[0] == row)
    mutate(repo)
    r = run_unlearn(repo, "check", "sub.yaml")
    assert_one_line(r.returncode, r.stderr, *needles)
    assert r.stdout == ""


@pytest.mark.skipif(not UNLEARN.exists(), reason="the unlearn console script is not installed beside this Python")
def test_console_script_good_and_validate(repo):
    r = run_unlearn(repo, "check", "sub.yaml")
    assert (r.returncode, r.stderr) == (0, "") and r.stdout.startswith("sub.yaml: ok")
    suite("steps: 2", "steps: 0")(repo)
    r = run_unlearn(repo, "validate", "sub.yaml", "suites/mini.yaml")
    assert r.returncode == 2 and r.stdout == "sub.yaml: ok\n"
    assert r.stderr.splitlines() == ["suites/mini.yaml: generation.steps: Input should be greater than 0"]


# ----------------------------------------------------------------------------- properties
KEYS = ["name", "method", "base_model", "checkpoint", "targets", "suites", "kind", "path", "sha256", "concept", "builtin", "method_record"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.lists(st.sampled_from(["name: x\n", "checkpoint: {kind: unet, path: ckpt/unet.safetensors, sha256: '" + "a" * 64 + "'}\n",
                              "targets: [{concept: striped, kind: style}]\n", "base_model: {builtin: toy}\n", "method: {name: m}\n",
                              "suites: [mini]\n", "- a\n", "{[\n", "!!python/none\n", "&a [*a]\n", "? [1]\n: 2\n", "\t\x85\n"]),
             max_size=8).map(lambda parts: "".join(parts).encode()),
))
def test_any_bytes_give_exit_0_or_2_and_at_most_one_line(repo, data):
    (repo / "sub.yaml").write_bytes(data)
    rc, out, err = check()
    assert rc in (0, 2), err
    assert "Traceback" not in err
    assert len(err.splitlines()) == (0 if rc == 0 else 1), err
