"""The ``unlearn`` command: its parser, the ``leaderboard`` commands and ``main``. The other
command groups live beside it: ``toy`` (toy world, ``erase``), ``runs`` (compare, regress,
power, pr-check, summary, images), ``inputs`` (validate, check, fetch, pin, convert, schema,
hash). Option values shared with the pytest plugin are parsed by the ``type=`` callables
of ``harness.options``.

Exit codes: 0 fine; 2 bad input or usage, reported on stderr as one line per problem, never a
traceback (``unlearn: error: ...``; ``validate`` prints ``file: field: what`` for each problem
of each file, ``check`` the first problem of each submission); 1 a regression (``compare``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.errors import HarnessError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``unlearn validate: error: ...``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ----------------------------------------------------------------------------- leaderboard
def method_family_limits() -> dict[str, dict[str, str]]:
    """Registry method name -> {model family -> why the method does not run on it}: for each of
    the harness's own methods whose ``MethodInfo.families`` leaves out a family of
    ``harness.families.names()``, the reason its ``families_why`` gives (else the families it runs
    on). The site shows it as "n/a" (``harness.site.build(unsupported=...)``).

    A method module imports torch on import, which a site build must not pay for: each module's
    ``INFO = MethodInfo(...)`` is read from its source where ``families`` and ``families_why`` are
    literals there (``frozenset({...})``, a set / list / tuple of names, None; text), and the
    module is imported only where they are not. Methods of installed plugins are not loaded (a
    site build runs no third-party code), so they get no "n/a"; ``MethodInfo.needs`` is not checked
    against a family's features (every family offers every feature a method needs today)."""
    from harness import families as fams
    from harness.methods import REGISTRY

    known, plugins = fams.names(), set(REGISTRY.plugin_names())
    out: dict[str, dict[str, str]] = {}
    for name in REGISTRY.names():
        if name in plugins:
            continue
        declared = _declared_families(name)
        if declared is None:  # not literals in its source: the module is imported
            info = REGISTRY.get(name)
            declared = (None if info.families is None else frozenset(info.families), info.families_why)
        runs_on, why = declared
        if runs_on is not None and (missing := [f for f in known if f not in runs_on]):
            out[name] = {f: why or f"{name} runs on {', '.join(sorted(runs_on)) or 'no model family'} only" for f in missing}
    return out


def _declared_families(name: str) -> tuple[frozenset[str] | None, str] | None:
    """(families, families_why) as the source of ``harness.methods.<name>`` declares them in its
    top-level ``INFO = MethodInfo(...)`` (keywords; absent ones their defaults), read without
    importing the module; None where there is no such source or a value is not a literal."""
    import ast
    import importlib.util

    if not name.isidentifier():  # a dotted name would import a package to find it
        return None
    try:
        spec = importlib.util.find_spec(f"harness.methods.{name}")
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8")) if spec is not None and spec.origin else None
    except (ImportError, OSError, SyntaxError, ValueError):
        return None
    calls = [n.value for n in (tree.body if tree is not None else []) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
             and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["INFO"]]
    call = calls[0] if len(calls) == 1 else None
    if call is None or not (isinstance(call.func, ast.Name) and call.func.id == "MethodInfo") or any(k.arg is None for k in call.keywords):
        return None
    kw = {k.arg: k.value for k in call.keywords}
    node = kw.get("families")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("frozenset", "set") and len(node.args) == 1 and not node.keywords:
        node = node.args[0]  # frozenset({"sd1"}): its literal argument
    try:
        runs_on = ast.literal_eval(node) if node is not None else None
        why = ast.literal_eval(kw["families_why"]) if "families_why" in kw else ""
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None
    if not isinstance(why, str) or not (runs_on is None or (isinstance(runs_on, (set, frozenset, list, tuple)) and all(isinstance(f, str) for f in runs_on))):
        return None
    return (None if runs_on is None else frozenset(runs_on)), why


def cmd_leaderboard_build(a) -> int:
    from harness.site import build

    n = build(a.results, a.out, include_smoke=a.include_smoke, require_attestation=a.require_attestation, unsupported=method_family_limits())
    bad = f", {n['images_unavailable']} image(s) unavailable" if n["images_unavailable"] else ""
    print(f"wrote {a.out}: {n['submissions']} submission(s) from {n['files']} results file(s), {n['records']} records, "
          f"{n['suites']} suite table(s), {n['images']} image(s){bad}; open {Path(a.out) / 'index.html'}")
    return 0


def cmd_leaderboard_attest(a) -> int:
    from harness.results.attest import write_manifest

    if not Path(a.results).is_dir():
        raise HarnessError(f"--results {a.results}: no such folder")
    print(f"wrote {write_manifest(Path(a.results), 'unlearn leaderboard attest')}")
    return 0


def cmd_leaderboard_refresh(a) -> int:
    from harness.gate.refresh import default_submissions, refresh

    if a.workers is not None and a.workers < 1:
        raise HarnessError(f"--workers: {a.workers} is not a positive number")
    r = refresh(a.submissions or default_submissions(), a.out, a.cache, a.workers, allow_incomplete=a.allow_incomplete)
    i = r["images"]
    print(f"wrote {', '.join(r['written'])}; images: {i['copied']} copied, {i['kept']} already there, {i['missing']} missing, "
          f"{i['pruned']} no longer referenced removed ({r['seconds']} s)")
    return 0


def parser() -> argparse.ArgumentParser:
    from harness.cli import inputs as cli_check
    from harness.cli import runs as cli_runs
    from harness.cli import toy as cli_toy

    p = _Parser(prog="unlearn", description="Evaluate concept erasure in text-to-image diffusion models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    cli_toy.add(sub)  # toy ..., erase
    cli_runs.add(sub)  # compare, regress, power, pr-check, summary, images
    cli_check.add_hash(sub)

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

    cli_check.add(sub)  # validate, check, fetch, pin, convert, schema
    return p


def main(argv: list[str] | None = None) -> int:
    try:  # an option's type= parser (harness.options) reports a bad value as a HarnessError
        args = parser().parse_args(argv)
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
