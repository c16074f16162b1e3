"""The trust boundary of a pull request (docs/security.md), one table per class of attack.

Each row is a hostile input built in a small repository (``test_bad_inputs``' fixture: a toy
submission with a UNet checkpoint and a tiny suite) or a hostile file; the assertion is the
refusal: one line naming the file and the field, exit 2, no traceback, nothing served or
scored. The last test replays a whole pull request in a git repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_bad_inputs import KEY, assert_one_line, check, repo, toy_submission  # noqa: F401 (repo is a fixture)
from test_leaderboard import result as site_doc

from harness.cli.main import main
from harness.errors import HarnessError
from harness.run.generate import ImageCache, Job, generate
from harness.store.hashing import sha256_file, sha256_tree


def submission(sha: str, path: str = "ckpt/unet.safetensors", kind: str = "unet") -> str:
    """test_bad_inputs' repository submission (the toy base, suites mini + eff, the method record)."""
    return toy_submission(sha, path=path, kind=kind)


ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


# ============================================================================ 1. planted cache
def job(prompt="A circle image in striped style.", seed=0, model="sha256:" + "c" * 64) -> Job:
    return Job(prompt=prompt, negative_prompt="", seed=seed, scheduler="ddim", steps=2, guidance=3.0,
               height=8, width=8, eta=0.0, dtype="float32", model=model)


def plant_other_jobs_image(cache: ImageCache, wanted: Job, other: Job):
    """The slot of ``wanted`` holding ``other``'s PNG and ``other``'s own, valid sidecar."""
    cache.put(other, np.full((8, 8, 3), 7, np.uint8))
    src_png, src_side = cache._paths(other.key())
    dst_png, dst_side = cache._paths(wanted.key())
    dst_png.parent.mkdir(parents=True, exist_ok=True)
    dst_png.write_bytes(src_png.read_bytes())
    dst_side.write_bytes(src_side.read_bytes())


def plant_edited_sidecar(cache: ImageCache, wanted: Job, other: Job):
    """``other``'s image, its sidecar's key rewritten to ``wanted``'s (job still other's)."""
    plant_other_jobs_image(cache, wanted, other)
    side = cache._paths(wanted.key())[1]
    meta = json.loads(side.read_text())
    meta["key"] = wanted.key()
    side.write_text(json.dumps(meta))


def plant_symlinked_slot(cache: ImageCache, wanted: Job, other: Job):
    cache.put(other, np.full((8, 8, 3), 7, np.uint8))
    src_png, src_side = cache._paths(other.key())
    dst_png, dst_side = cache._paths(wanted.key())
    dst_png.parent.mkdir(parents=True, exist_ok=True)
    meta = json.loads(src_side.read_text())
    meta.update(key=wanted.key(), job=asdict(wanted))
    dst_side.write_text(json.dumps(meta))
    dst_png.symlink_to(src_png)


@pytest.mark.parametrize("plant", [plant_other_jobs_image, plant_edited_sidecar, plant_symlinked_slot])
def test_a_planted_cache_slot_is_regenerated_not_served(tmp_path, plant):
    cache = ImageCache(tmp_path / "images")
    wanted = job(model="sha256:" + "d" * 64)  # the unlearned model's job
    plant(cache, wanted, job())  # the base model's image under the unlearned model's key
    assert cache.get(wanted) is None and cache.png_sha256(wanted) is None
    ran = []

    def runner(pipe, jobs):
        ran.extend(jobs)
        return np.zeros((len(jobs), 8, 8, 3), np.float32), np.full((len(jobs), 8, 8, 3), 200, np.uint8)

    class Pipe:  # what describe_pipeline reads of a pipeline
        class unet:
            class conv_in:
                weight = torch.zeros(1, 1, 1, 1)

    images, report = generate(Pipe(), [wanted], cache, progress=False, runner=runner)
    assert ran == [wanted] and report["generated"] == 1 and int(images[0][0, 0, 0]) == 200
    assert cache.get(wanted) is not None  # the honest image now sits in the slot


def test_an_honest_cache_slot_is_served(tmp_path):
    cache = ImageCache(tmp_path / "images")
    j = job()
    cache.put(j, np.full((8, 8, 3), 9, np.uint8), {"flags": []})
    img, flags = cache.get(j)
    assert int(img[0, 0, 0]) == 9 and flags == []


# ============================================================================ 2. hashes cover what is loaded
def pipeline_folder(root: Path) -> Path:
    """A copy of the toy pipeline as a pipeline checkpoint (kind: pipeline), sha256 pinned."""
    import shutil

    from harness.families.sd1 import TOY_PIPELINE

    d = root / "ckpt" / "pipe"
    shutil.copytree(TOY_PIPELINE, d)
    return d


def as_pipeline(root: Path, d: Path, sha: str | None = None, kind: str = "pipeline"):
    (root / "sub.yaml").write_text(submission(sha or sha256_tree(d), str(d.relative_to(root)), kind))


def hidden_shard(root):
    d = pipeline_folder(root)
    as_pipeline(root, d)
    (d / "unet" / ".shard.safetensors").write_bytes(b"x")  # after the pin: the hash must change


def symlinked_unet(root):
    d = pipeline_folder(root)
    import shutil

    shutil.move(d / "unet", root / "ckpt" / "other-unet")
    (d / "unet").symlink_to(root / "ckpt" / "other-unet")
    as_pipeline(root, d, "0" * 64)


def fifo_in_folder(root):
    d = pipeline_folder(root)
    os.mkfifo(d / "unet" / "weights.safetensors")
    as_pipeline(root, d, "0" * 64)


def fifo_checkpoint(root):
    os.mkfifo(root / "ckpt" / "fifo.safetensors")
    (root / "sub.yaml").write_text(submission("0" * 64, "ckpt/fifo.safetensors"))


def weights_linked_outside(root):
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    save_file({KEY: torch.zeros(64, 64)}, outside / "u.safetensors")
    (root / "ckpt" / "u.safetensors").symlink_to(outside / "u.safetensors")
    (root / "sub.yaml").write_text(submission(sha256_file(outside / "u.safetensors"), "ckpt/u.safetensors"))


def hub_id(value):
    def f(root):
        s = (root / "sub.yaml").read_text().replace("base_model: {builtin: toy}", f"base_model: {{hub_id: '{value}', revision: '{'a' * 40}'}}")
        (root / "sub.yaml").write_text(s)
    return f


def lora_with_pickle(root):
    d = root / "ckpt" / "lora"
    d.mkdir()
    torch.save({KEY: torch.zeros(1)}, d / "pytorch_lora_weights.bin")
    as_pipeline(root, d, kind="lora")


def foreign_library(root):
    d = pipeline_folder(root)
    idx = json.loads((d / "model_index.json").read_text())
    idx["unet"] = ["os", "UNet2DConditionModel"]
    (d / "model_index.json").write_text(json.dumps(idx))
    as_pipeline(root, d)


def pickle_only_vae(root):
    d = pipeline_folder(root)
    (d / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, d / "vae" / "diffusion_pytorch_model.bin")
    as_pipeline(root, d)


HASHES = [
    ("hidden-shard-after-pin", hidden_shard, ["checkpoint.sha256"]),
    ("symlinked-unet-folder", symlinked_unet, ["checkpoint", "unet inside pipe/ is a symbolic link"]),
    ("fifo-inside-folder", fifo_in_folder, ["weights.safetensors inside pipe/ is a FIFO"]),
    ("fifo-as-checkpoint", fifo_checkpoint, ["checkpoint.path", "fifo.safetensors is a FIFO"]),
    ("weights-symlinked-outside", weights_linked_outside, ["checkpoint.path", "leaves the repository"]),
    ("hub-id-dotdot", hub_id("../outside-pipe"), ["base_model.hub_id"]),
    ("hub-id-dots", hub_id("a/.."), ["base_model.hub_id"]),
    ("hub-id-local-folder", hub_id("ckpt/pipe-x"), ["base_model"]),
    ("lora-folder-pickle", lora_with_pickle, ["checkpoint", "pytorch_lora_weights.bin is a pickle format"]),
    ("pipeline-foreign-library", foreign_library, ["checkpoint", "model_index.json: unet: library 'os'"]),
    ("pipeline-pickle-only-vae", pickle_only_vae, ["checkpoint", "vae/diffusion_pytorch_model.bin is a pickle format"]),
]


@pytest.mark.parametrize("name, spoil, needles", HASHES, ids=[h[0] for h in HASHES])
def test_what_is_loaded_is_what_is_hashed(repo, name, spoil, needles):
    if name == "hub-id-local-folder":
        (repo / "ckpt" / "pipe-x").mkdir()
    spoil(repo)
    rc, _, err = check()
    assert_one_line(rc, err, "sub.yaml", *needles)


def test_tree_hash_includes_hidden_files_and_refuses_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.safetensors").write_bytes(b"1")
    h = sha256_tree(tmp_path)
    (tmp_path / "a" / ".w.safetensors").write_bytes(b"2")
    assert sha256_tree(tmp_path) != h
    (tmp_path / "l").symlink_to(tmp_path / "a")
    with pytest.raises(HarnessError, match="symbolic link"):
        sha256_tree(tmp_path)


# ============================================================================ 3. compare / regress
def rec(metric="ua", value=1.0, base=0.0, verdict=None, **kw):
    from harness.results.attest import expected_verdict

    th = {"ua": ">= 0.8", "fid": "<= 2.0 * base"}.get(metric)
    suite = {"ua": "toy-canvas", "fid": "toy-fid"}.get(metric, "toy-canvas")
    r = {"suite": suite, "metric": metric, "label": metric.upper(), "target": "striped", "value": value, "base_value": base,
         "threshold": th, "higher_is_better": metric != "fid", "tolerance": 0.05}
    r["verdict"] = verdict or expected_verdict(r, th)
    r.update(kw)
    return r


def doc(metrics, name="toy-uce-style", sha="2" * 64, smoke=False, suite_sha="b" * 64, prompts_sha="a" * 64):
    return {"schema_version": "1.0", "harness": {"version": "0.1.0"}, "complete": True,
            "submission": {"file": "submissions/x.yaml", "name": name, "method": {"name": "uce"}, "checkpoint": {"sha256": sha},
                           "targets": [{"concept": "striped", "kind": "style"}]},
            "suites": [{"id": s, "smoke": smoke, "file_sha256": suite_sha, "prompt_set_sha256": prompts_sha} for s in sorted({m["suite"] for m in metrics})],
            "metrics": metrics}


def write_json(path: Path, data) -> str:
    path.write_text(json.dumps(data))  # json writes NaN / Infinity tokens, as a forger would
    return str(path)


GOOD = [rec("ua", 1.0), rec("fid", 1.0, base=1.0)]
GATE = [  # (name, new metrics, baseline metrics): each must fail the gate (exit 1)
    ("new-nan", [rec("ua", math.nan, verdict="error"), GOOD[1]], GOOD),
    ("new-inf-claims-pass", [rec("ua", math.inf, verdict="error"), GOOD[1]], GOOD),
    ("baseline-nan", GOOD, [rec("ua", math.nan, verdict="error"), GOOD[1]]),
    ("error-verdict-with-a-value", [rec("ua", 1.0, verdict="error"), GOOD[1]], GOOD),
    ("missing-metric", GOOD[:1], GOOD),
    ("baseline-lacks-a-gated-metric", GOOD, GOOD[:1]),
    ("baseline-tolerance-1e9", [rec("ua", 0.0), GOOD[1]], [rec("ua", 1.0, tolerance=1e9), GOOD[1]]),
    ("baseline-direction-flipped", [rec("ua", 0.0), GOOD[1]], [rec("ua", 1.0, higher_is_better=False), GOOD[1]]),
]


@pytest.mark.parametrize("name, new, old", GATE, ids=[g[0] for g in GATE])
def test_the_gate_cannot_be_passed_with_crafted_numbers(tmp_path, name, new, old):
    rc, out, err = cli("compare", write_json(tmp_path / "new.json", doc(new)), write_json(tmp_path / "old.json", doc(old)))
    assert rc == 1, (out, err)


def test_the_gate_passes_equal_runs(tmp_path):
    rc, out, _ = cli("compare", write_json(tmp_path / "new.json", doc(GOOD)), write_json(tmp_path / "old.json", doc(GOOD)))
    assert rc == 0, out


MISMATCH = [
    ("other-submission", {"name": "toy-esd-style"}, "submission.name"),
    ("other-checkpoint", {"sha": "3" * 64}, "submission.checkpoint.sha256"),
    ("other-suite-file", {"suite_sha": "c" * 64}, "file_sha256"),
    ("other-prompt-set", {"prompts_sha": "d" * 64}, "prompt_set_sha256"),
    ("smoke-vs-full", {"smoke": True}, "a smoke run is compared with a full run"),
]


@pytest.mark.parametrize("name, change, needle", MISMATCH, ids=[m[0] for m in MISMATCH])
def test_compare_refuses_runs_of_different_things(tmp_path, name, change, needle):
    rc, _, err = cli("compare", write_json(tmp_path / "new.json", doc(GOOD, **change)), write_json(tmp_path / "old.json", doc(GOOD)))
    assert_one_line(rc, err, "cannot compare", needle)


# ============================================================================ 4. results files
def site(tmp_path, files: dict[str, dict | str], manifest: bool = False):
    from harness import site as lb

    res = tmp_path / "results"
    res.mkdir(exist_ok=True)
    for name, data in files.items():
        p = res / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(data if isinstance(data, str) else json.dumps(data))
    if manifest:
        from harness.results.attest import write_manifest

        write_manifest(res, "test")
    lines: list[str] = []
    try:
        counts = lb.build(res, tmp_path / "site", report=lines.append)
    except HarnessError as e:
        counts = {"error": str(e)}
    return counts, lines, res


def forged(name="forged", **metric0):
    d = site_doc(name)
    d["metrics"][0].update(metric0)
    return d


FORGED = [
    ("verdict-pass-below-threshold", {"x.json": forged(value=0.0, verdict="pass")}, "metrics.0.verdict"),
    ("verdict-pass-on-flagged-images", {"x.json": forged(flagged_images=3)}, "metrics.0.verdict"),
    ("verdict-pass-on-nan", {"x.json": forged(value=math.nan)}, "metrics.0.verdict"),
    ("verdict-info-hides-a-threshold", {"x.json": forged(value=0.0, verdict="info", threshold=None)}, "metrics.0.verdict"),
    ("cyrillic-look-alike-name", {"x.json": site_doc("toy-uсe-style")}, "printable ASCII"),
    ("colliding-name", {"x.json": site_doc("Toy_UCE_Style")}, "collides with"),
    ("odd-json-type", {"x.json": "[1, 2, 3]"}, "x.json"),
    ("odd-field-types", {"x.json": json.dumps({**site_doc("x"), "suites": "all", "submission": 7})}, "x.json"),
]


@pytest.mark.parametrize("name, files, needle", FORGED, ids=[f[0] for f in FORGED])
def test_a_forged_results_file_is_skipped_and_the_rest_is_built(tmp_path, name, files, needle):
    counts, lines, _ = site(tmp_path, {"real.json": site_doc("toy-uce-style"), "other.json": site_doc("toy-esd-style"), **files})
    # a colliding name: the existing entry stays, the newcomer is skipped (tests/test_security_readers.py)
    assert counts.get("submissions") == 2, (counts, lines)
    assert any("skipped" in line and needle in line for line in lines), lines
    assert all("\n" not in line for line in lines)


def test_one_discovery_rule_nested_and_symlinked_files_are_not_read(tmp_path):
    (tmp_path / "elsewhere.json").write_text(json.dumps(site_doc("linked")))
    res = tmp_path / "results"
    res.mkdir()
    (res / "link.json").symlink_to(tmp_path / "elsewhere.json")
    counts, lines, _ = site(tmp_path, {"real.json": site_doc("toy-uce-style"), "sub/nested.json": site_doc("nested")})
    assert counts["files"] == 1 and counts["submissions"] == 1
    from harness.results.io import results_files

    assert [p.name for p in results_files(res)] == ["real.json"]


def test_a_forged_later_run_cannot_replace_an_attested_one(tmp_path):
    real = site_doc("toy-uce-style", ua=0.5)
    counts, lines, res = site(tmp_path, {"real.json": real}, manifest=True)
    assert counts["files"] == 1
    later = site_doc("toy-uce-style", ua=1.0, finished="2099-01-01T00:00:00+00:00")
    real_edited = site_doc("toy-uce-style", ua=0.9)
    counts, lines, _ = site(tmp_path, {"forged.json": later})
    assert counts["files"] == 1 and any("forged.json: not listed in ATTESTATION.json" in x for x in lines), lines
    counts, lines, _ = site(tmp_path, {"real.json": real_edited})
    assert "error" in counts and any("real.json: sha256" in x for x in lines), (counts, lines)


def test_the_attestation_hmac_is_checked_where_the_key_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_ATTEST_KEY", "secret")
    counts, _, res = site(tmp_path, {"real.json": site_doc("toy-uce-style")}, manifest=True)
    assert counts["files"] == 1
    m = json.loads((res / "ATTESTATION.json").read_text())
    m["files"]["forged.json"] = "0" * 64  # an edit without the key
    (res / "ATTESTATION.json").write_text(json.dumps(m))
    counts, _, _ = site(tmp_path, {})
    assert "hmac_sha256: does not verify" in counts["error"]


def test_build_can_require_an_attestation(tmp_path):
    from harness import site as lb

    res = tmp_path / "r"
    res.mkdir()
    (res / "real.json").write_text(json.dumps(site_doc("toy-uce-style")))
    with pytest.raises(HarnessError, match="no ATTESTATION.json"):
        lb.build(res, tmp_path / "site", report=lambda m: None, require_attestation=True)


# ============================================================================ 6. limits
def sub_text(old, new):
    def f(root):
        p = root / "sub.yaml"
        s = p.read_text()
        assert old in s, old
        p.write_text(s.replace(old, new, 1))
    return f


def suite_text(old, new):
    def f(root):
        p = root / "suites" / "mini.yaml"
        s = p.read_text()
        assert old in s, old
        p.write_text(s.replace(old, new, 1))
    return f


def csv_file(content: bytes):
    def f(root):
        (root / "p.csv").write_bytes(content)
        sha = sha256_file(root / "p.csv")
        suite_text('  template:\n    template: "A {object} image in {style} style."\n    values: {object: [circle, square], style: [striped, solid]}\n',
                   f'  csv: {{path: p.csv, sha256: "{sha}"}}\n')(root)
    return f


def method_json(content: str):
    return lambda root: (root / "ckpt" / "method.json").write_text(content)


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
TEMPLATE = '"A {object} image in {style} style."'
LIMITS = [
    ("yaml-alias-bomb", lambda r: (r / "sub.yaml").write_text(BOMB + (r / "sub.yaml").read_text()), ["sub.yaml: (yaml)", "anchors and aliases"]),
    ("yaml-merge-key", lambda r: (r / "sub.yaml").write_text("x: &x {name: uce}\n" + (r / "sub.yaml").read_text().replace("method: {name: uce,", "method: {<<: *x,")), ["anchors and aliases"]),
    ("yaml-huge", lambda r: (r / "sub.yaml").write_text((r / "sub.yaml").read_text() + "# " + "x" * (300 << 10) + "\n"), ["sub.yaml: larger than 256 KiB"]),
    ("yaml-deep-params", sub_text("params: {erase_scale: 1.0}", "params: {p: " + "{a: " * 20 + "1" + "}" * 20 + "}"), ["sub.yaml: method.params.p", "nested more than 16 deep"]),
    ("yaml-binary", sub_text("params: {erase_scale: 1.0}", "params: {b: !!binary 'gICA'}"), ["sub.yaml: method.params.b: binary data"]),
    ("yaml-bad-binary", sub_text("params: {erase_scale: 1.0}", "params: {b: !!binary '\\xff'}"), ["sub.yaml: (yaml)", "base64"]),
    ("template-format-spec", suite_text(TEMPLATE, '"A {object:>30000000} image in {style} style."'), ["suites/mini.yaml", "not a bare {name}"]),
    ("template-attribute", suite_text(TEMPLATE, '"A {object.nope} image in {style} style."'), ["suites/mini.yaml", "not a bare {name}"]),
    ("template-index", suite_text(TEMPLATE, '"A {object[0]} image in {style} style."'), ["suites/mini.yaml", "not a bare {name}"]),
    ("template-conversion", suite_text(TEMPLATE, '"A {object!r} image in {style} style."'), ["suites/mini.yaml", "not a bare {name}"]),
    ("template-unbalanced", suite_text(TEMPLATE, '"A {object image in {style} style."'), ["suites/mini.yaml", "template"]),
    ("csv-seed-1e400", csv_file(b"prompt,seed,object,style\nA circle image in striped style.,1e400,circle,striped\n"), ["prompts.csv", "row 2: seed"]),
    ("csv-latin-1", csv_file("prompt,seed\nA caf\xe9 image.,0\n".encode("latin-1")), ["prompts.csv", "not UTF-8"]),
    ("csv-over-long-field", csv_file(b"prompt,seed\n\"" + b"x" * 200_000 + b"\",0\n"), ["prompts.csv", "field larger than field limit"]),
    ("method-json-time-is-text", method_json('{"efficiency": {"time_s": "fast"}}'), ["method_record", "efficiency.time_s"]),
    ("method-json-params-not-object", method_json('{"efficiency": {}, "params": [1]}'), ["method_record", "params: not an object"]),
    ("duplicate-targets", sub_text("targets: [{concept: striped, kind: style}]", "targets: [{concept: striped, kind: style}, {concept: striped, kind: style}]"),
     ["sub.yaml: targets", "listed twice"]),
    ("submission-symlinked-outside", lambda r: (
        (r.parent / f"{r.name}-secret.yaml").write_text("api_token: hunter2\n"), (r / "sub.yaml").unlink(),
        (r / "sub.yaml").symlink_to(r.parent / f"{r.name}-secret.yaml")), ["sub.yaml: is a symbolic link"]),
    ("submission-is-a-fifo", lambda r: ((r / "sub.yaml").unlink(), os.mkfifo(r / "sub.yaml")), ["sub.yaml: not a regular file"]),
]


@pytest.mark.parametrize("name, spoil, needles", LIMITS, ids=[x[0] for x in LIMITS])
def test_limits_on_untrusted_input(repo, name, spoil, needles):
    spoil(repo)
    rc, _, err = check()
    assert_one_line(rc, err, *needles)
    assert "hunter2" not in err and "api_token" not in err


def _silent_server():
    """A TCP server on 127.0.0.1 that accepts and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    conns = []
    t = threading.Thread(target=lambda: [conns.append(s.accept()) for _ in range(2)], daemon=True)
    t.start()
    return s, s.getsockname()[1]


def test_downloads_time_out_and_keep_to_the_host_list(tmp_path, monkeypatch):
    from harness.store.fetch import fetch

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("UNLEARN_OFFLINE", raising=False)
    sha = "0" * 64
    for url, needle in [("https://127.0.0.1/x.safetensors", "not on the download allow-list"),
                        ("https://example.org/a b.csv", "whitespace"),
                        ("https://huggingface.co\t/x", "whitespace"),
                        ("https://huggingface.co:99999/x", "not a valid URL"),
                        ("https://user:pw@huggingface.co/x", "credentials")]:
        with pytest.raises(HarnessError, match=needle) as e:
            fetch(url, sha, tmp_path, "checkpoint.url")
        assert "\n" not in str(e.value)
    server, port = _silent_server()
    monkeypatch.setenv("UNLEARN_DOWNLOAD_HOSTS", "127.0.0.1")
    monkeypatch.setenv("UNLEARN_DOWNLOAD_TIMEOUT", "1")
    import time

    t0 = time.monotonic()
    with pytest.raises(HarnessError, match="could not download"):
        fetch(f"https://127.0.0.1:{port}/x.safetensors", sha, tmp_path, "checkpoint.url")
    assert time.monotonic() - t0 < 10
    server.close()


def test_two_submissions_with_one_name_in_one_run_are_refused(repo):
    (repo / "sub2.yaml").write_text((repo / "sub.yaml").read_text())
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--unlearn-submission", "sub.yaml",
                        "--unlearn-submission", "sub2.yaml", "--unlearn-results", "r/{submission}.json", "-q"],
                       cwd=repo, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode != 0 and "is also the name of sub.yaml" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


# ============================================================================ 7. flagged images
def test_flagged_images_or_non_finite_values_make_an_error_never_a_pass():
    from harness.stats.intervals import flag_error

    assert flag_error(1.0, 0) is None
    assert "flagged" in flag_error(1.0, 3)
    for v in (math.nan, math.inf, -math.inf, np.float32("nan")):
        assert "not a finite number" in flag_error(v, 0)


def test_check_refuses_a_nan_filled_checkpoint(repo):
    save_file({KEY: torch.full((64, 64), float("nan"))}, repo / "ckpt" / "unet.safetensors")
    (repo / "sub.yaml").write_text(submission(sha256_file(repo / "ckpt" / "unet.safetensors")))
    rc, _, err = check()
    assert_one_line(rc, err, "sub.yaml: checkpoint", "holds NaN or infinite values")


def test_a_nan_filled_checkpoint_does_not_pass(repo):
    """The run itself: every UNet tensor NaN, so every unlearned image is non-finite; UA would
    read 1.0 on the black images, but the records are errors."""
    from harness.run.evaluate import Evaluator
    from harness.families.sd1 import TOY_PIPELINE
    from harness.spec import load_submission
    from safetensors.torch import load_file

    full = load_file(str(TOY_PIPELINE / "unet" / "diffusion_pytorch_model.safetensors"))
    nan = {KEY: torch.full_like(full[KEY], float("nan"))}
    save_file(nan, repo / "ckpt" / "unet.safetensors")
    (repo / "sub.yaml").write_text(submission(sha256_file(repo / "ckpt" / "unet.safetensors")))
    ev = Evaluator(repo, repo / ".cache", device="cpu", smoke=True, progress=False)
    out = ev.run("sub.yaml", load_submission(repo / "sub.yaml"), "mini")
    verdicts = {r["metric"]: r["verdict"] for r in out["metrics"]}
    assert verdicts == {"ua": "error", "ira": "error"}, out["metrics"]
    assert all("flagged" in r["error"] for r in out["metrics"])


# ============================================================================ 8. tracebacks -> one line
def loop(root):
    (root / "ckpt" / "a").symlink_to(root / "ckpt" / "b")
    (root / "ckpt" / "b").symlink_to(root / "ckpt" / "a")
    (root / "sub.yaml").write_text(submission("0" * 64, "ckpt/a/unet.safetensors"))


ONE_LINE = [
    ("symlink-loop", loop, ["checkpoint.path"]),
    ("nul-in-path", lambda r: (r / "sub.yaml").write_text(submission("0" * 64, '"ckpt/u\\0.safetensors"')), ["checkpoint.path"]),
    ("bad-url-space", sub_text("path: ckpt/unet.safetensors", "url: 'https://huggingface.co/a b'"), ["checkpoint.url", "whitespace"]),
    ("bad-url-port", sub_text("path: ckpt/unet.safetensors", "url: 'https://huggingface.co:70000/x'"), ["checkpoint.url", "not a valid URL"]),
]


@pytest.mark.parametrize("name, spoil, needles", ONE_LINE, ids=[x[0] for x in ONE_LINE])
def test_odd_paths_and_urls_are_one_line(repo, name, spoil, needles):
    spoil(repo)
    rc, _, err = check()
    assert_one_line(rc, err, *needles)


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "null", "1e999", json.dumps({**doc(GOOD), "metrics": [{"suite": []}]})])
def test_summary_of_odd_json_types_is_one_line(tmp_path, content):
    rc, _, err = cli("summary", write_json(tmp_path / "x.json", json.loads(content)) if content != "1e999" else str(_raw(tmp_path, content)))
    assert_one_line(rc, err, "x.json")


def _raw(tmp_path, content):
    p = tmp_path / "x.json"
    p.write_text(content)
    return p


def test_broken_pipe_is_not_a_traceback(repo):
    p = subprocess.Popen([sys.executable, "-c", "import sys; from harness.cli.main import main; sys.exit(main(sys.argv[1:]))",
                          "check", "sub.yaml", "sub.yaml", "sub.yaml", "--root", "."],
                         cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    p.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


# ============================================================================ 9. site swap
def test_a_kill_during_the_site_swap_leaves_a_whole_site_and_the_next_build_works(tmp_path, monkeypatch):
    from harness.site import pages as lb

    counts, _, res = site(tmp_path, {"real.json": site_doc("toy-uce-style")})
    out = tmp_path / "site"
    assert (out / "index.html").is_file()
    real_replace = os.replace
    calls = []

    def killed(src, dst):  # the process dies right after the old site went aside
        calls.append((src, dst))
        real_replace(src, dst)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(lb.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        lb.build(res, out, report=lambda m: None)
    monkeypatch.setattr(lb.os, "replace", real_replace)
    assert not out.exists() and any(p.name.endswith(".old") for p in tmp_path.iterdir())  # old site whole, aside
    lb.build(res, out, report=lambda m: None)  # the next build is not refused and tidies up
    assert (out / "index.html").is_file() and not any(p.name.endswith(".old") for p in tmp_path.iterdir())


def test_symlinked_results_images_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 20
    import hashlib

    sha = hashlib.sha256(png).hexdigest()
    (outside / f"{sha}.png").write_bytes(png)
    res = tmp_path / "results"
    res.mkdir()
    (res / "images").symlink_to(outside)
    d = site_doc("toy-uce-style", samples=[{"prompt": "p", "seed": 0, "base": sha, "unlearned": sha}])
    counts, lines, _ = site(tmp_path, {"real.json": d})
    assert counts["images"] == 0 and not (tmp_path / "site" / "images").exists()
    assert any("symbolic link" in x for x in lines)


# ============================================================================ 5. replay of a hostile PR
def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout.strip()


@pytest.fixture
def pr_repo(tmp_path):
    """A base commit: a submission, a suite, a baseline; returns (repo, base sha)."""
    r = tmp_path / "repo"
    (r / "submissions" / "checkpoints" / "mine").mkdir(parents=True)
    (r / "suites").mkdir()
    (r / "leaderboard" / "results").mkdir(parents=True)
    (r / "submissions" / "toy-x.yaml").write_text("name: toy-x\ncheckpoint: {kind: unet, path: submissions/checkpoints/mine/unet.safetensors}\n")
    (r / "submissions" / "checkpoints" / "mine" / "unet.safetensors").write_bytes(b"w")
    (r / "suites" / "toy-canvas.yaml").write_text("id: toy-canvas\nmetrics:\n  - {name: ua, threshold: '>= 0.8', tolerance: 0.05}\n")
    (r / "leaderboard" / "results" / "toy-x.json").write_text('{"metrics": [{"metric": "ua", "tolerance": 0.05}]}\n')
    git(r, "init", "-q", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "base")
    return r, git(r, "rev-parse", "HEAD")


def _pr(r: Path, change) -> str:
    git(r, "checkout", "-q", "-B", "pr", "main")
    change(r)
    git(r, "add", "-A", "-f")
    git(r, "commit", "-qm", "pr")
    return git(r, "rev-parse", "HEAD")


def plant_cache(r):
    d = r / ".unlearn-cache" / "images" / "ab"
    d.mkdir(parents=True)
    (d / ("ab" * 32 + ".png")).write_bytes(b"png")


def edit_tolerance(r):
    p = r / "leaderboard" / "results" / "toy-x.json"
    p.write_text(p.read_text().replace("0.05", "1e9"))


def lenient_suite(r):
    (r / "suites" / "lenient.yaml").write_text("id: lenient\nmetrics:\n  - {name: ua, threshold: '>= 0.0'}\n")


def rename_and_edit(r):
    git(r, "mv", "submissions/toy-x.yaml", "submissions/toy-y.yaml")
    (r / "submissions" / "toy-y.yaml").write_text("name: toy-x\nsuites: [lenient]\n")


def symlink_submission(r):
    (r / "submissions" / "toy-x.yaml").unlink()
    (r / "submissions" / "toy-x.yaml").symlink_to("/etc/passwd")


def nested_results(r):
    (r / "submissions" / "results").mkdir()
    (r / "submissions" / "results" / "x.json").write_text("{}")


def regression_folder(r):
    (r / "submissions" / ".regression-x").mkdir()
    (r / "submissions" / ".regression-x" / "r.json").write_text("{}")


def second_name(r):
    (r / "submissions" / "toy-z.yaml").write_text("name: toy-x\n")


HOSTILE = [
    ("plants-an-image-cache", plant_cache, ".unlearn-cache/images/ab/"),
    ("edits-a-baseline-tolerance", edit_tolerance, "leaderboard/results/toy-x.json: a submission pull request may change only submissions/"),
    ("adds-a-lenient-suite", lenient_suite, "suites/lenient.yaml: a submission pull request may change only submissions/"),
    ("turns-a-submission-into-a-symlink", symlink_submission, "submissions/toy-x.yaml: is a symbolic link"),
    ("tracks-a-results-folder", nested_results, "submissions/results/x.json: tracked"),
    ("tracks-a-regression-folder", regression_folder, ".regression-x/ is a cache or run folder"),
    ("reuses-a-name", second_name, "name: 'toy-x' is also the name of"),
]


@pytest.mark.parametrize("name, change, needle", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_pr_check_refuses_a_hostile_pull_request(pr_repo, name, change, needle):
    r, base = pr_repo
    head = _pr(r, change)
    rc, out, err = cli("pr-check", "--root", str(r), "--base", base, "--head", head)
    assert_one_line(rc, err, needle)


def test_pr_check_lists_renamed_and_checkpoint_changed_submissions(pr_repo):
    r, base = pr_repo
    head = _pr(r, rename_and_edit)
    rc, out, err = cli("pr-check", "--root", str(r), "--base", base, "--head", head)
    assert (rc, out.split()) == (0, ["submissions/toy-y.yaml"]), err  # a rename is not skipped
    git(r, "checkout", "-q", "main")
    head = _pr(r, lambda r: (r / "submissions" / "checkpoints" / "mine" / "unet.safetensors").write_bytes(b"v"))
    rc, out, _ = cli("pr-check", "--root", str(r), "--base", base, "--head", head)
    assert (rc, out.split()) == (0, ["submissions/toy-x.yaml"])


def test_replay_of_a_pull_request_that_does_everything_at_once(pr_repo, tmp_path):
    """Plants a cache, edits a baseline's tolerance, adds a lenient suite, renames a submission:
    pr-check refuses it; and each part, were it to reach the harness, is refused or ignored
    there too (the cache is not served, the tolerance is not read, the suite is not found)."""
    r, base = pr_repo
    head = _pr(r, lambda r: (plant_cache(r), edit_tolerance(r), lenient_suite(r), rename_and_edit(r)))
    rc, _, err = cli("pr-check", "--root", str(r), "--base", base, "--head", head)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    # defence in depth, in the harness itself
    from harness.gate.compare import compare, current_rules

    rules = current_rules(ROOT)  # the base branch's suites
    new, old = doc([rec("ua", 0.0), GOOD[1]]), doc([rec("ua", 1.0, tolerance=1e9), GOOD[1]])
    assert [x["status"] for x in compare(new, old, rules)][0] == "regressed"
    from harness.run.plan import suite_path

    assert not suite_path(ROOT, "lenient").exists()


def test_pr_check_does_not_blame_a_pr_for_newer_base_commits(pr_repo):
    r, _ = pr_repo
    head = _pr(r, lambda r: (r / "submissions" / "toy-new.yaml").write_text("name: toy-new\n"))
    git(r, "checkout", "-q", "main")
    (r / "suites" / "toy-canvas.yaml").write_text("id: toy-canvas\nmetrics: []\n")  # the base moved on
    git(r, "commit", "-qam", "base moves")
    rc, out, err = cli("pr-check", "--root", str(r), "--base", git(r, "rev-parse", "HEAD"), "--head", head)
    assert (rc, out.split()) == (0, ["submissions/toy-new.yaml"]), err
