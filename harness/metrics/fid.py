"""FID and KID with clean-fid ("clean" mode: its PIL bicubic resize to 299 before features).

Computed on the retain prompts' images (those not labelled with the target concept) against a
reference set, for the unlearned and the base model under the same settings; lower is better.
Toy world: the references are procedural images of every concept but the target, and the
features come from the toy classifier, handed to clean-fid through its custom feature extractor
hook (``features.ToyCleanFidExtractor``). Real suites name a reference image folder by path +
sha256 (``params.reference_dir``, ``params.reference_sha256``) and use clean-fid's Inception.
KID's random subsets are seeded (``params.kid_seed``, default 0), so KID is reproducible.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from typing import Literal

from pydantic import Field

from harness.errors import HarnessError
from harness.store.hashing import sha256_bytes
from harness.metrics import Measurement, MetricInfo
from harness.metrics.common import MetricParams, PinnedRef, forget_mask, is_toy, reference_folder


class FeatureParams(MetricParams):
    """The reference set and feature space (``retain_features``), shared by every metric of them."""

    reference_dir: PinnedRef | None = Field(default=None, description="real suites: the pinned reference image folder")
    extractor: Literal["toy"] | None = Field(default=None, description="toy: the toy classifier's features (default with reference_dir: Inception)")
    references: int = Field(default=500, gt=0, description="toy world: procedural reference images")
    reference_seed: int = Field(default=4096, ge=0)


class Params(FeatureParams):
    kid_seed: int = Field(default=0, ge=0, description="KID's random subsets (seeded: reproducible)")


METRICS = {
    "fid": MetricInfo("FID", False, "clean-fid Frechet distance of retain-prompt images to the reference set", params=Params, role="quality"),
    "kid": MetricInfo("KID", False, "clean-fid kernel inception distance of retain-prompt images to the reference set", params=Params, role="quality"),
}


def _write(images, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(np.asarray(im)).save(folder / f"{i:06d}.png")
    return folder


def clean_features(images, extractor, device: str = "cpu") -> np.ndarray:
    """clean-fid features of in-memory images (written to a temporary folder, as it reads files)."""
    import torch
    from cleanfid import fid

    with tempfile.TemporaryDirectory(prefix="unlearn-fid-") as tmp:
        _write(images, Path(tmp) / "imgs")
        return fid.get_folder_features(str(Path(tmp) / "imgs"), model=extractor, num_workers=0, batch_size=64,
                                       device=torch.device(device), mode="clean", verbose=False)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    from cleanfid import fid

    return float(fid.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))


def kid_from_features(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    from cleanfid import fid

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(fid.kernel_distance(a, b))
    finally:
        np.random.set_state(state)


def _toy_reference(target, n: int, seed: int) -> np.ndarray:
    from harness.toy import world

    objects = tuple(o for o in world.OBJECTS if not (target.kind == "object" and o == target.concept))
    styles = tuple(s for s in world.STYLES if not (target.kind == "style" and s == target.concept))
    return world.sample(n, seed, objects, styles)[0]


def inception_extractor(device: str = "cpu"):
    """clean-fid's Inception (its weights are fetched once where a network is reachable)."""
    import torch
    from cleanfid import fid

    try:
        return fid.build_feature_extractor("clean", torch.device(device), use_dataparallel=False)
    except Exception as e:  # download failures surface as several exception types
        raise HarnessError(f"FID: clean-fid's Inception could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def retain_features(run, target, p: FeatureParams, label: str):
    """clean-fid features of (the reference set, the unlearned model's and the base model's
    retain-prompt images), the reference's sha256, what they are, and the retain items'
    indices; computed once per suite run and shared by every metric of these features."""
    idx = np.flatnonzero(~forget_mask(run, target))
    if len(idx) < 2:
        raise HarnessError(f"{label}: needs at least 2 retain images")
    real = p.reference_dir
    key = ("clean-fid-features", target.kind, target.concept, str(real.node()) if real else (p.references, p.reference_seed))
    if key not in run.memo:  # FID, KID (and the metrics beside them) share one feature pass
        from harness.metrics.features import ToyCleanFidExtractor

        if real:  # real models: a pinned reference folder, clean-fid's Inception unless told otherwise
            ref, ref_sha = reference_folder(run, real, f"{label} params.reference_dir")
            ex = ToyCleanFidExtractor() if p.extractor == "toy" else inception_extractor()
            what: dict = {"features": p.extractor or "inception (clean-fid)", "references": len(ref)}
        else:
            if not is_toy(run.suite):
                raise HarnessError(f"{label}: a real suite must give params.reference_dir {{path, sha256}}")
            n, seed = p.references, p.reference_seed
            arr = _toy_reference(target, n, seed)
            ref, ref_sha = list(arr), sha256_bytes(arr.tobytes())
            ex = ToyCleanFidExtractor()
            what = {"features": "toy classifier penultimate via clean-fid custom extractor", "references": n, "reference_seed": seed}
        run.memo[key] = (clean_features(ref, ex), clean_features([run.images["unlearned"][i] for i in idx], ex),
                         clean_features([run.images["base"][i] for i in idx], ex), ref_sha, what)
    return (*run.memo[key], idx)


def compute(name: str, run, target, params) -> Measurement:
    p = Params.of(params, f"{METRICS[name].label} params")
    f_ref, f_unl, f_base, ref_sha, what, idx = retain_features(run, target, p, METRICS[name].label)
    if name == "fid":
        of = lambda f: fid_from_features(f, f_ref)
    else:
        s = p.kid_seed
        of = lambda f: kid_from_features(f, f_ref, s)
    value, base = of(f_unl), of(f_base)

    def resample(threshold):
        """The generated set's sampling noise: the delete-one-cluster jackknife (one seed of
        every prompt left out in turn when all prompts share >= 5 seeds, else one prompt; the
        same items for both models), the features recomputed into the statistic; the reference
        set held fixed. FID's interval is cut at 0; KID (unbiased) may go below."""
        from harness.stats.intervals import jackknife_units, prompt_key, set_intervals

        clusters, unit = jackknife_units([prompt_key(run.items[i][0].text) for i in idx], [run.items[i][1] for i in idx])
        return set_intervals(lambda j: of(f_unl[j]), lambda j: of(f_base[j]), clusters, threshold, lower=0.0 if name == "fid" else None,
                             method=f"cluster-jackknife-t (delete one {unit}{' of every prompt' if unit == 'seed' else ''}, generated set)")

    return Measurement(value, base, {"mode": "clean", **what, "reference_sha256": ref_sha, "images": int(len(idx))}, resample=resample)
