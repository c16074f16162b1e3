"""The ``unlearn`` commands over inputs, before anything runs: ``validate``, ``check``, ``fetch``,
``pin``, ``convert``, ``schema`` and ``hash``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from harness.errors import HarnessError


def cmd_validate(a) -> int:
    from harness.spec.bundle import expand, is_set
    from harness.store.fsutil import find_root
    from harness.spec import SpecErrors, is_suite_file, load_submission, load_suite, read_yaml

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
    from harness.spec.bundle import expand
    from harness.resolve.check import prepare
    from harness.store.fsutil import cache_dir, find_root
    from harness.spec import SpecErrors

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
            resolved = prepare(f, root, cache, a.allow_pickle, set(a.suite or ()) or None)
            lines = list(resolved.checked)
            lines.append(_estimate(f, resolved, resolved.suites, root, cache, set(a.suite or ()) or None))
            if getattr(a, "pr_minutes", None) is not None:
                lines.append(_pr_limit(f, resolved, resolved.suites, root, cache, set(a.suite or ()) or None, a.pr_minutes))
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
    """Download (or find) and verify every file a suite or submission names (harness/resolve/pinning.py)."""
    from harness.store.fsutil import cache_dir
    from harness.resolve.pinning import fetch_all

    root = Path(a.root)
    for target in a.targets:
        for line in fetch_all(target, root, cache_dir(root, a.cache), progress=not a.quiet):
            print(line)
    return 0


def cmd_pin(a) -> int:
    """Write suites/locks/<id>.lock.yaml: the sha256 of every file the suite names."""
    from harness.store.fsutil import cache_dir
    from harness.resolve.pinning import pin_suite

    root = Path(a.root)
    for suite in a.suites:
        lp, pins = pin_suite(suite, root, cache_dir(root, a.cache), progress=not a.quiet)
        print(f"{lp}: {len(pins)} file(s) pinned")
        for k, v in pins.items():
            print(f"  {k}: {v['sha256']}  {v['source']}")
    return 0


def cmd_convert(a) -> int:
    """A pickle / CompVis checkpoint -> safetensors of the tensors changed vs the base (harness/resolve/convert.py)."""
    from harness.resolve.convert import convert

    r = convert(a.checkpoint, a.out, base=a.base, kind=a.kind, atol=a.atol, root=Path(a.root))
    print(f"{r['out']}: {r['changed']} changed {r['kind'].replace('_', ' ')} tensor(s) kept, {r['unchanged']} equal to the base left out, "
          f"{r['stripped']} training-state entries stripped ({r['layout']} layout)")
    if r["kind"] == "plain":
        print(f"sha256: {r['sha256']}")
    else:
        print(f"checkpoint:\n  kind: {r['kind']}\n  path: {r['out']}\n  sha256: {r['sha256']}")
    return 0


def _estimate(path, sub, suites, root, cache, only) -> str:
    """The run's time from measured speed (``harness.run.estimate``); never an error of the check."""
    try:
        from harness.run import estimate
        from harness.run.threads import choose

        plans = estimate.plan(str(path), sub, suites, root, cache, "auto", False, only)
        return estimate.summary_line(plans, cache, estimate.device_key(estimate.resolve_device("auto"), choose()[0])) + " (full suites)"
    except Exception as e:  # noqa: BLE001
        return f"estimate: unavailable ({type(e).__name__})"


def _pr_limit(path, sub, suites, root, cache, only, minutes: float) -> str:
    """A pull request's run (``--pr-minutes``, the submission workflow): the smoke run's
    estimate (``harness.run.estimate``, the device this check runs on) above ``minutes`` is refused
    in one line, so a submission cannot make the CI run for hours; an estimate that cannot be
    made is refused too (the run's size is then unknown)."""
    from harness.run import estimate
    from harness.run.threads import choose

    try:
        plans = estimate.plan(str(path), sub, suites, root, cache, "auto", True, only)
        secs, how = estimate.seconds(plans, cache, estimate.device_key(estimate.resolve_device("auto"), choose()[0]))
    except HarnessError:
        raise
    except Exception as e:  # noqa: BLE001 (the estimate reads specs and the speed file; any failure means an unknown size)
        raise HarnessError(f"--pr-minutes: the smoke run's time cannot be estimated ({type(e).__name__}); refused for a pull request") from None
    if not secs <= minutes * 60:
        raise HarnessError(f"--pr-minutes: the smoke run is estimated at {estimate.fmt_duration(secs)} ({how}), over the "
                           f"pull-request limit of {minutes:g} minutes; make the checkpoint's suites or sizes smaller")
    return f"pull-request limit: smoke run estimated at {estimate.fmt_duration(secs)}, within {minutes:g} minutes"


def _minutes(text: str) -> float:
    import argparse
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive, finite number of minutes")
    return v


def cmd_schema(a) -> int:
    from harness.spec import Submission, Suite

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, cls in (("submission", Submission), ("suite", Suite)):
        (out / f"{name}.schema.json").write_text(json.dumps(cls.model_json_schema(), indent=2) + "\n")
    print(f"wrote {out}/submission.schema.json and {out}/suite.schema.json")
    return 0


def cmd_hash(a) -> int:
    """The sha256 the harness expects in a submission for a file or folder checkpoint (a folder:
    sha256 over its sorted manifest of relative path + file sha256, hidden files left out), the
    same function ``checkpoint.sha256`` is verified with."""
    from harness.store.hashing import sha256_file, sha256_tree

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


def add_hash(sub) -> None:
    h = sub.add_parser("hash", help="print the sha256 a submission must pin for a checkpoint file or folder (LoRA, pipeline)")
    h.add_argument("paths", nargs="+", metavar="PATH")
    h.add_argument("-v", "--verbose", action="store_true", help="say file or folder")
    h.set_defaults(func=cmd_hash)


def add(sub) -> None:
    """validate, check, fetch, pin, convert, schema (``unlearn --help`` order)."""
    v = sub.add_parser("validate", help="check submission / suite YAML files")
    v.add_argument("files", nargs="+")
    v.set_defaults(func=cmd_validate)
    k = sub.add_parser("check", help="everything the harness checks before generating (files, sha256, tensor shapes vs the base, concepts, suites); no model loads")
    k.add_argument("files", nargs="+", metavar="SUBMISSION")
    k.add_argument("--suite", action="append", metavar="ID", help="only these suites of the submission (repeatable)")
    k.add_argument("--root", default=None, help="repository root (default: found like pytest's rootdir, the nearest folder up from the submission with pyproject.toml / pytest.ini / tox.ini / setup.cfg)")
    k.add_argument("--cache", default=None, help="download cache for checkpoints / prompt sets by URL (default .unlearn-cache in the root, or $UNLEARN_CACHE)")
    k.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (.ckpt/.bin/.pt): only for files you trust")
    k.add_argument("--pr-minutes", type=_minutes, default=None, metavar="M", help="a pull request's run (the submission workflow): "
                   "refuse a submission whose smoke run is estimated above M minutes")
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
    f.add_argument("--base", default="toy", help="toy, toy-xl, a diffusers pipeline folder, or hub:REPO@COMMIT (from the Hugging Face cache)")
    f.add_argument("--kind", choices=["auto", "unet", "text_encoder", "text_encoder_2", "plain"], default="auto",
                   help="the component to take (a single file holds several; text_encoder_2: SDXL's second, OpenCLIP, encoder); "
                   "plain: every tensor as it is (scorer weights), no base and no diff")
    f.add_argument("--atol", type=float, default=0.0, help="treat tensors within this absolute difference of the base's as unchanged")
    f.add_argument("--root", default=".")
    f.set_defaults(func=cmd_convert)
    s = sub.add_parser("schema", help="write JSON Schema files for editors")
    s.add_argument("--out", default="schemas")
    s.set_defaults(func=cmd_schema)
