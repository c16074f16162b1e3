"""The ``unlearn`` command: toy world, erasure methods, validation, schema.

Every bad input ends in one line on stderr (``unlearn: error: ...``) and exit code 2; ``validate``
prints one line per problem and exits 1 when a file is invalid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import HarnessError


def _threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("UNLEARN_THREADS", os.cpu_count() or 1)))


def _param(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param {text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


# ----------------------------------------------------------------------------- toy
def cmd_toy_train_classifier(a) -> int:
    from .toy.train import train_classifier

    _threads()
    print(json.dumps({"heldout_accuracy": train_classifier(a.out, steps=a.steps, seed=a.seed)}))
    return 0


def cmd_toy_train_model(a) -> int:
    from .toy.train import train_model

    _threads()
    print(json.dumps(train_model(a.out, vae_steps=a.vae_steps, unet_steps=a.unet_steps, seed=a.seed), indent=2))
    return 0


def cmd_toy_grid(a) -> int:
    import numpy as np
    from PIL import Image

    from .toy import world
    from .toy.model import load_pipeline
    from .toy.quality import generate_grid

    _threads()
    if not (Path(a.model) / "model_index.json").is_file():
        raise HarnessError(f"--model {a.model}: no diffusers pipeline there (model_index.json missing)")
    pipe = load_pipeline(a.model)
    seeds = list(range(a.seeds))
    imgs, _ = generate_grid(pipe, seeds, a.steps, a.guidance)
    n_p = len(world.all_prompts())
    imgs = np.pad(imgs.reshape(n_p, len(seeds), 32, 32, 3), ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=255)
    grid = imgs.transpose(0, 2, 1, 3, 4).reshape(n_p * 34, len(seeds) * 34, 3)
    Image.fromarray(grid).resize((grid.shape[1] * a.zoom, grid.shape[0] * a.zoom), Image.NEAREST).save(a.out)
    print(f"wrote {a.out}: {n_p} prompts (rows: objects outer, styles inner: {', '.join(world.STYLES)}) x {len(seeds)} seeds")
    return 0


def cmd_toy_quality(a) -> int:
    from .toy.quality import report

    _threads()
    print(json.dumps(report(seeds=a.seeds, steps=a.steps, guidance=a.guidance, scheduler=a.scheduler), indent=2))
    return 0


def cmd_toy_checkpoints(a) -> int:
    from .toy.submissions import make_checkpoints, write_submissions

    _threads()
    root = Path(a.root).resolve()
    for d in make_checkpoints(root, tuple(a.method or ("uce", "esd")), force=a.force):
        print(f"checkpoint {d.relative_to(root)}")
    for p in write_submissions(root):
        print(f"wrote {p.relative_to(root)}")
    return 0


# ----------------------------------------------------------------------------- methods
def cmd_erase(a) -> int:
    from .methods import run_erase

    _threads()
    rec = run_erase(a.method, a.base, a.concept, a.out, anchor=a.anchor, world=a.world, force=a.force,
                    allow_subword=a.allow_subword, device=a.device, params=dict(a.param or []))
    e = rec["efficiency"]
    print(f"wrote {a.out}: {rec['checkpoint']['tensors']} tensors, {e['storage_bytes']} bytes, {e['time_s']:.2f} s, sha256 {rec['checkpoint']['sha256']}")
    return 0


# ----------------------------------------------------------------------------- specs
def cmd_validate(a) -> int:
    from .spec import SpecErrors, is_suite_file, load_submission, load_suite, read_yaml

    bad = 0
    for f in a.files:
        try:
            (load_suite if is_suite_file(read_yaml(f)) else load_submission)(f)
            print(f"{f}: ok")
        except SpecErrors as e:
            bad += 1
            for line in e.lines:
                print(line)
        except HarnessError as e:
            bad += 1
            print(str(e))
    return 1 if bad else 0


def cmd_schema(a) -> int:
    from .spec import Submission, Suite

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, cls in (("submission", Submission), ("suite", Suite)):
        (out / f"{name}.schema.json").write_text(json.dumps(cls.model_json_schema(), indent=2) + "\n")
    print(f"wrote {out}/submission.schema.json and {out}/suite.schema.json")
    return 0


def cmd_compare(a) -> int:
    from .compare import compare, format_rows, load_result

    rows = compare(load_result(a.new), load_result(a.baseline))
    print(format_rows(rows))
    bad = [r for r in rows if r["status"] != "ok"]
    print(f"{len(bad)} of {len(rows)} metrics regressed or missing" if bad else f"no regression in {len(rows)} metrics")
    return 1 if bad else 0


def parser() -> argparse.ArgumentParser:
    from .methods import METHODS
    from .toy.classifier import DEFAULT_DIR as CLF
    from .toy.model import DEFAULT_DIR as PIPE

    p = argparse.ArgumentParser(prog="unlearn", description="Evaluate concept erasure in text-to-image diffusion models.")
    sub = p.add_subparsers(dest="cmd", required=True)

    toy = sub.add_parser("toy", help="the toy concept world").add_subparsers(dest="toy_cmd", required=True)
    t = toy.add_parser("train-classifier", help="train the toy classifier from scratch (a few minutes)")
    t.add_argument("--out", default=str(CLF))
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_toy_train_classifier)
    t = toy.add_parser("train-model", help="train the toy text-to-image pipeline from scratch (about 45 minutes on 2 cores)")
    t.add_argument("--out", default=str(PIPE))
    t.add_argument("--vae-steps", type=int, default=1500)
    t.add_argument("--unet-steps", type=int, default=5000)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_toy_train_model)
    t = toy.add_parser("grid", help="write a prompt x seed grid of generations")
    t.add_argument("--out", required=True)
    t.add_argument("--model", default=str(PIPE))
    t.add_argument("--seeds", type=int, default=8)
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--guidance", type=float, default=5.0)
    t.add_argument("--zoom", type=int, default=3)
    t.set_defaults(func=cmd_toy_grid)
    t = toy.add_parser("quality", help="measure classifier accuracy, prompt fidelity and speed")
    t.add_argument("--seeds", type=int, default=8)
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--guidance", type=float, default=5.0)
    t.add_argument("--scheduler", default="ddim")
    t.set_defaults(func=cmd_toy_quality)

    t = toy.add_parser("checkpoints", help="(re)make the reference methods' toy checkpoints and submission YAMLs")
    t.add_argument("--root", default=".", help="repository root")
    t.add_argument("--method", action="append", choices=sorted(METHODS), help="only these methods (repeatable)")
    t.add_argument("--force", action="store_true", help="re-run methods whose checkpoint exists")
    t.set_defaults(func=cmd_toy_checkpoints)

    e = sub.add_parser("erase", help="run a reference unlearning method; writes the changed tensors + method.json")
    e.add_argument("method", choices=sorted(METHODS))
    e.add_argument("--base", required=True, help="diffusers pipeline folder")
    e.add_argument("--concept", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--anchor", default=None, help="concept the erased one is mapped to (UCE); default: another concept of its kind (toy)")
    e.add_argument("--world", choices=["toy", "generic"], default="toy", help="prompt contexts: the toy world's template, or the bare concept")
    e.add_argument("--param", action="append", type=_param, metavar="KEY=VALUE", help="method parameter (repeatable), e.g. steps=400")
    e.add_argument("--device", default="cpu")
    e.add_argument("--force", action="store_true", help="overwrite --out")
    e.add_argument("--allow-subword", action="store_true", help="allow a concept word that is not a single token")
    e.set_defaults(func=cmd_erase)

    c = sub.add_parser("compare", help="regression gate: exit 1 when a metric of NEW is worse than BASELINE beyond its tolerance")
    c.add_argument("new")
    c.add_argument("baseline")
    c.set_defaults(func=cmd_compare)

    v = sub.add_parser("validate", help="check submission / suite YAML files")
    v.add_argument("files", nargs="+")
    v.set_defaults(func=cmd_validate)
    s = sub.add_parser("schema", help="write JSON Schema files for editors")
    s.add_argument("--out", default="schemas")
    s.set_defaults(func=cmd_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as e:
        print(f"unlearn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unlearn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
