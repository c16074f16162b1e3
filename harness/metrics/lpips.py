"""LPIPS with the AlexNet backbone (lpips v0.1 weights as torchmetrics ships them), inputs in
[-1, 1], one distance per matched pair. The linear weights come with torchmetrics; the AlexNet
backbone comes from torchvision's ImageNet weights, fetched once where a network is reachable.
``stand_in=True`` uses a random backbone built in code (tests; never for reported numbers)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from harness.errors import HarnessError
from harness.metrics.features import to_float


@lru_cache(maxsize=2)
def _net(stand_in: bool):
    from torchmetrics.functional.image.lpips import _LPIPS

    try:
        return _LPIPS(pretrained=True, net="alex", pnet_rand=stand_in).eval()
    except Exception as e:  # download failures surface as several exception types
        raise HarnessError(f"LPIPS AlexNet could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}); run once with network access to cache torchvision's AlexNet weights") from None


@torch.no_grad()
def lpips_alex(a: list[np.ndarray], b: list[np.ndarray], size: int | None = None, stand_in: bool = False, batch: int = 16) -> np.ndarray:
    if len(a) != len(b):
        raise HarnessError(f"matched pairs needed: {len(a)} vs {len(b)} images")
    net = _net(stand_in)
    out = []
    for i in range(0, len(a), batch):
        x, y = to_float(a[i : i + batch]) * 2 - 1, to_float(b[i : i + batch]) * 2 - 1
        if size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
            y = torch.nn.functional.interpolate(y, size=(size, size), mode="bilinear", antialias=True)
        out.append(net(x, y).reshape(-1).numpy())
    return np.concatenate(out).astype(np.float64)
