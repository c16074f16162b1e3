"""Spec models: thresholds, prompt sets, paths, YAML safety."""

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.store.hashing import sha256_file
from harness.spec import SpecErrors, Threshold, expand_prompts, inside, load_submission, load_suite

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "text, value, base, holds, shown",
    [
        (">= 0.8", 0.8, None, True, ">= 0.8"),
        (">= 0.8", 0.79, None, False, ">= 0.8"),
        (">= 0.9 * base", 0.9, 1.0, True, ">= 0.9 * base"),
        (">= 0.9 * base", 0.5, 0.6, False, ">= 0.9 * base"),
        ("<= base + 0.05", 0.3, 0.26, True, "<= base + 0.05"),
        ("<= base - 0.05", 0.3, 0.3, False, "<= base - 0.05"),
        ("> base", 0.31, 0.3, True, "> base"),
        ("< 10", 9.9, None, True, "< 10"),
    ],
)
def test_thresholds(text, value, base, holds, shown):
    t = Threshold.parse(text)
    assert t.holds(value, base) is holds
    assert str(t) == shown


@pytest.mark.parametrize("bad", ["0.8", ">= ", "== 1", ">= 0.8 * bse", ">= abc"])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ValueError):
        Threshold.parse(bad)


def test_committed_suites_validate_and_expand():
    toy = load_suite(REPO / "suites" / "toy-canvas.yaml")
    prompts = expand_prompts(toy, REPO)
    assert len(prompts) == 25
    assert prompts[0].text == "A circle image in solid style."
    assert prompts[0].labels == {"object": "circle", "style": "solid"}
    uc = load_suite(REPO / "suites" / "unlearncanvas.yaml")
    ps = expand_prompts(uc, REPO)
    assert len(ps) == 51 * 20 and len(uc.generation.seeds) == 5
    vg = [p for p in ps if p.labels["style"] == "Van_Gogh" and p.labels["object"] == "Cats"][0]
    assert vg.text == "A Cats image in Van Gogh style."


def test_csv_prompt_set_is_pinned_by_sha256(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,seed,guidance,category\nA ring image in solid style.,5,7.5,ring\n")
    sha = sha256_file(tmp_path / "p.csv")
    suite_yaml = f"""
id: csvs
version: "1"
applies_to: [style]
prompts: {{csv: {{path: p.csv, sha256: "{sha}"}}}}
generation: {{steps: 2, guidance: 3, seeds: [0]}}
scorer: {{backend: toy}}
metrics: [{{name: ua}}]
"""
    (tmp_path / "s.yaml").write_text(suite_yaml)
    suite = load_suite(tmp_path / "s.yaml")
    (p,) = expand_prompts(suite, tmp_path)
    assert (p.text, p.seed, p.guidance, p.labels) == ("A ring image in solid style.", 5, 7.5, {"category": "ring"})
    (tmp_path / "p.csv").write_text("prompt\nchanged\n")
    with pytest.raises(HarnessError, match="sha256"):
        expand_prompts(suite, tmp_path)


def test_paths_stay_inside_the_repository(tmp_path):
    assert inside(tmp_path, "a/b.txt", "x") == (tmp_path / "a" / "b.txt").resolve()
    for bad in ["../etc/passwd", "/etc/passwd", "a/../../x"]:
        with pytest.raises(HarnessError, match="x:"):
            inside(tmp_path, bad, "x")
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(HarnessError, match="leaves the repository"):
        inside(tmp_path, "link/passwd", "x")


def test_yaml_python_tags_are_refused(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(HarnessError) as e:
        load_submission(f)
    assert "\n" not in str(e.value) and "evil.yaml" in str(e.value)


def test_validation_errors_name_file_and_field(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "name: x\nmethod: {name: m, colour: red}\nbase_model: {builtin: toy}\n"
        "checkpoint: {kind: unet, path: a.safetensors, sha256: abc}\ntargets: []\n"
    )
    with pytest.raises(SpecErrors) as e:
        load_submission(f)
    lines = e.value.lines
    assert f"{f}: method.colour: unknown key" in lines
    assert any(line.startswith(f"{f}: checkpoint.sha256:") for line in lines)
    assert any(line.startswith(f"{f}: targets:") for line in lines)


def test_suite_include_inherits_prompts_and_generation():
    canvas = load_suite(REPO / "suites" / "toy-canvas.yaml")
    for sid in ("toy-integrity", "toy-mscore", "toy-fid"):
        s = load_suite(REPO / "suites" / f"{sid}.yaml")
        assert s.id == sid and s.prompts == canvas.prompts and s.generation == canvas.generation and s.world == "toy"
        assert [m.name for m in s.metrics] != [m.name for m in canvas.metrics]


def test_suite_include_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("id: a\nversion: '1'\ninclude: nosuch\nmetrics: [{name: ua}]\n")
    with pytest.raises(SpecErrors, match="include: no suite 'nosuch'"):
        load_suite(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("id: b\nversion: '1'\ninclude: b\nmetrics: [{name: ua}]\n")
    with pytest.raises(SpecErrors, match="nested more than 3 deep"):
        load_suite(tmp_path / "b.yaml")


def test_csv_prompt_set_by_url_uses_the_cache_offline_and_maps_columns(tmp_path, monkeypatch):
    from harness.store.hashing import sha256_bytes

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = b"case_number,prompt,evaluation_seed,evaluation_guidance\n7,a red ring,123,7.5\n"
    sha = sha256_bytes(data)
    (tmp_path / "s.yaml").write_text(f"""
id: urlcsv
version: "1"
applies_to: [nudity]
prompts: {{csv: {{url: "https://example.org/p/nudity.csv", sha256: "{sha}", columns: {{seed: evaluation_seed, guidance: evaluation_guidance}}}}}}
generation: {{steps: 2, guidance: 3, seeds: [0]}}
metrics: [{{name: nudity_asr}}]
""")
    suite = load_suite(tmp_path / "s.yaml")
    with pytest.raises(HarnessError, match="is not cached and this run is offline"):
        expand_prompts(suite, tmp_path, tmp_path / "cache")
    cached = tmp_path / "cache" / "downloads" / sha / "nudity.csv"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)  # as a past online run left it
    (p,) = expand_prompts(suite, tmp_path, tmp_path / "cache")
    assert (p.text, p.seed, p.guidance, p.labels) == ("a red ring", 123, 7.5, {"case_number": "7"})


def test_real_suites_validate():
    for sid in ("unlearncanvas", "unlearndiffatk-nudity", "imagenette-objects", "artist-styles", "identities"):
        s = load_suite(REPO / "suites" / f"{sid}.yaml")
        assert s.world == "real"
