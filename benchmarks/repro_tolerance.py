"""How far re-made float output moves across instruction sets and thread counts on one machine.

Bitwise equality of float output holds on one platform (CPU kind, library build, thread
count); elsewhere the same code rounds differently. This script re-makes, in a fresh process
per setting (``ATEN_CPU_CAPABILITY`` is read when torch loads), the tensors the tests and the
regression gate compare with committed ones:

* the committed toy checkpoints of the closed-form methods (UCE, RECE; style and object), against
  ``submissions/checkpoints/*/unet.safetensors``;
* the shared fine-tuning loop's reference outputs on the tiny pipeline built in code
  (``tests/fixtures/reference/*.safetensors``), against those files;
* with ``--fine-tuned``, the toy ESD-x style checkpoint (about two minutes per setting).

and prints, for every setting, max |d| and the relative Frobenius norm ||a - b|| / ||b||
(:func:`harness.run.reproduce.compare_tensors`). The tolerances in ``harness/run/reproduce.py`` are
chosen from what this prints (with a margin): run it on a new kind of machine and compare.

    python benchmarks/repro_tolerance.py [--caps default,avx2,avx512] [--threads 1,2] [--fine-tuned] [--only CASES]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[1])
what, out, threads = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
from harness.run.reproduce import fingerprint
if what.startswith("toy:"):
    from harness.methods import run_erase
    from harness.toy.model import DEFAULT_DIR
    from harness.toy.submissions import PARAMS
    method, concept = what[4:].split("/")
    run_erase(method, DEFAULT_DIR, concept, out, force=True, params=PARAMS.get(method), preset="toy", threads=threads)
else:
    sys.path.insert(0, str(Path(sys.argv[1]) / "tests"))
    from reference_outputs import make
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    save_file(make(what), out / "unet.safetensors")
(out / "fingerprint.json").write_text(json.dumps(fingerprint(threads=threads)))
"""


def committed(what: str) -> Path:
    if what.startswith("toy:"):
        method, concept = what[4:].split("/")
        kind = "style" if concept == "striped" else "object"
        return ROOT / "submissions" / "checkpoints" / f"{method}-{kind}-{concept}" / "unet.safetensors"
    return ROOT / "tests" / "fixtures" / "reference" / f"{what}.safetensors"


def main() -> int:
    from safetensors.torch import load_file

    from harness.run.reproduce import compare_tensors

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", default="default,avx2,avx512")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--fine-tuned", action="store_true", help="also the toy ESD-x style checkpoint (slow)")
    ap.add_argument("--only", help="comma-separated cases (e.g. toy:esd/striped,salun-full)")
    ap.add_argument("--json", type=Path, help="write every row here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from reference_outputs import CASES

    whats = ["toy:uce/striped", "toy:uce/triangle", "toy:rece/striped", "toy:rece/triangle", *CASES]
    if args.fine_tuned:
        whats.append("toy:esd/striped")
    if args.only:
        whats = args.only.split(",")
    rows = []
    for cap in args.caps.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
            for what in whats:
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "out"
                    r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), what, str(out), str(threads)], env=env,
                                       capture_output=True, text=True)
                    if r.returncode:
                        print(f"{cap} {threads} {what}: failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                        continue
                    fp = json.loads((out / "fingerprint.json").read_text())
                    made, ref = load_file(str(out / "unet.safetensors")), load_file(str(committed(what)))
                    if not what.startswith("toy:"):  # whole-UNet cases: the committed subset
                        made = {k: v for k, v in made.items() if k in ref}
                    c = compare_tensors(made, ref)
                    rows.append({"cap": cap, "used": fp["cpu_capability"], "threads": threads, "what": what,
                                 "bitwise": c.bitwise, "max_abs": c.max_abs, "rel_fro": c.rel_fro})
                    print(f"{cap:>8} ({fp['cpu_capability']:>7}) threads {threads}  {what:<22} "
                          f"{'bitwise' if c.bitwise else 'differs':<8} max|d| {c.max_abs:.3g}  rel {c.rel_fro:.3g}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
