"""Which toy rankings are resolved and which are ties: reads results JSON files (with intervals)
and prints, per suite and target, every metric's value with its 95% interval and delta, then the
headline metric's rank intervals (the leaderboard's rule: harness.site.aggregate.rank_intervals).

    python benchmarks/toy_uncertainty.py results/*.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.site.aggregate import rank_intervals  # noqa: E402
from harness.site.text import ci_text, delta_text, fmt  # noqa: E402
from harness.results.io import read_result  # noqa: E402


def main(files: list[str]) -> None:
    runs = [read_result(f) for f in files]
    by: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for r in runs:
        for m in r["metrics"]:
            by.setdefault((m["suite"], m["target"]), []).append((r["submission"]["name"], m))
    for (suite, target), recs in sorted(by.items()):
        print(f"\n{suite} · {target}")
        metrics = list(dict.fromkeys(m["metric"] for _, m in recs))
        head = next((k for k in metrics if any(m["metric"] == k and m.get("threshold") for _, m in recs)), metrics[0])
        for key in metrics:
            rows = [(n, m) for n, m in recs if m["metric"] == key and m.get("value") is not None]
            for n, m in rows:
                ci = ci_text(m.get("ci")) or "(no interval)"
                print(f"  {m.get('label', key):<17} {n:<16} {fmt(m['value']):>7} {ci:<22} {delta_text(m.get('delta_ci'), m['value'], m.get('base_value')):<28} "
                      f"{m['verdict']}{'' if m.get('verdict_point') in (None, m['verdict']) else ' (point ' + m['verdict_point'] + ')'}")
            if key == head and len(rows) > 1:
                hib = rows[0][1].get("higher_is_better", True)
                ranks = rank_intervals([{"key": n, "value": m["value"], "ci": m.get("ci"), "scores": m.get("scores")} for n, m in rows], bool(hib))
                for r in sorted(ranks, key=lambda r: r["rank"]):
                    print(f"    rank {r['rank']} [{r['low']}-{r['high']}] {r['key']}: " + (f"tied with {', '.join(r['tied_with'])}" if r["tied_with"] else "resolved"))


if __name__ == "__main__":
    main(sys.argv[1:])
