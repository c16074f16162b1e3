"""Real models through a stand-in hub on 127.0.0.1 (tests/hubstub.py): unlearn fetch / pin,
revisions, a corrupted download, resumption, offline runs from the Hugging Face cache."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hubstub import StandInHub

from harness.cli.main import main
from harness.store.hashing import sha256_file
from harness.families.sd1 import TOY_PIPELINE

CLASSIFIER = Path(__file__).resolve().parents[1] / "harness" / "toy" / "assets" / "classifier"
CSV = b"prompt,seed,object,style\nA circle image in striped style.,0,circle,striped\nA square image in solid style.,1,square,solid\n"
ZERO = "0" * 64


@pytest.fixture
def hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    h = StandInHub()
    monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("UNLEARN_OFFLINE", raising=False)
    monkeypatch.setenv("UNLEARN_TEST_ALLOW_LOOPBACK_HTTP", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield h
    h.close()


def go_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def repo_root(tmp_path, hub, classifier_rev=None, csv_sha=ZERO, weights_sha=ZERO, csv_url=None):
    """A repository with one suite naming a hub-hosted scorer and a prompt CSV by URL."""
    root = tmp_path / "repo"
    (root / "suites").mkdir(parents=True, exist_ok=True)
    rev = classifier_rev or hub.add_folder("toy/classifier", CLASSIFIER)
    url = csv_url or hub.add_url("prompts.csv", CSV)
    suite = {
        "id": "hub-toy", "version": "1.0", "applies_to": ["style", "object"], "world": "real",
        "prompts": {"csv": {"url": url, "sha256": csv_sha}},
        "generation": {"scheduler": "ddim", "steps": 4, "guidance": 5.0, "height": 32, "width": 32, "seeds": [0], "batch_size": 8},
        "scorer": {"backend": "toy", "weights": {"hub": {"repo": "toy/classifier", "revision": rev, "filename": "model.safetensors"}, "sha256": weights_sha}},
        "metrics": [{"name": "ua", "threshold": ">= 0.8"}, {"name": "ira"}],
    }
    (root / "suites" / "hub-toy.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return root, rev, url


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_fetch_puts_hub_files_in_the_hf_cache_layout_and_urls_in_the_harness_cache(hub, tmp_path, capsys):
    root, rev, url = repo_root(tmp_path, hub)
    rc, out, err = run(capsys, "fetch", "hub-toy", "--root", str(root), "--quiet")
    assert rc == 0, err
    snap = tmp_path / "hf" / "models--toy--classifier" / "snapshots" / rev
    assert (snap / "model.safetensors").is_symlink()  # huggingface_hub's layout: snapshots -> blobs
    blob = Path((snap / "model.safetensors").resolve())
    assert blob.parent.name == "blobs" and blob.name == sha256_file(CLASSIFIER / "model.safetensors")  # an LFS blob is named by its sha256
    csv_sha = hashlib.sha256(CSV).hexdigest()
    assert (tmp_path / "cache" / "downloads" / csv_sha / "prompts.csv").read_bytes() == CSV
    assert "not pinned yet" in out and csv_sha in out
    # a second fetch finds everything in the caches: no request at all
    n = len(hub.requests)
    rc, out, _ = run(capsys, "fetch", "hub-toy", "--root", str(root), "--quiet")
    assert rc == 0 and len(hub.requests) == n


def test_pin_writes_a_lock_the_suite_loader_uses(hub, tmp_path, capsys):
    from harness.spec import load_suite

    root, rev, url = repo_root(tmp_path, hub)
    rc, out, err = run(capsys, "pin", "hub-toy", "--root", str(root), "--quiet")
    assert rc == 0, err
    lock = yaml.safe_load((root / "suites" / "locks" / "hub-toy.lock.yaml").read_text())
    w_sha = sha256_file(CLASSIFIER / "model.safetensors")
    assert lock["pins"]["scorer.weights"] == {"source": f"hub:toy/classifier@{rev}:model.safetensors", "sha256": w_sha}
    assert lock["pins"]["prompts.csv"] == {"source": url, "sha256": hashlib.sha256(CSV).hexdigest()}
    suite = load_suite(root / "suites" / "hub-toy.yaml")
    assert suite.scorer.weights.sha256 == w_sha and suite.prompts.csv.sha256 == hashlib.sha256(CSV).hexdigest()
    # the suite's own file still holds its placeholders: the PR diff is the lock alone
    assert ZERO in (root / "suites" / "hub-toy.yaml").read_text()


def test_a_lock_for_another_source_or_hash_is_refused(hub, tmp_path, capsys):
    root, rev, url = repo_root(tmp_path, hub)
    assert run(capsys, "pin", "hub-toy", "--root", str(root), "--quiet")[0] == 0
    # the suite moves to another revision: the lock no longer matches it
    new_rev = hub.add_folder("toy/classifier", CLASSIFIER)
    p = root / "suites" / "hub-toy.yaml"
    p.write_text(p.read_text().replace(rev, new_rev))
    rc, out, err = run(capsys, "validate", str(p))
    assert rc == 2 and "pins.scorer.weights: pinned for" in err and "unlearn pin hub-toy" in err and len(err.strip().splitlines()) == 1
    # a real sha256 in the suite that contradicts the lock
    p.write_text(p.read_text().replace(new_rev, rev).replace(ZERO, "1" * 64, 1))
    rc, out, err = run(capsys, "validate", str(p))
    assert rc == 2 and "contradicts" in err


def test_revision_selects_the_commit_and_an_unknown_one_is_one_line(hub, tmp_path, capsys):
    old = hub.add_repo("toy/data", {"a.txt": b"old\n"})
    new = hub.add_repo("toy/data", {"a.txt": b"new\n"})  # main moves on
    rc, out, err = run(capsys, "fetch", f"hub:toy/data@{old}:a.txt", "--quiet")
    assert rc == 0, err
    got = Path(out.split(" -> ")[1].split(" (sha256")[0])
    assert got.read_bytes() == b"old\n" and old in str(got)
    rc, out, err = run(capsys, "fetch", f"hub:toy/data@{new}:a.txt", "--quiet")
    assert rc == 0 and Path(out.split(" -> ")[1].split(" (sha256")[0]).read_bytes() == b"new\n"
    rc, out, err = run(capsys, "fetch", f"hub:toy/data@{'e' * 40}:a.txt", "--quiet")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "could not download" in err and "Traceback" not in err


def test_a_corrupted_download_is_refused_and_not_kept(hub, tmp_path, capsys):
    root, rev, url = repo_root(tmp_path, hub)
    hub.corrupt.add("model.safetensors")
    rc, out, err = run(capsys, "fetch", "hub-toy", "--root", str(root), "--quiet")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "hub's metadata says" in err and "refused" in err
    snap = tmp_path / "hf" / "models--toy--classifier"
    assert not list(snap.glob("blobs/*")) or all(p.name != sha256_file(CLASSIFIER / "model.safetensors") or sha256_file(p) == p.name for p in snap.glob("blobs/*"))
    assert not (snap / "snapshots" / rev / "model.safetensors").exists()
    # a corrupted URL file against a pinned sha256
    hub.corrupt.clear()
    hub.corrupt.add("other.csv")
    root2, _, _ = repo_root(tmp_path / "b", hub, csv_sha=hashlib.sha256(CSV).hexdigest(), csv_url=hub.add_url("other.csv", CSV))
    rc, out, err = run(capsys, "fetch", "hub-toy", "--root", str(root2), "--quiet")
    assert rc == 2 and "other.csv" in err and "expected " + hashlib.sha256(CSV).hexdigest() in err
    assert not list((tmp_path / "cache" / "downloads").glob("*/other.csv"))


def test_a_pinned_sha256_that_the_hub_file_does_not_have_is_refused(hub, tmp_path, capsys):
    root, rev, url = repo_root(tmp_path, hub, weights_sha="a" * 64)
    rc, out, err = run(capsys, "fetch", "hub-toy", "--root", str(root), "--quiet")
    assert rc == 2 and "scorer.weights.sha256" in err and "expected " + "a" * 64 in err


def test_an_interrupted_transfer_resumes_with_a_range_request(hub, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)  # resumes from the last whole chunk (10 MB by default)
    root, rev, url = repo_root(tmp_path, hub)
    hub.drop_once.add("model.safetensors")  # the hub file: huggingface_hub retries from where it stopped
    hub.drop_once.add("prompts.csv")  # the URL file: the .part file is continued on the next run
    rc, out, err = run(capsys, "fetch", "hub-toy", "--root", str(root), "--quiet")
    assert rc == 2 and "prompts.csv" in err and "run the command again to resume" in err and len(err.strip().splitlines()) == 1
    parts = list((tmp_path / "cache" / "downloads" / "partial").glob("*.part"))
    assert len(parts) == 1 and parts[0].read_bytes() == CSV[: len(CSV) // 2]
    rc, out, err = run(capsys, "fetch", "hub-toy", "--root", str(root), "--quiet")
    assert rc == 0, err
    ranged = [(p, r) for _, p, r in hub.requests if r]
    assert ("/files/prompts.csv", f"bytes={len(CSV) // 2}-") in ranged  # continued, not restarted
    assert any(p.endswith("/model.safetensors") and r != "bytes=0-" for p, r in ranged)
    assert (tmp_path / "cache" / "downloads" / hashlib.sha256(CSV).hexdigest() / "prompts.csv").read_bytes() == CSV
    snap = tmp_path / "hf" / "models--toy--classifier" / "snapshots" / rev
    assert sha256_file(snap / "model.safetensors") == sha256_file(CLASSIFIER / "model.safetensors")


def test_downloads_have_a_size_cap_and_need_https(hub, tmp_path, capsys, monkeypatch):
    root, rev, url = repo_root(tmp_path, hub)
    monkeypatch.setenv("UNLEARN_MAX_DOWNLOAD_BYTES", "1000")
    rc, out, err = run(capsys, "fetch", "hub-toy", "--root", str(root), "--quiet")
    assert rc == 2 and "over the download cap of 1000" in err
    monkeypatch.delenv("UNLEARN_TEST_ALLOW_LOOPBACK_HTTP")
    rc, out, err = run(capsys, "fetch", url, "--quiet")
    assert rc == 2 and "is not an https URL" in err
    rc, out, err = run(capsys, "validate", str(root / "suites" / "hub-toy.yaml"))
    assert rc == 2 and "prompts.csv.url" in err and "https" in err


def test_fetch_refuses_to_run_offline(hub, monkeypatch, capsys, tmp_path):
    go_offline(monkeypatch)
    rc, out, err = run(capsys, "fetch", "hub:toy/x@" + "a" * 40, "--quiet")
    assert rc == 2 and "offline" in err


def sd_like_repo(hub, repo="toy/sd-tiny"):
    """The toy pipeline laid out like CompVis/stable-diffusion-v1-4 on the hub: a safety checker
    and a feature extractor in model_index.json, fp16 / non-EMA variants and a single-file .ckpt
    beside the diffusers weights (none of which a run needs)."""
    files = {p.relative_to(TOY_PIPELINE).as_posix(): p.read_bytes() for p in sorted(TOY_PIPELINE.rglob("*")) if p.is_file()}
    index = json.loads(files["model_index.json"])
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"], feature_extractor=["transformers", "CLIPImageProcessor"],
                 requires_safety_checker=True)
    files["model_index.json"] = json.dumps(index).encode()
    files["feature_extractor/preprocessor_config.json"] = json.dumps({
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224, "image_processor_type": "CLIPImageProcessor"}).encode()
    files["safety_checker/config.json"] = b"{}"
    files["safety_checker/model.safetensors"] = b"x" * 4096
    files["unet/diffusion_pytorch_model.fp16.safetensors"] = b"y" * 4096
    files["unet/diffusion_pytorch_model.non_ema.safetensors"] = b"y" * 4096
    files["sd-v1-4.ckpt"] = b"z" * 8192
    return hub.add_repo(repo, files)


UCE = Path(__file__).resolve().parents[1] / "submissions" / "checkpoints" / "uce-style-striped" / "unet.safetensors"


def write_submission(root, name, base):
    (root / "ckpt").mkdir(exist_ok=True)
    shutil.copy(UCE, root / "ckpt" / "unet.safetensors")
    sub = {"name": name, "method": {"name": "uce"}, "base_model": base,
           "checkpoint": {"kind": "unet", "path": "ckpt/unet.safetensors", "sha256": sha256_file(UCE)},
           "targets": [{"concept": "striped", "kind": "style"}], "suites": ["hub-toy"]}
    p = root / f"{name}.yaml"
    p.write_text(yaml.safe_dump(sub, sort_keys=False))
    return p


def test_hub_base_and_hub_scorer_run_offline_from_the_cache_with_the_builtin_images(hub, tmp_path, capsys, monkeypatch):
    from harness.run.evaluate import Evaluator
    from harness.results.attest import pins_problem
    from harness.spec.pins import suite_pins
    from harness.spec import load_submission, load_suite

    root, rev, url = repo_root(tmp_path, hub)
    base_rev = sd_like_repo(hub)
    hub_sub = write_submission(root, "hub-uce", {"hub_id": "toy/sd-tiny", "revision": base_rev})
    toy_sub = write_submission(root, "toy-uce", {"builtin": "toy"})
    rc, out, err = run(capsys, "fetch", str(hub_sub), "--root", str(root), "--quiet")
    assert rc == 0, err
    assert f"base_model: hub:toy/sd-tiny@{base_rev}" in out
    snap = tmp_path / "hf" / "models--toy--sd-tiny" / "snapshots" / base_rev
    assert (snap / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (snap / "model_index.json").is_file()
    fetched = sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())
    assert not [f for f in fetched if f.startswith("safety_checker/") or ".fp16." in f or "non_ema" in f or f.endswith(".ckpt")]
    assert "feature_extractor/preprocessor_config.json" in fetched
    assert run(capsys, "pin", "hub-toy", "--root", str(root), "--quiet")[0] == 0

    hub.close()  # no hub any more, and offline: everything comes from the caches
    go_offline(monkeypatch)
    rc, out, err = run(capsys, "check", str(hub_sub), "--root", str(root))
    assert rc == 0, err
    assert "names and shapes match the base" in out
    ev = Evaluator(root, tmp_path / "cache", device="cpu", progress=False)
    got = ev.run(str(hub_sub), load_submission(hub_sub), "hub-toy")
    want = ev.run(str(toy_sub), load_submission(toy_sub), "hub-toy")
    assert got["suite"]["models"]["base"] == f"hub:toy/sd-tiny@{base_rev}"
    assert [r["verdict"] for r in got["metrics"]] != ["error"] * len(got["metrics"])
    assert [(r["metric"], r["value"], r["base_value"]) for r in got["metrics"]] == [(r["metric"], r["value"], r["base_value"]) for r in want["metrics"]]
    assert got["suite"]["samples"] == want["suite"]["samples"]  # the same PNG bytes, base and unlearned
    assert got["suite"]["images"]["base"]["generated"] == 2
    # the run records the pins it used; the leaderboard's rule accepts it, and refuses a tampered one
    suite = load_suite(root / "suites" / "hub-toy.yaml")
    assert got["suite"]["pins"] == suite_pins(suite)
    assert f"#{sha256_file(CLASSIFIER / 'model.safetensors')}" in got["suite"]["pins"]["scorer.weights"]
    assert pins_problem({"suites": [got["suite"]]}, root) is None
    bad = {**got["suite"], "pins": {**got["suite"]["pins"], "scorer.weights": "hub:toy/classifier@x:model.safetensors#" + "b" * 64}}
    assert "pins differ" in pins_problem({"suites": [bad]}, root)
    assert "recorded no pins" in pins_problem({"suites": [{k: v for k, v in got["suite"].items() if k != "pins"}]}, root)


def test_offline_a_missing_hub_file_is_one_line_naming_it_and_the_fetch_command(hub, tmp_path, capsys, monkeypatch):
    from harness.store.hub import pipeline_snapshot

    root, rev, url = repo_root(tmp_path, hub)
    base_rev = hub.add_folder("toy/sd-tiny", TOY_PIPELINE)
    hub_sub = write_submission(root, "hub-uce", {"hub_id": "toy/sd-tiny", "revision": base_rev})
    go_offline(monkeypatch)
    rc, out, err = run(capsys, "check", str(hub_sub), "--root", str(root))  # nothing fetched yet
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"toy/sd-tiny@{base_rev[:12]}" in err and f"unlearn fetch hub:toy/sd-tiny@{base_rev}" in err and "offline" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert run(capsys, "fetch", str(hub_sub), "--root", str(root), "--quiet")[0] == 0
    go_offline(monkeypatch)
    snap = pipeline_snapshot("toy/sd-tiny", base_rev, download=False)
    (snap / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # one file lost from the cache
    rc, out, err = run(capsys, "check", str(hub_sub), "--root", str(root))
    assert rc == 2 and "unet/*.safetensors" in err and f"unlearn fetch hub:toy/sd-tiny@{base_rev}" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert run(capsys, "fetch", str(hub_sub), "--root", str(root), "--quiet")[0] == 0  # only the lost file comes again
    assert run(capsys, "pin", "hub-toy", "--root", str(root), "--quiet")[0] == 0  # (the CSV's placeholder needs its pin to run)
    go_offline(monkeypatch)
    rc, out, err = run(capsys, "check", str(hub_sub), "--root", str(root))
    assert rc == 0, err
    (tmp_path / "hf" / "models--toy--classifier" / "snapshots" / rev / "model.safetensors").unlink()  # the scorer's weights lost
    rc, out, err = run(capsys, "check", str(hub_sub), "--root", str(root))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"toy/classifier@{rev[:12]}:model.safetensors" in err and f"unlearn fetch hub:toy/classifier@{rev}:model.safetensors" in err


def test_readme_real_models_walkthrough(hub, tmp_path, capsys, monkeypatch):
    """docs/real-models.md, step by step: fetch, pin, convert a CompVis checkpoint, write the
    submission, check and run it offline from the caches (the hub is gone by then)."""
    import torch
    from test_convert import erased_unet, to_ldm

    root, rev, url = repo_root(tmp_path, hub)
    p = root / "suites" / "hub-toy.yaml"
    p.write_text(p.read_text().replace("threshold: '>= 0.8'", "threshold: '>= 0.0'"))
    base_rev = hub.add_folder("toy/sd-tiny", TOY_PIPELINE)
    # 1. fetch what the suite names and the base model; 2. pin the suite
    assert run(capsys, "fetch", "hub-toy", f"hub:toy/sd-tiny@{base_rev}", "--root", str(root), "--quiet")[0] == 0
    rc, out, err = run(capsys, "pin", "hub-toy", "--root", str(root), "--quiet")
    assert rc == 0 and "2 file(s) pinned" in out
    # 3. convert the method's CompVis checkpoint against the base from the cache
    torch.save({"state_dict": to_ldm(erased_unet(0.5)), "optimizer_states": []}, tmp_path / "esd.ckpt")
    (root / "ckpt").mkdir()
    monkeypatch.chdir(root)
    rc, out, err = run(capsys, "convert", str(tmp_path / "esd.ckpt"), "--base", f"hub:toy/sd-tiny@{base_rev}", "--out", "ckpt/unet.safetensors")
    assert rc == 0, err
    block = yaml.safe_load(out[out.index("checkpoint:"):])
    # 4. the submission
    sub = {"name": "esd-hub", "method": {"name": "esd"}, "base_model": {"hub_id": "toy/sd-tiny", "revision": base_rev},
           **block, "targets": [{"concept": "striped", "kind": "style"}], "suites": ["hub-toy"]}
    (root / "esd-hub.yaml").write_text(yaml.safe_dump(sub, sort_keys=False))
    # 5. offline, no hub: check, then the run
    hub.close()
    go_offline(monkeypatch)
    rc, out, err = run(capsys, "check", "esd-hub.yaml")
    assert rc == 0, err
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir", str(root),
                        "--unlearn-submission", "esd-hub.yaml", "--unlearn-results", "results/esd.json"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((root / "results" / "esd.json").read_text())
    s = res["suites"][0]
    assert s["models"]["base"] == f"hub:toy/sd-tiny@{base_rev}" and s["pins"]["scorer.weights"].endswith(sha256_file(CLASSIFIER / "model.safetensors"))
    assert all(m["verdict"] in ("pass", "info") for m in res["metrics"])


@pytest.mark.parametrize("hub_ref, field", [
    ({"repo": "../x", "revision": "a" * 40, "filename": "m.safetensors"}, "scorer.weights.hub.repo"),
    ({"repo": "o/n", "revision": "main", "filename": "m.safetensors"}, "scorer.weights.hub.revision"),
    ({"repo": "o/n", "revision": "a" * 40, "filename": "../../etc/passwd"}, "scorer.weights.hub.filename"),
    ({"repo": "o/n", "revision": "a" * 40, "filename": "/abs.safetensors"}, "scorer.weights.hub.filename"),
    ({"repo": "o/n", "revision": "a" * 40}, "scorer.weights"),
])
def test_bad_hub_references_are_one_line_errors(tmp_path, capsys, hub_ref, field):
    suite = {"id": "s", "version": "1", "applies_to": ["style"], "prompts": {"inline": ["a"]},
             "generation": {"steps": 1, "guidance": 1.0, "seeds": [0]}, "metrics": [{"name": "ua"}],
             "scorer": {"backend": "toy", "weights": {"hub": hub_ref, "sha256": ZERO}}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(suite))
    rc, out, err = run(capsys, "validate", str(p))
    assert rc == 2 and f"{p}: {field}" in err and "Traceback" not in err


def test_fetch_and_pin_refuse_what_they_cannot_name(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    rc, out, err = run(capsys, "fetch", "hub:../x@" + "a" * 40, "--quiet")
    assert rc == 2 and "is not a suite id" in err
    rc, out, err = run(capsys, "fetch", "hub:o/n@" + "a" * 40 + ":../up", "--quiet")
    assert rc == 2 and "is not a suite id" in err
    root = tmp_path / "repo"
    (root / "suites").mkdir(parents=True)
    suite = {"id": "s", "version": "1", "applies_to": ["style"], "prompts": {"inline": ["a"]}, "generation": {"steps": 1, "guidance": 1.0, "seeds": [0]},
             "metrics": [{"name": "ua"}], "scorer": {"backend": "toy", "weights": {"path": "w/model.safetensors", "sha256": ZERO}}}
    (root / "suites" / "s.yaml").write_text(yaml.safe_dump(suite))
    rc, out, err = run(capsys, "pin", "s", "--root", str(root), "--quiet")
    assert rc == 2 and "w/model.safetensors does not exist" in err and len(err.strip().splitlines()) == 1
    (root / "w").mkdir()
    shutil.copy(CLASSIFIER / "model.safetensors", root / "w" / "model.safetensors")
    rc, out, err = run(capsys, "pin", "s", "--root", str(root), "--quiet")  # a repository file (e.g. converted weights) is pinned too
    assert rc == 0 and sha256_file(CLASSIFIER / "model.safetensors") in out
    rc, out, err = run(capsys, "pin", "nope", "--root", str(root))
    assert rc == 2 and "no suite 'nope'" in err


def _as_hub_toy(m: dict, root: Path) -> dict:
    """A record moved to the hub-toy suite, with the verdict hub-toy's own threshold gives (readers
    recompute verdicts from the current suites and skip a file that claims another)."""
    from harness.results.attest import current_thresholds, expected_verdict

    th = current_thresholds(root).get(("hub-toy", m["metric"]))
    out = {**m, "suite": "hub-toy", "threshold": th, "verdict_point": None, "margin_ci": None,
           "scores": None, "ci": None, "delta_ci": None}  # no intervals: readers recompute them from the scores under the new threshold
    out["verdict"] = expected_verdict(out, th)
    return out


def test_the_leaderboard_skips_a_real_result_whose_pins_are_not_the_suites(hub, tmp_path, capsys, monkeypatch):
    from harness.site import load as leaderboard
    from harness.spec.pins import suite_pins
    from harness.spec import load_suite

    root, rev, url = repo_root(tmp_path, hub)
    assert run(capsys, "pin", "hub-toy", "--root", str(root), "--quiet")[0] == 0
    pins = suite_pins(load_suite(root / "suites" / "hub-toy.yaml"))
    from harness.results.io import results_files

    src = results_files(Path(__file__).resolve().parents[1] / "leaderboard" / "results")[0]  # not the ATTESTATION.json manifest
    results = tmp_path / "results"
    results.mkdir()
    for name, p in (("good", pins), ("stale", {**pins, "prompts.csv": url + "#" + "c" * 64}), ("none", None)):
        data = json.loads(src.read_text())
        data["suites"][0]["id"] = "hub-toy"
        data["metrics"] = [_as_hub_toy(m, root) if m["suite"] == json.loads(src.read_text())["suites"][0]["id"] else m for m in data["metrics"]]
        data.pop("summary", None)  # its counts were of the old verdicts (readers check them)
        data["suites"][0].pop("pins", None)  # results made since pins exist record them (toy suites: {})
        if p is not None:
            data["suites"][0]["pins"] = p
        (results / f"{name}.json").write_text(json.dumps(data))
    monkeypatch.setattr(leaderboard, "ROOT", root)
    seen = []
    runs = leaderboard.load_runs(results, seen.append)
    assert [r.file for r in runs] == ["good.json"], seen
    assert any("stale.json" in m and "pins differ" in m and "prompts.csv" in m for m in seen)
    assert any("none.json" in m and "recorded no pins" in m for m in seen)


def test_fetch_of_a_whole_repository_picks_pipeline_or_model_files_and_an_unreachable_hub_is_one_line(hub, tmp_path, capsys, monkeypatch):
    rev = hub.add_repo("toy/clip", {"config.json": b"{}", "model.safetensors": b"w" * 2048, "pytorch_model.bin": b"p" * 2048,
                                    "tokenizer.json": b"{}", "flax_model.msgpack": b"f" * 2048})
    rc, out, err = run(capsys, "fetch", f"hub:toy/clip@{rev}", "--quiet")
    assert rc == 0, err
    snap = tmp_path / "hf" / "models--toy--clip" / "snapshots" / rev
    assert sorted(p.name for p in snap.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]  # no pickles, no flax
    from harness.store.hub import model_snapshot

    go_offline(monkeypatch)
    assert model_snapshot("toy/clip", rev) == snap  # the CLIP loader's path, offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    rc, out, err = run(capsys, "fetch", f"hub:toy/other@{'b' * 40}:x.safetensors", "--quiet")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "could not download" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- SDXL snapshots
SDXL_INDEX = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0.dev0", "force_zeros_for_empty_prompt": True,
              "add_watermarker": None, "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
              "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
              "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
# stabilityai/stable-diffusion-xl-base-1.0's kinds of files: the diffusers weights and configs, their fp16
# variants, root single files (the generative-models checkpoint, one with the 0.9 VAE, an example LoRA),
# a second VAE folder no component names, ONNX / OpenVINO / Flax exports, images and the model card
SDXL_EXTRA = ["README.md", "LICENSE.md", "01.png", ".gitattributes", "sd_xl_base_1.0.safetensors", "sd_xl_base_1.0_0.9vae.safetensors",
              "sd_xl_offset_example-lora_1.0.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_flax_model.msgpack",
              "unet/model.onnx", "unet/model.onnx_data", "unet/openvino_model.bin", "unet/openvino_model.xml",
              "text_encoder/model.fp16.safetensors", "text_encoder/flax_model.msgpack", "text_encoder/model.onnx", "text_encoder/openvino_model.bin",
              "text_encoder/openvino_model.xml", "text_encoder_2/model.fp16.safetensors", "text_encoder_2/model.onnx",
              "text_encoder_2/model.onnx_data", "text_encoder_2/openvino_model.bin", "text_encoder_2/openvino_model.xml",
              "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_flax_model.msgpack", "vae_1_0/config.json",
              "vae_1_0/diffusion_pytorch_model.safetensors", "vae_1_0/diffusion_pytorch_model.fp16.safetensors", "vae_decoder/config.json",
              "vae_decoder/model.onnx", "vae_decoder/openvino_model.bin", "vae_decoder/openvino_model.xml", "vae_encoder/config.json",
              "vae_encoder/model.onnx", "unet/diffusion_pytorch_model.safetensors.index.fp16.json", "unet/extra/notes.json"]
SDXL_NEEDED = ["model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
               "text_encoder_2/config.json", "text_encoder_2/model.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
               "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/special_tokens_map.json",
               "tokenizer_2/tokenizer_config.json", "tokenizer_2/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
               "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]


def test_an_sdxl_listing_selects_each_components_configs_and_plain_safetensors_only():
    from harness.store.hub import pipeline_files

    listing = sorted(SDXL_NEEDED + SDXL_EXTRA)
    assert pipeline_files(listing, SDXL_INDEX) == sorted(SDXL_NEEDED)
    # a component the index does not name is not fetched, one it names is; sharded weights come with their index
    shards = ["unet/diffusion_pytorch_model-00001-of-00002.safetensors", "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
              "unet/diffusion_pytorch_model.safetensors.index.json"]
    assert pipeline_files(listing + shards, {k: v for k, v in SDXL_INDEX.items() if k != "vae"}) == [
        p for p in sorted(SDXL_NEEDED) if not p.startswith("vae/")] + shards
    assert pipeline_files(["vae_1_0/config.json", "vae_1_0/diffusion_pytorch_model.safetensors"], {**SDXL_INDEX, "vae_1_0": ["diffusers", "AutoencoderKL"]}) == [
        "vae_1_0/config.json", "vae_1_0/diffusion_pytorch_model.safetensors"]
    assert pipeline_files(["[ab]/config.json", "a/config.json"], {"[ab]": ["diffusers", "X"]}) == []  # a name that is a pattern names nothing


def test_fetch_of_an_sdxl_repository_leaves_its_duplicates_on_the_hub(hub, tmp_path, capsys, monkeypatch):
    """A toy-xl pipeline laid out like SDXL 1.0 base on the stand-in hub (every duplicate kind of
    file beside it): ``unlearn fetch`` gets exactly the diffusers files, the snapshot loads as an
    SDXL base offline, and ``unlearn convert`` reads it as ``--base hub:...``."""
    from safetensors.torch import load_file, save_file

    from harness.families import family_of
    from harness.store.hub import pipeline_snapshot
    from harness.toy.model import build_pipeline_xl

    build_pipeline_xl(seed=2).save_pretrained(str(tmp_path / "xl"))
    files = {p.relative_to(tmp_path / "xl").as_posix(): p.read_bytes() for p in sorted((tmp_path / "xl").rglob("*")) if p.is_file()}
    own = set(files)
    files.update({name: (b"w" * 4096 if name.endswith((".safetensors", ".bin", ".onnx", ".onnx_data", ".msgpack")) else b"{}") for name in SDXL_EXTRA})
    rev = hub.add_repo("toy/sdxl-tiny", files)
    rc, out, err = run(capsys, "fetch", f"hub:toy/sdxl-tiny@{rev}", "--quiet")
    assert rc == 0, err
    snap = tmp_path / "hf" / "models--toy--sdxl-tiny" / "snapshots" / rev
    assert {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()} == own
    got = {path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path}
    assert any(p.endswith("/unet/diffusion_pytorch_model.safetensors") for p in got)
    assert not [p for p in got if any(p.endswith("/" + x) for x in SDXL_EXTRA)]  # not even asked for
    go_offline(monkeypatch)
    assert pipeline_snapshot("toy/sdxl-tiny", rev, download=False) == snap and family_of(snap).name == "sdxl"
    unet = load_file(str(snap / "unet" / "diffusion_pytorch_model.safetensors"))
    key = next(k for k in unet if ".attn2.to_k." in k)
    save_file({key: unet[key] + 1}, str(tmp_path / "edit.safetensors"))
    rc, out, err = run(capsys, "convert", str(tmp_path / "edit.safetensors"), "--base", f"hub:toy/sdxl-tiny@{rev}", "--out", str(tmp_path / "u.safetensors"))
    assert rc == 0 and "1 changed unet tensor(s) kept" in out, err
