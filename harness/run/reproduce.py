"""Reproducibility across machines: the platform fingerprint, and the one rule that compares
re-made float output (tensors, images, metric values) with committed output.

Float arithmetic is not associative, so the same code gives other rounding on another CPU kind
(instruction set: oneDNN / MKL pick their kernels by it), another BLAS build, another thread count
(reductions split differently) or another device. A re-made output is therefore

* **bitwise** equal to a committed one only where the platform that made the committed one is
  the running one (:func:`same_platform` over :func:`fingerprint`): there anything else is a
  change of the code or its inputs, and is reported as such;
* elsewhere **equal within tolerance**: ``max |a - b| <= atol`` and
  ``||a - b||_F / ||b||_F <= rtol`` over all tensors, each tolerance chosen from what several
  instruction sets and thread counts measurably produce (``benchmarks/repro_tolerance.py``;
  the figures are in benchmarks/RESULTS.md), with a margin, or it **differs**.

Every comparison states its tolerance and prints the measured difference
(:meth:`Comparison.line`). Job and cache keys are not float output and stay exact.
"""

from __future__ import annotations

from typing import Callable

import math
import os
import platform
import re
from dataclasses import dataclass
from functools import lru_cache

# ----------------------------------------------------------------------------- fingerprint
#: the fields whose equality makes a bitwise claim; the rest are recorded for the reader
BITWISE_FIELDS = ("torch", "diffusers", "machine", "cpu", "cpu_id", "cpu_flags", "cpu_capability", "blas", "onednn", "kernel_env",
                  "threads", "device", "gpu", "cuda", "deterministic")
#: environment variables with which MKL / oneDNN pick other kernels than the CPU's own choice
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE", "ONEDNN_MAX_CPU_ISA",
              "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")


@lru_cache(maxsize=1)
def _static() -> dict:
    """The parts of the fingerprint that do not change within a process."""
    import importlib.metadata as md

    import torch

    out: dict = {"python": platform.python_version(), "os": platform.system(), "machine": platform.machine()}
    for name in ("torch", "diffusers", "transformers", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["cpu"], out["cpu_id"], out["cpu_flags"] = _cpu()
    try:
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        out["cpu_capability"] = None
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    onednn = re.search(r"MKL-DNN (v[\w.]+)", config)
    out["blas"] = (blas.group(1) if blas else None) and blas.group(1) + (f" {mkl.group(1)}" if mkl and blas.group(1) == "mkl" else "")
    out["onednn"] = onednn.group(1) if onednn else None
    return out


def _cpu() -> tuple[str | None, str | None, str | None]:
    """The CPU's model name, ``family/model/stepping`` and a digest of its feature flags (MKL and
    oneDNN pick kernels by CPUID: a virtual machine's masked name such as "Intel(R) Xeon(R)
    Processor" can hide two generations, whose flags differ), from the first processor in
    /proc/cpuinfo; elsewhere the platform's processor string alone."""
    import hashlib

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor only
                k, _, v = line.partition(":")
                fields.setdefault(k.strip().lower(), v.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or None
    ident = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping")) if fields else None
    flags = fields.get("flags") or fields.get("features")  # x86 / arm
    digest = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16] if flags else None
    return name, ident, digest


def fingerprint(device: str = "cpu", threads: int | None = None) -> dict:
    """Where float output was made: library versions, OS and machine, CPU model, family / model /
    stepping and a digest of its feature flags, the instruction set torch dispatches to
    (``ATEN_CPU_CAPABILITY`` changes it), BLAS and oneDNN builds, the environment variables that
    make MKL / oneDNN choose other kernels (:data:`KERNEL_ENV`), torch's thread count (``threads``: the count the work ran with, else the current
    one), the deterministic-algorithms flag, the device, and on CUDA the GPU's name and compute
    capability with the CUDA / cuDNN versions."""
    import torch

    out = dict(_static())
    out["threads"] = int(threads) if threads is not None else torch.get_num_threads()
    out["deterministic"] = bool(torch.are_deterministic_algorithms_enabled())
    out["device"] = str(device)
    out["gpu"] = out["cuda"] = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(idx)
        out["gpu"] = f"{torch.cuda.get_device_name(idx)} (sm_{major}{minor})"
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        out["cuda"] = f"{torch.version.cuda}" + (f" cudnn {cudnn}" if cudnn else "")
    out["kernel_env"] = {k: os.environ[k] for k in KERNEL_ENV if os.environ.get(k)}
    return out


def same_platform(recorded: dict | None, current: dict | None) -> bool:
    """True when every field of :data:`BITWISE_FIELDS` is recorded and equal: only then is a
    bitwise claim made. A record without a fingerprint (made before they were kept) is another
    platform: nothing says it was made here."""
    if not isinstance(recorded, dict) or not isinstance(current, dict):
        return False
    return all(f in recorded and recorded.get(f) == current.get(f) for f in BITWISE_FIELDS)


def platform_differences(recorded: dict | None, current: dict) -> list[str]:
    """The fields that make a bitwise claim impossible, as ``field: recorded -> current``."""
    if not isinstance(recorded, dict):
        return ["no platform recorded"]
    return [f"{f}: {recorded.get(f)} -> {current.get(f)}" for f in BITWISE_FIELDS if recorded.get(f) != current.get(f)]


# ----------------------------------------------------------------------------- tolerances
@dataclass(frozen=True)
class Tolerance:
    """``max |a - b| <= atol`` and ``||a - b||_F / ||b||_F <= rtol``; ``why`` says where the
    figures come from."""

    atol: float
    rtol: float
    why: str

    def __str__(self) -> str:
        return f"max |d| <= {self.atol:g}, rel <= {self.rtol:g}"


#: Figures measured by ``benchmarks/repro_tolerance.py`` on one Xeon (2026-12-07, torch 2.14.1,
#: MKL 2024.2, oneDNN 3.12): every case re-made under ATEN_CPU_CAPABILITY default / avx2 /
#: avx512 at 1 and 2 threads, against the committed tensors (benchmarks/RESULTS.md).
#:
#: Closed-form edits (UCE, RECE): one solve on the toy weights; measured at most 1.4e-5 absolute
#: (RECE style), 3.9e-6 relative; the tolerance is about 14x / 13x that.
CLOSED_FORM = Tolerance(2e-4, 5e-5, "closed-form edit: measured <= 1.4e-5 abs / 3.9e-6 rel across instruction sets and "
                                    "thread counts; x14 / x13")
#: A few steps of the shared fine-tuning loop on the tiny pipeline (the reference outputs of
#: tests/fixtures/reference: ESD-x, FMN, CA): measured at most 1.9e-5 absolute, 1.0e-6 relative.
SHORT_FINE_TUNE = Tolerance(2e-4, 2e-5, "3-4 optimiser steps on the tiny pipeline: measured <= 1.9e-5 abs / 1.0e-6 rel; "
                                        "x10 / x20")
#: The same with SalUn's saliency mask: a weight whose gradient sits at the mask's threshold
#: falls in or out of the mask on another platform and then differs by up to its whole update
#: (steps x lr under Adam: 4 x 1e-3 here). Measured 3.3e-3 absolute, 1.2e-4 relative (AVX2,
#: 2 threads); 1.5e-4 / 6.4e-6 at one thread.
SALIENCY_MASKED = Tolerance(1e-2, 1e-3, "SalUn's few masked steps: a weight at the saliency threshold can flip in or out of "
                                        "the mask (measured <= 3.3e-3 abs / 1.2e-4 rel; the bound is a flipped weight's "
                                        "whole update, steps x lr)")
#: Long fine-tuning (the toy ESD-x / FMN / CA / SalUn checkpoints: hundreds of steps, sampled
#: latents): rounding differences compound. Measured on the toy ESD-x style checkpoint (300 steps)
#: against the committed one: 6.8e-3 absolute, 1.5e-2 relative (AVX-512; AVX2 4.5e-3 / 1.1e-2).
#: A re-made checkpoint is compared by what it does (the gate's metrics); its tensors are reported.
LONG_FINE_TUNE = Tolerance(5e-2, 5e-2, "hundreds of optimiser steps: rounding compounds (measured <= 6.8e-3 abs / 1.5e-2 "
                                       "rel on toy ESD-x); x7 / x3; the gate decides by the metrics")
#: Metric values made from re-made float output (accuracies of a classifier on generated images,
#: FID of features): equal within this, or the test states its own.
METRIC = Tolerance(1e-6, 1e-6, "metric values of re-made float output")


#: A method's tolerance class (``MethodInfo.tolerance``, declared in its module) -> its tolerance.
TOLERANCES = {"closed_form": CLOSED_FORM, "long_fine_tune": LONG_FINE_TUNE}


# ----------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class Comparison:
    """A re-made output against a committed one: ``status`` is ``identical`` (bitwise),
    ``within tolerance`` or ``differs``; ``max_abs`` and ``rel_fro`` are measured."""

    status: str
    bitwise: bool
    max_abs: float
    rel_fro: float
    tolerance: Tolerance | None = None
    same_platform: bool | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("identical", "within tolerance")

    def line(self) -> str:
        """One line: the verdict, the measured difference and the tolerance."""
        if self.detail:
            return f"differs ({self.detail})"
        if self.status == "identical":
            return "identical (bitwise)"
        measured = f"max |d| = {self.max_abs:.3g}, rel = {self.rel_fro:.3g}"
        if self.status == "within tolerance":
            return f"equal within tolerance ({measured}; tolerance {self.tolerance}, another platform)"
        why = "on the same platform, where it must be bitwise" if self.same_platform else f"tolerance {self.tolerance}"
        return f"differs ({measured}; {why})"


def _measure(made: dict, ref: dict) -> tuple[bool, float, float, str]:
    import torch

    if set(made) != set(ref):
        missing, extra = sorted(set(ref) - set(made)), sorted(set(made) - set(ref))
        return False, math.inf, math.inf, f"tensor names differ: missing {missing[:3]}, extra {extra[:3]}"
    bitwise, max_abs, diff2, ref2 = True, 0.0, 0.0, 0.0
    for k in sorted(ref):
        a, b = made[k], ref[k]
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            return False, math.inf, math.inf, f"{k}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
        if torch.equal(a, b):
            ref2 += float(b.double().pow(2).sum())
            continue
        bitwise = False
        d = (a.double() - b.double())
        if not torch.isfinite(d).all():
            return False, math.inf, math.inf, f"{k}: not finite"
        max_abs = max(max_abs, float(d.abs().max()))
        diff2 += float(d.pow(2).sum())
        ref2 += float(b.double().pow(2).sum())
    rel = math.sqrt(diff2) / math.sqrt(ref2) if ref2 > 0 else (0.0 if diff2 == 0 else math.inf)
    return bitwise, max_abs, rel, ""


def compare_tensors(made: dict, ref: dict, tolerance: Tolerance | None = None, same: bool | None = None) -> Comparison:
    """Compare two ``{name: tensor}`` dicts by the rule of this module. ``same``: whether the
    platform that made ``ref`` is the running one (bitwise then required); ``None``: not known,
    treated as another platform. Without ``tolerance`` only the measurement is made (status
    ``identical`` or ``differs``)."""
    bitwise, max_abs, rel, detail = _measure(made, ref)
    if bitwise:
        status = "identical"
    elif detail or same or tolerance is None:
        status = "differs"
    else:
        status = "within tolerance" if (max_abs <= tolerance.atol and rel <= tolerance.rtol) else "differs"
    return Comparison(status, bitwise, max_abs, rel, tolerance, same, detail)


def compare_files(made_path, ref_path, tolerance: Tolerance, same: bool | None) -> Comparison:
    """:func:`compare_tensors` of two safetensors files (loaded on the CPU)."""
    from safetensors.torch import load_file

    return compare_tensors(load_file(str(made_path)), load_file(str(ref_path)), tolerance, same)


def compare_values(made: float | None, ref: float | None, tolerance: Tolerance = METRIC, same: bool | None = None) -> Comparison:
    """The same rule for one metric value (``None`` is a value: missing equals missing only)."""
    if made is None or ref is None:
        ok = made is None and ref is None
        return Comparison("identical" if ok else "differs", ok, 0.0 if ok else math.inf, 0.0 if ok else math.inf, tolerance, same,
                          "" if ok else f"{made!r} vs {ref!r}")
    d = abs(float(made) - float(ref))
    if d == 0:
        return Comparison("identical", True, 0.0, 0.0, tolerance, same)
    rel = d / abs(float(ref)) if ref else math.inf
    ok = not same and (d <= tolerance.atol or rel <= tolerance.rtol)
    return Comparison("within tolerance" if ok else "differs", False, d, rel, tolerance, same)


def compare_images(made, ref, max_pixel: int = 2, same: bool | None = None) -> Comparison:
    """Two uint8 images (PIL or arrays): ``max_abs`` is the largest pixel difference (0-255);
    within tolerance where it is at most ``max_pixel`` on another platform."""
    import numpy as np

    a, b = np.asarray(made).astype(np.int16), np.asarray(ref).astype(np.int16)
    tol = Tolerance(float(max_pixel), math.inf, "8-bit pixels of re-made images")
    if a.shape != b.shape:
        return Comparison("differs", False, math.inf, math.inf, tol, same, f"shape {a.shape} vs {b.shape}")
    d = int(np.abs(a - b).max()) if a.size else 0
    if d == 0:
        return Comparison("identical", True, 0.0, 0.0, tol, same)
    ok = not same and d <= max_pixel
    return Comparison("within tolerance" if ok else "differs", False, float(d), float(np.abs(a - b).mean()), tol, same)


def _checkpoint_record(folder) -> tuple[dict, str]:
    """A folder's ``method.json`` and its tensor file's name, or a one-line error."""
    import json
    import re
    from pathlib import Path

    from harness.errors import HarnessError

    p = Path(folder) / "method.json"
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HarnessError(f"{p}: not readable as JSON ({type(e).__name__})") from None
    ck = rec.get("checkpoint") if isinstance(rec, dict) else None
    name = ck.get("file") if isinstance(ck, dict) else None
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name) or ".." in name:
        raise HarnessError(f"{p}: checkpoint.file: {str(name)[:60]!r} is not a plain file name")
    if not (Path(folder) / name).is_file() or (Path(folder) / name).is_symlink():
        raise HarnessError(f"{p}: checkpoint.file: {name} is not a regular file beside it")
    return rec, name


def compare_checkpoint(made_dir, committed_dir, tolerance_of: Callable[[str], Tolerance], method: str | None = None,
                       current: dict | None = None) -> Comparison:
    """A re-made checkpoint folder of ``unlearn erase`` (``method.json`` + its tensor file)
    against a committed one: bitwise required where the committed ``method.json`` records the
    running platform (:func:`fingerprint` at the thread count it records), else the method's
    tolerance, ``tolerance_of(method name)`` (``harness.methods.method_tolerance``: the class its
    ``MethodInfo`` declares, one of :data:`TOLERANCES`). A folder whose record is unreadable is a
    one-line ``HarnessError``."""
    from pathlib import Path

    made_dir, committed_dir = Path(made_dir), Path(committed_dir)
    rec, name = _checkpoint_record(committed_dir)
    made, made_name = _checkpoint_record(made_dir)
    if current is None:
        eff = made.get("efficiency") if isinstance(made.get("efficiency"), dict) else {}
        threads = eff.get("threads") if isinstance(eff.get("threads"), int) and eff.get("threads") > 0 else None
        current = made.get("platform") if isinstance(made.get("platform"), dict) else fingerprint(threads=threads)
    same = same_platform(rec.get("platform"), current)
    m = method or rec.get("method")
    return compare_files(made_dir / made_name, committed_dir / name, tolerance_of(m if isinstance(m, str) else ""), same)
