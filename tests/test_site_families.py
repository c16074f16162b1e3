"""The leaderboard with two model families: the committed (SD-1.x) results plus copies relabelled
as SDXL (``builtin:toy-xl``). The family column, ranks within a family, a base reference row per
family, a method read side by side across families, escaping of a family's name, the family
inferred where a results file does not record one, and "n/a" with the reason for a family of the
board a method does not run on (the mapping `unlearn leaderboard build` makes from the method
registry; a run matched to its method by its method record)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from html import unescape
from pathlib import Path

import pytest

from harness import site as lb
from harness.site.load import family_from_label, family_title, method_key, run_family, suite_family
from test_leaderboard import build, page_of, result, write

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "leaderboard" / "results"
XSS = "<script>alert(1)</script>"
SD1_COMMITTED = [p for p in COMMITTED.glob("toy-*.json") if not p.name.startswith("toy-xl-")]  # the SD-1.x toy world's runs
XL_METHOD_FROM = "toy-fmn-object.json"  # its method is evaluated on SDXL too
XL_DATA_FROM = "toy-esd-object.json"  # the numbers of that SDXL run (another result's, relabelled)
XL_BASE_FROM = "toy-base.json"  # the unchanged base, relabelled as toy-xl without a `family` key

needs_committed = pytest.mark.skipif(not all((COMMITTED / f).is_file() for f in (XL_METHOD_FROM, XL_DATA_FROM, XL_BASE_FROM)),
                                     reason="leaderboard/results not made yet (unlearn leaderboard refresh)")


def as_xl(data: dict, name: str, family: str | None) -> dict:
    """``data`` relabelled as a run on the toy-xl base: the submission's base, every suite's
    ``base_model.label`` and, when ``family`` is given, its ``base_model.family``."""
    d = json.loads(json.dumps(data))
    d["submission"]["name"] = name
    d["submission"]["base_model"] = {**(d["submission"].get("base_model") or {}), "builtin": "toy-xl"}
    for s in d["suites"]:
        s["base_model"] = {**(s.get("base_model") or {}), "label": "builtin:toy-xl", **({"family": family} if family else {})}
    return d


@pytest.fixture(scope="module")
def two_families(tmp_path_factory):
    """The committed results (no ATTESTATION.json: the copies are not attested) plus two SDXL runs:
    ``toy-fmn-object-xl`` (FMN's method with another result's numbers, ``family: sdxl`` recorded)
    and ``toy-base-xl`` (the base, family only inferred from the label); the built site."""
    tmp = tmp_path_factory.mktemp("families")
    res = tmp / "results"
    shutil.copytree(COMMITTED, res)
    (res / "ATTESTATION.json").unlink(missing_ok=True)
    for real_xl in res.glob("toy-xl-*.json"):  # the committed toy-xl runs: this board's SDXL rows are the two relabelled copies
        real_xl.unlink()
    fmn = json.loads((res / XL_METHOD_FROM).read_text())
    xl = as_xl(json.loads((res / XL_DATA_FROM).read_text()), "toy-fmn-object-xl", "sdxl")
    xl["submission"]["method"] = fmn["submission"]["method"]
    write(res, "toy-fmn-object-xl.json", xl)
    write(res, "toy-base-xl.json", as_xl(json.loads((res / XL_BASE_FROM).read_text()), "toy-base-xl", None))
    out = tmp / "site"
    counts, lines = build(res, out)
    return res, out, counts, lines


XL_NAMES = {"toy-fmn-object-xl", "toy-base-xl"}


def _row(index: str, suite: str, name: str, kind: str) -> str:
    sec = index[index.index(f'id="suite-{suite}"'):]
    sec = sec[:sec.index("</section>")]
    return re.search(rf'<tr data-kind="{kind}" data-submission="{re.escape(name)}">(.*?)</tr>', sec, re.S).group(1)


@needs_committed
def test_every_row_and_download_names_its_family(two_families):
    res, out, counts, lines = two_families
    assert lines == [] and counts["files"] == len(SD1_COMMITTED) + 2
    index = (out / "index.html").read_text()
    sec = index[index.index('id="suite-toy-canvas"'):]
    assert re.search(r'<th scope="col" rowspan="2"[^>]*><button type="button">Family<', sec[:sec.index("</thead>")])
    for name, kind, title in (("toy-fmn-object-xl", "object", "SDXL"), ("toy-fmn-object", "object", "SD 1.x"), ("toy-esd-style", "style", "SD 1.x")):
        assert f'<span class="family" data-family="{"sdxl" if title == "SDXL" else "sd1"}">{title}</span>' in _row(index, "toy-canvas", name, kind)
    overview = index[index.index('id="overview"'):index.index("</section>", index.index('id="overview"'))]
    assert overview.count('data-family="sdxl"') == 2 and overview.count('data-family="sd1"') == counts["files"] - 2
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert {r["submission"] for r in rows if r["family"] == "sdxl"} == XL_NAMES
    assert {r["family"] for r in rows if r["submission"] not in XL_NAMES} == {"sd1"}  # committed results record no family: SD-1.x
    recs = json.loads((out / "results.json").read_text())["records"]
    assert {(r["submission"], r["family"]) for r in recs} == {(r["submission"], r["family"]) for r in rows}


@needs_committed
def test_ranks_and_ties_are_within_a_family(two_families):
    res, out, _, _ = two_families
    df, latest = lb.records_frame(lb.load_runs(res))
    table = next(t for t in lb.suite_tables(df, latest) if t["id"] == "toy-canvas")
    key = table["headline"]["key"]
    value = {(r["submission"], r["target"]): float(r["value"]) for r in df[df["latest"] & (df["suite"] == "toy-canvas") & (df["metric"] == key)].to_dict("records")}
    fam = {r["submission"]: r["family"] for r in table["rows"]}
    assert set(fam.values()) == {"sd1", "sdxl"}
    for r in table["rows"]:
        same = [v for (n, t), v in value.items() if t == r["target"] and fam[n] == r["family"]]
        point = 1 + sum(v > value[(r["submission"], r["target"])] for v in same)  # higher is better (UA)
        assert r["rank"]["text"].startswith(f"{point} ["), (r["submission"], r["rank"])
        high = int(re.search(r"\[(?:\d+–)?(\d+)\]", r["rank"]["text"]).group(1))
        assert high <= len(same)  # never below a row of another family
        tied = re.search(r"tied with (.*)$", r["rank"]["title"])
        assert not tied or all(fam[n] == r["family"] for n in tied.group(1).split(", "))
    # the SDXL run is ranked first among SDXL rows while it would not be among all rows
    rank = {(r["submission"], r["target"]): r["rank"]["text"] for r in table["rows"]}
    assert rank[("toy-fmn-object-xl", "triangle")].startswith("1 [")
    assert any(rank[(n, "triangle")].startswith("1 [") for n in fam if fam[n] == "sd1" and (n, "triangle") in rank)
    assert value[("toy-fmn-object-xl", "triangle")] < max(v for (n, t), v in value.items() if t == "triangle" and fam[n] == "sd1")
    index = (out / "index.html").read_text()
    assert re.search(r'<td class="num rank"[^>]*>1 \[', _row(index, "toy-canvas", "toy-fmn-object-xl", "object"))


@needs_committed
def test_the_base_reference_row_is_shown_per_family(two_families):
    _, out, _, _ = two_families
    index = (out / "index.html").read_text()
    sec = index[index.index('id="suite-toy-canvas"'):]
    ref = sec[sec.index('<tbody class="reference">'):sec.index("</tbody>")]
    rows = re.findall(r'<tr class="base-row" data-kind="(\w+)">.*?reference</span> ([^<]*)</th>\s*<td><span class="target">(\w+) .*?data-family="(\w+)"', ref, re.S)
    assert sorted((fam, target) for _, _, target, fam in rows) == [("sd1", "striped"), ("sd1", "triangle"), ("sdxl", "striped"), ("sdxl", "triangle")]
    assert {label for _, label, _, fam in rows if fam == "sdxl"} == {"base model (SDXL)"}


@needs_committed
def test_a_method_on_two_families_is_read_side_by_side(two_families):
    res, out, _, _ = two_families
    page = page_of(out, "toy-fmn-object")
    sec = page[page.index('<section id="families">'):]
    sec = sec[:sec.index("</section>")]
    rows = re.findall(r'<tr data-kind="\w+" data-family="(\w+)" data-submission="([^"]+)"[^>]*>(.*?)</tr>', sec, re.S)
    got = {(fam, name) for fam, name, _ in rows}
    assert {("sd1", "toy-fmn-object"), ("sdxl", "toy-fmn-object-xl")} <= got
    assert {name for _, name in got} == {"toy-fmn-object", "toy-fmn-object-xl", "toy-fmn-style"}  # every run of the method, nothing else
    heads = re.findall(r'aria-label="([^"]+)"', sec[:sec.index("</thead>")])
    for fam, name, cells in rows:  # the same metrics as columns: each row's cells are its own file's values
        data = json.loads((res / ("toy-fmn-object-xl.json" if name.endswith("-xl") else f"{name}.json")).read_text())
        vals = re.findall(r'<td class="num value" data-sort="([^"]*)"', cells)
        assert len(vals) == len(heads)
        by_col = dict(zip(heads, vals))
        for m in data["metrics"]:
            if isinstance(m["value"], (int, float)):
                assert float(by_col[f'{m["suite"]} {m["label"]}']) == pytest.approx(m["value"]), (name, m["metric"])
    ua = lambda n: next(float(v) for f, nm, c in rows if nm == n for v in re.findall(r'data-sort="([0-9.e-]+)"', c)[:1])
    assert ua("toy-fmn-object") != ua("toy-fmn-object-xl")  # two different runs, not one row twice
    assert 'id="families"' in page_of(out, "toy-fmn-object-xl")
    assert 'id="families"' not in page_of(out, "toy-esd-object")  # ESD: one family only
    assert '<dt>Model family</dt><dd><span class="family" data-family="sdxl">SDXL</span></dd>' in page_of(out, "toy-fmn-object-xl")


def test_a_family_name_with_html_is_escaped_and_ranked_apart(tmp_path):
    res = tmp_path / "results"
    odd = result("toy-odd")
    for s in odd["suites"]:
        s["base_model"] = {"label": "local:/models/odd", "suite_base": False, "family": XSS}
    write(res, "odd.json", odd)
    write(res, "uce.json", result("toy-uce", ua=0.9))
    counts, lines = build(res, tmp_path / "site")
    assert lines == [] and counts["files"] == 2
    index, page = (tmp_path / "site" / "index.html").read_text(), page_of(tmp_path / "site", "toy-odd")
    for html in (index, page):
        assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert family_title(XSS) == XSS  # an unknown family is shown as its name
    assert re.search(r'<td class="num rank"[^>]*>1 \[1\]', _row(index, "toy-canvas", "toy-odd", "style"))  # alone in its family
    assert re.search(r'<td class="num rank"[^>]*>1 \[1\]', _row(index, "toy-canvas", "toy-uce", "style"))  # UA 0.9 < 1.0, another family
    rows = list(csv.DictReader(io.StringIO((tmp_path / "site" / "results.csv").read_text())))
    assert {r["family"] for r in rows if r["submission"] == "toy-odd"} == {XSS}


@pytest.mark.parametrize("family", [3, "", "sd\nxl", "x" * 65, ["sdxl"]])
def test_a_family_that_is_not_a_name_is_one_line_and_the_file_skipped(tmp_path, family):
    res = tmp_path / "results"
    bad = result("toy-bad")
    bad["suites"][1]["base_model"] = {"label": "builtin:toy", "family": family}
    write(res, "bad.json", bad)
    write(res, "good.json", result("toy-good"))
    counts, lines = build(res, tmp_path / "site")
    assert counts["files"] == 1
    assert len(lines) == 1 and lines[0].startswith(f"skipped {res / 'bad.json'}: suites.1.base_model.family: ") and "\n" not in lines[0]


@pytest.mark.parametrize("label, family", [
    ("builtin:toy", "sd1"), ("builtin:toy-xl", "sdxl"),
    ("hub:stabilityai/stable-diffusion-xl-base-1.0@0123abcd", "sdxl"), ("hub:someone/SDXL-Turbo@0123abcd", "sdxl"),
    ("hub:CompVis/stable-diffusion-v1-4@0123abcd", "sd1"), ("local:/models/sdxl-base", "sd1"), (None, "sd1"), ("builtin:other", "sd1"),
])
def test_the_family_is_inferred_from_the_label(label, family):
    assert family_from_label(label) == family
    assert suite_family({"id": "s", "base_model": {"label": label}}, {"submission": {}}) == family


def test_a_recorded_family_wins_and_files_without_one_are_sd1():
    data = result("toy-x")  # suites without base_model, the submission's base builtin:toy: an older file
    assert run_family(data) == "sd1" and suite_family(data["suites"][0], data) == "sd1"
    data["submission"]["base_model"] = {"builtin": "toy-xl"}  # no suite record: the submission's base says
    assert run_family(data) == "sdxl"
    assert suite_family({"base_model": {"label": "builtin:toy", "family": "sdxl"}}, data) == "sdxl"
    assert suite_family({"base_model": {"label": "builtin:toy-xl", "family": "sd1"}}, data) == "sd1"
    assert suite_family({"base_model": {"label": "builtin:toy-xl", "family": None}}, data) == "sdxl"
    assert (family_title("sd1"), family_title("sdxl")) == ("SD 1.x", "SDXL")


# ----------------------------------------------------------------------------- "n/a": a method that does not run on a family

CA_WHY = "its authors' code runs Stable Diffusion 1.x only"
ESD_XL = "toy-esd-object-xl"


def _families_section(page: str) -> str | None:
    if '<section id="families">' not in page:
        return None
    sec = page[page.index('<section id="families">'):]
    return sec[:sec.index("</section>")]


def _na_rows(sec: str) -> list[tuple[str, str]]:
    """(family, the n/a cell's text as a reader sees it) of each n/a row of an "Across model families" section."""
    body = sec[sec.index('<tbody class="na">'):] if '<tbody class="na">' in sec else ""
    return [(fam, unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", cell)).strip()))
            for fam, cell in re.findall(r'<tr class="na-row" data-family="([^"]+)">.*?<td class="na"[^>]*>(.*?)</td>', body, re.S)]


@pytest.fixture(scope="module")
def ca_beside_xl(tmp_path_factory):
    """The committed results (CA on SD 1.x only) plus ESD's object run relabelled as SDXL; the
    site built with a mapping (CA: not on SDXL nor on a family absent from the board; ESD: not on
    SDXL, where it has a result) and without one."""
    tmp = tmp_path_factory.mktemp("na")
    res = tmp / "results"
    shutil.copytree(COMMITTED, res)
    (res / "ATTESTATION.json").unlink(missing_ok=True)
    for real_xl in res.glob("toy-xl-*.json"):  # the committed toy-xl runs: this board's SDXL rows are the two relabelled copies
        real_xl.unlink()
    write(res, f"{ESD_XL}.json", as_xl(json.loads((res / "toy-esd-object.json").read_text()), ESD_XL, "sdxl"))
    unsupported = {"ca": {"sdxl": CA_WHY, "sd3": "not on this board"}, "esd": {"sdxl": "never shown: ESD has an SDXL result"},
                   "CA": {"sdxl": "a display name is no registry name"}}
    lines: list[str] = []
    lb.build(res, tmp / "with", report=lines.append, unsupported=unsupported)
    lb.build(res, tmp / "without", report=lines.append)
    return res, tmp / "with", tmp / "without", lines


@needs_committed
def test_a_method_that_does_not_run_on_a_family_of_the_board_shows_na_with_the_reason(ca_beside_xl):
    res, out, _, lines = ca_beside_xl
    assert lines == []
    for name in ("toy-ca-object", "toy-ca-style"):  # CA has SD-1.x results only: the section is there for the n/a row
        sec = _families_section(page_of(out, name))
        assert sec is not None, name
        assert _na_rows(sec) == [("sdxl", f"n/a {CA_WHY}")]  # SDXL only: sd3 is no family of the board
        rows = re.findall(r'<tr data-kind="\w+" data-family="(\w+)" data-submission="([^"]+)"', sec)
        assert {(f, n) for f, n in rows} == {("sd1", "toy-ca-object"), ("sd1", "toy-ca-style")}  # its own runs, as before
        assert '<span class="family" data-family="sdxl">SDXL</span>' in sec[sec.index('<tbody class="na">'):]
        assert "a display name is no registry name" not in sec
    sec = _families_section(page_of(out, "toy-esd-object"))  # ESD has an SDXL result: its row, never n/a
    assert sec is not None and _na_rows(sec) == [] and f'data-submission="{ESD_XL}"' in sec and "never shown" not in sec
    for name in ("toy-uce-object", "toy-base"):  # not in the mapping / no method record: nothing
        assert _families_section(page_of(out, name)) is None


@needs_committed
def test_without_the_mapping_nothing_is_shown_and_the_suite_tables_never_change(ca_beside_xl):
    _, out, without, _ = ca_beside_xl
    for name in ("toy-ca-object", "toy-ca-style", "toy-fmn-object", "toy-uce-object"):
        assert _families_section(page_of(without, name)) is None, name
        assert "n/a" not in page_of(without, name)
    assert _families_section(page_of(without, "toy-esd-object")) is not None  # two families of its own: as before
    assert (out / "index.html").read_text() == (without / "index.html").read_text()
    assert (out / "results.csv").read_text() == (without / "results.csv").read_text()
    assert page_of(out, "toy-uce-object") == page_of(without, "toy-uce-object")


def test_a_reason_with_html_is_escaped(tmp_path):
    res = tmp_path / "results"
    ca = result("toy-ca")
    ca["submission"]["method_record"] = "submissions/checkpoints/ca-object-triangle/method.json"  # {"method": "ca", ...} in the checkout
    ca["submission"]["method"]["name"] = "CA (kv)"
    write(res, "ca.json", ca)
    write(res, "xl.json", as_xl(result("toy-uce-xl", ua=0.9), "toy-uce-xl", "sdxl"))
    out = tmp_path / "site"
    lb.build(res, out, report=lambda m: None, unsupported={"ca": {"sdxl": XSS}, "uce": {"sd1": "matched by its display name"}})
    sec = _families_section(page_of(out, "toy-ca"))
    assert sec is not None and "<script>alert" not in page_of(out, "toy-ca")
    assert '<span class="na-why">&lt;script&gt;alert(1)&lt;/script&gt;</span>' in sec and _na_rows(sec) == [("sdxl", f"n/a {XSS}")]
    assert _families_section(page_of(out, "toy-uce-xl")) is None  # method name "uce" but no method record: no match


@pytest.mark.parametrize("record, key", [
    ({"method": "ca"}, "ca"), ({"method": 3}, None), ({"nomethod": "ca"}, None), (["ca"], None), ("{not json", None), (None, None),
])
def test_the_registry_method_is_the_method_records_key(tmp_path, record, key):
    if record is not None:
        write(tmp_path, "ck/method.json", record)
    data = {"submission": {"method": {"name": "CA"}, "method_record": "ck/method.json"}}
    assert method_key(data, tmp_path) == key
    assert method_key({"submission": {"method": {"name": "ca"}}}, tmp_path) is None  # no method record: no match
    write(tmp_path.parent, "outside.json", {"method": "ca"})
    for rel in ("../outside.json", str(tmp_path.parent / "outside.json"), 7):
        assert method_key({"submission": {"method_record": rel}}, tmp_path) is None


# ----------------------------------------------------------------------------- the CLI hands the site the method registry's families

def test_the_cli_mapping_is_the_method_registrys(monkeypatch):
    from harness import families
    from harness.cli.main import method_family_limits
    from harness.methods import REGISTRY, MethodInfo

    want = {}
    for name in REGISTRY.names():  # every method's real MethodInfo (its module imported)
        info = REGISTRY.get(name)
        if info.families is not None and (gone := [f for f in families.names() if f not in info.families]):
            want[name] = {f: info.families_why for f in gone}
    assert method_family_limits() == want
    assert want["ca"] == {"sdxl": CA_WHY} and "esd" not in want and "uce" not in want
    # a method the source reader cannot read (registered in code) is read from its MethodInfo; no reason given: the families it runs on
    for name, why in (("in-code", XSS), ("in-code-2", "")):
        info = MethodInfo(name=name, module="harness.methods.uce", paper="p", code="c", families=frozenset({"sdxl"}), families_why=why)
        monkeypatch.setitem(REGISTRY._own, name, info)
        monkeypatch.setitem(REGISTRY._loaded, name, info)
    got = method_family_limits()
    assert got["in-code"] == {"sd1": XSS} and got["in-code-2"] == {"sd1": "in-code-2 runs on sdxl only"}


@needs_committed
def test_the_cli_build_shows_the_registrys_reason(tmp_path):
    from harness.cli import main as cli
    from harness.methods import REGISTRY

    res = tmp_path / "results"
    shutil.copytree(COMMITTED, res)
    (res / "ATTESTATION.json").unlink(missing_ok=True)
    for real_xl in res.glob("toy-xl-*.json"):  # the committed toy-xl runs: this board's SDXL rows are the two relabelled copies
        real_xl.unlink()
    write(res, f"{ESD_XL}.json", as_xl(json.loads((res / "toy-esd-object.json").read_text()), ESD_XL, "sdxl"))
    assert cli.main(["leaderboard", "build", "--results", str(res), "--out", str(tmp_path / "site")]) == 0
    ca = REGISTRY.get("ca")
    assert "sdxl" not in ca.families and ca.families_why
    sec = _families_section(page_of(tmp_path / "site", "toy-ca-object"))
    assert sec is not None and _na_rows(sec) == [("sdxl", f"n/a {ca.families_why}")]
    assert _families_section(page_of(tmp_path / "site", "toy-uce-object")) is None  # UCE runs on every family
