"""Efficiency, the three remaining UnlearnCanvas metrics: what the erasure cost.

``storage_mb``: size of the checkpoint files (always measured, from the files). ``erase_time_s``
and ``peak_memory_gb``: from the ``method.json`` that ``unlearn erase`` wrote (measured) or from
the submission (declared); the record says which, and where neither exists the metric is an
error, never a guess. They need no images. There is no base-model value (the base was not
erased); ``base_value`` is null. Intervals: storage is exact (``ci_reason`` "exact"); a time or
memory measured in N >= 2 repeats (``unlearn erase --repeats N``: ``runs`` in the results'
efficiency figure) is their mean with a t interval (``stats.repeats_interval``); one measurement
says "single run", a declared figure "declared".
"""

from __future__ import annotations

from harness.errors import HarnessError
from harness.metrics import Measurement, MetricInfo

METRICS = {
    "storage_mb": MetricInfo("Storage-MB", False, "size of the unlearned checkpoint files, MB (measured)", needs_images=False, role="efficiency"),
    "erase_time_s": MetricInfo("Erase-time-s", False, "wall time of the unlearning run, s (measured or declared)", needs_images=False, role="efficiency"),
    "peak_memory_gb": MetricInfo("Peak-memory-GB", False, "peak memory of the unlearning run, GB (measured or declared)", needs_images=False, role="efficiency"),
}
SINGLE = "single run: one measurement of the erasure run (unlearn erase --repeats N measures N runs and gives their interval)"
EXACT = "exact: the size of the checkpoint files, read from the files (no sampling noise)"
DECLARED = "declared: a figure the submission states, not measured by the harness (no interval)"
_SOURCE = {"storage_mb": ("storage_bytes", 1e-6), "erase_time_s": ("time_s", 1.0), "peak_memory_gb": ("peak_memory_bytes", 1e-9)}
_DECLARED = {"storage_mb": ("storage_gb", 1e3), "erase_time_s": ("time_s", 1.0), "peak_memory_gb": ("peak_memory_gb", 1.0)}


def compute(name: str, run, target, params) -> Measurement:
    METRICS[name].params.of(params, f"{METRICS[name].label} params")
    eff = run.efficiency
    key, scale = _SOURCE[name]
    if key in eff:
        rec = eff[key]
        details = {"source": rec["source"], **{k: v for k, v in rec.items() if k not in ("value", "source")}}
        runs = rec.get("runs")
        if rec.get("source") == "declared":  # the submission's time_s (the same key as a measured one)
            return Measurement(rec["value"] * scale, None, details, ci_reason=DECLARED)
        if name == "storage_mb":
            return Measurement(rec["value"] * scale, None, details, ci_reason=EXACT)
        if isinstance(runs, list) and len(runs) >= 2:  # repeated: the mean of the runs and its t interval
            from harness.stats.intervals import repeats_interval

            vals = [float(v) * scale for v in runs]
            return Measurement(sum(vals) / len(vals), None, details, resample=lambda threshold: repeats_interval(vals, threshold))
        return Measurement(rec["value"] * scale, None, details, ci_reason=SINGLE)
    dkey, dscale = _DECLARED[name]
    if dkey in eff:  # declared figures keep the submission's units
        rec = eff[dkey]
        return Measurement(rec["value"] * dscale, None, {"source": "declared", "device": rec.get("device")}, ci_reason=DECLARED)
    raise HarnessError(f"{METRICS[name].label}: neither measured (method_record) nor declared (efficiency) by the submission")
