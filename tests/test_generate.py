"""Deterministic batched generation and the content-addressed image cache."""

import numpy as np
import pytest

from harness.run.generate import ImageCache, Job, generate


def _jobs(prompts, seeds, model="m1", steps=3):
    return [Job(p, "", s, "ddim", steps, 3.0, 32, 32, 0.0, "float32", model) for p in prompts for s in seeds]


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(seed=1)


def test_job_key_is_stable_and_covers_every_field():
    a = _jobs(["A ring image in solid style."], [1])[0]
    assert a.key() == _jobs(["A ring image in solid style."], [1])[0].key()
    assert a.key() != _jobs(["A ring image in solid style."], [2])[0].key()
    assert a.key() != _jobs(["A ring image in solid style."], [1], model="m2")[0].key()
    assert a.key() != _jobs(["A ring image in solid style."], [1], steps=4)[0].key()


def test_batch_size_never_changes_an_image(pipe, tmp_path):
    jobs = _jobs(["A ring image in solid style.", "A cross image in dotted style."], [3, 4])
    one, _ = generate(pipe, jobs, ImageCache(tmp_path / "a"), batch_size=1, progress=False)
    four, _ = generate(pipe, jobs, ImageCache(tmp_path / "b"), batch_size=4, progress=False)
    for x, y in zip(one, four):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1  # identical noise; float summation order only
    assert not np.array_equal(one[0], one[1])


def test_rerun_regenerates_nothing_and_loads_no_model(pipe, tmp_path):
    cache = ImageCache(tmp_path)
    jobs = _jobs(["A square image in outline style."], [0, 1, 2])
    first, rep1 = generate(pipe, jobs, cache, batch_size=2, progress=False)
    assert {k: v for k, v in rep1.items() if k != "generation_seconds"} == {"generated": 3, "cached": 0, "flagged": []}
    assert rep1["generation_seconds"] > 0

    def must_not_load():
        raise AssertionError("a warm re-run loaded a pipeline")

    again, rep2 = generate(must_not_load, jobs, cache, batch_size=2, progress=False)
    assert rep2["generated"] == 0 and rep2["cached"] == 3
    assert rep2["generation_seconds"] == rep1["generation_seconds"]  # what the images cost when made, not this re-run's time
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)


def test_damaged_png_is_caught_by_its_sidecar_and_regenerated(pipe, tmp_path):
    cache = ImageCache(tmp_path)
    jobs = _jobs(["A circle image in striped style."], [9])
    (img,), _ = generate(pipe, jobs, cache, progress=False)
    png = cache.path(jobs[0])
    png.write_bytes(png.read_bytes()[:50])  # truncated
    assert cache.get(jobs[0]) is None
    (img2,), rep = generate(pipe, jobs, cache, progress=False)
    assert rep["generated"] == 1
    np.testing.assert_array_equal(img, img2)


def test_no_temp_files_left_behind(pipe, tmp_path):
    cache = ImageCache(tmp_path)
    generate(pipe, _jobs(["A ring image in dotted style."], [1, 2]), cache, progress=False)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert len(list(tmp_path.rglob("*.png"))) == 2 and len(list(tmp_path.rglob("*.json"))) == 2
