"""The ``unlearn`` command's spec tools: validate and schema."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def unlearn(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_validate_accepts_every_committed_spec():
    files = sorted(str(p.relative_to(REPO)) for p in [*(REPO / "suites").glob("*.yaml"), *(REPO / "submissions").glob("*.yaml")])
    r = unlearn("validate", *files)
    assert r.returncode == 0, r.stdout
    assert r.stdout.count(": ok") == len(files)


def test_validate_prints_one_line_per_problem_and_exits_non_zero(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nmethod: {name: m}\nbase_model: {builtin: toy}\nextra: 1\n")
    (tmp_path / "broken.yaml").write_text("a: [\n")
    r = unlearn("validate", str(tmp_path / "bad.yaml"), str(tmp_path / "broken.yaml"))
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert f"{tmp_path / 'bad.yaml'}: extra: unknown key" in lines
    assert f"{tmp_path / 'bad.yaml'}: checkpoint: Field required" in lines
    assert any(line.startswith(f"{tmp_path / 'broken.yaml'}: (yaml) line") for line in lines)


def test_schema_writes_json_schema_for_editors(tmp_path):
    r = unlearn("schema", "--out", str(tmp_path))
    assert r.returncode == 0
    sub = json.loads((tmp_path / "submission.schema.json").read_text())
    suite = json.loads((tmp_path / "suite.schema.json").read_text())
    assert sub["additionalProperties"] is False and "checkpoint" in sub["required"]
    assert "metrics" in suite["properties"]
