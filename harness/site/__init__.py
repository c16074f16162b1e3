"""The leaderboard site: a static site built from results JSON files, and nothing else.

``unlearn leaderboard build --results leaderboard/results --out site/`` reads every results file
of the folder (``results.io.results_files``), validates each one (a file that is not JSON or not
the results shape is reported on stderr as one line and skipped), aggregates the records with
pandas and renders, with Jinja2 (autoescape on: submission names come from strangers):

* ``index.html``: one sortable table per suite with a model family column (``load.suite_family``:
  SD 1.x, SDXL; ranks, rank intervals and ties only within a family), the base model's values as
  reference rows (one per base family), a filter by target kind, the erasure / retention
  trade-off plot (``tradeoff.svg``, written here) and the ASR-against-budget curves;
* ``submissions/<slug>-<hash>.html``: every metric with threshold, base value and verdict, the
  method's runs on every model family side by side (where it has more than one) and "n/a" with
  the reason for a family of the board it does not run on (``build(unsupported=...)``, which
  ``unlearn leaderboard build`` fills from the method registry), the generation settings, the
  provenance and a grid of matched base / unlearned sample images;
* ``results.json`` and ``results.csv``: every accepted record;
* ``images/<sha256>.png``: the sample images, copied only after their sha256 is checked.

The site uses relative links only and renders without fetching anything, so it works opened from
disk (file://) and served over HTTP.

Modules, in the order data flows: ``load`` (results files and method-seed spreads in),
``aggregate`` (pandas records, ranks, plot points), ``tables`` (the pages' contexts), ``figure``
(the SVG figures), ``images`` (checked sample images), ``pages`` (writing the site), ``text``
(formatting shared by all). The package only reads results files: it imports no generation,
evaluation, model or test code (tests/test_leaderboard.py checks it); running the harness to make
results is ``harness.gate.refresh``.
"""

from __future__ import annotations

from harness.site.aggregate import rank_intervals, records_frame
from harness.site.load import load_runs
from harness.site.pages import build
from harness.site.tables import suite_tables
from harness.site.text import fmt, pretty_threshold, safe_url, slug

__all__ = ["build", "fmt", "load_runs", "pretty_threshold", "rank_intervals", "records_frame", "safe_url", "slug", "suite_tables"]
