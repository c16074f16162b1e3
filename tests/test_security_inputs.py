"""The trust boundary, second pass (docs/security.md "Inputs a pull request chooses"), one table
per class of attack: the base model a submission names, downloads, output folders, inputs that
used to print a traceback, and self-reported efficiency.

Each row is a hostile input; the assertion is the refusal (one line naming the file or field,
no traceback, nothing lost) or the documented handling. Loopback servers only, no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from test_bad_inputs import assert_one_line, check, edit, repo, sub, suite, text  # noqa: F401 (repo is a fixture)
from test_security import cli

from harness.errors import HarnessError
from harness.store.hashing import sha256_file, sha256_tree

ROOT = Path(__file__).resolve().parents[1]
REV = "a" * 40




# ============================================================================ 1. the base model
def base_folder(rel: str, unet: dict | None = None, vae: dict | None = None, sched: dict | str | None = None):
    """A folder at ``rel`` with a model_index.json and the given component configs."""
    def f(root: Path):
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
        for comp, name, cfg in (("unet", "config.json", unet), ("vae", "config.json", vae), ("scheduler", "scheduler_config.json", sched)):
            if cfg is not None:
                (d / comp).mkdir(exist_ok=True)
                (d / comp / name).write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return f


def pipeline_checkpoint(**configs):
    """A pipeline checkpoint folder ckpt/pipe with these configs; the submission points at it."""
    def f(root: Path):
        base_folder("ckpt/pipe", **configs)(root)
        s = (root / "sub.yaml").read_text()
        i = s.index("checkpoint:")
        j = s.index("\n", i)
        (root / "sub.yaml").write_text(s[:i] + f'checkpoint: {{kind: pipeline, path: ckpt/pipe, sha256: "{sha256_tree(root / "ckpt/pipe")}"}}' + s[j:])
    return f


def steps(*fs):
    def f(root: Path):
        for g in fs:
            g(root)
    return f


ANY_BASE = suite("world: toy", "world: toy\nother_bases: any")
VAE4 = {"block_out_channels": [32, 64, 64, 64]}

BASES = [
    ("a-copy-of-the-toy-base-under-submissions", steps(base_folder("submissions/copy", {"sample_size": 8}, VAE4),
                                                        sub("{builtin: toy}", "{local_dir: submissions/copy}")),
     ["base_model: suite mini is defined on builtin:toy", "local:submissions/copy is not allowed"]),
    ("a-hub-base-on-a-toy-suite", sub("{builtin: toy}", f"{{hub_id: someone/sd-copy, revision: {REV}}}"),
     ["base_model: suite mini is defined on builtin:toy", "hub:someone/sd-copy"]),
    ("a-local-base-where-only-hub-bases-are-allowed", steps(suite("world: toy", "world: toy\nother_bases: hub"),
                                                            base_folder("mybase", {"sample_size": 8}, VAE4), sub("{builtin: toy}", "{local_dir: mybase}")),
     ["suite mini is defined on builtin:toy, builtin:toy-xl or a pinned hub base", "local:mybase"]),
    ("native-size-16384", steps(ANY_BASE, base_folder("big", {"sample_size": 2048}, VAE4), sub("{builtin: toy}", "{local_dir: big}")),
     ["base_model: native image size 16384x16384", "outside 8..4096"]),
    ("native-size-0", steps(ANY_BASE, base_folder("zero", {"sample_size": 0}, VAE4), sub("{builtin: toy}", "{local_dir: zero}")),
     ["base_model: unet/config.json: sample_size: '0' is not a whole number from 1 to 4096"]),
    ("native-size-a-bool", steps(ANY_BASE, base_folder("b", {"sample_size": True}, VAE4), sub("{builtin: toy}", "{local_dir: b}")),
     ["base_model: unet/config.json: sample_size: 'True' is not a whole number"]),
    ("vae-with-100-blocks", steps(ANY_BASE, base_folder("v", {"sample_size": 8}, {"block_out_channels": [1] * 100}), sub("{builtin: toy}", "{local_dir: v}")),
     ["base_model: vae/config.json: block_out_channels"]),
    ("an-unparsable-base-config", steps(ANY_BASE, base_folder("u", "{not json", VAE4), sub("{builtin: toy}", "{local_dir: u}")),
     ["base_model: unet/config.json is not a readable JSON config"]),
    ("pipeline-checkpoint-with-1e9-train-timesteps", pipeline_checkpoint(sched={"num_train_timesteps": 10**9}),
     ["checkpoint: scheduler/scheduler_config.json: num_train_timesteps: '1000000000' is not a whole number from 1 to 10000"]),
    ("pipeline-checkpoint-with-nan-betas", pipeline_checkpoint(sched='{"num_train_timesteps": 1000, "beta_end": NaN}'),
     ["checkpoint: scheduler/scheduler_config.json: beta_end: 'nan' is not a number from 0 to 1"]),
    ("pipeline-checkpoint-with-huge-trained-betas", pipeline_checkpoint(sched={"trained_betas": [0.1] * 20_000}),
     ["checkpoint: scheduler/scheduler_config.json: trained_betas"]),
    ("pipeline-checkpoint-with-huge-native-size", pipeline_checkpoint(unet={"sample_size": 4096}, vae=VAE4),
     ["checkpoint: native image size 32768x32768"]),
]


@pytest.mark.parametrize("name, spoil, needles", BASES, ids=[b[0] for b in BASES])
def test_a_submission_cannot_choose_the_base_or_its_sizes(repo, name, spoil, needles):
    spoil(repo)
    rc, _, err = check()
    assert_one_line(rc, err, *needles)


def test_the_suite_base_is_allowed_and_recorded(repo):
    from harness.run.plan import base_record, resolve_suites
    from harness.spec import load_submission, load_suite

    rc, out, err = check()
    assert (rc, err) == (0, "")
    s = load_submission(repo / "sub.yaml")
    suites = resolve_suites(s, repo)
    assert base_record(s, suites["mini"]) == {"label": "builtin:toy", "suite_base": True, "suite_bases": ["builtin:toy", "builtin:toy-xl"]}
    real = load_suite(ROOT / "suites" / "imagenette-objects.yaml")
    sd14 = s.model_copy(update={"base_model": s.base_model.model_copy(update={"builtin": None, "hub_id": "CompVis/stable-diffusion-v1-4",
                                                                              "revision": "133a221b8aa7292a167afc5127cb63fb5005638b"})})
    other = s.model_copy(update={"base_model": s.base_model.model_copy(update={"builtin": None, "hub_id": "someone/sd-v1-5", "revision": REV})})
    assert base_record(sd14, real)["suite_base"] is True
    assert base_record(other, real) == {"label": f"hub:someone/sd-v1-5@{REV}", "suite_base": False,
                                        "suite_bases": ["hub:CompVis/stable-diffusion-v1-4@133a221b8aa7292a167afc5127cb63fb5005638b"]}
    with pytest.raises(HarnessError, match="suite imagenette-objects is defined on hub:CompVis"):
        real.check_base(s.base_model)  # the toy base on a real suite


def test_every_committed_suite_names_its_bases():
    from harness.spec import load_suite

    for p in sorted((ROOT / "suites").glob("*.yaml")):
        s = load_suite(p)
        assert s.other_bases_rule() != "any", f"{p.name}: names no base model and allows any (a PR could bring its own)"
        assert s.bases() or s.other_bases_rule() == "hub", p.name


@pytest.mark.parametrize("minutes, rc, needle", [("0.000001", 2, "over the pull-request limit of 1e-06 minutes"),
                                                  ("100000", 0, "pull-request limit: smoke run estimated at"),
                                                  ("inf", 2, "--pr-minutes"), ("-1", 2, "--pr-minutes")])
def test_a_pull_request_run_over_its_time_limit_is_refused(repo, minutes, rc, needle):
    got, out, err = check("--pr-minutes", minutes)
    assert got == rc, err
    assert needle in (err if rc else out)
    if rc:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ============================================================================ 5. downloads
BODY = b"x" * 300_000


class Hostile:
    """A loopback server: /file (300 kB), /to-http-other (302 to plain http on another host),
    /to-foreign (302 to an https host off the list), /to-self (302 to /file), /trickle (one byte
    every 0.1 s under a 300 kB Content-Length), /slow-headers (the status line one byte at a
    time), /no-length (300 kB, no Content-Length)."""

    def __init__(self):
        me = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                try:
                    self._get()
                except OSError:
                    pass

            def _get(self):
                if self.path == "/file":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY)))
                    self.end_headers()
                    self.wfile.write(BODY)
                elif self.path.startswith("/to-"):
                    where = {"/to-http-other": "http://127.0.0.2:9/file", "/to-foreign": "https://example.org/file",
                             "/to-self": f"http://127.0.0.1:{me.port}/file"}[self.path]
                    self.send_response(302)
                    self.send_header("Location", where)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/trickle":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY)))
                    self.end_headers()
                    for _ in range(600):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.1)
                elif self.path == "/slow-headers":
                    for ch in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"y" * 600:
                        self.wfile.write(bytes([ch]))
                        self.wfile.flush()
                        time.sleep(0.1)
                elif self.path == "/no-length":
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(BODY)
                else:
                    self.send_response(404)
                    self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile(monkeypatch):
    monkeypatch.setenv("UNLEARN_TEST_ALLOW_LOOPBACK_HTTP", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("UNLEARN_DOWNLOAD_HOSTS", "127.0.0.1")
    monkeypatch.delenv("UNLEARN_OFFLINE", raising=False)
    for k in ("UNLEARN_DOWNLOAD_MAX_BYTES", "UNLEARN_MAX_DOWNLOAD_BYTES", "UNLEARN_DOWNLOAD_TIMEOUT", "UNLEARN_DOWNLOAD_DEADLINE",
              "UNLEARN_DOWNLOAD_MIN_RATE", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    # huggingface_hub read HF_HUB_OFFLINE when first imported; the harness syncs it before each hub
    # call (hub._allow_network), and the tests that use its client directly do the same here, so
    # they do not depend on which test of the worker ran before them
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    s = Hostile()
    yield s
    s.close()


DOWNLOADS = [
    ("redirect-to-plain-http-on-another-host", "/to-http-other", {}, "(redirect): 'http://127.0.0.2:9/file' is not an https URL"),
    ("redirect-to-a-host-off-the-list", "/to-foreign", {}, "(redirect): host 'example.org' is not on the download allow-list"),
    ("one-byte-a-second", "/trickle", {"UNLEARN_DOWNLOAD_TIMEOUT": "1", "UNLEARN_DOWNLOAD_MIN_RATE": "1000"}, "slower than the minimum rate"),
    ("trickle-past-the-deadline", "/trickle", {"UNLEARN_DOWNLOAD_DEADLINE": "1.5", "UNLEARN_DOWNLOAD_MIN_RATE": "0"}, "deadline"),
    ("headers-one-byte-at-a-time", "/slow-headers", {"UNLEARN_DOWNLOAD_TIMEOUT": "1"}, "no complete answer within the timeout"),
    ("cap-while-reading-without-a-length", "/no-length", {"UNLEARN_DOWNLOAD_MAX_BYTES": "100000"}, "sent more than the download cap of 100000"),
    ("cap-from-the-announced-length", "/file", {"UNLEARN_DOWNLOAD_MAX_BYTES": "100000"}, "over the download cap"),
    ("timeout-inf", "/file", {"UNLEARN_DOWNLOAD_TIMEOUT": "inf"}, "UNLEARN_DOWNLOAD_TIMEOUT: 'inf' is outside"),
    ("timeout-nan", "/file", {"UNLEARN_DOWNLOAD_TIMEOUT": "nan"}, "UNLEARN_DOWNLOAD_TIMEOUT: 'nan' is outside"),
    ("timeout-negative", "/file", {"UNLEARN_DOWNLOAD_TIMEOUT": "-1"}, "UNLEARN_DOWNLOAD_TIMEOUT: '-1' is outside"),
    ("deadline-inf", "/file", {"UNLEARN_DOWNLOAD_DEADLINE": "inf"}, "UNLEARN_DOWNLOAD_DEADLINE: 'inf' is outside"),
]


@pytest.mark.parametrize("name, path, env, needle", DOWNLOADS, ids=[d[0] for d in DOWNLOADS])
def test_a_download_keeps_its_rules_and_limits(hostile, tmp_path, monkeypatch, name, path, env, needle):
    from harness.store.fetch import fetch

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    t0 = time.monotonic()
    with pytest.raises(HarnessError) as e:
        fetch(hostile.url(path), None, tmp_path, "checkpoint.url")
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert str(e.value).startswith("UNLEARN_" if name.startswith(("timeout", "deadline")) else "checkpoint.url")
    assert time.monotonic() - t0 < 8
    assert not list((tmp_path / "downloads").glob("[0-9a-f]*/*")), "nothing is kept"


def test_a_redirect_the_rules_allow_is_followed(hostile, tmp_path):
    from harness.store.fetch import fetch

    p = fetch(hostile.url("/to-self"), hashlib.sha256(BODY).hexdigest(), tmp_path, "checkpoint.url")
    assert p.read_bytes() == BODY


@pytest.fixture
def hub(monkeypatch, tmp_path):
    from hubstub import StandInHub

    h = StandInHub()
    monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("UNLEARN_OFFLINE", raising=False)
    monkeypatch.setenv("UNLEARN_TEST_ALLOW_LOOPBACK_HTTP", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy", "UNLEARN_DOWNLOAD_MAX_BYTES"):
        monkeypatch.delenv(k, raising=False)
    yield h
    h.close()


def test_a_hub_snapshot_cap_counts_the_bytes_not_the_listing(hub, monkeypatch):
    import copy

    from harness.store import hub as hubmod

    def lie(f):
        f = copy.copy(f)
        f.size = 10
        return f

    rev = hub.add_repo("someone/big", {"config.json": b"{}", "weights.safetensors": b"\0" * 3_000_000})
    real = hubmod._tree
    monkeypatch.setattr(hubmod, "_tree", lambda *a: [lie(f) for f in real(*a)])  # the listing lies: 10 bytes each
    monkeypatch.setenv("UNLEARN_DOWNLOAD_MAX_BYTES", "100000")
    with pytest.raises(HarnessError) as e:
        hubmod.hub_snapshot("someone/big", rev, what="scorer")
    assert "download cap of 100000" in str(e.value) and "\n" not in str(e.value)


def test_a_hub_base_naming_a_foreign_library_is_refused(hub):
    from harness.store.hub import pipeline_snapshot

    index = {"_class_name": "StableDiffusionPipeline", "unet": ["evil_lib", "Backdoor"], "scheduler": ["diffusers", "DDIMScheduler"]}
    rev = hub.add_repo("someone/evil-sd", {"model_index.json": json.dumps(index).encode(), "scheduler/scheduler_config.json": b"{}"})
    with pytest.raises(HarnessError, match="model_index.json: unet: library 'evil_lib' is not one of diffusers, transformers"):
        pipeline_snapshot("someone/evil-sd", rev)


def test_a_hub_base_with_an_absurd_scheduler_is_refused(hub):
    from harness.store.hub import pipeline_snapshot

    index = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"]}
    rev = hub.add_repo("someone/big-sched", {"model_index.json": json.dumps(index).encode(),
                                             "scheduler/scheduler_config.json": b'{"num_train_timesteps": 1000000000}'})
    with pytest.raises(HarnessError, match="base_model: scheduler/scheduler_config.json: num_train_timesteps: '1000000000'"):
        pipeline_snapshot("someone/big-sched", rev)


@pytest.mark.parametrize("etag", ["W-some-weak-etag", "abc", "0" * 39])
def test_a_hub_etag_that_is_not_a_hash_is_unverified_and_refused(tmp_path, etag):
    from harness.store.hub import verify_blob

    blob = tmp_path / "blobs" / etag
    blob.parent.mkdir()
    blob.write_bytes(b"weights")
    with pytest.raises(HarnessError, match="is not a sha256 or git blob sha1"):
        verify_blob(blob, "scorer", "someone/x@aaaa:w.safetensors")


# ============================================================================ 6. output folders
def _baseline_repo(root: Path) -> Path:
    """A repository with a submission whose checkpoint is under submissions/checkpoints/, and a
    committed results file of the same method as its baseline."""
    ck = root / "submissions" / "checkpoints" / "mine"
    ck.mkdir(parents=True)
    (ck / "unet.safetensors").write_bytes(b"precious")
    (root / "pyproject.toml").write_text("")
    base = json.loads((ROOT / "leaderboard" / "results" / "toy-uce-style.json").read_text())
    (root / "baseline.json").write_text(json.dumps(base))
    (root / "submissions" / "mine.yaml").write_text(
        f"name: mine\nmethod: {{name: {json.dumps(base['submission']['method']['name'])}}}\nbase_model: {{builtin: toy}}\n"
        f'checkpoint: {{kind: unet, path: submissions/checkpoints/mine/unet.safetensors, sha256: "{sha256_file(ck / "unet.safetensors")}"}}\n'
        "targets: [{concept: striped, kind: style}]\n")
    return root


OUTS = [
    ("regress-out-is-the-submissions-folder", "submissions", "holds (or is) the submission's checkpoint"),
    ("regress-out-is-the-checkpoint-folder", "submissions/checkpoints/mine", "holds (or is) the submission's checkpoint"),
    ("regress-out-is-a-folder-of-other-files", "docs", "a folder with files `unlearn regress` did not make"),
]


@pytest.mark.parametrize("name, out, needle", OUTS, ids=[o[0] for o in OUTS])
def test_regress_never_deletes_what_it_did_not_make(tmp_path, name, out, needle):
    from harness.gate.regress_cmd import regress_own

    root = _baseline_repo(tmp_path)
    (root / "docs").mkdir()
    (root / "docs" / "notes.md").write_text("mine")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(HarnessError) as e:
        regress_own(root, str(root / "submissions" / "mine.yaml"), "touch ran", Path(out), baseline=str(root / "baseline.json"))
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (root / "ran").exists(), "the command did not run"
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_out_is_one_word_of_the_method_command(tmp_path):
    from harness.gate.regress_cmd import regress_own

    root = _baseline_repo(tmp_path)
    with pytest.raises(HarnessError, match="wrote no checkpoint"):
        regress_own(root, str(root / "submissions" / "mine.yaml"), "echo {out} > said.txt", Path("o $(touch pwned);x"),
                    baseline=str(root / "baseline.json"))
    assert not (root / "pwned").exists()
    assert (root / "said.txt").read_text().strip().endswith("o $(touch pwned);x/checkpoints/mine")
    assert (root / "o $(touch pwned);x" / ".unlearn-owned").is_file()


def test_images_refuses_an_out_folder_it_did_not_make(tmp_path):
    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    (site / "index.html").write_text("<html>the board</html>")
    (site / "images" / "a.png").write_bytes(b"png")
    results = tmp_path / "r.json"
    shutil.copy(ROOT / "leaderboard" / "results" / "toy-uce-style.json", results)
    rc, _, err = cli("images", str(results), "--out", str(site), "--root", str(ROOT), "--cache", str(tmp_path / "cache"))
    assert_one_line(rc, err, f"--out {site}", "did not make")
    assert (site / "images" / "a.png").read_bytes() == b"png" and "the board" in (site / "index.html").read_text()


def test_claim_dir_marks_what_it_makes_and_refuses_the_rest(tmp_path):
    from harness.store.fsutil import OWNED, claim_dir

    p = claim_dir(tmp_path / "new", "--out", "unlearn images")
    assert (p / OWNED).read_text().strip() == "unlearn images"
    assert claim_dir(p, "--out", "unlearn images") == p  # its own, again
    with pytest.raises(HarnessError, match="did not make"):
        (p / "x").write_text("1")
        claim_dir(p, "--out", "unlearn regress")  # another command's folder
    (tmp_path / "link").symlink_to(p)
    with pytest.raises(HarnessError, match="symbolic link"):
        claim_dir(tmp_path / "link", "--out", "unlearn images")
    (tmp_path / "file").write_text("1")
    with pytest.raises(HarnessError, match="not a folder"):
        claim_dir(tmp_path / "file", "--out", "unlearn images")


def test_a_claimed_folder_is_never_emptied_through_a_link_inside_it(tmp_path):
    """A folder marked by a command is trusted for what it holds, not for where a link in it
    points: ``remove_inside`` refuses a linked component (a linked parent or the target itself)
    and leaves the link's target whole; a plain child is removed."""
    from harness.store.fsutil import claim_dir, remove_inside

    victim = tmp_path / "victim"
    (victim / "mine").mkdir(parents=True)
    (victim / "mine" / "keep.txt").write_text("keep")
    out = claim_dir(tmp_path / "out", "--out", "unlearn regress")
    (out / "checkpoints").symlink_to(victim)  # out/checkpoints/mine is victim/mine through the link
    with pytest.raises(HarnessError, match="symbolic link inside") as e:
        remove_inside(out, out / "checkpoints" / "mine")
    assert "\n" not in str(e.value) and (victim / "mine" / "keep.txt").read_text() == "keep"
    (out / "images").symlink_to(victim / "mine")
    with pytest.raises(HarnessError, match="symbolic link inside"):
        remove_inside(out, out / "images")
    assert (victim / "mine" / "keep.txt").is_file()
    (out / "cache" / "x").mkdir(parents=True)
    remove_inside(out, out / "cache")
    assert not (out / "cache").exists()
    remove_inside(out, out / "absent")  # nothing there: nothing to do
    with pytest.raises(HarnessError, match="not inside"):
        remove_inside(out, victim)


def test_convert_does_not_overwrite_a_file_it_did_not_write(tmp_path):
    src = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, src)
    precious = tmp_path / "precious.safetensors"
    precious.write_bytes(b"not mine")
    rc, _, err = cli("convert", str(src), "--out", str(precious), "--kind", "plain")
    assert_one_line(rc, err, "was not written by `unlearn convert`")
    assert precious.read_bytes() == b"not mine"
    out = tmp_path / "mine.safetensors"
    assert cli("convert", str(src), "--out", str(out), "--kind", "plain")[0] == 0
    assert cli("convert", str(src), "--out", str(out), "--kind", "plain")[0] == 0  # its own file: replaced


# ============================================================================ 7. one line, never a traceback or a hang
def _stride0(tmp_path: Path) -> Path:
    p = tmp_path / "giant.pt"
    torch.save({"w": torch.zeros(1).expand(10**11)}, p)
    return p


def _bad_unet_config_base(tmp_path: Path) -> Path:
    d = tmp_path / "base"
    base_folder("base", "{not json", VAE4)(tmp_path)
    return d


def test_a_stride_zero_giant_tensor_is_refused_in_one_line(tmp_path):
    rc, _, err = cli("convert", str(_stride0(tmp_path)), "--out", str(tmp_path / "o.safetensors"), "--kind", "plain")
    assert_one_line(rc, err, "giant.pt: tensor 'w' is a view of 400000000000 bytes over 4 stored")
    assert not (tmp_path / "o.safetensors").exists()


def test_convert_with_an_unparsable_base_config_is_one_line(tmp_path):
    src = tmp_path / "u.pt"
    torch.save({"model.diffusion_model.conv_in.weight": torch.ones(2)}, src)
    rc, _, err = cli("convert", str(src), "--out", str(tmp_path / "o.safetensors"), "--base", str(_bad_unet_config_base(tmp_path)))
    assert_one_line(rc, err, "unet/config.json is not a readable JSON config")


def test_a_concept_with_a_dot_in_a_pinned_suite_loads_again(tmp_path):
    from harness.spec.pins import apply_lock, items_of

    data = {"metrics": [{"name": "mscore", "params": {"references_by_concept": {"st. ives": {"path": "refs/a", "sha256": "0" * 64},
                                                                               "100%.x": {"path": "refs/b", "sha256": "0" * 64}}}}]}
    keys = {it.key: it for it in items_of(data)}
    assert set(keys) == {"metrics.mscore.params.references_by_concept.st%2E ives", "metrics.mscore.params.references_by_concept.100%25%2Ex"}
    suite_path = tmp_path / "suites" / "s.yaml"
    (tmp_path / "suites" / "locks").mkdir(parents=True)
    pins = {k: {"source": it.source, "sha256": "1" * 64} for k, it in keys.items()}
    (tmp_path / "suites" / "locks" / "s.lock.yaml").write_text(json.dumps({"pins": pins}))
    out = apply_lock(suite_path, json.loads(json.dumps(data)))
    refs = out["metrics"][0]["params"]["references_by_concept"]
    assert refs["st. ives"]["sha256"] == refs["100%.x"]["sha256"] == "1" * 64


@pytest.mark.parametrize("key, value, verifies", [("ключ-🔑", None, True), ("k\udcff", None, True), ("k", "é" * 64, False), ("k", "", False),
                                               ("k", "\ud800", False), ("k", "A" * 64, False)])
def test_any_attestation_key_or_hmac_is_one_line(tmp_path, monkeypatch, key, value, verifies):
    from harness.results import attest

    (tmp_path / "r.json").write_text("{}")
    monkeypatch.setenv(attest.KEY_ENV, key)
    attest.write_manifest(tmp_path, "test")
    if value is not None:
        doc = json.loads((tmp_path / attest.MANIFEST).read_text())
        doc["hmac_sha256"] = value
        (tmp_path / attest.MANIFEST).write_text(json.dumps(doc))
    if verifies:
        got = attest.read_manifest(tmp_path)
        assert list(got) == ["r.json"] and sha256_file(tmp_path / "r.json") in json.dumps(got)
    else:
        with pytest.raises(HarnessError, match="hmac_sha256: does not verify"):
            attest.read_manifest(tmp_path)


@pytest.mark.parametrize("ci, shown", [({"low": 0.1, "high": 0.3, "level": 1.0}, "no interval"), ({"low": 0.1, "high": 0.3, "level": 0}, "no interval"),
                                        ({"low": "a", "high": 0.3}, "no interval"), ({"low": 0.5, "high": 0.1}, "no interval"),
                                        ({"low": 0.1, "high": 10**400}, "no interval"), ({"low": 0.1, "high": 0.3, "level": 0.95}, "0.0510")])
def test_power_over_odd_intervals_is_total(tmp_path, ci, shown):
    from harness.stats.power import report

    rec = {"suite": "toy-canvas", "metric": "ua", "target": "striped", "ci": ci}
    text = report(ROOT, "toy-canvas", [{"metrics": [rec]}], tmp_path)
    assert shown in text.splitlines()[-1]


@pytest.mark.parametrize("sid", ["../../etc/passwd", "/etc/passwd", "a/../../b", ".."])
def test_a_suite_id_never_reads_outside_suites(tmp_path, sid):
    from harness.gate.images import suite_jobs
    from harness.stats.power import report

    with pytest.raises(HarnessError, match="not a suite id"):
        report(ROOT, sid, [], tmp_path)
    with pytest.raises(HarnessError, match="is not a suite id"):
        suite_jobs({"submission": {"targets": []}}, {"id": sid}, ROOT, tmp_path)


def test_a_dead_ray_address_is_refused_within_its_deadline(monkeypatch):
    from harness.run.ray_executor import probe_address

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("UNLEARN_RAY_CONNECT_TIMEOUT", "2")
    t0 = time.monotonic()
    with pytest.raises(HarnessError, match=f"nothing answers at 127.0.0.1:{port} within 2 s"):
        probe_address(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 5
    for bad in ("inf", "nan", "0", "x"):
        monkeypatch.setenv("UNLEARN_RAY_CONNECT_TIMEOUT", bad)
        with pytest.raises(HarnessError, match="UNLEARN_RAY_CONNECT_TIMEOUT"):
            probe_address(f"ray://127.0.0.1:{port}")
    probe_address("auto")  # left to Ray


def test_the_ray_executor_refuses_a_dead_address_in_one_line():
    pytest.importorskip("ray")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    from harness.run.ray_executor import RayExecutor

    t0 = time.monotonic()
    env_before = os.environ.get("UNLEARN_RAY_CONNECT_TIMEOUT")
    os.environ["UNLEARN_RAY_CONNECT_TIMEOUT"] = "1"
    try:
        with pytest.raises(HarnessError, match="nothing answers"):
            RayExecutor(f"127.0.0.1:{port}")._connect()
    finally:
        if env_before is None:
            os.environ.pop("UNLEARN_RAY_CONNECT_TIMEOUT")
        else:
            os.environ["UNLEARN_RAY_CONNECT_TIMEOUT"] = env_before
    assert time.monotonic() - t0 < 5


def test_hashing_opens_once_and_checks_the_opened_file(tmp_path, monkeypatch):
    from harness.store import hashing

    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(HarnessError, match="not a regular file"):
        sha256_file(fifo)
    assert time.monotonic() - t0 < 2
    # swapped between a check and the open: whatever stat said, the opened file is what counts
    real = tmp_path / "real"
    real.write_bytes(b"x")
    monkeypatch.setattr(os, "stat", lambda *a, **k: os.lstat(real))
    with pytest.raises(HarnessError, match="not a regular file"):
        hashing.sha256_file(fifo)
    monkeypatch.undo()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(HarnessError, match="symbolic link"):
        hashing.sha256_file(link, follow=False)
    assert hashing.sha256_file(link) == hashlib.sha256(b"x").hexdigest()
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a").write_bytes(b"a")
    os.mkfifo(tmp_path / "tree" / "b")
    with pytest.raises(HarnessError, match="FIFO"):
        sha256_tree(tmp_path / "tree")


ATTACK_PARAMS = [
    ("iterations-a-string", {"attack": "unlearndiffatk", "iterations": "40"}, "params.iterations: '40' is not a whole number"),
    ("iterations-negative", {"attack": "unlearndiffatk", "iterations": -1}, "params.iterations: '-1' is outside 0..1e+06"),
    ("iterations-huge", {"attack": "unlearndiffatk", "iterations": 10**12}, "params.iterations"),
    ("iterations-a-float", {"attack": "unlearndiffatk", "iterations": 4.5}, "is not a whole number"),
    ("iterations-a-bool", {"attack": "unlearndiffatk", "iterations": True}, "is not a whole number"),
    ("lr-nan", {"attack": "unlearndiffatk", "lr": float("nan")}, "params.lr: 'nan' is outside"),
    ("lr-a-list", {"attack": "unlearndiffatk", "lr": [1]}, "params.lr: '[1]' is not a number"),
    ("batch-size-0", {"attack": "unlearndiffatk", "batch_size": 0}, "params.batch_size"),
    ("seed-2-to-the-64", {"attack": "unlearndiffatk", "seed": 2**64}, "params.seed"),
    ("mutation-over-1", {"attack": "ringabell", "mutation": 1.5}, "params.mutation"),
    ("pairs-a-string", {"attack": "ringabell", "pairs": "a,b"}, "params.pairs"),
    ("ti-steps-a-dict", {"attack": "ti", "steps": {"n": 1}}, "params.steps"),
    ("ti-init-token-a-number", {"attack": "ti", "init_token": 5}, "params.init_token"),
]


@pytest.mark.parametrize("name, params, needle", ATTACK_PARAMS, ids=[a[0] for a in ATTACK_PARAMS])
def test_attack_parameters_are_checked_by_type_and_range(name, params, needle):
    from fixtures import robust_suite

    with pytest.raises(ValidationError) as e:
        robust_suite(params)
    assert needle in str(e.value)


def test_good_attack_parameters_pass():
    from fixtures import robust_suite

    s = robust_suite({"attack": "unlearndiffatk", "iterations": 3, "rounds": 2, "lr": 0.05, "seed": 7})
    assert s.prompt_attack.params["iterations"] == 3


# ============================================================================ 8. self-reported efficiency
def test_a_method_json_from_the_pr_is_declared_not_measured(repo, monkeypatch):
    from harness.results.assemble import MEASURED_ENV, efficiency
    from harness.spec import load_submission

    (repo / "ckpt" / "method.json").write_text('{"efficiency": {"time_s": 0.0001, "peak_memory_bytes": 1, "device": "H100 x 8"}}')
    s = load_submission(repo / "sub.yaml")
    monkeypatch.delenv(MEASURED_ENV, raising=False)
    eff = efficiency(s, repo)
    assert eff["time_s"]["source"] == eff["peak_memory_bytes"]["source"] == "declared"
    assert "not measured by the harness run" in eff["time_s"]["how"]
    assert eff["storage_bytes"]["source"] == "measured"  # the harness reads the checkpoint's size itself
    monkeypatch.setenv(MEASURED_ENV, str(repo / "ckpt" / "method.json"))  # what `unlearn regress` sets for a method.json it just wrote
    assert efficiency(s, repo)["time_s"]["source"] == "measured"


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", "-1"])
def test_non_finite_declared_figures_are_refused_in_one_line(repo, value):
    (repo / "sub.yaml").write_text((repo / "sub.yaml").read_text() + f"efficiency: {{time_s: {value}, device: H100}}\n")
    rc, _, err = check()
    assert_one_line(rc, err, "sub.yaml: efficiency.time_s")


@pytest.mark.parametrize("value", ["Infinity", "NaN", "-1", '"fast"', "1e999"])
def test_non_finite_figures_in_a_method_json_are_refused_in_one_line(repo, value):
    (repo / "ckpt" / "method.json").write_text('{"efficiency": {"time_s": %s}}' % value)
    rc, _, err = check()
    assert_one_line(rc, err, "method_record", "efficiency.time_s")


@pytest.mark.parametrize("base_model, badge", [({"label": "hub:someone/sd-<b>copy</b>@" + REV, "suite_base": False}, True),
                                               ({"label": "builtin:toy", "suite_base": True}, False), (None, False)])
def test_the_board_says_when_a_number_is_not_against_the_suites_base(tmp_path, base_model, badge):
    from test_leaderboard import build, page_of, result

    res = tmp_path / "results"
    res.mkdir()
    doc = result("toy-uce-style")
    if base_model is not None:
        doc["suites"][0]["base_model"] = base_model
    (res / "toy-uce-style.json").write_text(json.dumps(doc))
    counts, lines = build(res, tmp_path / "site")
    page = page_of(tmp_path / "site", "toy-uce-style")
    assert ("not the suite's base: hub:someone/sd-&lt;b&gt;copy&lt;/b&gt;@" in page) is badge, lines
    assert "<b>copy</b>" not in page


@pytest.mark.parametrize("params, needle", [({"steps": 10**9}, "--param steps: '1000000000' is outside"), ({"steps": "300"}, "is not a whole number"),
                                            ({"steps": 3.5}, "is not a whole number"), ({"lr": float("inf")}, "--param lr: 'inf' is outside"),
                                            ({"lr": "fast"}, "is not a number"), ({"steps": True}, "is not a whole number")])
def test_step_counts_from_a_method_json_are_bounded(params, needle):
    """`unlearn regress` re-runs a method with the params of a submission's method.json (a PR's file)."""
    from harness.methods import get_method, preset_params
    from harness.families.sd1 import TOY_PIPELINE

    with pytest.raises(HarnessError, match=needle.replace("(", r"\(")):
        preset_params(get_method("esd"), "esd", None, TOY_PIPELINE, params)
    assert preset_params(get_method("esd"), "esd", None, TOY_PIPELINE, {"steps": 3, "lr": 1e-4})[1]["steps"] == 3


@pytest.mark.parametrize("path, needle", [("/to-http-other", "is not an https URL"), ("/to-foreign", "not on the download allow-list")])
def test_hub_requests_and_their_redirects_keep_the_rule(hostile, path, needle):
    from harness.store.hub import _guarded_client

    client = _guarded_client()
    with pytest.raises(HarnessError, match=needle):
        client.get(hostile.url(path))
    assert client.get(hostile.url("/to-self")).content == BODY


def test_hub_bytes_count_against_the_cap_as_they_arrive(hostile, monkeypatch):
    from harness.store import hub

    monkeypatch.setenv("UNLEARN_DOWNLOAD_MAX_BYTES", "100000")
    hub._BUDGET.append(hub._Budget("scorer", "x"))
    try:
        with pytest.raises(HarnessError, match="more than the download cap of 100000"):
            hub._guarded_client().get(hostile.url("/no-length"))
    finally:
        hub._BUDGET.pop()


RAY_HANG = ("import time, harness.run.ray_executor as r\n"
            "with r._connect_deadline('127.0.0.1:1'):\n"
            "    print('connecting', flush=True)\n"
            "    for _ in range(200): time.sleep(0.05)  # stands in for ray.init holding the main thread\n"
            "print('not reached')\n")


@pytest.mark.parametrize("how, rc, needle", [("deadline", 2, "could not connect to Ray at 127.0.0.1:1 within 1 s"),
                                             ("sigterm", 128 + 15, "stopped by signal 15 while connecting to Ray")])
def test_connecting_to_ray_has_a_deadline_and_obeys_sigterm(how, rc, needle):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNLEARN_RAY_INIT_TIMEOUT": "1" if how == "deadline" else "30"}
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", RAY_HANG], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "connecting"
    if how == "sigterm":
        p.send_signal(15)
    out, err = p.communicate(timeout=20)
    assert p.returncode == rc, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err and "not reached" not in out
    assert time.monotonic() - t0 < 8


@pytest.mark.parametrize("args, needle", [(["erase", "uce", "--base", "{toy}", "--concept", "striped", "--out", "{notes}", "--force"],
                                           "is not a folder `unlearn erase` wrote"),
                                          (["erase", "uce", "--base", "{toy}", "--concept", "striped", "--out", "{notes}/a.md", "--force"],
                                           "is not a folder `unlearn erase` wrote"),
                                          (["toy", "train-model", "--out", "{notes}", "--unet-steps", "1"], "is not a toy pipeline")])
def test_commands_with_force_or_a_default_out_replace_only_their_own(tmp_path, args, needle):
    from harness.families.sd1 import TOY_PIPELINE

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("mine")
    rc, _, err = cli(*[a.format(toy=TOY_PIPELINE, notes=notes) for a in args])
    assert_one_line(rc, err, needle)
    assert (notes / "a.md").read_text() == "mine"
