"""Float output across platforms (harness.run.reproduce): the fingerprint, the one comparison rule,
and the class of bug it guards: a toy checkpoint re-made under another instruction set
(``ATEN_CPU_CAPABILITY``, read when torch loads) rounds differently, and the comparison must
say "within tolerance", never "differs", and claim bitwise only on the same platform."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.methods import method_tolerance
from harness.run.reproduce import (BITWISE_FIELDS, CLOSED_FORM, LONG_FINE_TUNE, Tolerance, compare_checkpoint, compare_images,
                               compare_tensors, compare_values, fingerprint, platform_differences,
                               same_platform)

from harness.toy.paths import PIPELINE_DIR

ROOT = Path(__file__).resolve().parents[1]


def test_fingerprint_records_what_decides_the_rounding():
    fp = fingerprint(threads=3)
    assert set(BITWISE_FIELDS) <= set(fp)
    assert fp["threads"] == 3 and fp["device"] == "cpu" and fp["torch"] == torch.__version__.split("+")[0]
    assert fp["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert fp["machine"] == platform.machine() and fp["deterministic"] is False
    assert fingerprint()["threads"] == torch.get_num_threads()
    json.dumps(fp)  # recordable as it is


def test_same_platform_needs_every_field_recorded_and_equal():
    fp = fingerprint(threads=1)
    assert same_platform(fp, dict(fp))
    for field in BITWISE_FIELDS:
        other = {**fp, field: "something else"}
        assert not same_platform(other, fp) and platform_differences(other, fp) == [f"{field}: something else -> {fp[field]}"]
        partial = {k: v for k, v in fp.items() if k != field}
        assert not same_platform(partial, fp)  # a field not recorded is no evidence of sameness
    assert not same_platform(None, fp) and platform_differences(None, fp) == ["no platform recorded"]
    assert not same_platform({**fp, "threads": 2}, fp)  # the thread count splits the reductions


def test_kernel_choices_outside_torch_make_another_platform(monkeypatch):
    """MKL / oneDNN choose kernels by CPUID and by their own environment variables: a run with
    them set (or on a CPU with other feature flags behind the same masked name) is no bitwise
    claim."""
    here = fingerprint(threads=1)
    assert here["cpu_id"] and here["cpu_flags"] and len(here["cpu_flags"]) == 16
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    other = fingerprint(threads=1)
    assert other["kernel_env"] == {**here["kernel_env"], "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert not same_platform(here, other)
    assert not same_platform(here, {**here, "cpu_flags": "0" * 16})


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


TOL = Tolerance(1e-3, 1e-3, "test")


@pytest.mark.parametrize("made, same, status, line", [
    ({"w": t(1.0, 2.0)}, True, "identical", "identical (bitwise)"),
    ({"w": t(1.0, 2.0)}, None, "identical", "identical (bitwise)"),
    ({"w": t(1.0, 2.0005)}, False, "within tolerance", "equal within tolerance (max |d| = 0.0005"),
    ({"w": t(1.0, 2.0005)}, None, "within tolerance", "equal within tolerance (max |d| = 0.0005"),
    ({"w": t(1.0, 2.0005)}, True, "differs", "on the same platform, where it must be bitwise"),  # same platform: bitwise or a change
    ({"w": t(1.0, 2.1)}, False, "differs", "differs (max |d| = 0.1"),
    ({"w": t(1.0, float("nan"))}, False, "differs", "w: not finite"),
    ({"w": t(1.0, 2.0, 3.0)}, False, "differs", "w: (3,)"),
    ({"v": t(1.0, 2.0)}, False, "differs", "tensor names differ"),
    ({"w": torch.tensor([1.0, 2.0], dtype=torch.float64)}, False, "differs", "torch.float64"),
])
def test_the_comparison_rule(made, same, status, line):
    c = compare_tensors(made, {"w": t(1.0, 2.0)}, TOL, same)
    assert c.status == status and line in c.line() and c.ok == (status != "differs")
    assert "\n" not in c.line()


def test_the_measured_difference_is_max_abs_and_relative_frobenius():
    c = compare_tensors({"a": t(3.0, 0.0), "b": t(0.0)}, {"a": t(3.0, 4.0), "b": t(0.0)}, TOL, False)
    assert c.max_abs == 4.0 and c.rel_fro == pytest.approx(4.0 / 5.0)
    assert compare_tensors({"a": t(0.0)}, {"a": t(0.0)}).status == "identical"
    assert compare_tensors({"a": t(1.0)}, {"a": t(0.0)}, TOL, False).rel_fro == math.inf  # against zero: relative is unbounded
    assert compare_tensors({"a": t(1.0)}, {"a": t(1.5)}).status == "differs"  # no tolerance: measurement only


def test_values_and_images_follow_the_same_rule():
    import numpy as np

    assert compare_values(0.5, 0.5).status == "identical"
    assert compare_values(0.5 + 1e-9, 0.5, same=False).status == "within tolerance"
    assert compare_values(0.5 + 1e-9, 0.5, same=True).status == "differs"
    assert compare_values(0.6, 0.5).status == "differs"
    assert compare_values(None, None).ok and not compare_values(None, 0.5).ok
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 2
    assert compare_images(a, a).status == "identical"
    assert compare_images(b, a, same=False).status == "within tolerance" and compare_images(b, a, same=False).max_abs == 2
    assert compare_images(b, a, same=True).status == "differs"
    b[1, 1, 1] = 9
    assert compare_images(b, a).status == "differs" and not compare_images(a[:2], a).ok


def test_each_method_has_a_stated_tolerance():
    from harness.methods import METHODS

    for m in METHODS:
        tol = method_tolerance(m)
        assert tol.atol > 0 and tol.rtol > 0 and tol.why
    assert method_tolerance("uce") == method_tolerance("rece") == CLOSED_FORM
    assert method_tolerance("esd") == LONG_FINE_TUNE


def _erase(out: Path, cap: str) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "UNLEARN_THREADS": "1",
           "PYTHONPATH": str(ROOT), "ATEN_CPU_CAPABILITY": cap}
    return subprocess.run([sys.executable, "-m", "harness.cli.main", "erase", "uce", "--base", str(PIPELINE_DIR), "--preset", "toy", "--concept", "striped",
                           "--anchor", "solid", "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="ATEN_CPU_CAPABILITY's x86 values")
def test_a_checkpoint_remade_under_another_instruction_set_is_within_tolerance_not_bitwise(tmp_path):
    """The class of issue 23: two re-makes of the toy UCE checkpoint on one machine, under the
    portable kernels (``default``) and AVX2, round differently; each method.json records its
    instruction set; the comparison between them, and each against the committed checkpoint,
    says "within tolerance" with the measured difference, and a re-make under the same
    instruction set is bitwise (the same platform)."""
    runs = {}
    for name, cap in (("default", "default"), ("avx2", "avx2"), ("default-again", "default")):
        r = _erase(tmp_path / name, cap)
        assert r.returncode == 0, r.stderr
        runs[name] = json.loads((tmp_path / name / "method.json").read_text())
    assert runs["default"]["platform"]["cpu_capability"] == "DEFAULT"
    assert runs["avx2"]["platform"]["cpu_capability"] == "AVX2"
    assert runs["default"]["platform"]["threads"] == 1

    across = compare_checkpoint(tmp_path / "avx2", tmp_path / "default", method_tolerance)
    assert across.same_platform is False and not across.bitwise, "the instruction sets gave the same bits: this test shows nothing"
    assert across.status == "within tolerance" and across.line().startswith("equal within tolerance (max |d| = ")
    assert 0 < across.max_abs <= CLOSED_FORM.atol

    again = compare_checkpoint(tmp_path / "default-again", tmp_path / "default", method_tolerance)
    assert again.same_platform is True and again.status == "identical"

    committed = ROOT / "submissions" / "checkpoints" / "uce-style-striped"
    for name in ("default", "avx2"):
        c = compare_checkpoint(tmp_path / name, committed, method_tolerance)
        assert c.ok, (name, c.line())
