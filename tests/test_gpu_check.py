"""benchmarks/gpu_check.py runs end to end on the CPU with --tiny and prints its figures."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_on_cpu_prints_rates_memory_and_projection():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu", "--threads", "1", "--batches", "1,2"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    assert re.search(r"^\[\d\d:\d\d:\d\d \+\s*[\d.]+s\] torch ", out, re.M)  # timestamped lines
    assert "AttnProcessor2_0" in out  # the harness's fast path ran (SDPA)
    for bs in (1, 2):
        assert re.search(rf"float32 batch +{bs}: +[\d.]+ images/s at 2 steps .*peak memory", out), out
    assert re.search(r"projection at batch \d+ \(fitted: .* from 2 and 4 steps\): [\d.]+ images/s at 100 steps", out), out
    assert re.search(r"one unlearned model \(5,100 images\) [\d.]+ h .* one method \(70 targets, 357,000 images\) [\d.]+ h", out), out
    assert out.rstrip().endswith("done")
