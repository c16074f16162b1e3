"""How long `unlearn leaderboard build` takes on one large results file: N metric records of one
submission (suite toy-canvas, UA / IRA / CRA over N / 3 targets) beside one ordinary file.

    .venv/bin/python benchmarks/site_scale.py [N]        # default 100000 (a ~30 MB file)

Prints the file size, the build's exit code, wall seconds and CPU seconds of this process (the
CPU figure moves less with other load on the machine). The figures are in docs/security.md.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str]) -> int:
    from test_leaderboard import metric, result  # the fixture results of the site's tests

    from harness.cli.main import main as unlearn

    n = int(argv[0]) if argv else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "results"
        res.mkdir()
        doc = result("toy-big")
        th = {"ua": ">= 0.8", "ira": ">= 0.8 * base", "cra": ">= 0.8 * base"}
        doc["metrics"] = [metric("toy-canvas", m, m.upper(), f"t{i // 3}", "style", 0.9, 1.0, th[m]) for i, m in ((i, ("ua", "ira", "cra")[i % 3]) for i in range(n))]
        doc["submission"]["targets"] = [{"concept": f"t{j}", "kind": "style"} for j in range((n + 2) // 3)]
        doc.pop("summary")
        (res / "big.json").write_text(json.dumps(doc))
        (res / "other.json").write_text(json.dumps(result("toy-uce-style")))
        print(f"{n} records, {(res / 'big.json').stat().st_size / 1e6:.1f} MB", flush=True)
        t0, c0 = time.time(), time.process_time()
        rc = unlearn(["leaderboard", "build", "--results", str(res), "--out", str(Path(tmp) / "site")])
        print(f"exit {rc}: {time.time() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
