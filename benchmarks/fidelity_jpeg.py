"""What UnlearnCanvas' JPEG files do to UA / IRA / CRA: the toy-canvas suite scored on lossless
PNG pixels and on JPEG-decoded pixels at each quality, same prompts and noise, by the harness's
own scorer and metric code (library use, no pytest).

    .venv/bin/python benchmarks/fidelity_jpeg.py [submissions/toy-*.yaml ...] [--quality 75 95] [--seeds 0 1 2 3]

With ``generation.image_format: jpeg`` the harness generates exactly the PNG run's pixels and
then applies ``generate.saved_form`` (a PIL JPEG round trip); this script does the same to the
PNG run's cached images instead of generating every image again. Prints one row per submission,
target and format; the figures are in docs/fidelity.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    from harness.run.evaluate import Evaluator, SuiteRun
    from harness.run.generate import saved_form
    from harness.metrics import accuracy
    from harness.scorers.classifiers import load_scorer
    from harness.families.sd1 import Placement, model_fingerprints
    from harness.run.plan import native_size, suite_jobs
    from harness.spec import expand_prompts, load_submission

    ap = argparse.ArgumentParser()
    ap.add_argument("--quality", type=int, nargs="+", default=[75, 95])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="a subset of the suite's seeds (default: all 8)")
    ap.add_argument("subs", nargs="*", default=["submissions/toy-uce-style.yaml", "submissions/toy-esd-style.yaml"])
    a = ap.parse_args(argv)
    ev = Evaluator(ROOT, ROOT / ".unlearn-cache", device="cpu", progress=False)
    suite = ev.suite("toy-canvas")
    if a.seeds:
        suite = suite.model_copy(update={"generation": suite.generation.model_copy(update={"seeds": a.seeds})})
        ev._suites["toy-canvas"] = suite
    scorer = load_scorer(suite.scorer, ROOT, "cpu")
    print(f"{'submission':<16} {'target':<9} {'format':<8} {'UA':>6} {'IRA':>6} {'CRA':>6} | base {'UA':>6} {'IRA':>6} {'CRA':>6}")
    for p in a.subs:
        sub = load_submission(ROOT / p)
        ev.run(p, sub, "toy-canvas")  # makes (or finds) the PNG images
        items = [(pr, s) for pr in expand_prompts(suite, ROOT, ev.cache_dir) for s in suite.generation.seeds]
        place = Placement.choose("cpu", suite.generation.dtype)
        fps = dict(zip(("base", "unlearned"), model_fingerprints(sub, ROOT)))
        size = 0 if suite.generation.height and suite.generation.width else native_size(sub, ROOT)
        jobs = {w: suite_jobs(suite, items, fp, place.dtype, size) for w, fp in fps.items()}
        png = {w: [ev.cache.get(j)[0] for j in js] for w, js in jobs.items()}
        for q in [None, *a.quality]:
            imgs = png if q is None else {w: [saved_form(replace(j, image_format="jpeg", jpeg_quality=q), im) for j, im in zip(jobs[w], png[w])]
                                          for w in png}
            run = SuiteRun(suite, items, imgs, scorer, root=ROOT)
            for t in sub.targets:
                v = [accuracy.compute(m, run, t, {}) for m in ("ua", "ira", "cra")]
                label = "png" if q is None else f"jpeg{q}"
                print(f"{sub.name:<16} {t.concept:<9} {label:<8} " + " ".join(f"{m.value:6.3f}" for m in v)
                      + " | base " + " ".join(f"{m.base_value:6.3f}" for m in v), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
