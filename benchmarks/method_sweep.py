"""Quick UA / IRA / CRA of a reference method on the toy world at given parameters, in one
process (no harness run, no cache): erase, generate the 25 toy prompts x 2 seeds (DDIM 20,
guidance 5), classify with the toy classifier. For sweeps (README); the committed figures come
from the harness.

    .venv/bin/python benchmarks/method_sweep.py METHOD CONCEPT [--preset toy] [KEY=VALUE ...]

UA: images of target prompts not classified as the target; IRA: images of the other concepts of
the target's kind classified as prompted (that head); CRA: images of prompts without the target
classified as prompted on the other head.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scores(pipe, concept: str, seeds=(0, 1)) -> dict:
    from harness.toy import world
    from harness.toy.classifier import load_classifier, predict
    from harness.toy.quality import generate_grid

    imgs, items = generate_grid(pipe, list(seeds), 20, 5.0)
    po, ps = predict(load_classifier(), imgs)
    kind = "style" if concept in world.STYLES else "object"
    ua, ira, cra = [], [], []
    for (o, s, _p, _sd), a, b in zip(items, po, ps):
        own, other = (s, o) if kind == "style" else (o, s)
        pred_own = world.STYLES[b] if kind == "style" else world.OBJECTS[a]
        pred_other = world.OBJECTS[a] if kind == "style" else world.STYLES[b]
        if own == concept:
            ua.append(pred_own != concept)
        else:
            ira.append(pred_own == own)
            cra.append(pred_other == other)
    mean = lambda v: sum(v) / len(v)
    return {"UA": mean(ua), "IRA": mean(ira), "CRA": mean(cra)}


def main(argv: list[str]) -> int:
    import torch

    from harness.options import param as _param
    from harness.methods import get_method
    from harness.methods.common import for_toy_world
    from harness.toy.model import load_pipeline

    torch.set_num_threads(int(os.environ.get("UNLEARN_THREADS", "1")))
    method, concept, *rest = argv
    preset = "toy"
    if rest[:1] == ["--preset"]:
        preset, rest = rest[1], rest[2:]
    mod = get_method(method)
    params = {**getattr(mod, "PRESETS", {}).get(preset, {}), **dict(_param(r) for r in rest)}
    pipe = load_pipeline()
    t0 = time.perf_counter()
    mod.erase(pipe, [for_toy_world(concept)], **{**params, **({"progress": False} if "progress" in mod.erase.__code__.co_varnames else {})})
    dt = time.perf_counter() - t0
    s = scores(pipe, concept)
    print(f"{method} {concept} {' '.join(rest) or '(preset ' + preset + ')'}: UA {s['UA']:.3f} IRA {s['IRA']:.3f} CRA {s['CRA']:.3f}  ({dt:.0f} s erase)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
