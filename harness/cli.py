"""The ``unlearn`` command: toy world, erasure methods, validation, schema.

Exit codes: 0 fine; 2 bad input or usage, reported on stderr as one line per problem, never a
traceback (``unlearn: error: ...``; ``validate`` prints ``file: field: what`` for each problem
of each file, ``check`` the first problem of each submission); 1 a regression (``compare``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from .errors import HarnessError


def _threads() -> None:
    from .threads import apply

    apply()  # UNLEARN_THREADS, else the cores left free by the machine's load (harness/threads.py)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``unlearn validate: error: ...``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
    from .methods import METHODS
    from .toy.submissions import make_checkpoints, write_submissions

    _threads()
    root = Path(a.root).resolve()
    for d in make_checkpoints(root, tuple(a.method or sorted(METHODS)), force=a.force):
        print(f"checkpoint {d.relative_to(root)}")
    for p in write_submissions(root):
        print(f"wrote {p.relative_to(root)}")
    return 0


# ----------------------------------------------------------------------------- methods
def cmd_erase(a) -> int:
    from .methods import run_erase

    _threads()
    rec = run_erase(a.method, a.base, a.concept, a.out, anchor=a.anchor, world=a.world, force=a.force,
                    allow_subword=a.allow_subword, device=a.device, params=dict(a.param or []), preset=a.preset)
    e = rec["efficiency"]
    print(f"wrote {a.out}: {rec['checkpoint']['tensors']} tensors, {e['storage_bytes']} bytes, {e['time_s']:.2f} s, sha256 {rec['checkpoint']['sha256']}")
    return 0


# ----------------------------------------------------------------------------- specs
def cmd_validate(a) -> int:
    from .bundle import expand, is_set
    from .fsutil import find_root
    from .spec import SpecErrors, is_suite_file, load_submission, load_suite, read_yaml

    bad = 0
    for f in a.files:
        try:
            data = read_yaml(f)
            if is_set(data):  # a submission set: its members exist and are submissions (checked below, one by one)
                print(f"{f}: ok (submission set: {', '.join(expand(f, find_root([f])))})")
                continue
            (load_suite if is_suite_file(data) else load_submission)(f)
            print(f"{f}: ok")
        except SpecErrors as e:
            bad += 1
            for line in e.lines:
                print(line, file=sys.stderr)
        except HarnessError as e:
            bad += 1
            print(str(e), file=sys.stderr)
        except OSError as e:
            bad += 1
            print(f"{f}: {e.strerror or e}", file=sys.stderr)
    return 2 if bad else 0


def cmd_check(a) -> int:
    """Everything the harness checks before generating, for each submission (no model loads)."""
    from .bundle import expand
    from .check import prepare
    from .fsutil import cache_dir, find_root
    from .spec import SpecErrors

    root = Path(a.root) if a.root else find_root(a.files)
    cache = cache_dir(root, a.cache)
    bad = 0
    files = []
    for f in a.files:  # a submission set (submissions/uce.yaml) stands for its members
        try:
            files += [m for m in expand(f, root) if m not in files]
        except HarnessError as e:
            print(f"unlearn: error: {e}", file=sys.stderr)
            bad += 1
    for f in files:
        try:
            sub, suites, lines = prepare(f, root, cache, a.allow_pickle, set(a.suite or ()) or None)
            lines.append(_estimate(f, sub, suites, root, cache, set(a.suite or ()) or None))
        except SpecErrors as e:  # each line starts with its file: the submission or a suite
            where = e.lines[0].split(": ", 1)[0]
            more = f" (and {len(e.lines) - 1} more: `unlearn validate {where}` lists them)" if len(e.lines) > 1 else ""
            print(f"unlearn: error: {e.lines[0]}{more}", file=sys.stderr)
            bad += 1
            continue
        except HarnessError as e:
            msg = str(e).replace("\n", " ")
        except OSError as e:
            msg = f"{e.strerror or e}"
        else:
            print(f"{f}: ok")
            for line in lines:
                print(f"  {line}")
            continue
        bad += 1
        named = msg.startswith(str(f)) or re.match(r"^\S+\.ya?ml: ", msg)  # names its file already
        print(f"unlearn: error: {msg if named else f'{f}: {msg}'}", file=sys.stderr)
    return 2 if bad else 0


def cmd_fetch(a) -> int:
    """Download (or find) and verify every file a suite or submission names (harness/pinning.py)."""
    from .fsutil import cache_dir
    from .pinning import fetch_all

    root = Path(a.root)
    for target in a.targets:
        for line in fetch_all(target, root, cache_dir(root, a.cache), progress=not a.quiet):
            print(line)
    return 0


def cmd_pin(a) -> int:
    """Write suites/locks/<id>.lock.yaml: the sha256 of every file the suite names."""
    from .fsutil import cache_dir
    from .pinning import pin_suite

    root = Path(a.root)
    for suite in a.suites:
        lp, pins = pin_suite(suite, root, cache_dir(root, a.cache), progress=not a.quiet)
        print(f"{lp}: {len(pins)} file(s) pinned")
        for k, v in pins.items():
            print(f"  {k}: {v['sha256']}  {v['source']}")
    return 0


def cmd_convert(a) -> int:
    """A pickle / CompVis checkpoint -> safetensors of the tensors changed vs the base (harness/convert.py)."""
    from .convert import convert

    r = convert(a.checkpoint, a.out, base=a.base, kind=a.kind, atol=a.atol, root=Path(a.root))
    print(f"{r['out']}: {r['changed']} changed {r['kind'].replace('_', ' ')} tensor(s) kept, {r['unchanged']} equal to the base left out, "
          f"{r['stripped']} training-state entries stripped ({r['layout']} layout)")
    if r["kind"] == "plain":
        print(f"sha256: {r['sha256']}")
    else:
        print(f"checkpoint:\n  kind: {r['kind']}\n  path: {r['out']}\n  sha256: {r['sha256']}")
    return 0
def _estimate(path, sub, suites, root, cache, only) -> str:
    """The run's time from measured speed (``harness.estimate``); never an error of the check."""
    try:
        from . import estimate
        from .threads import choose

        plans = estimate.plan(str(path), sub, suites, root, cache, "auto", False, only)
        return estimate.summary_line(plans, cache, estimate.device_key(estimate.resolve_device("auto"), choose()[0])) + " (full suites)"
    except Exception as e:  # noqa: BLE001
        return f"estimate: unavailable ({type(e).__name__})"


def cmd_schema(a) -> int:
    from .spec import Submission, Suite

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, cls in (("submission", Submission), ("suite", Suite)):
        (out / f"{name}.schema.json").write_text(json.dumps(cls.model_json_schema(), indent=2) + "\n")
    print(f"wrote {out}/submission.schema.json and {out}/suite.schema.json")
    return 0


def cmd_compare(a) -> int:
    from .compare import compare, current_rules, format_rows, gate_failures, load_result, refuse_mismatch

    new, baseline = load_result(a.new), load_result(a.baseline)
    refuse_mismatch(new, baseline, allow={"checkpoint"} if a.allow_other_checkpoint else set())
    rows = compare(new, baseline, current_rules(Path(a.root)) if a.root else None)
    print(format_rows(rows))
    bad = gate_failures(rows)
    print(f"{len(bad)} of {len(rows)} metrics regressed or missing" if bad else f"no regression in {len(rows)} metrics")
    return 1 if bad else 0


def cmd_pr_check(a) -> int:
    from .prcheck import pr_check

    todo = pr_check(Path(a.root), a.base, a.head)
    for p in todo:
        print(p)
    return 0


def cmd_summary(a) -> int:
    from .compare import load_result
    from .summary import markdown, side_by_side

    bad = 0
    loaded = []
    for f in a.files:
        try:
            loaded.append((load_result(f), f))
        except HarnessError as e:
            bad += 1
            print(f"unlearn: error: {e}", file=sys.stderr)
    if len(loaded) > 1:  # several files: one table side by side, with the change from the first
        print(side_by_side(loaded))
    if len(loaded) == 1 or a.each:
        for r, f in loaded:
            print(markdown(r, f))
    return 2 if bad else 0


def cmd_hash(a) -> int:
    """The sha256 the harness expects in a submission for a file or folder checkpoint (a folder:
    sha256 over its sorted manifest of relative path + file sha256, hidden files left out), the
    same function ``checkpoint.sha256`` is verified with."""
    from .hashing import sha256_file, sha256_tree

    bad = 0
    for f in a.paths:
        p = Path(f)
        if not p.exists():
            print(f"unlearn: error: {f}: no such file or folder", file=sys.stderr)
            bad += 1
            continue
        kind = "folder" if p.is_dir() else "file"
        print(f"{sha256_tree(p) if p.is_dir() else sha256_file(p)}  {f}" + (f"  ({kind})" if a.verbose else ""))
    return 2 if bad else 0


def cmd_regress(a) -> int:
    from .regression import regress

    _threads()
    methods = set(a.method) if a.method else None
    extra = (["--unlearn-smoke"] if a.smoke else []) + [f"--unlearn-suite={s}" for s in a.suite or ()]
    if a.method_seeds < 1:
        raise HarnessError(f"--method-seeds: {a.method_seeds} is not a positive count")
    if a.method_cmd is not None:  # a researcher's own method: --submission is the YAML to re-make
        from .regress_cmd import regress_own

        if len(a.submission or ()) != 1:
            raise HarnessError("--method-cmd: give exactly one --submission YAML (the submission whose checkpoint the command re-makes)")
        return regress_own(Path(a.root), a.submission[0], a.method_cmd, Path(a.out), a.baseline, extra)
    if a.baseline is not None:
        raise HarnessError("--baseline: only with --method-cmd (the reference gate reads --baselines)")
    return regress(Path(a.root), Path(a.baselines), Path(a.out), methods=methods, only=set(a.submission or ()) or None, pytest_args=extra,
                   method_seeds=a.method_seeds)


def cmd_power(a) -> int:
    from .compare import load_result
    from .fsutil import cache_dir
    from .power import report

    root = Path(a.root)
    print(report(root, a.suite, [load_result(f) for f in a.results or ()], cache_dir(root, None), a.smoke))
    return 0


# ----------------------------------------------------------------------------- leaderboard
def cmd_leaderboard_build(a) -> int:
    from .leaderboard import build

    n = build(a.results, a.out, include_smoke=a.include_smoke, require_attestation=a.require_attestation)
    bad = f", {n['images_unavailable']} image(s) unavailable" if n["images_unavailable"] else ""
    print(f"wrote {a.out}: {n['submissions']} submission(s) from {n['files']} results file(s), {n['records']} records, "
          f"{n['suites']} suite table(s), {n['images']} image(s){bad}; open {Path(a.out) / 'index.html'}")
    return 0


def cmd_leaderboard_attest(a) -> int:
    from .attest import write_manifest

    if not Path(a.results).is_dir():
        raise HarnessError(f"--results {a.results}: no such folder")
    print(f"wrote {write_manifest(Path(a.results), 'unlearn leaderboard attest')}")
    return 0


def cmd_leaderboard_refresh(a) -> int:
    from .leaderboard import default_submissions, refresh

    if a.workers is not None and a.workers < 1:
        raise HarnessError(f"--workers: {a.workers} is not a positive number")
    r = refresh(a.submissions or default_submissions(), a.out, a.cache, a.workers, allow_incomplete=a.allow_incomplete)
    i = r["images"]
    print(f"wrote {', '.join(r['written'])}; images: {i['copied']} copied, {i['kept']} already there, {i['missing']} missing, "
          f"{i['pruned']} no longer referenced removed ({r['seconds']} s)")
    return 0


def parser() -> argparse.ArgumentParser:
    from .methods import METHODS
    from .toy.classifier import DEFAULT_DIR as CLF
    from .toy.model import DEFAULT_DIR as PIPE

    p = _Parser(prog="unlearn", description="Evaluate concept erasure in text-to-image diffusion models.")
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
    e.add_argument("--preset", choices=["paper", "toy"], default=None,
                   help="the method's parameter set: paper (the authors' published settings) or toy (tuned on the toy world); "
                        "default: toy on the builtin toy world, else paper; --param values override it")
    e.add_argument("--force", action="store_true", help="overwrite --out")
    e.add_argument("--allow-subword", action="store_true", help="allow a concept word that is not a single token")
    e.set_defaults(func=cmd_erase)

    c = sub.add_parser("compare", help="regression gate: exit 1 when a metric of NEW is worse than BASELINE beyond its tolerance")
    c.add_argument("new")
    c.add_argument("baseline")
    c.add_argument("--root", default=None, help="repository whose suites/ give tolerances and directions (default: the harness's own checkout)")
    c.add_argument("--allow-other-checkpoint", action="store_true", help="compare runs of a re-made checkpoint (other sha256)")
    c.set_defaults(func=cmd_compare)

    r = sub.add_parser("regress", help="regression gate: re-run the reference methods on the toy world, evaluate, compare with the baselines")
    r.add_argument("--baselines", default="leaderboard/results", help="committed results JSON (default leaderboard/results)")
    r.add_argument("--out", default=".regression", help="checkpoints, submissions, results and image cache of the re-run (inside the repo)")
    r.add_argument("--root", default=".", help="repository root")
    r.add_argument("--method", action="append", help="only submissions of these methods (repeatable; 'control' = no method record)")
    r.add_argument("--submission", action="append", help="only these submission names (repeatable); with --method-cmd: the submission YAML")
    r.add_argument("--suite", action="append", help="only these suites (repeatable; the baselines must hold them)")
    r.add_argument("--smoke", action="store_true", help="smoke subsets (the baselines must be smoke results too)")
    r.add_argument("--method-seeds", type=int, default=1, metavar="N", help="also re-train each method with N - 1 more training seeds and print the spread of every metric")
    r.add_argument("--method-cmd", metavar="CMD", help="re-run your own method: a shell command that writes the new checkpoint to {out}/<the checkpoint's file name>; with one --submission YAML")
    r.add_argument("--baseline", metavar="RESULTS.json", help="with --method-cmd: the results to compare with (default: the newest of the same submission and method)")
    r.set_defaults(func=cmd_regress)
    pw = sub.add_parser("power", help="minimum detectable effect of a suite at its size (prompts x seeds), 80% power, alpha 0.05")
    pw.add_argument("suite", help="suite id (suites/ID.yaml)")
    pw.add_argument("--results", action="append", help="results JSON holding the suite: SE from its intervals (repeatable)")
    pw.add_argument("--smoke", action="store_true", help="the smoke subset's size")
    pw.add_argument("--root", default=".", help="repository root")
    pw.set_defaults(func=cmd_power)
    t = sub.add_parser("pr-check", help="what a submission PR changed, from git: refuses changes outside submissions/, tracked caches, links, twice-used names; prints the YAMLs to evaluate")
    t.add_argument("--base", required=True, help="the base branch's commit")
    t.add_argument("--head", default="HEAD", help="the pull request's commit (default HEAD)")
    t.add_argument("--root", default=".", help="the git repository (default .)")
    t.set_defaults(func=cmd_pr_check)
    m = sub.add_parser("summary", help="Markdown table of results JSON files (for a CI job summary); several files: one table side by side with deltas")
    m.add_argument("files", nargs="+")
    m.add_argument("--each", action="store_true", help="with several files, also print each file's own table")
    m.set_defaults(func=cmd_summary)
    im = sub.add_parser("images", help="write every image of a run as an HTML grid page (base | unlearned, by prompt and seed)")
    im.add_argument("results", metavar="RESULTS.json")
    im.add_argument("--suite", action="append", metavar="S", help="only these suites (repeatable)")
    im.add_argument("--out", required=True, metavar="DIR", help="folder for index.html + images/ (new, empty, or an earlier page)")
    im.add_argument("--cache", default=None, help="image cache (default .unlearn-cache in the repository, or $UNLEARN_CACHE)")
    im.add_argument("--root", default=None, help="repository root (default: found from the results file, like pytest's rootdir)")
    im.set_defaults(func=lambda a: __import__("harness.images", fromlist=["cmd"]).cmd(a))
    h = sub.add_parser("hash", help="print the sha256 a submission must pin for a checkpoint file or folder (LoRA, pipeline)")
    h.add_argument("paths", nargs="+", metavar="PATH")
    h.add_argument("-v", "--verbose", action="store_true", help="say file or folder")
    h.set_defaults(func=cmd_hash)

    lb = sub.add_parser("leaderboard", help="the leaderboard site").add_subparsers(dest="leaderboard_cmd", required=True)
    t = lb.add_parser("build", help="build the static site from results JSON files")
    t.add_argument("--results", default="leaderboard/results", help="folder of results JSON files (default leaderboard/results)")
    t.add_argument("--out", default="site", help="site folder, replaced when it holds an earlier build (default site)")
    t.add_argument("--include-smoke", action="store_true", help="show smoke runs, apart from the full runs (default: left out, each named on stderr)")
    t.set_defaults(func=cmd_leaderboard_build)
    t.add_argument("--require-attestation", action="store_true", help="refuse a results folder without ATTESTATION.json (the Pages workflow)")
    t = lb.add_parser("attest", help="write ATTESTATION.json: the sha256 of every results file (trusted workflows only; HMAC with $UNLEARN_ATTEST_KEY)")
    t.add_argument("--results", default="leaderboard/results")
    t.set_defaults(func=cmd_leaderboard_attest)
    t = lb.add_parser("refresh", help="run the harness on the toy submissions; copy their results and sample images")
    t.add_argument("--submissions", nargs="+", metavar="YAML", help="submission files (default submissions/toy-*.yaml)")
    t.add_argument("--out", default="leaderboard/results", help="where results JSON + images/ go (default leaderboard/results)")
    t.add_argument("--cache", default=None, help="image cache (default .unlearn-cache in the repository, or $UNLEARN_CACHE)")
    t.add_argument("--workers", type=int, default=None, help="pytest-xdist workers (default: one process)")
    t.add_argument("--allow-incomplete", action="store_true", help="copy a run that did not finish every suite (refused by default)")
    t.set_defaults(func=cmd_leaderboard_refresh)

    v = sub.add_parser("validate", help="check submission / suite YAML files")
    v.add_argument("files", nargs="+")
    v.set_defaults(func=cmd_validate)
    k = sub.add_parser("check", help="everything the harness checks before generating (files, sha256, tensor shapes vs the base, concepts, suites); no model loads")
    k.add_argument("files", nargs="+", metavar="SUBMISSION")
    k.add_argument("--suite", action="append", metavar="ID", help="only these suites of the submission (repeatable)")
    k.add_argument("--root", default=None, help="repository root (default: found like pytest's rootdir, the nearest folder up from the submission with pyproject.toml / pytest.ini / tox.ini / setup.cfg)")
    k.add_argument("--cache", default=None, help="download cache for checkpoints / prompt sets by URL (default .unlearn-cache in the root, or $UNLEARN_CACHE)")
    k.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (.ckpt/.bin/.pt): only for files you trust")
    k.set_defaults(func=cmd_check)
    f = sub.add_parser("fetch", help="download and verify every file a suite or submission names (hub files into the Hugging Face cache)")
    f.add_argument("targets", nargs="+", metavar="SUITE|SUBMISSION|hub:REPO@COMMIT[:FILE]|URL")
    f.add_argument("--root", default=".")
    f.add_argument("--cache", default=None, help="harness cache for URL files (default $UNLEARN_CACHE, else .unlearn-cache)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(func=cmd_fetch)
    f = sub.add_parser("pin", help="write suites/locks/<id>.lock.yaml with the sha256 of every file the suite names")
    f.add_argument("suites", nargs="+", metavar="SUITE")
    f.add_argument("--root", default=".")
    f.add_argument("--cache", default=None)
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=cmd_pin)
    f = sub.add_parser("convert", help="pickle (.ckpt .pth .pt .bin) or CompVis checkpoint -> safetensors of the tensors changed vs the base")
    f.add_argument("checkpoint")
    f.add_argument("--out", required=True, help="the .safetensors file to write")
    f.add_argument("--base", default="toy", help="toy, a diffusers pipeline folder, or hub:REPO@COMMIT (from the Hugging Face cache)")
    f.add_argument("--kind", choices=["auto", "unet", "text_encoder", "plain"], default="auto",
                   help="plain: every tensor as it is (scorer weights), no base and no diff")
    f.add_argument("--atol", type=float, default=0.0, help="treat tensors within this absolute difference of the base's as unchanged")
    f.add_argument("--root", default=".")
    f.set_defaults(func=cmd_convert)
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
    except BrokenPipeError:  # `unlearn check ... | head -1`: the reader left; not an error of ours
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except OSError as e:  # disk full, permission denied, ...: one line, not a traceback
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"unlearn: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
