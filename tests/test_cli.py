"""The ``unlearn`` command's spec tools: validate and schema."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def unlearn(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "harness.cli.main", *args], capture_output=True, text=True, cwd=cwd)


def test_validate_accepts_every_committed_spec():
    files = sorted(str(p.relative_to(REPO)) for p in [*(REPO / "suites").glob("*.yaml"), *(REPO / "submissions").glob("*.yaml")])
    r = unlearn("validate", *files)
    assert r.returncode == 0, r.stdout
    assert r.stdout.count(": ok") == len(files)


def test_validate_prints_one_line_per_problem_on_stderr_and_exits_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nmethod: {name: m}\nbase_model: {builtin: toy}\nextra: 1\n")
    (tmp_path / "broken.yaml").write_text("a: [\n")
    r = unlearn("validate", str(tmp_path / "bad.yaml"), str(tmp_path / "broken.yaml"))
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert f"{tmp_path / 'bad.yaml'}: extra: unknown key" in lines
    assert f"{tmp_path / 'bad.yaml'}: checkpoint: Field required (only a method.kind: inference submission may have none)" in lines
    assert any(line.startswith(f"{tmp_path / 'broken.yaml'}: (yaml) line") for line in lines)


def test_schema_writes_json_schema_for_editors(tmp_path):
    r = unlearn("schema", "--out", str(tmp_path))
    assert r.returncode == 0
    sub = json.loads((tmp_path / "submission.schema.json").read_text())
    suite = json.loads((tmp_path / "suite.schema.json").read_text())
    assert sub["additionalProperties"] is False and "targets" in sub["required"] and "checkpoint" in sub["properties"]  # checkpoint: required unless method.kind is inference
    assert "metrics" in suite["properties"]


def _doc(metrics, name="s", method="m"):
    """A results document with the fields every reader checks (results.io.read_result)."""
    return {"schema_version": "1.0", "harness": {"version": "0.1.0"}, "complete": True,
            "submission": {"file": "submissions/s.yaml", "name": name, "method": {"name": method}, "checkpoint": {},
                           "targets": [{"concept": "striped", "kind": "style"}]},
            "suites": [{"id": m["suite"]} for m in metrics], "metrics": metrics}


def _result(values):
    return _doc([
        {"suite": "toy-canvas", "metric": "ua", "label": "UA", "target": "striped", "value": values[0], "higher_is_better": True, "tolerance": 0.05, "verdict": "pass"},
        {"suite": "toy-fid", "metric": "fid", "label": "FID", "target": "striped", "value": values[1], "base_value": 1.0, "higher_is_better": False, "tolerance": 0.5, "verdict": "pass"},
    ])


def test_compare_passes_identical_and_within_tolerance_and_fails_a_degraded_copy(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_result([0.9, 1.0])))
    same = tmp_path / "same.json"
    same.write_text(json.dumps(_result([0.9, 1.0])))
    near = tmp_path / "near.json"
    near.write_text(json.dumps(_result([0.86, 1.4])))  # both worse, within tolerance
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(_result([0.9, 1.6])))  # FID up by 0.6 > 0.5
    assert unlearn("compare", str(same), str(base)).returncode == 0
    assert unlearn("compare", str(near), str(base)).returncode == 0
    r = unlearn("compare", str(worse), str(base))
    assert r.returncode == 1 and "REGRESSED" in r.stdout and "1 of 2 metrics regressed" in r.stdout
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(_doc(_result([0.9, 1.0])["metrics"][:1])))
    assert "MISSING" in unlearn("compare", str(missing), str(base)).stdout


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2]",
    '{"schema_version": "1.0", "metrics": [{"suite": "a"}]}',
    json.dumps({**_result([0.9, 1.0]), "metrics": [{**_result([0.9, 1.0])["metrics"][0], "value": "high"}]}),
    json.dumps({**_result([0.9, 1.0]), "metrics": ["ua"]}),
    json.dumps({**_result([0.9, 1.0]), "submission": {"method": "m"}}),
    json.dumps({**_result([0.9, 1.0]), "schema_version": "2.0"}),
])
def test_compare_and_summary_bad_input_is_a_one_line_usage_error(tmp_path, content, capsys):
    from harness.cli.main import main

    (tmp_path / "x.json").write_text(content)
    (tmp_path / "ok.json").write_text(json.dumps(_result([0.9, 1.0])))
    x, ok = str(tmp_path / "x.json"), str(tmp_path / "ok.json")
    for args in (("compare", x, ok), ("compare", ok, x), ("summary", x)):
        code = main(list(args))  # in-process: the console script is this function
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "not a results JSON" in err, (args, err)


def test_compare_of_a_folder_or_a_missing_file_is_a_one_line_error(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps(_result([0.9, 1.0])))
    for other, why in ((tmp_path, "cannot be read"), (tmp_path / "nope.json", "no such file")):
        r = unlearn("compare", str(other), str(tmp_path / "ok.json"))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and why in r.stderr


def test_compare_shows_but_does_not_gate_metrics_without_a_tolerance(tmp_path):
    rec = {"suite": "toy-efficiency", "metric": "erase_time_s", "label": "time", "target": "striped", "higher_is_better": False, "tolerance": None}
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_doc([{**rec, "value": 1.0, "verdict": "info"}])))
    slower = tmp_path / "slower.json"
    slower.write_text(json.dumps(_doc([{**rec, "value": 50.0, "verdict": "info"}])))
    r = unlearn("compare", str(slower), str(base))
    assert r.returncode == 0 and "INFO" in r.stdout
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps(_doc([{**rec, "metric": "storage_mb", "value": 1.0, "verdict": "info"}])))
    assert unlearn("compare", str(gone), str(base)).returncode == 1  # missing is a regression, tolerance or not


def test_summary_is_markdown_with_stranger_text_escaped(tmp_path):
    res = {**_doc(_result([0.9, 1.0])["metrics"], name="<script>alert(1)</script>|x", method="[a](javascript:x)"),
           "summary": {"pass": 2, "fail": 0}}  # the counts of its records (readers check them)
    f = tmp_path / "r.json"
    f.write_text(json.dumps(res))
    r = unlearn("summary", str(f))
    assert r.returncode == 0
    assert "<script>" not in r.stdout and "&lt;script&gt;" in r.stdout
    assert "\\[a\\](javascript:x)" in r.stdout and "\\|x" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("| toy")]
    assert len(rows) == 2 and all(line.count(" | ") == 7 for line in rows)
    assert [line.split(" | ")[4] for line in rows] == ["-", "-"]  # records without an interval or a reason
    # (FID: a UA interval without its per-item scores is refused by readers, tests/test_security_readers.py)
    res["metrics"][0].update(ci=None, ci_reason="single run: one measurement")
    res["metrics"][1].update(ci={"low": 0.8, "high": 1.2}, ci_reason=None)
    f.write_text(json.dumps(res))
    rows = [line for line in unlearn("summary", str(f)).stdout.splitlines() if line.startswith("| toy")]
    assert [line.split(" | ")[4] for line in rows] == ["single run", "[0.8, 1.2]"]
    (tmp_path / "bad.json").write_text("[")
    bad = unlearn("summary", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def _scored(correct: list[int], seeds: list[int], tol=0.05):
    """An IRA-like record over 10 prompts x len(seeds) images with per-image scores (harness.stats.intervals)."""
    from harness.stats import intervals as stats

    n = len(correct)
    s = stats.Scores(correct, None, [f"p{i // len(seeds)}" for i in range(n)], [seeds[i % len(seeds)] for i in range(n)])
    value = float(np.mean(correct))  # its verdict is the one the current suite's threshold gives (readers recheck it)
    rec = {"suite": "toy-canvas", "metric": "ira", "label": "IRA", "target": "striped", "value": value, "base_value": 1.0,
           "threshold": ">= 0.8 * base", "higher_is_better": True, "tolerance": tol, "verdict": "pass" if value >= 0.8 else "fail",
           "scores": s.to_record()}
    rec.update(stats.intervals(s))
    return _doc([rec])


def test_compare_calls_a_damaged_model_a_regression_and_another_seed_subset_noise(tmp_path):
    """The gate's two directions (harness.stats.significance): a damaged model on the same matched
    images is REGRESSED with its p-value; the same model on another seed subset, whose value
    moved beyond the tolerance by chance, is NOISE and passes."""
    old = [1] * 36 + [0] * 4  # 0.900 over 10 prompts x 4 seeds
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_scored(old, [0, 1, 2, 3])))
    damaged = list(old)
    for i in (0, 4, 9, 13, 18, 22, 27, 31):  # 8 images, spread over 8 prompts, now wrong
        damaged[i] = 0
    bad = tmp_path / "damaged.json"
    bad.write_text(json.dumps(_scored(damaged, [0, 1, 2, 3])))
    r = unlearn("compare", str(bad), str(base))
    assert r.returncode == 1 and "REGRESSED" in r.stdout and "p=0.0" in r.stdout
    other = tmp_path / "seeds.json"
    other.write_text(json.dumps(_scored([1] * 33 + [0] * 7, [4, 5, 6, 7])))  # 0.825: -0.075, beyond the 0.05 tolerance
    r = unlearn("compare", str(other), str(base))
    assert r.returncode == 0 and "NOISE" in r.stdout, r.stdout
    rows = __import__("harness.gate.compare", fromlist=["compare"]).compare(json.loads(other.read_text()), json.loads(base.read_text()))
    assert rows[0]["significance"].startswith("unpaired") and rows[0]["p_value"] > 0.05
    rows = __import__("harness.gate.compare", fromlist=["compare"]).compare(json.loads(bad.read_text()), json.loads(base.read_text()))
    assert rows[0]["significance"].startswith("paired") and rows[0]["p_value"] < 0.05 and rows[0]["change_ci"][1] < 0


def test_compare_of_files_without_intervals_keeps_the_tolerance_rule(tmp_path):
    """Older results (no ci, no scores) load and are gated by the tolerance alone, as before."""
    base = tmp_path / "base.json"
    base.write_text(json.dumps(_result([0.9, 1.0])))
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(_result([0.8, 1.0])))
    r = unlearn("compare", str(worse), str(base))
    assert r.returncode == 1 and "REGRESSED  (no interval: tolerance alone)" in r.stdout


def _every_parser(p):
    import argparse

    yield p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                yield from _every_parser(sp)


def test_every_help_page_renders():
    """``unlearn --help`` and the help of every command and sub-command (a stray ``%`` in a help
    text once made ``unlearn --help`` a traceback)."""
    from harness.cli.main import parser

    pages = [p.format_help() for p in _every_parser(parser())]
    assert len(pages) > 20 and all("usage: unlearn" in h for h in pages)
    r = unlearn("--help")
    assert r.returncode == 0 and "80% power" in r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, line", [
    (["erase", "uce", "--base", "b", "--concept", "c", "--out", "o", "--device", "gpu9"],
     "unlearn: error: --device: 'gpu9' is not one of auto, cpu, mps, cuda, cuda:N"),
    (["regress", "--method-seeds", "0"], "unlearn: error: --method-seeds: 0 is not a positive count"),
    (["erase", "uce", "--base", "b", "--concept", "c", "--out", "o", "--repeats", "0"], "unlearn: error: --repeats: 0 is not a positive count"),
    (["regress", "--method-seeds", "x"], "unlearn regress: error: argument --method-seeds: invalid int value: 'x' (see --help)"),
    (["erase", "uce", "--base", "b", "--concept", "c", "--out", "o", "--param", "steps"],
     "unlearn erase: error: argument --param: --param 'steps': expected KEY=VALUE (see --help)"),
])
def test_option_parsers_give_one_line(args, line, capsys):
    """The ``type=`` parsers of harness.plugin.session (shared with the pytest plugin): one line, exit 2."""
    from harness.cli.main import main

    import contextlib

    with pytest.raises(SystemExit) if "argument" in line else contextlib.nullcontext():
        assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_option_parsers_name_their_option():
    from harness import options

    assert options.device("cuda:1") == "cuda:1" and options.executor("ray") == "ray"
    assert options.ray_address("ray://h:1") == "ray://h:1" and options.positive_count("3") == 3
    assert options.param("steps=400") == ("steps", 400) and options.param("w=a=b") == ("w", "a=b")
    for flag, parse, text in [("--unlearn-device", options.device, "gpu9"), ("--unlearn-executor", options.executor, "gpu"),
                              ("--unlearn-ray-address", options.ray_address, "not an address"), ("--unlearn-results", options.results_path, " ")]:
        with pytest.raises(options.OptionError) as e:
            options.typed(flag, parse)(text)
        assert str(e.value).startswith(f"{flag}: ") and "\n" not in str(e.value)
