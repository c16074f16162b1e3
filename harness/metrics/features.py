"""Feature spaces the image-comparison metrics share, chosen by a suite's metric params.

``toy``: the toy classifier's feature maps (perceptual, for integrity) and pooled penultimate
features (embedding, for M-Score and FID/KID). Loaded once per process.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from harness.errors import HarnessError


@lru_cache(maxsize=2)
def toy_classifier(device: str = "cpu"):
    from harness.toy.classifier import load_classifier

    return load_classifier(device=device)


def to_float(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images -> float (N, 3, H, W) in [0, 1]."""
    if not images:
        raise HarnessError("no images to compare")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0)


@torch.no_grad()
def toy_perceptual_distance(a: list[np.ndarray], b: list[np.ndarray], batch: int = 64) -> np.ndarray:
    """LPIPS-style distance with the toy classifier as the network and no learned weights:
    per layer, unit-normalise each pixel's channel vector, take the squared difference summed
    over channels, halve it (so it lies in [0, 1] for the non-negative ReLU features), average
    over pixels; then average over the layers. Identical images give exactly 0."""
    if len(a) != len(b):
        raise HarnessError(f"matched pairs needed: {len(a)} vs {len(b)} images")
    clf = toy_classifier()
    out = []
    for i in range(0, len(a), batch):
        fa = clf.feature_maps(to_float(a[i : i + batch]))
        fb = clf.feature_maps(to_float(b[i : i + batch]))
        d = 0.0
        for x, y in zip(fa, fb):
            x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
            y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
            d = d + ((x - y) ** 2).sum(1).mean((1, 2)) / 2
        out.append((d / len(fa)).numpy())
    return np.concatenate(out).astype(np.float64)


@torch.no_grad()
def toy_embeddings(images: list[np.ndarray], batch: int = 64) -> np.ndarray:
    """Pooled penultimate features of the toy classifier, (N, D)."""
    clf = toy_classifier()
    return np.concatenate([clf.features(to_float(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]).astype(np.float64)


class ToyCleanFidExtractor(torch.nn.Module):
    """clean-fid's custom feature extractor hook: it hands over (N, 3, 299, 299) batches in
    [0, 255] after its "clean" resize; we bring them back to the toy world's 32x32 (area
    averaging) and return the toy classifier's penultimate features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x.float() / 255.0, size=(32, 32), mode="area")
        return toy_classifier().features(x)
