"""The researcher's tools on a real (tiny) run: `unlearn images`, `unlearn summary` side by
side, `unlearn hash`, smoke runs kept apart on the site, file modes, the site's generation
time, `unlearn regress --method-cmd`. One pytester run of the plugin on a tiny pipeline built
in code makes the results and the image cache they use."""

import html
import json
import os
import re
import shutil
import stat
import sys

import pytest
import torch
from fixtures import KEY, local_project, mini_suite
from safetensors.torch import save_file

from harness.cli.main import main
from harness.store.hashing import sha256_file, sha256_tree

EVIL = '<script>alert(1)</script>'
SUITE = mini_suite('name: ua, threshold: ">= 0.0", tolerance: 0.1', 'name: ira, threshold: ">= 0.0 * base", tolerance: 0.1')


@pytest.fixture
def project(pytester, tiny_base, monkeypatch):
    root = local_project(pytester.path, tiny_base, SUITE, "submissions/mine.yaml", name="mine", method=f'{{name: "{EVIL}"}}')
    pytester.makeini("[pytest]\n")
    monkeypatch.chdir(root)
    return pytester


def _run(p, *args):
    return p.runpytest("--unlearn-submission", "submissions/mine.yaml", "--unlearn-cache", str(p.path / "cache"), "--unlearn-device", "cpu", *args)


def test_a_run_browsed_summarised_hashed_and_kept_apart_when_smoke(project, capsys):
    root = project.path
    _run(project, "--unlearn-results", "full.json").assert_outcomes(passed=2)
    _run(project, "--unlearn-results", "smoke.json", "--unlearn-smoke").assert_outcomes(passed=2)
    full, smoke = json.loads((root / "full.json").read_text()), json.loads((root / "smoke.json").read_text())
    assert full["smoke"] is False and smoke["smoke"] is True

    # results written readable by others (0644 under the usual umask), not mkstemp's 0600
    old = os.umask(0o022)
    try:
        assert stat.S_IMODE((root / "full.json").stat().st_mode) == 0o644

        # unlearn images: every pair, forget prompts marked, strings escaped, PNGs checked
        assert main(["images", "full.json", "--out", "page", "--cache", "cache"]) == 0
        page = (root / "page" / "index.html").read_text()
        assert EVIL not in page and html.escape(EVIL) in page
        assert page.count('class="forget-row"') == 2 and page.count('class="retain-row"') == 2  # striped x 2 objects are forget prompts
        shas = set(re.findall(r'src="images/([0-9a-f]{64})\.png"', page))
        assert len(re.findall(r'<img src="images/', page)) == 16  # 4 prompts x 2 seeds x (base, unlearned)
        for sha in shas:
            assert sha256_file(root / "page" / "images" / f"{sha}.png") == sha
        assert "not in the cache" not in page
        assert stat.S_IMODE((root / "page").stat().st_mode) == 0o755
        capsys.readouterr()
        assert main(["images", "full.json", "--out", "page2", "--suite", "nosuch", "--cache", "cache"]) == 2

        # the site: smoke left out by default, shown apart on request; CSV marks it; Generation time
        lb = root / "lb"
        lb.mkdir()
        shutil.copy(root / "full.json", lb / "full.json")
        shutil.copy(root / "smoke.json", lb / "smoke.json")
        assert main(["leaderboard", "build", "--results", str(lb), "--out", "site"]) == 0
        err = capsys.readouterr().err
        assert "left out smoke.json: a smoke run" in err
        index = (root / "site" / "index.html").read_text()
        assert "mini-smoke" not in index and "smoke run" not in index
        assert stat.S_IMODE((root / "site").stat().st_mode) == 0o755
        assert main(["leaderboard", "build", "--results", str(lb), "--out", "site", "--include-smoke"]) == 0
        index = (root / "site" / "index.html").read_text()
        assert 'id="suite-mini-smoke"' in index and 'id="suite-mini"' in index and "not comparable" in index
        csv = (root / "site" / "results.csv").read_text().splitlines()
        col = csv[0].split(",").index("smoke")
        assert sorted({ln.split(",")[col] for ln in csv[1:]}) == ["False", "True"]
        sub_page = next((root / "site" / "submissions").glob("*.html")).read_text()
        gen = sum(v["generation_seconds"] for v in full["suites"][0]["images"].values())
        assert gen > 0 and "(run)" not in sub_page  # generation time from the image sidecars, not the run's seconds
    finally:
        os.umask(old)

    # summary: one table side by side with the change, smoke marked; one file: as before
    capsys.readouterr()
    assert main(["summary", "full.json", "smoke.json"]) == 0
    out = capsys.readouterr().out
    assert "A: mine vs B: mine (smoke)" in out and "not comparable" in out
    assert "| suite | metric | target | A | B | B - A | base (A) | threshold |" in out
    ua = next(ln for ln in out.splitlines() if ln.startswith("| mini | UA |"))
    assert len(ua.split("|")) == 10
    assert main(["summary", "smoke.json"]) == 0
    assert "smoke run" in capsys.readouterr().out

    # unlearn hash: what the harness expects, for a file and a folder
    assert main(["hash", "ckpt/unet.safetensors", "base"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == sha256_file(root / "ckpt" / "unet.safetensors")
    assert lines[1].split()[0] == sha256_tree(root / "base")
    assert main(["hash", "nope"]) == 2


def test_hash_is_what_checkpoint_verification_accepts(tmp_path):
    """`unlearn hash` of a folder checkpoint is the value the harness verifies it against (a
    LoRA / pipeline folder's sha256 is not sha256sum of any one file)."""
    from harness.families.sd1 import checkpoint_file
    from harness.spec import CheckpointSpec

    d = tmp_path / "lora"
    d.mkdir()
    save_file({"a.lora_A.weight": torch.zeros(2, 2)}, d / "pytorch_lora_weights.safetensors")
    (d / "adapter_config.json").write_text("{}")
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["hash", str(d)]) == 0
    sha = buf.getvalue().split()[0]
    assert sha != sha256_file(d / "pytorch_lora_weights.safetensors")
    assert checkpoint_file(CheckpointSpec(kind="lora", path="lora", sha256=sha), tmp_path, tmp_path / "c") == d


def test_regress_method_cmd_gates_the_remade_checkpoint_without_a_yaml_edit(project, capsys):
    root = project.path
    _run(project, "--unlearn-results", "base.json").assert_outcomes(passed=2)
    yaml_before = (root / "submissions" / "mine.yaml").read_text()
    rc = main(["regress", "--root", str(root), "--submission", "submissions/mine.yaml", "--baseline", "base.json",
               "--method-cmd", "cp ckpt/unet.safetensors {out}/unet.safetensors", "--out", ".regress-own"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "identical to the one the YAML pins" in out and "no regression" in out
    assert (root / "submissions" / "mine.yaml").read_text() == yaml_before
    remade = (root / ".regress-own" / "submissions" / "mine.yaml").read_text()
    assert sha256_file(root / "ckpt" / "unet.safetensors") in remade and ".regress-own/checkpoints/mine/unet.safetensors" in remade

    # a changed method: a different checkpoint (sha recorded by the run), still gated; a bad command is one line
    cmd = (f"{sys.executable} -c \"import torch; from safetensors.torch import save_file; "
           f"save_file({{'{KEY}': torch.zeros(32, 64)}}, '{{out}}/unet.safetensors')\"")
    rc = main(["regress", "--root", str(root), "--submission", "submissions/mine.yaml", "--baseline", "base.json", "--method-cmd", cmd, "--out", ".regress-own"])
    out = capsys.readouterr().out
    assert "differs from the one the YAML pins" in out and rc in (0, 1)
    rc = main(["regress", "--root", str(root), "--submission", "submissions/mine.yaml", "--baseline", "base.json", "--method-cmd", "exit 3", "--out", ".regress-own"])
    cap = capsys.readouterr()
    assert rc == 2 and "--method-cmd: exited with status 3" in cap.err
