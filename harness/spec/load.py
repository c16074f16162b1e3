"""Loading a submission or a suite file (with its ``include`` and lock file) into its model."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError

from harness.spec.submission import Submission
from harness.spec.suite import Suite
from harness.spec.yamlio import SpecErrors, _format_validation, validate_yaml_file, read_yaml
from harness.spec.pins import apply_lock

def load_submission(path: str | Path) -> Submission:
    return validate_yaml_file(Submission, path)


def _with_includes(path: Path, data: dict, depth: int = 0) -> dict:
    """``include: <suite id>`` takes every key of that suite (same folder) that this file does
    not set: suites that share prompts and generation settings (hence cached images) say so
    once."""
    inc = data.get("include")
    if inc is None:
        return data
    if not isinstance(inc, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", inc):
        raise SpecErrors([f"{path}: include: must be a suite id"])
    if depth >= 3:
        raise SpecErrors([f"{path}: include: nested more than 3 deep"])
    parent_path = path.parent / f"{inc}.yaml"
    if not parent_path.is_file():
        raise SpecErrors([f"{path}: include: no suite {inc!r} beside this file"])
    parent = _with_includes(parent_path, read_yaml(parent_path), depth + 1)
    merged = {k: v for k, v in parent.items() if k not in ("id", "version", "description", "metrics", "attacks")}
    merged.update({k: v for k, v in data.items() if k != "include"})
    return merged


def load_suite(path: str | Path, *, attack_code: bool = True) -> Suite:
    """The suite file as a model. ``attack_code=False``: an attacks block's attack name and
    params are not checked against the attack modules (which import the generation code): for
    readers that need the suite's thresholds only (verdict recomputation on the site)."""
    p = Path(path)
    data = apply_lock(p, _with_includes(p, read_yaml(p)))
    try:
        return Suite.model_validate(data, context={"attack_code": attack_code})
    except ValidationError as e:
        raise SpecErrors(_format_validation(p, e)) from None


def is_suite_file(data: dict) -> bool:
    return "metrics" in data and ("prompts" in data or "include" in data)
