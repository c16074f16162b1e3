"""Pre-ASR / ASR of toy submissions under the toy-robustness attack, on the attacked items alone.

The suite ``toy-robustness`` shares toy-canvas' 200 images per model; the robustness metrics use
only the target's forget prompts at the attack seeds. This script evaluates the same items (same
prompts, seeds, settings, so the same images, attack cache keys and values) from a copy of the
suite whose prompt set holds only the target's prompts, so the figures come without generating
the other 180 images. Prints one line per submission: Pre-ASR, ASR, base Pre-ASR, ASR against
budget, attacked items and seconds per attacked item.

    python benchmarks/toy_robustness.py submissions/toy-uce-style.yaml ... [--cache DIR] [--attack ringabell]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch

    from harness.run.evaluate import Evaluator
    from harness.spec import load_submission, load_suite

    ap = argparse.ArgumentParser()
    ap.add_argument("submissions", nargs="+")
    ap.add_argument("--cache", default=str(ROOT / ".unlearn-cache"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the records here too")
    ap.add_argument("--metric", default="asr", help="the ASR metric to print (asr, or ti_asr: textual inversion)")
    ap.add_argument("--suite", default=str(ROOT / "suites" / "toy-robustness.yaml"), help="a variant of the suite (budget experiments)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    out = []
    for s in args.submissions:
        sub = load_submission(s)
        t = sub.targets[0]
        values = {k: ([t.concept] if k == t.kind else v) for k, v in suite.prompts.template.values.items()}
        only = suite.model_copy(update={"prompts": suite.prompts.model_copy(update={"template": suite.prompts.template.model_copy(update={"values": values})})})
        ev = Evaluator(ROOT, Path(args.cache), device="cpu", progress=False)
        ev._suites[suite.id], ev._suite_sha[suite.id] = only, "-"
        t0, c0 = time.time(), time.process_time()
        res = ev.run(s, sub, suite.id)
        secs, cpu = time.time() - t0, time.process_time() - c0
        r = {m["metric"]: m for m in res["metrics"] if m["target"] == t.concept}
        m = args.metric
        d = r[m]["details"]
        line = {"submission": sub.name, "target": t.concept, "pre_asr": d["pre_asr"], "metric": m, "asr": r[m]["value"], "base_pre_asr": r[m]["base_value"],
                "curve": [(c["budget"], round(c["asr"], 3)) for c in d["asr_curve"]], "items": d["items"], "attacked": d["attacked"],
                "seconds_per_attacked_item": d["seconds_per_attacked_item"], "wall_s": round(secs, 1), "cpu_s": round(cpu, 1), "examples": d["examples"][:2]}
        out.append(line)
        print(json.dumps(line), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
