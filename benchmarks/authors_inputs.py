"""A method's paper preset fed the authors' inputs (their concept phrase, anchor and preserve set,
``MethodInfo.authors_inputs``) against the same preset fed the toy world's templates: UA / IRA /
CRA on toy-canvas (seeds 0-3) for each method, concept and prompt source, measured in one run.

    .venv/bin/python benchmarks/authors_inputs.py [--methods uce rece] [--concepts striped triangle]
        [--prompts toy authors] [--preset paper] [--param KEY=VALUE ...]

Checkpoints go to .unlearn-cache/authors-inputs/ (ignored by git). Figures: docs/fidelity.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    from harness.errors import HarnessError
    from harness.families.sd1 import TOY_PIPELINE
    from harness.methods import run_erase
    from harness.methods.common import toy_kind
    from harness.run.evaluate import Evaluator
    from harness.spec import Submission

    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["uce", "rece"])
    ap.add_argument("--concepts", nargs="+", default=["striped", "triangle"])
    ap.add_argument("--prompts", nargs="+", default=["toy", "authors"], choices=["toy", "authors", "generic"])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="JSON value, applied to every method")
    a = ap.parse_args(argv)
    params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in a.param)}
    ev = Evaluator(ROOT, ROOT / ".unlearn-cache", device="cpu", progress=False)
    suite = ev.suite("toy-canvas")
    ev._suites["toy-canvas"] = suite.model_copy(update={"generation": suite.generation.model_copy(update={"seeds": [0, 1, 2, 3]})})
    print(f"{'method':<7} {'concept':<9} {'prompts':<8} {'UA':>6} {'IRA':>6} {'CRA':>6} {'erase s':>8}  anchor / templates")
    for method in a.methods:
        for concept in a.concepts:
            kind = toy_kind(concept)
            for source in a.prompts:
                d = ROOT / ".unlearn-cache" / "authors-inputs" / f"{method}-{a.preset}-{concept}-{source}"
                t0 = time.perf_counter()
                try:
                    rec = run_erase(method, TOY_PIPELINE, concept, d, world=source, force=True, preset=a.preset, params=params)
                except HarnessError as e:  # e.g. SalUn's authors have no recipe for a style
                    print(f"{method:<7} {concept:<9} {source:<8} {'-':>6} {'-':>6} {'-':>6} {'-':>8}  {e}", flush=True)
                    continue
                secs = time.perf_counter() - t0
                rel = (d / rec["checkpoint"]["file"]).relative_to(ROOT).as_posix()
                sub = Submission.model_validate({"name": f"{method}-{concept}-{source}", "method": {"name": method, "params": rec["params"]},
                                                 "base_model": {"builtin": "toy"},
                                                 "checkpoint": {"kind": rec["checkpoint"]["kind"], "path": rel, "sha256": rec["checkpoint"]["sha256"]},
                                                 "targets": [{"concept": concept, "kind": kind}], "suites": ["toy-canvas"]})
                res = ev.run(f"<{method}-{concept}-{source}>", sub, "toy-canvas")
                by = {r["metric"]: r["value"] for r in res["metrics"]}
                print(f"{method:<7} {concept:<9} {source:<8} {by['ua']:6.3f} {by['ira']:6.3f} {by['cra']:6.3f} {secs:8.1f}  "
                      f"{rec['anchor']!r} / {rec['templates'][:2]}{'...' if len(rec['templates']) > 2 else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
