"""What several metric families share: the typed-parameters base, the forget / retain split of a
suite's prompts, pinned reference image folders, and whether a suite is scored in the toy world.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, ValidationError

from harness.errors import HarnessError
from harness.spec.common import PinnedRef, Strict
from harness.spec.yamlio import describe


class MetricParams(Strict):
    """A metric's ``params`` in a suite; every metric takes the interval's settings. Unknown keys
    are refused (a typo is an error when the suite is loaded, not a silent default)."""

    bootstrap_resamples: int | None = Field(default=None, gt=0, description="bootstrap resamples of the 95% interval (harness.stats.intervals)")
    bootstrap_seed: int | None = Field(default=None, ge=0)

    @classmethod
    def of(cls, params: Any, what: str = "params"):
        """``params`` (a suite's dict, or already this model) as this model; one-line error."""
        if isinstance(params, cls):
            return params
        try:
            return cls.model_validate(params or {})
        except ValidationError as e:
            raise HarnessError(f"{what}: {describe(e)}") from None


def is_toy(suite) -> bool:
    """Whether the suite is scored in the toy world (its scorer is the toy classifier): the toy
    feature spaces and procedural references apply, real reference files are not needed."""
    return suite.scorer is not None and suite.scorer.backend == "toy"


def forget_mask(run, target) -> np.ndarray:
    """Per item: is its prompt one of the target concept's (forget) prompts? (else retain)"""
    labels = run.labels()
    if target.kind not in labels:
        raise HarnessError(f"suite {run.suite.id}: prompts carry no {target.kind!r} label, so forget and retain prompts cannot be told apart")
    return np.array([v == target.concept for v in labels[target.kind]])


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _images(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def reference_folder(run, spec, what: str) -> tuple[list[np.ndarray], str]:
    """Images of a reference folder (in the repository, or a hub folder at a commit), pinned by
    its folder sha256."""
    from PIL import Image

    from harness.store.hashing import sha256_tree
    from harness.spec.common import inside

    spec = spec.node() if isinstance(spec, PinnedRef) else spec
    if isinstance(spec, dict) and spec.get("hub") and spec.get("sha256"):  # a hub folder at a commit (harness/store/hub.py)
        from harness.store.hub import pinned_path

        files = _images(pinned_path(run.root, spec, what, folder=True))
        if not files:
            raise HarnessError(f"{what}.hub: the folder holds no images")
        return [np.asarray(Image.open(f).convert("RGB")) for f in files], spec["sha256"]
    if not isinstance(spec, dict) or not spec.get("path") or not spec.get("sha256"):
        raise HarnessError(f"{what}: needs {{path, sha256}} of a reference image folder")
    folder = inside(run.root, spec["path"], f"{what}.path")
    if not folder.is_dir():
        raise HarnessError(f"{what}.path: {spec['path']}: no such folder")
    got = sha256_tree(folder)
    if got != spec["sha256"]:
        raise HarnessError(f"{what}.sha256: {spec['path']} has sha256 {got}, expected {spec['sha256']}")
    files = _images(folder)
    if not files:
        raise HarnessError(f"{what}.path: {spec['path']} holds no images")
    return [np.asarray(Image.open(f).convert("RGB")) for f in files], got


def pinned_weights(run, ref: PinnedRef | None, what: str):
    """The local path of a pinned weights file ({path, sha256} or {hub, sha256}), verified."""
    if ref is None or not (ref.path or ref.hub):
        raise HarnessError(f"{what}: needs {{path, sha256}} or {{hub, sha256}}")
    if ref.hub:  # a hub file at a commit (harness/store/hub.py)
        from harness.store.hub import pinned_path

        return pinned_path(run.root, ref.node(), what)
    from harness.spec.common import pinned_file

    return pinned_file(run.root, ref.path, ref.sha256, what)
