"""``unlearn toy ...`` (the toy concept world: training, grids, quality, reference checkpoints)
and ``unlearn erase`` (a reference unlearning method on a pipeline folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.options import device, param, positive_count, typed
from harness.run.threads import apply as _threads  # UNLEARN_THREADS, else the cores left free by the machine's load


def cmd_toy_train_classifier(a) -> int:
    from harness.toy.train import train_classifier

    _threads()
    print(json.dumps({"heldout_accuracy": train_classifier(a.out, steps=a.steps, seed=a.seed)}))
    return 0


def cmd_toy_train_model(a) -> int:
    from harness.toy.paths import PIPELINES
    from harness.toy.train import train_model

    xl = a.world == "toy-xl"
    out = Path(a.out) if a.out else PIPELINES[a.world]
    if out.is_symlink() or (out.exists() and not (out.is_dir() and (out / "training.json").is_file())):
        # the training replaces --out with each snapshot: only a pipeline this command wrote (its training.json there)
        raise HarnessError(f"--out {out}: exists and is not a toy pipeline `unlearn toy train-model` wrote (no training.json); give a new folder")
    _threads()
    steps = a.unet_steps if a.unet_steps is not None else (4000 if xl else 5000)  # what the committed pipelines were trained with
    print(json.dumps(train_model(out, vae_steps=a.vae_steps, unet_steps=steps, seed=a.seed, xl=xl,
                                 vae_from=PIPELINES["toy"] if xl else None), indent=2))
    return 0


def cmd_toy_grid(a) -> int:
    import numpy as np
    from PIL import Image

    from harness.toy import world
    from harness.toy.model import load_pipeline
    from harness.toy.quality import generate_grid

    _threads()
    from harness.toy.paths import PIPELINES

    model = a.model or str(PIPELINES[a.world])
    if not (Path(model) / "model_index.json").is_file():
        raise HarnessError(f"--model {model}: no diffusers pipeline there (model_index.json missing)")
    pipe = load_pipeline(model)
    seeds = list(range(a.seeds))
    imgs, _ = generate_grid(pipe, seeds, a.steps, a.guidance)
    n_p = len(world.all_prompts())
    imgs = np.pad(imgs.reshape(n_p, len(seeds), 32, 32, 3), ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=255)
    grid = imgs.transpose(0, 2, 1, 3, 4).reshape(n_p * 34, len(seeds) * 34, 3)
    Image.fromarray(grid).resize((grid.shape[1] * a.zoom, grid.shape[0] * a.zoom), Image.Resampling.NEAREST).save(a.out)
    print(f"wrote {a.out}: {n_p} prompts (rows: objects outer, styles inner: {', '.join(world.STYLES)}) x {len(seeds)} seeds")
    return 0


def cmd_toy_quality(a) -> int:
    from harness.toy.paths import PIPELINES
    from harness.toy.quality import report

    _threads()
    model = Path(a.model) if a.model else PIPELINES[a.world]
    if not (model / "model_index.json").is_file():
        raise HarnessError(f"--model {model}: no diffusers pipeline there (model_index.json missing)")
    print(json.dumps(report(model, seeds=a.seeds, steps=a.steps, guidance=a.guidance, scheduler=a.scheduler), indent=2))
    return 0


def cmd_toy_checkpoints(a) -> int:
    from harness.toy.paths import PIPELINES
    from harness.toy.submissions import make_checkpoints, plan_worlds, write_submissions

    _threads()
    root = Path(a.root).resolve()
    worlds = list(PIPELINES) if a.world == "all" else [a.world]
    # every world's methods are decided before the first erasure: a method a world cannot run is
    # refused up front (that world named) or skipped with a notice (--world all), never mid-way
    plan, notices = plan_worlds(worlds, a.method, every_world=a.world == "all")
    for line in notices:
        print(line, file=sys.stderr)
    for world, methods in plan.items():
        for d in make_checkpoints(root, tuple(methods), force=a.force, world=world):
            print(f"checkpoint {d.relative_to(root)}")
    for p in write_submissions(root):
        print(f"wrote {p.relative_to(root)}")
    return 0


def cmd_toy_reproduce(a) -> int:
    """Re-make committed toy checkpoints here and compare them with the committed ones by
    harness.run.reproduce's rule: how this machine's float output relates to the committed files."""
    import tempfile

    from harness.methods import METHODS, REGISTRY, run_erase_isolated
    from harness.methods import method_tolerance
    from harness.run.reproduce import compare_checkpoint, fingerprint, platform_differences
    from harness.toy.paths import PIPELINES, world_of_base
    from harness.toy.submissions import committed_methods

    from harness.gate.regression import method_record

    root = Path(a.root).resolve()
    # by default the closed-form ones (MethodInfo.tolerance): seconds; fine-tuned ones take minutes each
    wanted = set(a.method or (m for m in committed_methods() if REGISTRY.get(m).tolerance == "closed_form"))
    records = []
    for d in sorted((root / "submissions" / "checkpoints").glob("*-*-*")):
        if (d / "method.json").is_file() and not (d / "method.json").is_symlink():
            rec = method_record(root, str((d / "method.json").relative_to(root)))  # a one-line error for a bad record
            if rec["method"] in wanted:
                records.append((d, rec))
    if not records:
        raise HarnessError(f"no committed toy checkpoints of {', '.join(sorted(wanted))} under {root / 'submissions' / 'checkpoints'}")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for d, rec in records:
            threads = rec["efficiency"].get("threads")
            threads = threads if isinstance(threads, int) and 1 <= threads <= 256 else 1
            here = fingerprint(threads=threads)
            if rec["method"] not in METHODS:
                raise HarnessError(f"{d / 'method.json'}: method: {rec['method']!r} is not a registered method")
            out = Path(tmp) / d.name
            world = world_of_base(str(rec["base"]["path"]))
            if world is None:
                raise HarnessError(f"{d / 'method.json'}: base.path: {str(rec['base']['path'])[:80]!r} is not a toy world's ({', '.join(PIPELINES)})")
            run_erase_isolated(rec["method"], PIPELINES[world], rec["concept"], out, anchor=rec.get("anchor"), world="toy", force=True,
                               params=rec["params"], preset=rec.get("preset"), threads=threads)
            c = compare_checkpoint(out, d, method_tolerance, current=here)
            bad += not c.ok
            where = "same platform" if c.same_platform else "another platform: " + "; ".join(platform_differences(rec.get("platform"), here))
            print(f"{d.relative_to(root)}: {c.line()} [{where}]", flush=True)
    print(f"{len(records) - bad} of {len(records)} re-made checkpoints reproduce the committed ones" + (f"; {bad} differ" if bad else ""))
    return 1 if bad else 0


def cmd_erase(a) -> int:
    from harness.run.estimate import resolve_device
    from harness.methods import run_erase

    _threads()
    kw = dict(anchor=a.anchor, world=a.world, kind=a.kind, force=a.force, allow_subword=a.allow_subword, device=resolve_device(a.device),
              params=dict(a.param or []), preset=a.preset)
    if a.repeats > 1:
        import torch

        from harness.methods import erase_repeated

        rec = erase_repeated(a.repeats, a.method, a.base, a.concept, a.out, threads=torch.get_num_threads(), **kw)
    else:
        rec = run_erase(a.method, a.base, a.concept, a.out, **kw)
    e = rec["efficiency"]
    spread = ""
    if "repeats" in e:
        t = e["repeats"]["time_s"]
        spread = f" (mean of {len(t)} runs, {min(t):.2f}-{max(t):.2f} s{'' if e['repeats']['same_checkpoint'] else '; the runs wrote different tensors'})"
    print(f"wrote {a.out}: {rec['checkpoint']['tensors']} tensors, {e['storage_bytes']} bytes, {e['time_s']:.2f} s{spread}, sha256 {rec['checkpoint']['sha256']}")
    return 0


def add(sub) -> None:
    """The ``toy`` and ``erase`` commands, in ``unlearn --help`` order."""
    from harness.methods import METHODS
    from harness.toy.paths import CLASSIFIER_DIR as CLF

    toy = sub.add_parser("toy", help="the toy concept world").add_subparsers(dest="toy_cmd", required=True)
    t = toy.add_parser("train-classifier", help="train the toy classifier from scratch (a few minutes)")
    t.add_argument("--out", default=str(CLF))
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_toy_train_classifier)
    t = toy.add_parser("train-model", help="train a toy text-to-image pipeline from scratch (about 55 minutes on 2 cores)")
    t.add_argument("--world", choices=["toy", "toy-xl"], default="toy",
                   help="toy: the SD-1.x architecture; toy-xl: SDXL's (two text encoders, micro-conditioning; the toy VAE reused)")
    t.add_argument("--out", default=None, help="output folder (default: the world's committed pipeline folder)")
    t.add_argument("--vae-steps", type=int, default=1500)
    t.add_argument("--unet-steps", type=int, default=None, help="default: the committed pipeline's (toy 5000, toy-xl 4000)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_toy_train_model)
    t = toy.add_parser("grid", help="write a prompt x seed grid of generations")
    t.add_argument("--out", required=True)
    t.add_argument("--world", choices=["toy", "toy-xl"], default="toy", help="whose committed pipeline (unless --model names one)")
    t.add_argument("--model", default=None, help="a toy pipeline folder (default: the --world's)")
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
    t.add_argument("--world", choices=["toy", "toy-xl"], default="toy", help="whose committed pipeline (unless --model names one)")
    t.add_argument("--model", default=None, help="a toy pipeline folder (default: the --world's)")
    t.set_defaults(func=cmd_toy_quality)

    t = toy.add_parser("checkpoints", help="(re)make the reference methods' toy checkpoints and submission YAMLs")
    t.add_argument("--root", default=".", help="repository root")
    t.add_argument("--method", action="append", choices=sorted(METHODS), help="only these methods (repeatable)")
    t.add_argument("--force", action="store_true", help="re-run methods whose checkpoint exists")
    t.add_argument("--world", choices=["toy", "toy-xl", "all"], default="all",
                   help="which toy world's checkpoints (each world's: the committed methods its model family runs)")
    t.set_defaults(func=cmd_toy_checkpoints)

    t = toy.add_parser("reproduce", help="re-make committed toy checkpoints here and compare them with the committed ones "
                                         "(bitwise on the same platform, else within the method's tolerance)")
    t.add_argument("--root", default=".", help="repository root")
    t.add_argument("--method", action="append", choices=sorted(METHODS), help="only these methods (repeatable; default: the closed-form ones, uce and rece)")
    t.set_defaults(func=cmd_toy_reproduce)

    e = sub.add_parser("erase", help="run a reference unlearning method; writes the changed tensors + method.json")
    e.add_argument("method", choices=sorted(METHODS))
    e.add_argument("--base", required=True, help="diffusers pipeline folder")
    e.add_argument("--concept", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--anchor", default=None, help="concept the erased one is mapped to (UCE); default: another concept of its kind (toy)")
    e.add_argument("--prompts", "--world", dest="world", choices=["authors", "toy", "generic"], default=None,
                   help="where the prompts come from: authors (what the method's authors feed their script: phrase, anchor, "
                        "preserve set), toy (the toy world's templates: every context of the concept) or generic (the bare "
                        "concept, anchor ''); default: authors with a paper preset, else toy for a toy-world concept, else generic")
    e.add_argument("--kind", choices=["style", "object"], default=None,
                   help="the concept's kind, which picks the authors' anchor (UCE: 'art' for a style); default: its toy-world kind, else object")
    e.add_argument("--param", action="append", type=param, metavar="KEY=VALUE", help="method parameter (repeatable), e.g. steps=400")
    e.add_argument("--device", default="cpu", type=typed("--device", device))
    e.add_argument("--preset", choices=["paper", "paper-sdxl", "toy"], default=None,
                   help="the method's parameter set: paper (the authors' published settings), paper-sdxl (their SDXL settings, "
                        "where a method has them: esd) or toy (tuned on the toy worlds); default: toy on a builtin toy world, else "
                        "paper-sdxl on an SDXL base where the method has it, else paper; --param values override it")
    e.add_argument("--repeats", type=typed("--repeats", positive_count), default=1, metavar="N",
                   help="run the erasure N times, each in a fresh process; method.json records every run's time and peak memory "
                        "and the results give their mean with a 95%% interval (default 1: a single run)")
    e.add_argument("--force", action="store_true", help="overwrite --out")
    e.add_argument("--allow-subword", action="store_true", help="allow a concept word that is not a single token")
    e.set_defaults(func=cmd_erase)
