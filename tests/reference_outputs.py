"""The shared fine-tuning loop's reference outputs on the tiny pipeline built in code.

Each case is a few steps of one method (training seed 3, pipeline seed 16, one torch thread) as
the per-method loops made them before they became the one ``finetune.fit``; their tensors are
committed in ``tests/fixtures/reference/<case>.safetensors`` with the platform that made them
and the sha256 of every changed tensor (``platform.json``). The loop must change none of them:
all tensors bitwise (the digest) on that platform; elsewhere the committed tensors within
:func:`tolerance` (``harness.run.reproduce.SHORT_FINE_TUNE``; SalUn's ``SALIENCY_MASKED``). Of the cases that train the whole UNet only the tensors
:func:`kept` names are committed (cross-attention, the input and output convolutions, the time
embedding: 0.8 of 6.6 MB), enough to see a change of the loop. ``python tests/reference_outputs.py`` re-makes
the files (only from code whose loop did not change).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "fixtures" / "reference"

FAST = {
    "fmn": dict(steps=4, lr=1e-3, batch=2, n_images=4, sample_steps=2, sample_guidance=5.0),
    "ca": dict(steps=4, lr=1e-3, batch=2, n_images=4, sample_steps=2, sample_guidance=5.0),
    "salun": dict(epochs=2, lr=1e-3, batch=2, n_images=4, sample_steps=2, sample_guidance=5.0),
    "esd": dict(steps=3, lr=1e-3, batch=2, sample_steps=3, sample_guidance=5.0),
}
#: case -> (method, what it trains)
CASES = {"esd-xattn": ("esd", None), "fmn-xattn": ("fmn", "xattn"), "fmn-full": ("fmn", "full"), "ca-kv": ("ca", "kv"),
         "salun-full": ("salun", "full")}
THREADS = 1


def tolerance(case: str):
    """The case's tolerance off its platform: SalUn's saliency mask can flip a weight."""
    from harness.run.reproduce import SALIENCY_MASKED, SHORT_FINE_TUNE

    return SALIENCY_MASKED if CASES[case][0] == "salun" else SHORT_FINE_TUNE


def kept(name: str) -> bool:
    """The tensors committed for a case that trains every UNet parameter."""
    return "attn2" in name or name.startswith(("conv_in", "conv_out", "time_embedding"))


def digest(tensors: dict) -> str:
    """sha256 over the names and bytes of every tensor, in name order."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def make(case: str) -> dict:
    """The changed tensors of ``case`` at the current torch thread count."""
    import importlib

    from harness.methods.common import for_toy_world
    from harness.toy.model import build_pipeline

    method, train = CASES[case]
    mod = importlib.import_module(f"harness.methods.{method}")
    params = {**FAST[method], **({"train": train} if train else {})}
    return mod.erase(build_pipeline(seed=16), [for_toy_world("striped")], **params, seed=3, progress=False)


def main() -> None:
    import torch
    from safetensors.torch import save_file

    from harness.run.reproduce import fingerprint

    REFERENCE.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(THREADS)
    digests = {}
    for case in CASES:
        out = make(case)
        digests[case] = digest(out)
        full = CASES[case][1] == "full"
        save_file({k: v.contiguous() for k, v in out.items() if not full or kept(k)}, REFERENCE / f"{case}.safetensors")
        print(case, flush=True)
    doc = {"platform": fingerprint(threads=THREADS), "sha256": digests}
    (REFERENCE / "platform.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
