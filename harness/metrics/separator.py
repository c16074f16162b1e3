"""The separator of CRS / CCS (harness.metrics.concealment): a binary classifier of the original
(base) model's images against the unlearned model's, and its pooled-feature similarity.

Two networks: the toy world's small CNN, and the paper's ImageNet ResNet-18 with a 2-way head.
Two training recipes over one seeded 80/20 split: the toy loop (Adam, ``steps`` batches of 32,
cross-entropy + triplet loss with the first negative) and the authors' (respailab/unlearning-or-
concealment ``CCS_CRS.ipynb``: epochs of shuffled batches of 32, SGD lr 1e-3 momentum 0.9,
cross-entropy + triplet loss with the hardest of 3 random negatives, margin 1).

    s(a, b) = (1 - arctan(cos(f(a), f(b)))) / (pi / 2)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.metrics.features import to_float


class ToySeparator(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(64, 2)

    def features(self, x):
        return self.body((x - 0.5) / 0.5)

    def forward(self, x):
        return self.head(self.features(x))


class ResNetSeparator(nn.Module):
    """The paper's separator: ImageNet ResNet-18 (weights from a pinned safetensors file), its
    classifier replaced by a 2-way head; inputs resized to 224 with ImageNet statistics."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, weights_path: str, resize: int | None = None):
        import torchvision
        from safetensors.torch import load_file

        super().__init__()
        body = torchvision.models.resnet18(weights=None)
        body.load_state_dict(load_file(weights_path))
        body.fc = nn.Identity()
        self.body, self.head = body, nn.Linear(512, 2)
        self.resize = resize  # None: 224 x 224 (toy recipe); else the shorter side, no crop

    def features(self, x):
        if self.resize:
            h, w = x.shape[-2:]
            s = self.resize / min(h, w)
            size = (round(h * s), round(w * s))
        else:
            size = (224, 224)
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = (x - torch.tensor(self.MEAN)[:, None, None]) / torch.tensor(self.STD)[:, None, None]
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def hardest_negative_triplet(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """mean over anchors of max(0, |a - p| - min_k |a - n_k| + margin); negatives: (B, K, D)."""
    pos = torch.norm(anchor - positive, dim=1)
    neg = torch.norm(anchor.unsqueeze(1) - negatives, dim=2).min(dim=1).values
    return torch.clamp(pos - neg + margin, min=0.0).mean()


def _split(original: list[np.ndarray], unlearned: list[np.ndarray], seed: int):
    """Both trainings' start: seeded generators, the images (original = label 1, unlearned =
    label 0) and a seeded 80/20 train / held-out split."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.cat([to_float(original), to_float(unlearned)])
    y = torch.cat([torch.ones(len(original), dtype=torch.long), torch.zeros(len(unlearned), dtype=torch.long)])
    perm = torch.randperm(len(x), generator=g)
    n_train = max(2, int(0.8 * len(x)))
    return g, x, y, perm[:n_train], perm[n_train:]


def _heldout_accuracy(model, x, y, te) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x[te]).argmax(1) == y[te]).float().mean()) if len(te) else float("nan")


def train_separator_paper(original: list[np.ndarray], unlearned: list[np.ndarray], make_model, epochs: int = 10, seed: int = 0,
                          log: dict | None = None):
    """The authors' recipe (CCS_CRS.ipynb): epochs over an 80/20 split in shuffled batches of 32,
    each anchor with a random positive of its class and 3 random negatives of the other, loss =
    cross-entropy + hardest-negative triplet (margin 1), SGD lr 1e-3 momentum 0.9."""
    g, x, y, tr, te = _split(original, unlearned, seed)
    by_label = {c: tr[y[tr] == c] for c in (0, 1)}
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    steps = 0
    for _ in range(epochs):
        order = tr[torch.randperm(len(tr), generator=g)]
        for b in range(0, len(order), 32):
            a = order[b : b + 32]
            pos = torch.stack([by_label[int(y[i])][torch.randint(0, len(by_label[int(y[i])]), (1,), generator=g)][0] for i in a])
            neg = torch.stack([by_label[1 - int(y[i])][torch.randint(0, len(by_label[1 - int(y[i])]), (3,), generator=g)] for i in a])
            fa, fp = model.features(x[a]), model.features(x[pos])
            fn = model.features(x[neg.reshape(-1)]).reshape(len(a), 3, -1)
            loss = F.cross_entropy(model.head(fa), y[a]) + hardest_negative_triplet(fa, fp, fn)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    if log is not None:
        log.update(recipe="paper", epochs=epochs, optimizer_steps=steps)
    return model, _heldout_accuracy(model, x, y, te)


def train_separator(original: list[np.ndarray], unlearned: list[np.ndarray], steps: int = 200, seed: int = 0, make_model=None):
    """Fit the binary original-vs-unlearned classifier; returns (model, held-out accuracy).
    Toy: Adam on the small CNN; with ``make_model`` (ResNet-18): SGD lr 1e-3, momentum 0.9 as
    in the paper."""
    g, x, y, tr, te = _split(original, unlearned, seed)
    model = make_model() if make_model else ToySeparator()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9) if make_model else torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    triplet = nn.TripletMarginLoss(margin=1.0)
    for _ in range(steps):
        idx = tr[torch.randint(0, len(tr), (min(32, len(tr)),), generator=g)]
        feats = model.features(x[idx])
        loss = F.cross_entropy(model.head(feats), y[idx])
        pos = [(i, j) for i in range(len(idx)) for j in range(len(idx)) if i != j and y[idx[i]] == y[idx[j]]]
        neg = {i: [j for j in range(len(idx)) if y[idx[i]] != y[idx[j]]] for i in range(len(idx))}
        trip = [(i, j, neg[i][0]) for i, j in pos[:32] if neg[i]]
        if trip:
            a, p, n = (torch.stack([feats[t[k]] for t in trip]) for k in range(3))
            loss = loss + triplet(a, p, n)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, _heldout_accuracy(model, x, y, te)


def similarity(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """s(a, b) = (1 - arctan(cos)) / (pi / 2), for every pair: (len(a), len(b))."""
    cos = F.normalize(fa, dim=1) @ F.normalize(fb, dim=1).T
    return (1 - torch.atan(cos)) / (math.pi / 2)
