"""`unlearn regress`: the reference method is re-run, evaluated by the harness and compared
with a baseline made by the harness; the gate passes on an unchanged baseline and fails when the
baseline is better than what the re-run gives."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.gate.regression import regress
from harness.gate.rerun import run_harness

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--unlearn-smoke", "--unlearn-suite=toy-canvas"]


@pytest.fixture
def out():
    d = ROOT / f".regression-pytest-{os.getpid()}"  # must be inside the repository (gitignored)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_regress_passes_an_unchanged_baseline_and_fails_a_better_one(tmp_path, out, capsys, monkeypatch):
    monkeypatch.setenv("UNLEARN_THREADS", "1")
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    base_file = baselines / "toy-uce-style.json"
    assert run_harness(ROOT, [ROOT / "submissions" / "toy-uce-style.yaml"], base_file, cache=tmp_path / "cache", extra=ARGS) == 0
    baseline = json.loads(base_file.read_text())
    assert {m["metric"] for m in baseline["metrics"]} == {"ua", "ira", "cra"}

    assert regress(ROOT, baselines, out, methods={"uce"}, pytest_args=ARGS) == 0
    text = capsys.readouterr().out
    # UCE is closed form: bitwise the same on the platform that made the committed checkpoint,
    # within the closed-form tolerance elsewhere, and said which with the measured difference
    assert ("checkpoint identical to the committed one (bitwise)" in text
            or "checkpoint equal within tolerance (max |d| = " in text), text
    assert "differs" not in text
    assert "regression gate: no regression in 1 submissions" in text

    # A re-made checkpoint that erases nothing (the base's own cross-attention tensors under the
    # method's tensor names) against the same baseline: UA falls from the baseline's to the base
    # model's, and the gate fails. (A baseline edited to claim more is refused by the readers.)
    from safetensors.torch import load_file, save_file

    from harness.gate import regression
    from harness.store.hashing import sha256_file
    from harness.toy.model import load_pipeline

    def do_nothing(root, sub, record, out_dir, seed=None):
        names = load_file(str(ROOT / sub["checkpoint"]["path"])).keys()
        unet = load_pipeline().unet.state_dict()
        ck = out_dir / "checkpoints" / "do-nothing" / "unet.safetensors"
        ck.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: unet[k].contiguous() for k in names}, str(ck))
        return {**sub, "checkpoint": {**sub["checkpoint"], "path": str(ck.relative_to(root)), "sha256": sha256_file(ck)}}

    monkeypatch.setattr(regression, "remake_checkpoint", do_nothing)
    assert regress(ROOT, baselines, out, methods={"uce"}, pytest_args=ARGS) == 1
    text = capsys.readouterr().out
    assert "REGRESSED" in text and "1 of 1 submissions regressed: toy-uce-style" in text


def test_regress_with_nothing_selected_is_an_error(tmp_path, out):
    with pytest.raises(HarnessError, match="no baseline results"):
        regress(ROOT, tmp_path, out)


@pytest.mark.parametrize("file, why", [(None, "submission.file is missing"), ("../x.yaml", "leaves the repository"),
                                       ("README.md", "README.md")])
def test_a_baseline_naming_no_usable_submission_is_a_one_line_error(tmp_path, out, file, why):
    doc = json.loads((ROOT / "leaderboard" / "results" / "toy-uce-style.json").read_text())
    doc["submission"]["file"] = file
    (tmp_path / "toy-uce-style.json").write_text(json.dumps(doc))
    with pytest.raises(HarnessError, match=why) as e:
        regress(ROOT, tmp_path, out)
    assert "\n" not in str(e.value)


def test_method_spread_over_training_seeds_known_answer():
    """``--method-seeds``: mean, sample sd and range of each metric over the re-trained runs."""
    from harness.gate.regression import format_spread, method_spread

    runs = [{"metrics": [{"suite": "toy-canvas", "metric": "ua", "label": "UA", "target": "striped", "value": v},
                         {"suite": "toy-canvas", "metric": "cra", "label": "CRA", "target": "striped", "value": None}]} for v in (0.5, 0.7, 0.9)]
    (row,) = method_spread(runs)
    assert (row["metric"], row["mean"], row["min"], row["max"]) == ("UA", pytest.approx(0.7), 0.5, 0.9)
    assert row["sd"] == pytest.approx(0.2) and row["values"] == [0.5, 0.7, 0.9]
    assert "0.2000" in format_spread([row])


def test_method_seed_spread_records_only_the_seeds_that_produced_results(tmp_path, monkeypatch, capsys):
    """A re-trained seed whose run wrote no results is named as failed, not counted among the
    seeds of the spread (the site checks ``len(values) <= len(seeds)``)."""
    from harness.gate import regression

    def run(value):
        return {"metrics": [{"suite": "toy-canvas", "metric": "ua", "label": "UA", "target": "striped", "value": value}]}

    monkeypatch.setattr(regression, "remake_checkpoint", lambda root, sub, record, out, seed: {"name": "x", "checkpoint": {"seed": seed}})

    def fake_harness(root, files, res, **kw):  # seed 6's run fails (writes nothing)
        if "seed6" not in res.name:
            res.write_text(json.dumps(run(0.5 + 0.1 * int(res.stem[-1]))))

    monkeypatch.setattr(regression, "run_harness", fake_harness)
    monkeypatch.setattr(regression, "load_result", lambda path: json.loads(path.read_text()))  # the schema is tested elsewhere
    for d in ("submissions", "results", "logs"):
        (tmp_path / d).mkdir()
    rows = regression.spread_of(ROOT, tmp_path, "toy-x", {}, {}, {"params": {"seed": 4}}, 4, [], run(0.9))
    doc = json.loads((tmp_path / "results" / "toy-x.method-seeds.json").read_text())
    assert doc["seeds"] == [4, 5, 7] and doc["failed_seeds"] == [6]
    assert rows[0]["values"] == [0.9, pytest.approx(1.0), pytest.approx(1.2)]
    out = capsys.readouterr().out
    assert "spread over 3 training seeds (4, 5, 7); no results from seed(s) 6" in out


def test_a_record_made_with_repeats_is_remade_with_its_repeats_and_gets_their_spread(out, capsys):
    """`unlearn erase --repeats N` records N runs; the gate re-makes such a checkpoint N times
    (each in a fresh process), so the measured efficiency figures of its results carry the t
    interval of their mean (harness.stats.intervals.repeats_interval); the tensors are the committed ones
    within the closed-form tolerance."""
    import yaml

    from harness.gate.regression import method_record, remake_checkpoint

    sub = yaml.safe_load((ROOT / "submissions" / "toy-uce-style.yaml").read_text())
    record = method_record(ROOT, sub["method_record"])
    record["efficiency"]["repeats"] = {"n": 2}
    new = remake_checkpoint(ROOT, sub, record, out)
    made = json.loads((ROOT / new["method_record"]).read_text())
    reps = made["efficiency"]["repeats"]
    assert reps["n"] == 2 and len(reps["time_s"]) == 2 and reps["same_checkpoint"] is True
    text = capsys.readouterr().out
    assert "checkpoint identical to the committed one (bitwise)" in text or "checkpoint equal within tolerance" in text, text
    record["efficiency"]["repeats"] = {"n": 0}
    with pytest.raises(HarnessError, match="efficiency.repeats.n: '0' is not a count"):
        remake_checkpoint(ROOT, sub, record, out)
    record["efficiency"]["repeats"] = {"n": 2}
    record["efficiency"]["threads"] = 0
    with pytest.raises(HarnessError, match="efficiency.threads: '0' is not a thread count"):
        remake_checkpoint(ROOT, sub, record, out)


def test_method_selects_an_inference_time_submission_by_its_name(out, monkeypatch, capsys):
    """An inference-time method's submission has no method record (nothing to re-make): `--method
    negprompt` selects it by its name and it is evaluated as it is; `--method uce` leaves it out."""
    from harness.gate import regression

    ran = []

    import yaml

    def fake_run(root, subs, result, log=None, **kw):  # the baseline's own results: nothing regresses
        name = yaml.safe_load(Path(subs[0]).read_text())["name"]
        ran.append(name)
        shutil.copy(ROOT / "leaderboard" / "results" / f"{name}.json", result)
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text("")
        return 0

    monkeypatch.setattr(regression, "run_harness", fake_run)
    monkeypatch.setattr(regression, "remake_checkpoint", lambda root, sub, record, out_dir, seed=None: sub)
    regress(ROOT, ROOT / "leaderboard" / "results", out, methods={"negprompt"})
    assert ran == ["toy-negprompt-object", "toy-negprompt-style"], ran
    ran.clear()
    regress(ROOT, ROOT / "leaderboard" / "results", out, methods={"uce"})
    assert "toy-negprompt-style" not in ran and "toy-uce-style" in ran
