"""harness.results: the one model every writer and reader of results files uses.

The committed results files load and dump back to the same bytes; files with fewer fields
(older) and more fields (newer) load without losing or inventing anything; the writer's path
(field by field, as the evaluator builds a record) gives the same JSON as the file; reading is
strict and one line; docs/results-schema.md is the one the model generates."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from harness.results import model, schema_doc
from harness.results.io import read_result, read_results_file, results_files, write_result
from harness.results.model import SCHEMA_VERSION, MetricRecord, ResultsFile, SuiteRecord

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = results_files(ROOT / "leaderboard" / "results")
INTERVAL_FIELDS = ("ci", "delta_ci", "margin_ci", "ci_reason", "verdict_point", "scores")


def dump(data) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


def diff_keys(a, b, where="") -> list[str]:
    """Every place where two JSON values differ, in key, key order or value."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return [f"{where or '(top)'}: keys {list(a)} != {list(b)}"]
        return [d for k in a for d in diff_keys(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff_keys(x, y, f"{where}.{i}")]
    same = type(a) is type(b) and (a == b or (a != a and b != b))  # NaN equals NaN here
    return [] if same else [f"{where}: {a!r} ({type(a).__name__}) != {b!r} ({type(b).__name__})"]


def test_there_are_committed_results_to_check():
    assert len(COMMITTED) >= 5


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_a_committed_results_file_reserialises_losslessly(path, tmp_path):
    original = json.loads(path.read_text(encoding="utf-8"))
    doc = read_results_file(path)
    assert diff_keys(doc.to_json(), original) == []
    assert dump(doc.to_json()) == path.read_text(encoding="utf-8")  # byte for byte
    write_result(tmp_path / "again.json", doc)
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    assert read_result(path) == original and doc.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_the_writers_path_gives_the_committed_json(path):
    """As the evaluator builds a record (the first fields, then value, intervals, bound, verdict
    one update at a time) and the plugin assembles the file (lax, from plain dicts): the JSON is
    the committed one, in its order."""
    original = json.loads(path.read_text(encoding="utf-8"))
    for rec in original["metrics"]:
        keys = list(rec)
        built = MetricRecord.begin(**{k: rec[k] for k in keys[:9]})
        for k in keys[9:]:
            built.update({k: copy.deepcopy(rec[k])})
        assert diff_keys(built.done(), rec) == []
    for s in original["suites"]:
        assert diff_keys(SuiteRecord.model_validate(copy.deepcopy(s)).to_json(), s) == []
    assert diff_keys(ResultsFile.model_validate(copy.deepcopy(original)).to_json(), original) == []


def _older(doc: dict) -> dict:
    """The file as a writer before the intervals, the pins and the fidelity record made it."""
    old = copy.deepcopy(doc)
    for k in ("smoke", "summary", "efficiency", "environment", "started", "finished"):
        old.pop(k, None)
    for s in old["suites"]:
        for k in ("pins", "fidelity", "executor", "pipeline", "batching", "cuda_visible_devices", "samples"):
            s.pop(k, None)
    for m in old["metrics"]:
        for k in (*INTERVAL_FIELDS, "label", "target_kind", "metric_version", "details"):
            m.pop(k, None)
    return old


@pytest.mark.parametrize("path", COMMITTED[:2], ids=[p.name for p in COMMITTED[:2]])
def test_an_older_file_with_fewer_fields_loads_and_nothing_is_invented(path, tmp_path):
    old = _older(json.loads(path.read_text(encoding="utf-8")))
    (tmp_path / "old.json").write_text(json.dumps(old))
    doc = read_results_file(tmp_path / "old.json")
    assert diff_keys(doc.to_json(), old) == []
    assert doc.metrics[0].ci is None and doc.smoke is None and doc.environment.libraries == {}  # defaults read, not written


def test_a_newer_file_keeps_the_fields_this_harness_does_not_know_in_their_places(tmp_path):
    doc = json.loads(COMMITTED[0].read_text(encoding="utf-8"))
    new = {"schema_version": "1.7", "provenance_v2": {"x": [1, 2.5]}, **{k: v for k, v in doc.items() if k != "schema_version"}}
    new["metrics"][0] = {"suite": new["metrics"][0]["suite"], "future": None, **{k: v for k, v in new["metrics"][0].items() if k != "suite"}}
    new["suites"][0]["future_block"] = {"a": 1}
    (tmp_path / "new.json").write_text(json.dumps(new, indent=2))
    got = read_results_file(tmp_path / "new.json")
    assert diff_keys(got.to_json(), new) == []
    assert got.provenance_v2 == {"x": [1, 2.5]} and got.metrics[0].future is None


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["metrics"][0].update(value="0.9"), "metrics.0.value"),
    (lambda d: d["metrics"][0].update(verdict="great"), "metrics.0.verdict"),
    (lambda d: d["metrics"][0].update(flagged_images=True), "metrics.0.flagged_images"),
    (lambda d: d["suites"][0].update(seeds=["0"]), "suites.0.seeds.0"),
    (lambda d: d.update(schema_version="2.0"), "schema_version"),
    (lambda d: d["submission"].update(targets=[]), "submission.targets"),
    (lambda d: d.update(metrics=[]), "metrics: List should have at least 1 item"),
    (lambda d: d["metrics"].append(dict(d["metrics"][0])), "metrics: two records for suite"),
    (lambda d: d["efficiency"].update(time_s={"value": "fast", "source": "declared"}), "efficiency.time_s.value"),
])
def test_reading_is_strict_and_says_the_field_in_one_line(tmp_path, edit, needle):
    doc = json.loads(COMMITTED[0].read_text(encoding="utf-8"))
    edit(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError) as e:
        read_result(tmp_path / "bad.json")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_writer_turns_numpy_numbers_into_json_numbers_and_keeps_ints():
    rec = MetricRecord.begin(suite="toy-canvas", metric="ua", target="striped", threshold=None, tolerance=0)
    rec.update(value=np.float32(0.5), base_value=np.float64(0.25), details={"n": 3})
    rec.update({"delta_ci": None, "ci": {"low": np.float64(0.1), "high": 1, "n_clusters": 4}})
    rec.update(bound=None, verdict="info")
    out = rec.done()
    assert list(out) == ["suite", "metric", "target", "threshold", "tolerance", "value", "base_value", "details", "delta_ci", "ci", "bound", "verdict"]
    assert dump(out).count('"tolerance": 0,') == 1 and type(out["value"]) is float and out["ci"] == {"low": 0.1, "high": 1, "n_clusters": 4}
    with pytest.raises(ValueError):
        rec.update(value="high")  # each field is checked as it is set
    with pytest.raises(ValueError):
        MetricRecord.begin(suite="s", metric="m", target="t").done()  # no verdict: not a record


def test_the_file_of_a_run_is_assembled_in_the_order_readers_see(tmp_path):
    from harness.results.assemble import build
    from harness.spec import load_submission

    sub_path = ROOT / "submissions" / "toy-uce-style.yaml"
    committed = json.loads((ROOT / "leaderboard" / "results" / "toy-uce-style.json").read_text())
    from harness.results.assemble import SuiteResult

    suites = [SuiteResult(SuiteRecord.model_validate(s), [MetricRecord.model_validate(m) for m in committed["metrics"] if m["suite"] == s["id"]])
              for s in committed["suites"]]
    built = build(str(sub_path.relative_to(ROOT)), load_submission(sub_path), ROOT, suites, {"python": "3"}, True, "2026-01-01T00:00:00+00:00",
                  devices=["cpu"], smoke=False)
    doc = built.to_json()
    # the records travel as models and are written byte for byte as they were read (the writer's own format)
    write_result(tmp_path / "r.json", built)
    written = json.loads((tmp_path / "r.json").read_text())
    for part in ("suites", "metrics"):
        assert json.dumps(written[part], indent=2) == json.dumps(committed[part], indent=2)
    assert list(doc) == list(committed)
    assert list(doc["environment"]) == ["platform", "libraries", "device", "fingerprint"] and doc["summary"] == committed["summary"]
    from harness.run.reproduce import BITWISE_FIELDS

    assert set(BITWISE_FIELDS) <= set(doc["environment"]["fingerprint"]) and doc["environment"]["fingerprint"]["device"] == "cpu"
    assert diff_keys(doc["metrics"], committed["metrics"]) == [] and diff_keys(doc["suites"], committed["suites"]) == []
    assert list(doc["submission"]) == list(committed["submission"])
    empty = build(str(sub_path.relative_to(ROOT)), load_submission(sub_path), ROOT, [], {}, False, "2026-01-01T00:00:00+00:00")
    assert empty.summary == {v: 0 for v in model.VERDICTS} and "smoke" not in empty.to_json()  # a run without records is still written


def test_the_schema_version_lives_in_the_results_model():
    import harness.spec as spec

    assert not hasattr(spec, "RESULTS_SCHEMA_VERSION")
    assert all(json.loads(p.read_text())["schema_version"] == SCHEMA_VERSION for p in COMMITTED)


def test_docs_results_schema_is_the_one_the_model_generates():
    committed = schema_doc.DOC.read_text(encoding="utf-8") if schema_doc.DOC.is_file() else ""
    assert committed == schema_doc.render(), f"docs/results-schema.md is not current: regenerate it with `{schema_doc.COMMAND}`"


def test_the_schema_doc_names_every_field_of_every_model():
    text = schema_doc.render()
    for title, cls in schema_doc.SECTIONS:
        assert f"## {title}" in text
        for name in cls.model_fields:
            assert f"| `{name}` |" in text
    assert schema_doc.type_name(model.MetricRecord.model_fields["value"].annotation) == "number \\| null"
