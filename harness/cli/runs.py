"""The ``unlearn`` commands over runs and their results: ``compare`` (the regression gate),
``regress`` (re-run and gate), ``power``, ``pr-check``, ``summary`` and ``images``."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.options import positive_count, typed
from harness.run.threads import apply as _threads  # UNLEARN_THREADS, else the cores left free by the machine's load


def cmd_compare(a) -> int:
    from harness.gate.compare import compare, current_rules, format_rows, gate_failures, load_result, refuse_mismatch

    new, baseline = load_result(a.new), load_result(a.baseline)
    refuse_mismatch(new, baseline, allow={"checkpoint"} if a.allow_other_checkpoint else set())
    rows = compare(new, baseline, current_rules(Path(a.root)) if a.root else None)
    print(format_rows(rows))
    bad = gate_failures(rows)
    print(f"{len(bad)} of {len(rows)} metrics regressed or missing" if bad else f"no regression in {len(rows)} metrics")
    return 1 if bad else 0


def cmd_pr_check(a) -> int:
    from harness.gate.prcheck import pr_check

    todo = pr_check(Path(a.root), a.base, a.head)
    for p in todo:
        print(p)
    return 0


def cmd_images(a) -> int:
    from harness.gate.images import cmd

    return cmd(a)


def cmd_summary(a) -> int:
    from harness.gate.compare import load_result
    from harness.gate.summary import markdown, side_by_side

    from harness.results.attest import existing_names
    from harness.gate.compare import ROOT

    bad = 0
    loaded = []
    for f in a.files:
        try:
            loaded.append((load_result(f), f))
        except HarnessError as e:
            bad += 1
            print(f"unlearn: error: {e}", file=sys.stderr)
    existing = existing_names(ROOT)  # the entries of the checkout (the base branch in CI)
    if len(loaded) > 1:  # several files: one table side by side, with the change from the first
        print(side_by_side(loaded))
    if len(loaded) == 1 or a.each:
        for r, f in loaded:
            print(markdown(r, f, existing))
    return 2 if bad else 0


def cmd_regress(a) -> int:
    from harness.gate.regression import regress

    _threads()
    methods = set(a.method) if a.method else None
    extra = (["--unlearn-smoke"] if a.smoke else []) + [f"--unlearn-suite={s}" for s in a.suite or ()]
    if a.method_cmd is not None:  # a researcher's own method: --submission is the YAML to re-make
        from harness.gate.regress_cmd import regress_own

        if len(a.submission or ()) != 1:
            raise HarnessError("--method-cmd: give exactly one --submission YAML (the submission whose checkpoint the command re-makes)")
        return regress_own(Path(a.root), a.submission[0], a.method_cmd, Path(a.out), a.baseline, extra)
    if a.baseline is not None:
        raise HarnessError("--baseline: only with --method-cmd (the reference gate reads --baselines)")
    return regress(Path(a.root), Path(a.baselines), Path(a.out), methods=methods, only=set(a.submission or ()) or None, pytest_args=extra,
                   method_seeds=a.method_seeds)


def cmd_power(a) -> int:
    from harness.gate.compare import load_result
    from harness.store.fsutil import cache_dir
    from harness.stats.power import report

    root = Path(a.root)
    print(report(root, a.suite, [load_result(f) for f in a.results or ()], cache_dir(root, None), a.smoke))
    return 0


def add(sub) -> None:
    """compare, regress, power, pr-check, summary, images (``unlearn --help`` order)."""
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
    r.add_argument("--method", action="append", help="only submissions of these methods (repeatable; 'control' = the no-erasure control; an inference-time method by its name)")
    r.add_argument("--submission", action="append", help="only these submission names (repeatable); with --method-cmd: the submission YAML")
    r.add_argument("--suite", action="append", help="only these suites (repeatable; the baselines must hold them)")
    r.add_argument("--smoke", action="store_true", help="smoke subsets (the baselines must be smoke results too)")
    r.add_argument("--method-seeds", type=typed("--method-seeds", positive_count), default=1, metavar="N", help="also re-train each method with N - 1 more training seeds and print the spread of every metric")
    r.add_argument("--method-cmd", metavar="CMD", help="re-run your own method: a shell command that writes the new checkpoint to {out}/<the checkpoint's file name>; with one --submission YAML")
    r.add_argument("--baseline", metavar="RESULTS.json", help="with --method-cmd: the results to compare with (default: the newest of the same submission and method)")
    r.set_defaults(func=cmd_regress)
    pw = sub.add_parser("power", help="minimum detectable effect of a suite at its size (prompts x seeds), 80%% power, alpha 0.05")
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
    im.set_defaults(func=cmd_images)
