"""What UnlearnCanvas' JPEG files do to UA / IRA / CRA: the toy-canvas suite scored on lossless
PNG pixels and on JPEG-decoded pixels (``generation.image_format: jpeg``) at each quality, same
prompts and noise, measured by the harness itself (library use, no pytest).

    .venv/bin/python benchmarks/fidelity_jpeg.py [--quality 75 95] [submissions/toy-*.yaml ...]

Prints one row per submission, target and format; the figures go to docs/fidelity.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    from harness.evaluate import Evaluator
    from harness.spec import load_submission

    ap = argparse.ArgumentParser()
    ap.add_argument("--quality", type=int, nargs="+", default=[75, 95])
    ap.add_argument("subs", nargs="*", default=["submissions/toy-uce-style.yaml", "submissions/toy-esd-style.yaml"])
    a = ap.parse_args(argv)
    formats = [("png", None)] + [("jpeg", q) for q in a.quality]
    print(f"{'submission':<16} {'target':<9} {'format':<8} {'UA':>6} {'IRA':>6} {'CRA':>6} | base {'UA':>6} {'IRA':>6} {'CRA':>6}")
    for fmt, q in formats:
        ev = Evaluator(ROOT, ROOT / ".unlearn-cache", device="cpu", progress=False)
        suite = ev.suite("toy-canvas")
        gen = suite.generation.model_copy(update={"image_format": fmt, **({"jpeg_quality": q} if q else {})})
        ev._suites["toy-canvas"] = suite.model_copy(update={"generation": gen})
        for p in a.subs:
            sub = load_submission(ROOT / p)
            res = ev.run(p, sub, "toy-canvas")
            by = {(r["metric"], r["target"]): r for r in res["metrics"]}
            for t in sub.targets:
                v = [by[(m, t.concept)] for m in ("ua", "ira", "cra")]
                label = fmt if q is None else f"jpeg{q}"
                print(f"{sub.name:<16} {t.concept:<9} {label:<8} " + " ".join(f"{r['value']:6.3f}" for r in v)
                      + " | base " + " ".join(f"{r['base_value']:6.3f}" for r in v), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
