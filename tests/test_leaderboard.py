"""The leaderboard site: built from fixture results (made here) and from the committed
leaderboard/results; bad files, hostile names and URLs, damaged images; the downloads."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.gate import refresh as rf
from harness import site as lb
from harness.errors import HarnessError

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "leaderboard" / "results"
XSS = "<script>alert(1)</script>"


def png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metric(suite, name, label, target, kind, value, base, threshold=None, verdict=None, higher=True):
    if verdict is None:  # the verdict its numbers give (readers recompute it and refuse a false one)
        from harness.results.attest import expected_verdict

        verdict = expected_verdict({"value": value, "base_value": base}, threshold)
    return {"suite": suite, "metric": name, "label": label, "target": target, "target_kind": kind, "value": value,
            "base_value": base, "threshold": threshold, "bound": 0.8 if threshold else None, "verdict": verdict,
            "higher_is_better": higher, "metric_version": "1", "tolerance": 0.05, "details": {"n": 1}}


def result(name, *, target=("striped", "style"), ua=1.0, ira=1.0, cra=0.9, fid=1.0, finished="2026-01-01T00:00:00+00:00",
           samples=(), paper_url="https://arxiv.org/abs/2303.07345", checkpoint_url=None):
    concept, kind = target
    suites = [
        {"id": "toy-canvas", "version": "1.0", "n_prompts": 25, "n_images_per_model": 200, "seeds": [0, 1],
         "generation": {"scheduler": "ddim", "steps": 20, "guidance": 5.0, "height": 32, "width": 32, "eta": 0.0, "batch_size": 50, "negative_prompt": ""},
         "device": "cpu", "dtype": "float32", "scorer": {"id": "toy-classifier", "sha256": "f" * 64},
         "prompt_set_sha256": "a" * 64, "file_sha256": "b" * 64, "models": {"base": "sha256:" + "c" * 64, "unlearned": "sha256:" + "d" * 64},
         "images": {"base": {"generated": 0, "cached": 200, "flagged": []}, "unlearned": {"generated": 200, "cached": 0, "flagged": []}},
         "samples": list(samples)},
        {"id": "toy-fid", "version": "1.0", "n_prompts": 25, "n_images_per_model": 200, "seeds": [0, 1], "generation": {}, "samples": []},
    ]
    metrics = [
        metric("toy-canvas", "ua", "UA", concept, kind, ua, 0.0, ">= 0.8", "pass" if ua >= 0.8 else "fail"),
        metric("toy-canvas", "ira", "IRA", concept, kind, ira, 1.0, ">= 0.8 * base"),
        metric("toy-canvas", "cra", "CRA", concept, kind, cra, 1.0, ">= 0.8 * base"),
        metric("toy-fid", "fid", "FID", concept, kind, fid, 0.98, "<= 2 * base", higher=False),
        metric("toy-fid", "kid", "KID", concept, kind, -0.03, -0.03, higher=False),
    ]
    verdicts = [m["verdict"] for m in metrics]
    return {
        "schema_version": "1.0", "harness": {"version": "0.1.0", "git_sha": "e" * 40}, "started": finished, "finished": finished,
        "complete": True,
        "submission": {"file": f"submissions/{name}.yaml", "file_sha256": "1" * 64, "name": name,
                       "method": {"name": "uce", "params": {"lr": 0.1}, "paper_url": paper_url, "code_url": "https://github.com/x/y", "authors": [], "license": None},
                       "base_model": {"builtin": "toy"},
                       "checkpoint": {"kind": "unet", "path": None if checkpoint_url else "ck/unet.safetensors", "url": checkpoint_url, "sha256": "2" * 64},
                       "targets": [{"concept": concept, "kind": kind}], "suites": None},
        "environment": {"platform": "Linux", "libraries": {"python": "3.11.7", "torch": "2.1"}, "device": ["cpu"]},
        "efficiency": {"storage_bytes": {"value": 1234, "source": "measured"}},
        "suites": suites, "metrics": metrics, "summary": {v: verdicts.count(v) for v in ("pass", "fail", "error", "info")},
    }


def write(folder: Path, name: str, data) -> Path:
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


@pytest.fixture()
def fixture_results(tmp_path):
    """Three submissions (one with two runs), two good images, one image whose bytes do not
    match its name, and two bad files."""
    res = tmp_path / "results"
    imgs = res / "images"
    imgs.mkdir(parents=True)
    good_b, good_u = png((200, 30, 30)), png((30, 30, 200))
    for data in (good_b, good_u):
        (imgs / f"{sha(data)}.png").write_bytes(data)
    wrong = sha(b"what the name promises")
    (imgs / f"{wrong}.png").write_bytes(png((0, 255, 0)))
    samples = [{"prompt": "A circle image in striped style.", "seed": 0, "base": sha(good_b), "unlearned": sha(good_u), "target": True},
               {"prompt": "A square image in solid style.", "seed": 0, "base": sha(good_b), "unlearned": wrong, "target": False}]
    write(res, "uce.json", result("toy-uce", samples=samples))
    write(res, "uce-old.json", result("toy-uce", ua=0.5, finished="2025-01-01T00:00:00+00:00"))
    write(res, "esd.json", result("toy-esd", target=("triangle", "object"), ua=0.5, cra=0.7, fid=9.4))
    write(res, "xss.json", result(XSS, paper_url="javascript:alert(2)", checkpoint_url="javascript:alert(3)"))
    write(res, "broken.json", '{"schema_version": "1.0", ')
    bad = result("bad-shape")
    del bad["metrics"][0]["verdict"]
    write(res, "shape.json", bad)
    write(res, "sub/nested.json", result("nested"))  # not read: results/*.json only
    return res, {"good": (sha(good_b), sha(good_u)), "wrong": wrong}


def build(res: Path, out: Path):
    lines: list[str] = []
    counts = lb.build(res, out, report=lines.append)
    return counts, lines


def pages(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in (out / "submissions").glob("*.html")}


def page_of(out: Path, name: str) -> str:
    return (out / "submissions" / f"{lb.slug(name)}.html").read_text()


def test_index_has_one_table_per_suite_every_metric_base_rows_and_badges(fixture_results, tmp_path):
    res, _ = fixture_results
    out = tmp_path / "site"
    counts, _ = build(res, out)
    index = (out / "index.html").read_text()
    assert counts["suites"] == 2 and counts["submissions"] == 3
    tables = re.findall(r'<table class="board sortable" id="table-([^"]+)" data-suite="([^"]+)"', index)
    assert sorted(t for t, _ in tables) == ["toy-canvas", "toy-fid"]
    for f in res.glob("*.json"):
        if f.name in ("broken.json",):
            continue
        for m in json.loads(f.read_text())["metrics"]:
            assert f'data-metric="{m["suite"]}/{m["metric"]}"' in index
    # base model rows, one per target, in a tbody of their own (not sorted with the rows)
    assert index.count('class="base-row"') == 2 * 2  # 2 suites x 2 targets (striped, triangle)
    for v in ("pass", "fail", "info"):
        assert f'<span class="badge {v}">{v}</span>' in index
    # value / base column groups and sortable headers
    assert index.count('<colgroup class="metric-group" span="2">') == 5
    assert 'aria-sort="none"' in index
    # the target-kind filter offers the kinds present
    assert 'data-kind="style" aria-pressed="false"' in index and 'data-kind="object" aria-pressed="false"' in index
    # relative links only: nothing starts with / or a scheme except the submissions' own http(s) links
    for ref in re.findall(r'(?:href|src)="([^"]+)"', index):
        assert not ref.startswith(("/", "file:", "javascript:")), ref


def test_submission_pages_show_every_metric_with_threshold_base_and_provenance(fixture_results, tmp_path):
    res, _ = fixture_results
    out = tmp_path / "site"
    build(res, out)
    page = page_of(out, "toy-uce")
    data = json.loads((res / "uce.json").read_text())
    for m in data["metrics"]:
        row = re.search(rf'<tr data-kind="style" data-metric="{m["suite"]}/{m["metric"]}">(.*?)</tr>', page, re.S)
        assert row, m["metric"]
        assert lb.fmt(m["value"]) in row.group(1) and lb.fmt(m["base_value"]) in row.group(1)
        assert f'<span class="badge {m["verdict"]}">' in row.group(1)
        if m["threshold"]:
            assert lb.pretty_threshold(m["threshold"]) in row.group(1)
    for needle in ("e" * 40, "a" * 64, "toy-classifier", "f" * 64, "2" * 64, "3.11.7", "ddim", "float32", "0, 1"):
        assert needle in page, needle
    assert '<a href="https://arxiv.org/abs/2303.07345"' in page and '<a href="https://github.com/x/y"' in page
    # the latest run is shown (UA 1.000 pass), the older one is listed
    assert "uce-old.json" in page and "uce.json" in page


def test_bad_files_are_reported_by_name_and_skipped(fixture_results, tmp_path):
    res, _ = fixture_results
    counts, lines = build(res, tmp_path / "site")
    assert counts["files"] == 4
    broken = [x for x in lines if "broken.json" in x]
    shape = [x for x in lines if "shape.json" in x]
    assert len(broken) == 1 and "not valid JSON" in broken[0]
    assert len(shape) == 1 and "metrics.0.verdict" in shape[0]
    assert all("\n" not in x for x in lines)


def test_cli_build_reports_one_line_per_bad_file_and_exits_0(fixture_results, tmp_path):
    res, _ = fixture_results
    r = subprocess.run([sys.executable, "-m", "harness.cli.main", "leaderboard", "build", "--results", str(res), "--out", str(tmp_path / "site")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    err = r.stderr.strip().splitlines()
    assert any(line.startswith(f"unlearn: skipped {res / 'broken.json'}: not valid JSON") for line in err)
    assert any(line.startswith(f"unlearn: skipped {res / 'shape.json'}: ") for line in err)
    assert "nested" not in r.stderr
    assert "wrote" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--results", "no/such/folder"], "--results no/such/folder: no such folder"),
    (["--results", "{empty}"], "no valid results file"),
    (["--results", "{res}", "--out", "{notsite}"], "not a site built by `unlearn leaderboard build`"),
])
def test_cli_bad_input_is_one_line_and_exit_2(fixture_results, tmp_path, args, message):
    res, _ = fixture_results
    (tmp_path / "empty").mkdir()
    (tmp_path / "notsite").mkdir()
    (tmp_path / "notsite" / "precious.txt").write_text("keep me")
    args = [a.format(res=res, empty=tmp_path / "empty", notsite=tmp_path / "notsite") for a in args]
    r = subprocess.run([sys.executable, "-m", "harness.cli.main", "leaderboard", "build", *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: ") and message in lines[0], r.stderr
    assert (tmp_path / "notsite" / "precious.txt").read_text() == "keep me"


def test_rebuild_replaces_an_earlier_build(fixture_results, tmp_path):
    res, _ = fixture_results
    out = tmp_path / "site"
    build(res, out)
    (out / "submissions" / "stale.html").write_text("old")
    build(res, out)
    assert not (out / "submissions" / "stale.html").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_script_name_and_javascript_urls_are_shown_as_text(fixture_results, tmp_path):
    res, _ = fixture_results
    out = tmp_path / "site"
    build(res, out)
    everything = [(out / "index.html").read_text(), *pages(out).values(), (out / "tradeoff.svg").read_text()]
    for html in everything:
        assert "<script>alert" not in html
    index, page = everything[0], page_of(out, XSS)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "javascript:" not in re.sub(r">[^<]*<", "><", page)  # only in text, never in an attribute
    assert '<span class="not-link">javascript:alert(2)</span>' in page
    assert '<span class="not-link">javascript:alert(3)</span>' in page
    assert lb.safe_url("javascript:alert(1)") is None and lb.safe_url("https://x.org/a") == "https://x.org/a"
    assert lb.safe_url("//evil.org") is None and lb.safe_url('https://x.org/"onclick=') is None


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "/abs/path", "a/../../b", "..\\..\\win", "CON", "x" * 200, "名前", ""])
def test_page_file_names_are_safe(name):
    s = lb.slug(name)
    assert re.fullmatch(r"[a-z0-9-]{1,48}-[0-9a-f]{8}", s), s
    assert lb.slug(name) == s and lb.slug(name + " ") != s  # stable, and distinct names stay distinct


def test_traversal_names_stay_inside_the_site(tmp_path):
    res = tmp_path / "results"
    names = ["../../escape", "/etc/passwd", "..\\x"]
    for i, n in enumerate(names):
        write(res, f"{i}.json", result(n))
    out = tmp_path / "site"
    build(res, out)
    written = sorted(p.name for p in (out / "submissions").iterdir())
    assert written == sorted(f"{lb.slug(n)}.html" for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "site"]


def test_images_are_copied_only_when_their_sha256_matches(fixture_results, tmp_path):
    res, shas = fixture_results
    out = tmp_path / "site"
    counts, lines = build(res, out)
    b, u = shas["good"]
    assert (out / "images" / f"{b}.png").read_bytes() == (res / "images" / f"{b}.png").read_bytes()
    assert (out / "images" / f"{u}.png").is_file()
    assert not (out / "images" / f"{shas['wrong']}.png").exists()
    assert counts["images"] == 2 and counts["images_unavailable"] == 1
    assert any(shas["wrong"] in x and "has sha256" in x for x in lines)
    page = page_of(out, "toy-uce")
    assert page.count('<img src="../images/') == 3 and "image unavailable" in page
    assert f'src="../images/{shas["wrong"]}.png"' not in page
    assert page.count('class="pair is-target"') == 1  # marked as the harness recorded it


def test_a_sample_naming_a_path_is_not_followed(tmp_path):
    res = tmp_path / "results"
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((1, 2, 3)))
    bad = [{"prompt": "p", "seed": 0, "base": "../../secret", "unlearned": "../secret"}]
    write(res, "x.json", result("x", samples=bad))
    out = tmp_path / "site"
    counts, lines = build(res, out)
    assert counts["images"] == 0 and counts["images_unavailable"] == 2
    assert not (out / "images").exists() or not list((out / "images").iterdir())
    assert all("not a sha256" in x for x in lines)


def test_downloads_parse_and_hold_every_accepted_record(fixture_results, tmp_path):
    res, _ = fixture_results
    out = tmp_path / "site"
    build(res, out)
    accepted = [json.loads((res / n).read_text()) for n in ("uce.json", "uce-old.json", "esd.json", "xss.json")]
    want = sorted((d["submission"]["name"], m["suite"], m["metric"], m["target"], m["value"]) for d in accepted for m in d["metrics"])
    data = json.loads((out / "results.json").read_text())
    got = sorted((r["submission"], r["suite"], r["metric"], r["target"], r["value"]) for r in data["records"])
    assert got == want
    assert sum(r["latest"] for r in data["records"]) == 3 * 5  # the older toy-uce run is not latest
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert sorted((r["submission"], r["suite"], r["metric"], r["target"], float(r["value"])) for r in rows) == want
    assert {r["file"] for r in rows} == {"uce.json", "uce-old.json", "esd.json", "xss.json"}


def test_tradeoff_svg_is_well_formed_and_has_one_point_per_submission_target(fixture_results, tmp_path):
    res, _ = fixture_results
    out = tmp_path / "site"
    build(res, out)
    root = ET.parse(out / "tradeoff.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert len(root.findall(f".//{ns}circle[@data-kind]")) == 3  # toy-uce, toy-esd, the script-named one
    labels = [t.text for t in root.iter(f"{ns}text") if t.get("class") == "label"]
    assert f"{XSS} · striped" in labels and "toy-esd · triangle" in labels
    index = (out / "index.html").read_text()
    inline = index[index.index("<svg"): index.index("</svg>") + 6]
    ET.fromstring(inline)


def test_sample_pairs_are_deterministic_and_put_targets_first():
    from harness.run.evaluate import sample_pairs
    from harness.run.generate import Job
    from harness.spec import Prompt, TargetSpec

    objects, styles = ["circle", "square", "triangle"], ["solid", "striped", "dotted", "outline"]
    prompts = [Prompt(text=f"A {o} image in {s} style.", labels={"object": o, "style": s}) for o in objects for s in styles]
    items = [(p, seed) for p in prompts for seed in (3, 4)]
    job = lambda p, seed, m: Job(p.text, "", seed, "ddim", 20, 5.0, 32, 32, 0.0, "float32", m)

    class Cache:
        def png_sha256(self, j):
            return hashlib.sha256(f"{j.model}{j.prompt}{j.seed}".encode()).hexdigest()

    base = [job(p, s, "b") for p, s in items]
    unl = [job(p, s, "u") for p, s in items]
    got = sample_pairs(items, base, unl, [TargetSpec(concept="striped", kind="style")], Cache())
    # the choice depends on the prompt texts, not on the order the suite lists them in
    items_r = [(p, seed) for p in reversed(prompts) for seed in (3, 4)]
    again = sample_pairs(items_r, [job(p, s, "b") for p, s in items_r], [job(p, s, "u") for p, s in items_r],
                         [TargetSpec(concept="striped", kind="style")], Cache())
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, got))
    assert len(got) == 8 and len({g["prompt"] for g in got}) == 8 and {g["seed"] for g in got} == {3}
    assert sum("striped" in g["prompt"] for g in got) == 3  # every target prompt (3 < 8 // 2), then others
    assert all(g["target"] == ("striped" in g["prompt"]) for g in got)
    assert all(g["base"] != g["unlearned"] for g in got)
    assert len(sample_pairs(items[:4], base[:4], unl[:4], [TargetSpec(concept="striped", kind="style")], Cache())) == 2


def test_export_images_copies_from_the_cache_by_sha256_and_reports_missing(tmp_path):
    cache = tmp_path / "cache"
    data = png((9, 9, 9))
    d = cache / "images" / "ab"
    d.mkdir(parents=True)
    (d / "abkey.png").write_bytes(data)
    (d / "abkey.json").write_text(json.dumps({"png_sha256": sha(data)}))
    missing = "0" * 64
    res = tmp_path / "out"
    f = write(res, "x.json", result("x", samples=[{"prompt": "p", "seed": 0, "base": sha(data), "unlearned": missing}]))
    (res / "images").mkdir()
    stale = res / "images" / f"{'7' * 64}.png"
    stale.write_bytes(b"old")
    lines: list[str] = []
    r = rf.export_images([f], cache, res / "images", lines.append)
    assert (res / "images" / f"{sha(data)}.png").read_bytes() == data
    assert r == {"referenced": 2, "copied": 1, "kept": 0, "missing": 1, "pruned": 1}
    assert not stale.exists() and len(lines) == 1 and missing in lines[0]
    assert rf.export_images([f], cache, res / "images", lines.append)["kept"] == 1


def test_refresh_refuses_a_bad_submission_before_running_anything(tmp_path):
    with pytest.raises(HarnessError, match="no such file"):
        rf.refresh([str(tmp_path / "nope.yaml")], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not list(COMMITTED.glob("*.json")), reason="leaderboard/results not made yet (unlearn leaderboard refresh)")
def test_site_from_committed_results_shows_every_metric_the_harness_produced(tmp_path):
    out = tmp_path / "site"
    counts, lines = build(COMMITTED, out)
    assert lines == []  # every file valid, every image present and matching
    from harness.results.io import results_files

    files = results_files(COMMITTED)  # the one discovery rule (ATTESTATION.json is the manifest, not a result)
    assert counts["files"] == len(files) >= 5
    index = (out / "index.html").read_text()
    for f in files:
        data = json.loads(f.read_text())
        page = page_of(out, data["submission"]["name"])
        for m in data["metrics"]:
            assert f'data-metric="{m["suite"]}/{m["metric"]}"' in index
            assert re.search(rf'data-metric="{re.escape(m["suite"])}/{re.escape(m["metric"])}">\s*<td data-sort="{re.escape(m["suite"])}"', page)
        samples = [s for suite in data["suites"] for s in suite.get("samples", [])]
        assert samples, f"{f.name}: no sample images recorded"
        for s in samples:
            assert f'src="../images/{s["base"]}.png"' in page and f'src="../images/{s["unlearned"]}.png"' in page
    n_records = sum(len(json.loads(f.read_text())["metrics"]) for f in files)
    assert len(json.loads((out / "results.json").read_text())["records"]) == n_records


def test_csv_cells_from_submissions_cannot_be_spreadsheet_formulas(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    doc = result("toy-formula", target=("=HYPERLINK(\"http://x\")", "style"))
    doc["submission"]["method"]["name"] = "@SUM(A1)"
    (res / "f.json").write_text(json.dumps(doc))
    build(res, tmp_path / "site")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "site" / "results.csv").read_text())))
    assert {r["target"] for r in rows} == {"'=HYPERLINK(\"http://x\")"}
    assert {r["method"] for r in rows} == {"'@SUM(A1)"}
    assert {r["value"] for r in rows if r["metric"] == "kid"} == {"-0.03"}  # numbers keep their sign


# ----------------------------------------------------------------------------- intervals (harness.stats.intervals)


def _with_intervals(data: dict, correct: list[int]) -> dict:
    """Give the UA record of ``data`` per-image scores (10 prompts x 4 seeds) and intervals."""
    import numpy as np

    from harness.stats import intervals as stats

    s = stats.Scores(correct, [0] * len(correct), [f"p{i // 4}" for i in range(len(correct))], [i % 4 for i in range(len(correct))], binary=True)
    from harness.spec import Threshold

    th = Threshold.parse(">= 0.8")
    ua = data["metrics"][0]
    ua.update(value=float(np.mean(correct)), base_value=0.0, scores=s.to_record(), **stats.intervals(s, th))
    ua["verdict"], ua["verdict_point"] = (v := stats.verdict(th, ua["value"], 0.0, ua["margin_ci"])).verdict, v.point
    verdicts = [m["verdict"] for m in data["metrics"]]
    data["summary"] = {v: verdicts.count(v) for v in ("pass", "fail", "inconclusive", "error", "info")}  # readers check it
    return data


def test_values_show_intervals_deltas_rank_intervals_and_ties(tmp_path):
    res = tmp_path / "results"
    write(res, "a.json", _with_intervals(result("sub-a"), [1] * 40))
    write(res, "b.json", _with_intervals(result("sub-b"), [1] * 39 + [0]))  # inside a's noise: tied
    write(res, "c.json", _with_intervals(result("sub-c"), [1] * 16 + [0] * 24))  # clearly worse
    write(res, "old.json", result("sub-old", target=("triangle", "object")))  # an older file: no intervals at all
    counts, lines = build(res, tmp_path / "site")
    assert counts["files"] == 4 and not lines
    html = (tmp_path / "site" / "index.html").read_text()
    assert "[0.912, 1.000]" in html  # Wilson of 40 / 40
    assert "Δ +1.000" in html and "Rank (UA)" in html
    df, latest = lb.records_frame(lb.load_runs(res))
    table = next(t for t in lb.suite_tables(df, latest) if t["id"] == "toy-canvas")
    rank = {r["submission"]: r["rank"] for r in table["rows"]}
    assert rank["sub-a"]["tied"] and rank["sub-b"]["tied"] and not rank["sub-c"]["tied"]
    assert rank["sub-c"]["text"] == "3 [3]" and "resolved" in rank["sub-c"]["title"]
    assert rank["sub-old"]["text"] == "1 [1]"  # alone on its target
    csv_rows = list(csv.DictReader(io.StringIO((tmp_path / "site" / "results.csv").read_text())))
    ua_a = next(r for r in csv_rows if r["submission"] == "sub-a" and r["metric"] == "ua")
    assert float(ua_a["ci_low"]) == pytest.approx(0.9124, abs=1e-4) and ua_a["ci_method"] == "wilson"
    svg = (tmp_path / "site" / "tradeoff.svg").read_text()
    ET.fromstring(svg)
    assert svg.count('class="errorbar"') == 3  # x bars of the three UA intervals (IRA / CRA carry none here)


def test_rank_intervals_known_answers():
    # no scores, intervals: a wholly better than b and c; b and c overlap
    e = [{"key": "a", "value": 0.9, "ci": {"low": 0.85, "high": 0.95}}, {"key": "b", "value": 0.6, "ci": {"low": 0.5, "high": 0.7}},
         {"key": "c", "value": 0.65, "ci": {"low": 0.55, "high": 0.75}}]
    r = {x["key"]: x for x in lb.rank_intervals(e, higher_is_better=True)}
    assert (r["a"]["low"], r["a"]["high"], r["a"]["tied_with"]) == (1, 1, [])
    assert (r["b"]["rank"], r["b"]["low"], r["b"]["high"]) == (3, 2, 3) and r["b"]["tied_with"] == ["c"]
    r = {x["key"]: x for x in lb.rank_intervals(e, higher_is_better=False)}
    assert r["a"]["rank"] == 3 and (r["a"]["low"], r["a"]["high"]) == (3, 3)
    # no intervals at all: point ranks, no ties claimed
    r = lb.rank_intervals([{"key": "a", "value": 1.0}, {"key": "b", "value": 0.5}], True)
    assert [(x["rank"], x["low"], x["high"], x["method"]) for x in r] == [(1, 1, 1, None), (2, 2, 2, None)]


# ----------------------------------------------------------------------------- the site only reads results files

# Modules the site must never load: the harness's generation, evaluation, models, methods,
# attacks and the harness runner, and pytest or the deep-learning stack.
NOT_IN_THE_SITE = ("torch", "diffusers", "transformers", "pytest", "_pytest", "harness.run.evaluate", "harness.run.generate",
                   "harness.families.sd1", "harness.plugin.hooks", "harness.gate.rerun", "harness.gate.refresh", "harness.methods", "harness.attacks",
                   "harness.toy", "harness.run.ray_executor", "harness.plugin.cases", "harness.run.plan", "harness.plugin.session", "harness.resolve.check")


def test_the_site_imports_no_generation_evaluation_model_or_test_code(fixture_results, tmp_path):
    res, _ = fixture_results
    # 1. what a whole build loads (lazy imports included), in a fresh interpreter
    code = ("import sys, json; from harness import site; "
            f"site.build({str(res)!r}, {str(tmp_path / 'site')!r}, report=lambda m: None); "
            "print(json.dumps(sorted(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert "harness.site.pages" in loaded and "pandas" in loaded  # the build ran
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in NOT_IN_THE_SITE)]
    assert bad == [], bad
    # 2. every import statement of the package (also ones a build above did not reach)
    import ast

    for f in sorted((REPO / "harness" / "site").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = "harness.site" if node.level == 1 else "harness" if node.level == 2 else ""
                mod = ".".join(p for p in (base, node.module or "") if p)
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            hit = [n for n in names if any(n == x or n.startswith(x + ".") for x in NOT_IN_THE_SITE)]
            assert not hit, f"{f.name}:{node.lineno} imports {hit}"
    # 3. the command (`unlearn leaderboard build`): its parser names every command's options, and
    # still loads no deep-learning library (the methods' registry and the toy paths are light)
    code = ("import sys, json; from harness.cli import main as cli; "
            f"rc = cli.main(['leaderboard', 'build', '--results', {str(res)!r}, '--out', {str(tmp_path / 'site2')!r}]); "
            "print(json.dumps([rc, sorted(sys.modules)]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    rc, loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert rc == 0 and (tmp_path / "site2" / "index.html").is_file(), r.stderr
    heavy = [m for m in loaded if m.split(".")[0] in ("torch", "diffusers", "transformers", "pytest", "_pytest")]
    assert heavy == [], heavy


def test_image_cache_finds_a_png_by_its_sha256(tmp_path):
    import numpy as np

    from harness.run.generate import ImageCache, Job

    cache = ImageCache(tmp_path / "images")
    job = Job("a prompt", "", 0, "ddim", 20, 5.0, 8, 8, 0.0, "float32", "sha256:" + "c" * 64)
    cache.put(job, np.full((8, 8, 3), 7, np.uint8))
    png = next((tmp_path / "images").glob("*/*.png"))
    want = sha(png.read_bytes())
    assert cache.find_png_sha256({want, "0" * 64}) == {want: png}
    assert cache.find_png_sha256(set()) == {} and ImageCache(tmp_path / "none").find_png_sha256({want}) == {}
    # a symbolic link posing as a sidecar is not read
    side = png.with_suffix(".json")
    real = tmp_path / "real.json"
    real.write_text(side.read_text())
    side.unlink()
    side.symlink_to(real)
    assert cache.find_png_sha256({want}) == {}


# ----------------------------------------------------------------------------- the method's spread over training seeds


def _spread_file(res: Path, name: str, runs: list[dict], seeds=(0, 1, 2)) -> Path:
    """A spread file exactly as ``unlearn regress --method-seeds N`` writes it (regression.spread_of)."""
    from harness.gate.regression import method_spread

    doc = {"submission": name, "seeds": list(seeds), "spread": method_spread(runs)}
    return write(res, f"{name}.method-seeds.json", json.dumps(doc, indent=1) + "\n")


def test_the_method_seed_spread_is_shown_where_regress_wrote_one(tmp_path):
    import statistics

    res = tmp_path / "results"
    write(res, "uce.json", result("toy-uce"))
    write(res, "esd.json", result("toy-esd", target=("triangle", "object"), ua=0.5, cra=0.7))
    runs = [result("toy-esd", target=("triangle", "object"), ua=u, cra=0.7) for u in (0.5, 0.6, 0.4)]
    _spread_file(res, "toy-esd", runs)
    lines: list[str] = []
    counts = lb.build(res, tmp_path / "site", report=lines.append)
    assert lines == [] and counts["files"] == 2  # the spread file is not taken for a results file
    index = (tmp_path / "site" / "index.html").read_text()
    sd = statistics.stdev([0.5, 0.6, 0.4])
    row = re.search(r'<tr data-kind="object" data-submission="toy-esd">(.*?)</tr>', index, re.S).group(1)
    ua_cell = re.search(r'<td class="num value" data-sort="0.5"[^>]*>(.*?)</td>', row, re.S).group(1)
    assert '<span class="seeds" title="standard deviation over 3 training seeds [0, 1, 2]' in ua_cell
    assert f"± {lb.fmt(sd)} (3 seeds)" in ua_cell and "values 0.500, 0.600, 0.400" in ua_cell
    assert row.count('class="seeds"') == 3  # UA, IRA, CRA of toy-canvas: every metric the runs share
    assert "± 0.000 (3 seeds)" in row  # CRA 0.7 in every run: a spread of zero is shown, not hidden
    other = re.search(r'<tr data-kind="style" data-submission="toy-uce">(.*?)</tr>', index, re.S).group(1)
    assert 'class="seeds"' not in other  # no spread file for toy-uce
    assert 'class="meta seeds-legend"' in index and "--method-seeds n" in index
    page = page_of(tmp_path / "site", "toy-esd")
    assert f"± {lb.fmt(sd)} (3 seeds)" in page and "seeds-legend" in page
    assert "seeds-legend" not in page_of(tmp_path / "site", "toy-uce")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "site" / "results.csv").read_text())))
    ua = {r["submission"]: r for r in rows if r["metric"] == "ua"}
    assert ua["toy-esd"]["seeds_n"] == "3" and float(ua["toy-esd"]["seeds_sd"]) == pytest.approx(sd)
    assert ua["toy-uce"]["seeds_n"] == "" and ua["toy-uce"]["seeds_sd"] == ""
    recs = json.loads((tmp_path / "site" / "results.json").read_text())["records"]
    assert {(r["submission"], r["seeds_n"]) for r in recs if r["metric"] == "ua"} == {("toy-esd", 3), ("toy-uce", None)}


def test_a_site_without_spread_files_has_no_seed_legend(fixture_results, tmp_path):
    res, _ = fixture_results
    build(res, tmp_path / "site")
    index = (tmp_path / "site" / "index.html").read_text()
    assert "seeds-legend" not in index and 'class="seeds"' not in index


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(submission="toy-nobody"), "submission: 'toy-nobody' is not a submission of the accepted results files"),
    (lambda d: d["spread"][0].update(values=[0.5, "x", 0.4]), "spread.0.values: expected a list of finite numbers"),
    (lambda d: d["spread"][0].update(values=[0.5, float("nan"), 0.4]), "not valid JSON"),  # NaN is no JSON
    (lambda d: d["spread"][0].update(values=[0.1] * 4), "spread.0.values: 4 values for 3 seeds"),
    (lambda d: d.update(seeds="0..2"), "seeds: expected a list of integers"),
    (lambda d: d["spread"].append("<script>"), "spread."),
])
def test_a_bad_spread_file_is_one_line_and_skipped(tmp_path, change, needle):
    res = tmp_path / "results"
    write(res, "esd.json", result("toy-esd"))
    f = _spread_file(res, "toy-esd", [result("toy-esd", ua=u) for u in (0.5, 0.6, 0.4)])
    doc = json.loads(f.read_text())
    change(doc)
    f.write_text(json.dumps(doc).replace("NaN", "nan"))
    lines: list[str] = []
    counts = lb.build(res, tmp_path / "site", report=lines.append)
    assert counts["files"] == 1
    assert len(lines) == 1 and lines[0].startswith(f"skipped {f}: ") and needle in lines[0] and "\n" not in lines[0], lines
    assert 'class="seeds"' not in (tmp_path / "site" / "index.html").read_text()


def test_a_spread_file_is_attested_like_a_results_file(tmp_path):
    from harness.results.attest import write_manifest

    res = tmp_path / "results"
    write(res, "esd.json", result("toy-esd"))
    f = _spread_file(res, "toy-esd", [result("toy-esd", ua=u) for u in (0.5, 0.6, 0.4)])
    manifest = json.loads(write_manifest(res, "test").read_text())
    assert sorted(manifest["files"]) == ["esd.json", "toy-esd.method-seeds.json"]  # listed, and not as a result
    lines: list[str] = []
    lb.build(res, tmp_path / "site", report=lines.append)
    assert lines == [] and 'class="seeds"' in (tmp_path / "site" / "index.html").read_text()
    doc = json.loads(f.read_text())
    doc["spread"][0]["values"] = [0.0, 1.0, 0.0]  # edited after the trusted run attested it
    f.write_text(json.dumps(doc))
    lines = []
    lb.build(res, tmp_path / "site", report=lines.append)
    assert len(lines) == 1 and "differs from the" in lines[0] and "ATTESTATION.json" in lines[0]
    assert 'class="seeds"' not in (tmp_path / "site" / "index.html").read_text()


def test_a_spread_files_own_statistics_are_not_trusted(tmp_path):
    res = tmp_path / "results"
    write(res, "esd.json", result("toy-esd"))
    f = _spread_file(res, "toy-esd", [result("toy-esd", ua=u) for u in (0.5, 0.6, 0.4)])
    doc = json.loads(f.read_text())
    for r in doc["spread"]:
        r.update(sd=0.0001, mean=0.99)  # claims a method with no variance
    f.write_text(json.dumps(doc))
    build(res, tmp_path / "site")
    assert "± 0.100 (3 seeds)" in (tmp_path / "site" / "index.html").read_text()  # recomputed from the values


def test_the_build_is_byte_for_byte_deterministic(fixture_results, tmp_path):
    """The same results give the same site: every page, figure and download (the figures are
    hand-written SVG for this reason among others: docs/leaderboard.md)."""
    res, _ = fixture_results
    build(res, tmp_path / "one")
    build(res, tmp_path / "two")
    files = lambda d: {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert one.keys() == two.keys() and "tradeoff.svg" in one
    assert [k for k in one if one[k] != two[k]] == []


def test_asr_curves_draw_only_numeric_points_and_carry_the_target_kind():
    import pandas as pd

    from harness.site.aggregate import curves
    from harness.site.figure import asr_curve_svg

    good = {"asr_curve": [{"budget": 0, "asr": 0.2}, {"budget": 10, "asr": 0.6}], "budget_unit": "iterations"}
    odd = {"asr_curve": [{"budget": "x", "asr": 0.1}, {"budget": 5, "asr": "0.5"}, {"budget": 5, "asr": float("nan")}, {"budget": -1, "asr": 0.2},
                         {"budget": 5, "asr": 1.5}, {"budget": True, "asr": 0.5}, "junk", {"asr": 0.3}, {"budget": 8, "asr": 0.4}]}
    row = lambda name, kind, det: {"latest": True, "metric": "asr", "suite": "toy-robustness", "submission": name, "target": "t", "target_kind": kind,
                                   "base_value": 1.0, "_details": det}
    df = pd.DataFrame([row("a", "style", good), row("b", "object", odd), row("c", "object", ["not", "a", "dict"]), row("d", "object", {"asr_curve": "no"})])
    cs = curves(df)
    assert [(c["submission"], c["kind"], c["points"]) for c in cs] == [("a", "style", [(0.0, 0.2), (10.0, 0.6)]), ("b", "object", [(8.0, 0.4)])]
    svg = asr_curve_svg(cs)
    ET.fromstring(svg)
    assert svg.count('<polyline') == 2 and svg.count('data-kind="style"') == 3 and svg.count('data-kind="object"') == 3  # line, base line, legend
    assert "ci-bar" not in svg  # no point carries an interval
    good["asr_curve"] = [{"budget": 0, "asr": 0.2, "low": 0.06, "high": 0.51}, {"budget": 10, "asr": 0.6, "low": "x", "high": 0.9},
                         {"budget": 20, "asr": 0.6, "low": 0.7, "high": 0.5}]  # an interval each: one good, one not a number, one reversed
    cs = curves(pd.DataFrame([row("a", "style", good)]))
    assert cs[0]["bars"] == [(0.0, 0.06, 0.51)]
    svg = asr_curve_svg(cs)
    ET.fromstring(svg)
    assert svg.count('class="ci-bar"') == 1 and "95% interval [0.06, 0.51]" in svg


def _robustness_result():
    """toy-uce-like: UA passes, textual inversion regains the object on every attacked item
    (ASR (TI) 1.0 against `<= 0.5 * base`: fail; a suite of its own, so the reader takes the record's threshold), the erase time a single run."""
    data = result("toy-uce-object", target=("triangle", "object"))
    ti = metric("t-robustness", "ti_asr", "ASR (TI)", "triangle", "object", 1.0, 1.0, "<= 0.5 * base", higher=False)
    ti["details"] = {"attack": "ti", "items": 5, "pre_asr": 0.0, "asr_curve": [{"budget": 0, "asr": 0.0}, {"budget": 100, "asr": 1.0}]}
    t = metric("toy-efficiency", "erase_time_s", "Erase-time-s", "triangle", "object", 0.035, None, higher=False)
    t.update(ci=None, ci_reason="single run: one measurement of the erasure run")
    data["metrics"] += [ti, t]
    data["suites"] += [{"id": "t-robustness", "samples": []}, {"id": "toy-efficiency", "samples": []}]
    verdicts = [m["verdict"] for m in data["metrics"]]
    data["summary"] = {v: verdicts.count(v) for v in ("pass", "fail", "inconclusive", "error", "info")}  # readers check it
    return data


def test_a_reversed_erasure_is_named_beside_ua_and_a_value_without_interval_says_why(tmp_path):
    data = _robustness_result()
    assert data["metrics"][-2]["verdict"] == "fail"
    res = tmp_path / "results"
    write(res, "uce.json", data)
    build(res, tmp_path / "site")
    index, page = (tmp_path / "site" / "index.html").read_text(), page_of(tmp_path / "site", "toy-uce-object")
    note = "reversed by TI on 5/5 items (ASR (TI) FAIL)"
    for html in (index, page):  # once: after UA's pass badge (the only erasure metric), not after IRA / CRA / FID
        assert html.count(note) == 1 and f'<span class="badge pass">pass</span> <span class="reversed error-text">{note}</span>' in html
        assert "(single run)" in html
    assert 'data-sort="1.0">1.000 <span class="badge pass">pass</span> <span class="reversed' in index  # the UA value cell


def test_end_of_run_table_names_the_reversal_and_the_missing_interval():
    from harness.plugin.session import summary_lines

    state = type("S", (), {"written": [("toy-uce-object", "results/x.json", _robustness_result())]})()
    lines = summary_lines(state)
    ua = next(line for line in lines if " UA " in line)
    assert ua.rstrip().endswith("PASS; reversed by TI on 5/5 items (ASR (TI) FAIL)")
    t = next(line for line in lines if "Erase-time-s" in line)
    assert "single run" in t and next(line for line in lines if " IRA " in line).count("reversed") == 0


def test_index_opens_with_one_glance_method_by_metric_table(tmp_path):
    """Before the per-suite tables: one row per method and family, a column per metric and target
    kind grouped by role, the newest run's value in each cell coloured by its verdict; an
    inference-time method's row says so; a method name is escaped."""
    res = tmp_path / "results"
    write(res, "uce-style.json", result("toy-uce-style", ua=1.0))
    write(res, "uce-style-old.json", result("toy-uce-style", ua=0.25, finished="2025-01-01T00:00:00+00:00"))
    write(res, "uce-object.json", result("toy-uce-object", target=("triangle", "object"), ua=0.5, cra=0.7))
    neg = result("toy-negprompt-style", ua=0.0)
    neg["submission"]["method"] = {**neg["submission"]["method"], "name": "negprompt", "kind": "inference"}
    write(res, "neg.json", neg)
    odd = result("toy-odd", ua=0.9)
    odd["submission"]["method"] = {**odd["submission"]["method"], "name": XSS}
    write(res, "odd.json", odd)
    out = tmp_path / "site"
    build(res, out)
    index = (out / "index.html").read_text()
    assert index.index('id="glance"') < index.index('id="overview"') < index.index('id="suite-toy-canvas"')
    sec = index[index.index('id="glance"'):]
    sec = sec[:sec.index("</section>")]
    groups = re.findall(r'<th scope="colgroup" colspan="(\d+)" class="group">([^<]+)</th>', sec)
    assert [g for _, g in groups] == ["Erasure", "Retention", "Quality"]
    from html import unescape

    heads = [unescape(h) for h in re.findall(r'<button type="button">([^<]+)<span class="arrow"', sec)][2:]
    assert heads == ["UA object", "UA style", "IRA object", "IRA style", "CRA object", "CRA style", "FID object", "FID style"]
    assert [int(n) for n, _ in groups] == [2, 4, 2]
    rows = {unescape(re.search(r'<td data-sort="([^"]*)"', r).group(1)): r for r in re.findall(r"<tr>(.*?)</tr>", sec, re.S) if "<td" in r}
    assert set(rows) == {"uce", "negprompt (inference-time)", XSS}
    cells = re.findall(r'<td class="num( verdict-\w+)?" data-sort="[^"]*" title="([^"]*)">([^<]*)</td>', rows["uce"])
    # UA object (0.5, fail) from toy-uce-object, UA style from the newest toy-uce-style run (1.0, not 0.25)
    assert (cells[0][0], cells[0][2]) == (" verdict-fail", "0.500") and cells[0][1].startswith("toy-uce-object, toy-canvas: 0.500")
    assert (cells[1][0], cells[1][2]) == (" verdict-pass", "1.000")
    neg_cells = re.findall(r'<td class="num[^"]*" data-sort="[^"]*" title="[^"]*">([^<]*)</td>', rows["negprompt (inference-time)"])
    assert neg_cells[0] == "–" and neg_cells[1] == "0.000"  # no object target: no record
    assert "<script>alert" not in index
