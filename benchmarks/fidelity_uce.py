"""UCE's token-position variants on the toy world: UA / IRA / CRA on toy-canvas (seeds 0-3) and
the drift of the empty prompt's cross-attention keys / values (the unconditional branch of
classifier-free guidance), for the toy world's templated prompts and for bare concept words.

    .venv/bin/python benchmarks/fidelity_uce.py [--concept striped] [--worlds toy generic] [--variants all tail last]

Checkpoints go to .unlearn-cache/fidelity-uce/ (ignored by git). Figures: docs/fidelity.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def drift(ckpt: Path) -> float:
    import torch

    with torch.no_grad():
        return _drift(ckpt)


def _drift(ckpt: Path) -> float:
    """mean over to_k / to_v of ||W' e - W e|| / ||W e||, e = every position of ''."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from harness.methods.common import cross_attention_kv, text_embeddings
    from harness.families.sd1 import TOY_PIPELINE

    pipe = StableDiffusionPipeline.from_pretrained(str(TOY_PIPELINE), local_files_only=True)
    e = text_embeddings(pipe, [""])[0].double()
    new = load_file(str(ckpt))
    out = []
    for name, lin in cross_attention_kv(pipe.unet).items():
        w, w2 = lin.weight.double(), new[f"{name}.weight"].double()
        out.append(float(torch.norm(e @ (w2 - w).T) / torch.norm(e @ w.T)))
    return sum(out) / len(out)


def main(argv: list[str]) -> int:
    from harness.run.evaluate import Evaluator
    from harness.methods import run_erase
    from harness.families.sd1 import TOY_PIPELINE
    from harness.spec import Submission

    ap = argparse.ArgumentParser()
    ap.add_argument("--concept", default="striped")
    ap.add_argument("--worlds", nargs="+", default=["toy", "generic"], help="toy: templated prompts; generic: the bare concept word")
    ap.add_argument("--variants", nargs="+", default=["all", "tail", "last"])
    a = ap.parse_args(argv)
    ev = Evaluator(ROOT, ROOT / ".unlearn-cache", device="cpu", progress=False)
    suite = ev.suite("toy-canvas")
    ev._suites["toy-canvas"] = suite.model_copy(update={"generation": suite.generation.model_copy(update={"seeds": [0, 1, 2, 3]})})
    print(f"{'prompts':<9} {'variant':<6} {'UA':>6} {'IRA':>6} {'CRA':>6} {'drift':>7}")
    for world in a.worlds:
        for v in a.variants:
            d = ROOT / ".unlearn-cache" / "fidelity-uce" / f"{world}-{v}"
            rec = run_erase("uce", TOY_PIPELINE, a.concept, d, world=world, force=True, preset="toy", params={"token_positions": v})
            rel = (d / "unet.safetensors").relative_to(ROOT).as_posix()
            sub = Submission.model_validate({"name": f"uce-{world}-{v}", "method": {"name": "uce", "params": rec["params"]},
                                             "base_model": {"builtin": "toy"},
                                             "checkpoint": {"kind": "unet", "path": rel, "sha256": rec["checkpoint"]["sha256"]},
                                             "targets": [{"concept": a.concept, "kind": "style"}], "suites": ["toy-canvas"]})
            res = ev.run(f"<{world}-{v}>", sub, "toy-canvas")
            by = {r["metric"]: r["value"] for r in res["metrics"]}
            print(f"{world:<9} {v:<6} {by['ua']:6.3f} {by['ira']:6.3f} {by['cra']:6.3f} {drift(d / 'unet.safetensors'):7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
