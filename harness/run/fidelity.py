"""The fidelity choices a result was made with (docs/fidelity.md explains each): which variant of
a method, which preset, which label map, which image format, which separator recipe. Recorded in
every suite of a results JSON as ``fidelity`` so a number says what it can be compared with."""

from __future__ import annotations

from pathlib import Path

from harness.metrics.common import is_toy


def _method_record(sub, root: Path) -> dict:
    if not sub.method_record:
        return {}
    from harness.errors import HarnessError
    from harness.results.assemble import load_method_record

    try:
        return load_method_record(root, sub.method_record)
    except HarnessError:  # reported by the efficiency metrics; not this record's business
        return {}


def inference_record(resolved, guidance_scale: float | None = None) -> dict:
    """An inference-time method's resolved choices (``inference``: method, preset, every
    parameter, the sha256 of its code); empty for a checkpoint method."""
    import json

    r = getattr(resolved, "inference", None)
    if r is None:
        return {}
    return {"inference": {"method": r.name, "preset": resolved.inference_preset, "params": json.loads(r.params), "code_sha256": r.code,
                          "guidance_scale": r.guidance_scale if guidance_scale is None else guidance_scale}}


def choices(sub, suite, root: Path) -> dict:
    out: dict = {}
    g = suite.generation
    out["image_format"] = g.image_format if g.image_format == "png" else f"jpeg (quality {g.jpeg_quality})"
    if suite.scorer is not None:
        out["scorer.labels"] = suite.scorer.labels or ("toy classifier config" if is_toy(suite) else "suite lists")
    from harness import metrics

    for m in suite.metrics:  # each metric's declared choices (MetricInfo.fidelity); the first metric declaring a key gives it
        for key, param in metrics.info(m.name).fidelity.items():
            if key not in out:
                out[key] = getattr(m.typed_params(), param)
    rec = _method_record(sub, root)
    method = rec.get("method") or sub.method.name.split()[0].lower()
    params = rec.get("params", sub.method.params) or {}
    from harness.methods import REGISTRY

    info = REGISTRY.find(method)  # the method's declared fidelity choices (MethodInfo); None: not a registered method
    for key, before in (info.fidelity_params if info else {}).items():
        # ``before``: what records made before the parameter existed ran
        out[f"{method}.{key}"] = params.get(key, before if rec else "unknown")
    if (info is not None and info.fidelity_preset) or "preset" in rec:
        out[f"{method}.preset"] = rec.get("preset", "unknown (not recorded)")
    return out
