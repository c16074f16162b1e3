"""The trust boundary, second pass (docs/security.md): what readers of results files believe.
One table per class, as tests/test_security.py does: names, attestation, what a file says about
itself, and readers that one bad file must not stop. Each row is a hostile input; the assertion
is the refusal (one line naming the file and the field, exit 2) or the stated handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import assert_one_line
from test_leaderboard import _with_intervals
from test_leaderboard import result as site_doc
from test_security import GOOD, _pr, cli, doc, git, pr_repo, rec, site, write_json  # noqa: F401 (pr_repo is a fixture)

from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parents[1]
KEY = "UNLEARN_ATTEST_KEY"


# ============================================================================ 2. names
SAME = [  # names a reader cannot tell apart: one name under the rule
    ("toy-uce-style", "Toy_UCE_Style"), ("toy-uce-style", "TOY UCE STYLE"), ("toy-uce-style", "toy-uce-styIe"),
    ("toy-uce-style", "toy-uce-sty1e"), ("toy-object", "toy-0bject"), ("toy-rn", "toy-m"), ("toy-vv", "toy-w"),
    ("toy-uce-style", "toy-uсe-style"), ("toy-uce-style", "ｔｏｙ-uce-style"), ("toy-uce-style", "toy-ucé-style"),
    ("toy-uce-style", "toy-uce-stylе"),
]
DIFFERENT = [("toy-uce-style", "toy-uce-object"), ("toy-esd-style", "toy-fmn-style"), ("toy-ca-style", "toy-ca-object")]


@pytest.mark.parametrize("a, b", SAME + DIFFERENT, ids=[f"{a}|{b}" for a, b in SAME + DIFFERENT])
def test_one_name_rule_folds_case_punctuation_and_look_alikes(a, b):
    from harness.results.attest import name_clash, name_key

    assert (name_key(a) == name_key(b)) == ((a, b) in SAME)
    assert (name_clash(b, [a]) == a) == ((a, b) in SAME)


def test_the_existing_entries_are_distinct_under_the_rule():
    from harness.results.attest import existing_names, name_key

    names = existing_names(ROOT)
    assert len(names) >= 10 and len({name_key(n) for n in names}) == len(names)


NEWCOMERS = ["Toy_UCE_Style", "TOY-UCE-STYLE", "toy-uce-styIe", "toy-uce-sty1e", "toy.uce.style"]


@pytest.mark.parametrize("name", NEWCOMERS)
def test_the_site_keeps_the_existing_entry_and_skips_a_look_alike(tmp_path, name):
    newer = site_doc(name, ua=1.0, finished="2099-01-01T00:00:00+00:00")
    counts, lines, _ = site(tmp_path, {"real.json": site_doc("toy-uce-style", ua=0.5), "other.json": site_doc("toy-esd-style"), "new.json": newer})
    assert counts["submissions"] == 2, (counts, lines)  # never both dropped
    assert len(lines) == 1 and "new.json" in lines[0] and "collides with the existing entry 'toy-uce-style'" in lines[0], lines
    html = (tmp_path / "site" / "index.html").read_text()
    assert "toy-uce-style" in html and name not in html


def test_between_two_unknown_names_the_older_entry_stays(tmp_path):
    old, new = site_doc("mine-entry", finished="2026-01-01T00:00:00+00:00"), site_doc("Mine_Entry", finished="2026-02-01T00:00:00+00:00")
    counts, lines, _ = site(tmp_path, {"a.json": new, "b.json": old})
    assert counts["submissions"] == 1 and len(lines) == 1 and "a.json" in lines[0] and "'mine-entry'" in lines[0]


def _write(r: Path, rel: str, text: str):
    p = r / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _set_with_member(name, listed="submissions/checkpoints/mine/member.yaml"):
    def f(r):
        _write(r, "submissions/checkpoints/mine/member.yaml", f"name: {name}\n")
        _write(r, "submissions/mine-set.yaml", f"submissions: [{listed}]\n")
    return f


PR_NAMES = [  # (id, change, needle): each refused in one line
    ("case-and-punctuation", lambda r: _write(r, "submissions/toy-y.yaml", "name: Toy_X\n"), "name: 'Toy_X' reads as 'toy-x'"),
    ("ascii-look-alike-zero", lambda r: _write(r, "submissions/toy-y.yaml", "name: t0y-x\n"), "reads as 'toy-x'"),
    ("ascii-look-alike-capital-i", lambda r: _write(r, "submissions/toy-y.yaml", "name: toy-x\n".replace("toy", "tIoy")), None),
    ("nested-set-member-same-name", _set_with_member("toy-x"), "submissions/checkpoints/mine/member.yaml: name: 'toy-x' is also the name of"),
    ("nested-set-member-look-alike", _set_with_member("TOY.X"), "submissions/checkpoints/mine/member.yaml: name: 'TOY.X' reads as"),
    ("nested-set-member-dotted-path", _set_with_member("toy-x", "./submissions/checkpoints/../checkpoints/mine/member.yaml"), "member.yaml: name: 'toy-x' is also"),
    ("case-only-path", lambda r: _write(r, "submissions/TOY-X.yaml", "name: toy-other\n"), "submissions/TOY-X.yaml: differs from submissions/toy-x.yaml only in case"),
    ("case-only-folder", lambda r: _write(r, "submissions/Checkpoints/mine/unet.safetensors", "w"), "submissions/Checkpoints: differs from submissions/checkpoints only in case"),
    ("deletes-an-entry", lambda r: (r / "submissions" / "toy-x.yaml").unlink(), "removes the entry 'toy-x'"),
    ("renames-an-entry-away", lambda r: _write(r, "submissions/toy-x.yaml", "name: toy-q\n"), "removes the entry 'toy-x'"),
]


@pytest.mark.parametrize("name, change, needle", [p for p in PR_NAMES if p[2]], ids=[p[0] for p in PR_NAMES if p[2]])
def test_pr_check_applies_the_name_rule(pr_repo, name, change, needle):
    r, base = pr_repo
    head = _pr(r, change)
    rc, _, err = cli("pr-check", "--root", str(r), "--base", base, "--head", head)
    assert_one_line(rc, err, needle)


def test_pr_check_compares_with_entries_the_base_gained_since_and_passes_a_new_name(pr_repo):
    r, base = pr_repo
    head = _pr(r, lambda r: _write(r, "submissions/toy-new.yaml", "name: Toy_Q\n"))
    git(r, "checkout", "-q", "main")
    _write(r, "submissions/toy-q.yaml", "name: toy-q\n")  # merged after the PR branched
    git(r, "add", "-A")
    git(r, "commit", "-qm", "another entry")
    rc, _, err = cli("pr-check", "--root", str(r), "--base", git(r, "rev-parse", "HEAD"), "--head", head)
    assert_one_line(rc, err, "submissions/toy-new.yaml: name: 'Toy_Q' reads as 'toy-q'")
    head = _pr(r, lambda r: _write(r, "submissions/toy-new.yaml", "name: toy-new\n"))
    rc, out, err = cli("pr-check", "--root", str(r), "--base", git(r, "rev-parse", "main"), "--head", head)
    assert (rc, out.split()) == (0, ["submissions/toy-new.yaml"]), err
    head = _pr(r, _set_with_member("toy-member"))  # a set member is an entry: evaluated
    rc, out, err = cli("pr-check", "--root", str(r), "--base", git(r, "rev-parse", "main"), "--head", head)
    assert rc == 0 and "submissions/checkpoints/mine/member.yaml" in out.split(), err  # (toy-x too: its checkpoint folder changed)


def test_refresh_refuses_a_look_alike_of_an_existing_entry(tmp_path):
    from harness.gate.refresh import refuse_lookalikes

    out = tmp_path / "out"
    out.mkdir()
    (out / "toy-uce-style.json").write_text(json.dumps(site_doc("toy-uce-style")))
    refuse_lookalikes({"a.yaml": "toy-uce-style", "b.yaml": "toy-esd-style"}, out)  # the same entry again: fine
    for names, needle in [({"a.yaml": "Toy_UCE_Style"}, "reads as the existing entry 'toy-uce-style'"),
                          ({"a.yaml": "x-y", "b.yaml": "X_Y"}, "b.yaml: name: 'X_Y' reads as 'x-y'")]:
        with pytest.raises(HarnessError, match=needle):
            refuse_lookalikes(names, out)


def test_the_summary_flags_a_look_alike_name(tmp_path):
    from harness.gate.summary import markdown

    text = markdown(site_doc("Toy_UCE_Style"), "x.json", existing={"toy-uce-style"})
    assert "Refused name" in text and "toy-uce-style" in text
    assert "Refused name" not in markdown(site_doc("toy-new"), "x.json", existing={"toy-uce-style"})


# ============================================================================ 3. attestation
def _folder(tmp_path, monkeypatch, key="k3y", files=None):
    from harness.results.attest import write_manifest

    if key is None:
        monkeypatch.delenv(KEY, raising=False)
    else:
        monkeypatch.setenv(KEY, key)
    res = tmp_path / "results"
    res.mkdir(exist_ok=True)
    for n, d in (files or {"real.json": site_doc("toy-uce-style")}).items():
        (res / n).write_text(json.dumps(d))
    write_manifest(res, "test")
    return res


def _build(res: Path, out: Path, require=True):
    from harness import site as lb

    lines: list[str] = []
    try:
        return lb.build(res, out, report=lines.append, require_attestation=require), lines
    except HarnessError as e:
        return {"error": str(e)}, lines


KEYS = [("unset", None, "not set"), ("empty", "", "set but empty"), ("blank", "  ", "set but empty")]


@pytest.mark.parametrize("name, value, needle", KEYS, ids=[k[0] for k in KEYS])
def test_a_required_attestation_without_a_key_is_an_error(tmp_path, monkeypatch, name, value, needle):
    res = _folder(tmp_path, monkeypatch)
    if value is None:
        monkeypatch.delenv(KEY)
    else:
        monkeypatch.setenv(KEY, value)
    counts, _ = _build(res, tmp_path / "site")
    assert needle in counts.get("error", ""), counts
    rc, _, err = cli("leaderboard", "build", "--results", str(res), "--out", str(tmp_path / "site2"), "--require-attestation")
    assert_one_line(rc, err, KEY, needle)


def test_an_unsigned_or_old_format_manifest_is_refused_where_required(tmp_path, monkeypatch):
    res = _folder(tmp_path, monkeypatch, key=None)  # made without the key: no HMAC
    monkeypatch.setenv(KEY, "k3y")
    assert "hmac_sha256: does not verify" in _build(res, tmp_path / "s")[0]["error"]
    from harness.store.hashing import sha256_file

    (res / "ATTESTATION.json").write_text(json.dumps({"format": "unlearn-attestation/1", "made_by": "x", "files": {"real.json": sha256_file(res / "real.json")}}))
    assert "unlearn-attestation/1 signs file names and sha256 only" in _build(res, tmp_path / "s")[0]["error"]


FORGERIES = [  # what a forger without the key does to a signed folder
    ("forged-file-listed-with-its-sha256", "files", lambda m, res: m["files"].update({"forged.json": {"sha256": _sha(res / "forged.json"), "commit": None, "run": m["run"]}})),
    ("entry-commit-rewritten", "files", lambda m, res: m["files"]["real.json"].update(commit="f" * 40)),
    ("sequence-raised", "sequence", lambda m, res: m.update(sequence=99)),
    ("run-rewritten", "run", lambda m, res: m.update(run="github:1-1")),
]


def _sha(p):
    from harness.store.hashing import sha256_file

    return sha256_file(p)


@pytest.mark.parametrize("name, field, edit", FORGERIES, ids=[f[0] for f in FORGERIES])
def test_the_hmac_covers_files_commits_runs_and_sequence(tmp_path, monkeypatch, name, field, edit):
    res = _folder(tmp_path, monkeypatch)
    assert _build(res, tmp_path / "ok")[0]["files"] == 1
    (res / "forged.json").write_text(json.dumps(site_doc("toy-esd-style")))
    m = json.loads((res / "ATTESTATION.json").read_text())
    edit(m, res)
    (res / "ATTESTATION.json").write_text(json.dumps(m))
    assert "hmac_sha256: does not verify" in _build(res, tmp_path / "s")[0]["error"]


def test_a_non_ascii_or_undecodable_key_signs_and_verifies(tmp_path, monkeypatch):
    res = _folder(tmp_path, monkeypatch, key="ключ-🔑")
    assert _build(res, tmp_path / "a")[0]["files"] == 1
    monkeypatch.setenv(KEY, "\udcff\udcfe")  # bytes that are not UTF-8 (os.environ's surrogate escapes)
    from harness.results.attest import write_manifest

    write_manifest(res, "test")
    assert _build(res, tmp_path / "b")[0]["files"] == 1
    monkeypatch.setenv(KEY, "\udcff")
    assert "does not verify" in _build(res, tmp_path / "c")[0]["error"]


def test_an_entry_is_bound_to_the_commit_that_made_the_file(tmp_path, monkeypatch):
    from harness.results.attest import bound_problem, read_manifest

    res = _folder(tmp_path, monkeypatch)
    m = read_manifest(res)
    assert m["real.json"]["commit"] == "e" * 40 and m["real.json"]["run"].startswith("local:")
    data = site_doc("toy-uce-style")
    assert bound_problem(res / "real.json", data, m) is None
    data["harness"]["git_sha"] = "a" * 40
    assert "is not the commit" in bound_problem(res / "real.json", data, m)


def test_refresh_attests_only_the_files_its_run_wrote(tmp_path, monkeypatch):
    from harness.results.attest import read_manifest, write_manifest

    res = _folder(tmp_path, monkeypatch, files={"old.json": site_doc("toy-esd-style")})
    first = read_manifest(res)["old.json"]
    (res / "mine.json").write_text(json.dumps(site_doc("toy-uce-style")))
    (res / "planted.json").write_text(json.dumps(site_doc("toy-fmn-style")))
    lines: list[str] = []
    write_manifest(res, "unlearn leaderboard refresh", only=[res / "mine.json"], report=lines.append)
    m = read_manifest(res)
    assert sorted(m) == ["mine.json", "old.json"] and m["old.json"] == first  # carried over as it was attested
    assert any("planted.json: not attested" in x for x in lines)
    counts, lines = _build(res, tmp_path / "s")
    assert counts["files"] == 2 and any("planted.json: not listed" in x for x in lines)
    assert json.loads((res / "ATTESTATION.json").read_text())["sequence"] == 2


def test_an_older_attested_folder_put_back_is_refused(tmp_path, monkeypatch):
    """A replay: the manifest and file of an earlier refresh committed again over a newer one."""
    from harness.results.attest import write_manifest

    repo = tmp_path / "repo"
    res = repo / "results"
    res.mkdir(parents=True)
    monkeypatch.setenv(KEY, "k3y")
    git(repo, "init", "-q", "-b", "main")
    (res / "toy-uce-style.json").write_text(json.dumps(site_doc("toy-uce-style", ua=1.0)))
    write_manifest(res, "refresh 1")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first results")
    old = {p.name: p.read_bytes() for p in res.iterdir()}
    (res / "toy-uce-style.json").write_text(json.dumps(site_doc("toy-uce-style", ua=0.5, finished="2026-06-01T00:00:00+00:00")))
    write_manifest(res, "refresh 2", only=[res / "toy-uce-style.json"])
    git(repo, "commit", "-qam", "newer results")
    assert _build(res, tmp_path / "ok")[0]["files"] == 1
    for n, b in old.items():
        (res / n).write_bytes(b)
    git(repo, "commit", "-qam", "put the old ones back")
    counts, _ = _build(res, tmp_path / "s")
    assert "sequence: 1 is not above the 2" in counts["error"], counts


def test_the_pages_workflow_passes_the_key_as_a_secret_and_requires_attestation():
    import yaml

    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "pages.yml").read_text())
    steps = wf["jobs"]["build"]["steps"]
    build = next(s for s in steps if "leaderboard build" in str(s.get("run")))
    assert "--require-attestation" in build["run"]
    assert build["env"][KEY] == "${{ secrets.UNLEARN_ATTEST_KEY }}"
    checkout = next(s for s in steps if str(s.get("uses", "")).startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # the manifest's history: a replay is seen


# ============================================================================ 4. what a file says about itself
def _scored(name="forged", correct=None):
    return _with_intervals(site_doc(name), correct or [1] * 34 + [0] * 6)  # UA 0.85: inconclusive against >= 0.8


def _ua(d):
    return d["metrics"][0]


def _tamper(edit):
    def make():
        d = _scored()
        edit(d)
        return d
    return make


def _summary(d):
    verdicts = [m["verdict"] for m in d["metrics"]]
    d["summary"] = {v: verdicts.count(v) for v in ("pass", "fail", "inconclusive", "error", "info")}


def _narrow(d):
    _ua(d)["margin_ci"].update(low=0.01, high=0.09)
    _ua(d)["verdict"] = "pass"
    _summary(d)


def _ua_zero_passes(d):
    _ua(d).update(value=0.0, verdict="pass", verdict_point="fail", margin_ci={"low": 0.1, "high": 0.2}, ci={"low": 0.0, "high": 0.1}, delta_ci=None)
    _ua(d)["scores"]["unlearned"] = [0] * len(_ua(d)["scores"]["keys"])
    _summary(d)


def _absurd_scores(d):
    s = _ua(d)["scores"]
    s["binary"] = False
    s["unlearned"] = [17.0 if i % 2 else -15.3 for i in range(len(s["keys"]))]  # averages to 0.85
    _ua(d)["scores"] = s


ITSELF = [  # (id, forged file, needle in the skip line)
    ("ua-0-pass-by-margin-ci", _tamper(_ua_zero_passes), "metrics.0.margin_ci: [0.1, 0.2] does not hold value - bound = -0.8"),
    ("margin-ci-narrowed-to-pass", _tamper(_narrow), "metrics.0.margin_ci"),
    ("margin-ci-dropped-scores-kept", _tamper(lambda d: (_ua(d).update(margin_ci=None, verdict="pass"), _summary(d))), "metrics.0.margin_ci: not finite, but its per-item scores give"),
    ("margin-ci-made-nan", _tamper(lambda d: (_ua(d)["margin_ci"].update(low=math.nan, high=math.nan), _ua(d).update(verdict="pass"), _summary(d))), "not finite, but"),
    ("interval-without-its-scores", _tamper(lambda d: (_ua(d).update(scores=None), _narrow(d))), "metrics.0.scores: missing"),
    ("scores-out-of-range", _tamper(_absurd_scores), "metrics.0.scores.unlearned"),
    ("scores-not-the-value", _tamper(lambda d: _ua(d)["scores"]["unlearned"].__setitem__(0, 0)), "the scores give"),
    ("scores-proportion-not-0-1", _tamper(lambda d: _ua(d)["scores"]["unlearned"].__setitem__(0, 0.5)), "0 or 1"),
    ("scores-lengths-differ", _tamper(lambda d: _ua(d)["scores"]["keys"].pop()), "metrics.0.scores.unlearned"),
    ("scores-keys-not-a-list", _tamper(lambda d: _ua(d)["scores"].update(keys="p0:0")), "metrics.0.scores.keys"),
    ("scores-key-twice", _tamper(lambda d: _ua(d)["scores"]["keys"].__setitem__(1, _ua(d)["scores"]["keys"][0])), "listed twice"),
    ("scores-groups-not-text", _tamper(lambda d: _ua(d)["scores"].update(groups=[1] * 40)), "metrics.0.scores.groups"),
    ("ci-not-holding-value", _tamper(lambda d: _ua(d)["ci"].update(low=0.9, high=0.95)), "metrics.0.ci"),
    ("interval-upside-down", _tamper(lambda d: _ua(d)["delta_ci"].update(low=0.9, high=0.1)), "metrics.0.delta_ci"),
    ("value-out-of-range", lambda: site_doc("forged", ua=1.0) | {"metrics": [dict(site_doc("f")["metrics"][0], value=3.0), *site_doc("f")["metrics"][1:]]}, "outside the range of ua"),
    ("summary-disagrees", lambda: site_doc("forged") | {"summary": {"pass": 5, "fail": 0, "error": 0, "info": 1}}, "summary.pass"),
]


@pytest.mark.parametrize("name, make, needle", ITSELF, ids=[x[0] for x in ITSELF])
def test_a_file_is_not_believed_about_itself(tmp_path, name, make, needle):
    honest = _scored("toy-uce-style")
    assert _ua(honest)["verdict"] == "inconclusive"
    counts, lines, _ = site(tmp_path, {"real.json": honest, "other.json": site_doc("toy-esd-style"), "x.json": make()})
    assert counts.get("submissions") == 2, (counts, lines)
    assert len(lines) == 1 and "x.json" in lines[0] and needle in lines[0], lines
    rc, _, err = cli("summary", str(tmp_path / "results" / "x.json"))
    assert_one_line(rc, err, "x.json", needle)


def test_the_summary_header_counts_the_records_not_the_file(tmp_path):
    d = site_doc("toy-uce-style")
    d.pop("summary")
    rc, out, _ = cli("summary", write_json(tmp_path / "x.json", d))
    assert rc == 0 and "4 pass, 0 fail, 0 inconclusive, 0 error, 1 info" in out


def _scored_rec(correct, **kw):
    from harness.stats import intervals as stats
    from harness.spec import Threshold

    s = stats.Scores(correct, [0] * len(correct), [f"p{i // 2}" for i in range(len(correct))], [i % 2 for i in range(len(correct))], binary=True)
    th = Threshold.parse(">= 0.8")
    r = rec("ua", float(np.mean(correct)), 0.0, scores=s.to_record(), **stats.intervals(s, th))
    v = stats.verdict(th, r["value"], 0.0, r["margin_ci"])
    r.update(verdict=v.verdict, verdict_point=v.point, **kw)
    return r


BASE_UA = [1] * 40
COMPARE = [  # (id, new run's metrics or document, needle): refused, one line, exit 2
    ("drops-scores-claims-a-wide-ci", lambda: doc([rec("ua", 0.0, ci={"low": -5.0, "high": 5.0}), GOOD[1]]), "metrics.0.scores"),
    ("absurd-scores-averaging-to-the-value", lambda: doc([_scored_rec([1] * 40) | {"scores": {**_scored_rec([1] * 40)["scores"], "binary": False,
                                                                                             "unlearned": [201.0, -199.0] * 20}}, GOOD[1]]), "outside the range of ua"),
    ("smoke-run-with-suites-emptied", lambda: {**doc([_scored_rec(BASE_UA), GOOD[1]]), "smoke": True, "suites": []}, "smoke"),
    ("suites-emptied", lambda: {**doc([_scored_rec(BASE_UA), GOOD[1]]), "suites": []}, "not in the new run's suites[]"),
]


@pytest.mark.parametrize("name, make, needle", COMPARE, ids=[c[0] for c in COMPARE])
def test_compare_refuses_a_run_that_hides_what_the_baseline_shows(tmp_path, name, make, needle):
    base = write_json(tmp_path / "old.json", doc([_scored_rec(BASE_UA), GOOD[1]]))
    rc, out, err = cli("compare", write_json(tmp_path / "new.json", make()), base)
    assert_one_line(rc, err, needle)
    rc, out, err = cli("compare", write_json(tmp_path / "same.json", doc([_scored_rec(BASE_UA), GOOD[1]])), base)
    assert rc == 0, (out, err)


# ============================================================================ 7. readers are total
def _deep(n):
    x: object = 1
    for _ in range(n):
        x = [x]
    return x


def _raw_ua(text):
    return lambda: json.dumps(site_doc("bad")).replace('"value": 1.0', f'"value": {text}', 1)


def _doc_edit(edit):
    def make():
        d = site_doc("bad")
        edit(d)
        return json.dumps(d)
    return make


TOTAL = [  # (id, file text, needle)
    ("integer-10^400", _raw_ua("1" + "0" * 400), "an integer of 401 digits"),
    ("integer-10^5000", _raw_ua("1" + "0" * 5000), "an integer of 5001 digits"),
    ("value-near-1e308", _doc_edit(lambda d: d["metrics"][3].update(value=1.7e308, base_value=1.6e308)), "beyond"),
    ("base-near-minus-1e308", _doc_edit(lambda d: d["metrics"][3].update(base_value=-1.7e308)), "beyond"),
    ("interval-near-1e308", _doc_edit(lambda d: d["metrics"][3].update(ci={"low": -1.7e308, "high": 1.7e308})), "metrics.3.ci"),
    ("500-deep-details", _doc_edit(lambda d: d["metrics"][0].update(details=_deep(500))), "nested more than"),
    ("500-deep-params", _doc_edit(lambda d: d["submission"]["method"].update(params={"p": _deep(500)})), "nested more than"),
    ("authors-numbers", _doc_edit(lambda d: d["submission"]["method"].update(authors=[1, {"a": 2}])), "submission.method.authors"),
    ("authors-a-number", _doc_edit(lambda d: d["submission"]["method"].update(authors=5)), "submission.method.authors"),
    ("base-model-a-list", _doc_edit(lambda d: d["submission"].update(base_model=[1, 2])), "submission.base_model"),
    ("license-a-list", _doc_edit(lambda d: d["submission"]["method"].update(license=["MIT"])), "submission.method.license"),
    ("efficiency-1e308", _doc_edit(lambda d: d["efficiency"].update(storage_bytes={"value": 1e308, "source": "measured"})), "efficiency.storage_bytes"),
]


@pytest.mark.parametrize("name, make, needle", TOTAL, ids=[t[0] for t in TOTAL])
def test_one_bad_results_file_is_skipped_and_every_reader_says_so_in_one_line(tmp_path, name, make, needle):
    counts, lines, res = site(tmp_path, {"real.json": site_doc("toy-uce-style"), "other.json": site_doc("toy-esd-style"), "x.json": make()})
    assert counts.get("submissions") == 2, (counts, lines)
    assert len(lines) == 1 and "skipped" in lines[0] and "x.json" in lines[0] and needle in lines[0], lines
    for args in (("compare", str(res / "x.json"), str(res / "real.json")), ("summary", str(res / "x.json"))):
        rc, _, err = cli(*args)
        assert_one_line(rc, err, "x.json", needle)


def test_the_site_groups_in_python_not_one_pandas_group_per_target(tmp_path, monkeypatch):
    """100,000 records in one file took minutes: a pandas group per (submission, target).
    The number of ``DataFrame.to_dict`` calls must not grow with the targets."""
    import pandas as pd

    from test_leaderboard import metric

    d = site_doc("toy-big")
    d["metrics"] = [metric("toy-canvas", m, m.upper(), f"t{i}", "style", 0.9, 1.0, ">= 0.8" if m == "ua" else ">= 0.8 * base")
                    for i in range(600) for m in ("ua", "ira", "cra")]
    d["submission"]["targets"] = [{"concept": f"t{i}", "kind": "style"} for i in range(600)]
    d.pop("summary")
    from pandas.core.groupby.generic import DataFrameGroupBy

    groups, to_dict = [], []
    real_iter, real_to_dict = DataFrameGroupBy.__iter__, pd.DataFrame.to_dict

    def counted(self):
        for g in real_iter(self):
            groups.append(1)
            yield g

    monkeypatch.setattr(DataFrameGroupBy, "__iter__", counted)
    monkeypatch.setattr(pd.DataFrame, "to_dict", lambda self, *a, **k: (to_dict.append(1), real_to_dict(self, *a, **k))[1])
    counts, lines, _ = site(tmp_path, {"big.json": d})
    assert counts["records"] == 1800 and not lines
    assert len(groups) + len(to_dict) < 40, (len(groups), len(to_dict))  # the old code: one of each per target (1,200+)


def test_images_never_reads_a_suite_outside_the_repository(tmp_path):
    secret = tmp_path / "secret.yaml"
    secret.write_text("api_token: hunter2\nid: x\n")
    repo = tmp_path / "repo"
    (repo / "suites").mkdir(parents=True)
    (repo / "suites" / "linked.yaml").symlink_to(secret)
    for sid in ("../../secret", "../secret", "/etc/passwd", "linked", "a/../../secret"):
        d = site_doc("toy-uce-style")
        d["suites"][0]["id"] = sid
        f = write_json(tmp_path / "r.json", d)
        rc, out, err = cli("images", f, "--out", str(tmp_path / f"page{len(sid)}"), "--root", str(repo), "--cache", str(tmp_path / "cache"))
        assert_one_line(rc, err, "suite")
        assert "hunter2" not in err + out and "api_token" not in err + out
