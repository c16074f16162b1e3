"""Print UA / IRA / CRA (UnlearnCanvas definitions) of each toy submission next to the base
model, measured by the harness itself (library use, no pytest), on the toy-canvas suite.

    .venv/bin/python benchmarks/toy_methods.py [submissions/toy-*.yaml ...]

Exit status 0; the figures are for README and the issue notes, not a test.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(paths: list[str]) -> int:
    from harness.run.evaluate import Evaluator
    from harness.spec import load_submission

    paths = paths or sorted(str(p.relative_to(ROOT)) for p in (ROOT / "submissions").glob("toy-*.yaml"))
    ev = Evaluator(ROOT, ROOT / ".unlearn-cache", device="cpu", progress=False)
    print(f"{'submission':<18} {'target':<10} {'UA':>6} {'IRA':>6} {'CRA':>6}   | base: {'UA':>6} {'IRA':>6} {'CRA':>6}  | IRA/base CRA/base  meets")
    for p in paths:
        sub = load_submission(ROOT / p)
        t0 = time.time()
        res = ev.run(p, sub, "toy-canvas")
        by = {(r["metric"], r["target"]): r for r in res["metrics"]}
        for t in sub.targets:
            ua, ira, cra = (by[(m, t.concept)] for m in ("ua", "ira", "cra"))
            ok = ua["value"] >= 0.8 and ira["value"] >= 0.8 * ira["base_value"] and cra["value"] >= 0.8 * cra["base_value"]
            print(f"{sub.name:<18} {t.concept:<10} {ua['value']:6.3f} {ira['value']:6.3f} {cra['value']:6.3f}   |       {ua['base_value']:6.3f} {ira['base_value']:6.3f} {cra['base_value']:6.3f}  |"
                  f"   {ira['value'] / ira['base_value']:6.3f}   {cra['value'] / cra['base_value']:6.3f}   {'yes' if ok else 'NO'}   ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
