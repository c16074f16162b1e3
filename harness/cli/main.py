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
def cmd_leaderboard_build(a) -> int:
    from harness.site import build

    n = build(a.results, a.out, include_smoke=a.include_smoke, require_attestation=a.require_attestation)
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
