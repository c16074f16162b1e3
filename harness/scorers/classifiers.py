"""Image classifiers that score generations: the toy world's CNN, and UnlearnCanvas' ViT-L/16.

A scorer maps a batch of images to one predicted label per head ("object", "style") and says
who it is (id + weights sha256) for the results' provenance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.store.hashing import sha256_file
from harness.spec import ScorerSpec, WeightsFile, pinned_file


def _verified(w: WeightsFile, root: Path, what: str) -> Path:
    if w.hub is not None:  # a hub file at a commit, from the Hugging Face cache (harness/store/hub.py)
        from harness.store.hub import pinned_path

        return pinned_path(root, w, f"scorer.{what}")
    return pinned_file(root, w.path, w.sha256, f"scorer.{what}")


class ToyScorer:
    """The toy classifier (committed weights unless the suite pins others)."""

    def __init__(self, spec: ScorerSpec, root: Path, device: str = "cpu"):
        from harness.toy.classifier import DEFAULT_DIR, load_classifier

        folder = _verified(spec.weights, root, "weights").parent if spec.weights else DEFAULT_DIR
        if spec.weights is not None and spec.weights.hub is not None:  # its config.json beside it, same commit
            from harness.store.hub import hub_file

            h = spec.weights.hub
            hub_file(h.repo, h.revision, str(Path(h.filename).parent / "config.json").removeprefix("./"), repo_type=h.repo_type, what="scorer.weights")
        self.model = load_classifier(folder, device)
        self.device = device
        self.heads = {"object": self.model.config["objects"], "style": self.model.config["styles"]}
        self.identity = {"id": "toy-classifier", "sha256": sha256_file(folder / "model.safetensors")}

    def predict(self, images: list[np.ndarray], batch_size: int = 64) -> dict[str, list[str]]:
        from harness.toy.classifier import predict

        o, s = predict(self.model, images, batch_size) if images else (np.array([], int), np.array([], int))
        return {"object": [self.heads["object"][i] for i in o], "style": [self.heads["style"][i] for i in s]}


class UnlearnCanvasViT:
    """UnlearnCanvas' classifiers: timm ViT-L/16 with a 51-way style head and a 20-way object
    head (two fine-tuned models). Input: resize to 224, mean 0.5 / std 0.5, top-1."""

    def __init__(self, spec: ScorerSpec, root: Path, device: str = "cpu"):
        self.device = device
        self.heads = {"style": list(spec.style_classes), "object": list(spec.object_classes)}
        self.models = {}
        self.identity = {"id": f"unlearncanvas-{spec.architecture}", "sha256": {}}
        if spec.labels:  # which index -> name map the heads were read with (harness/data/)
            from harness.spec.labels import source

            self.identity["labels"] = {"map": spec.labels, **source(spec.labels)}
        for head, w in (("style", spec.style_weights), ("object", spec.object_weights)):
            path = _verified(w, root, f"{head}_weights")
            self.models[head] = self._load(spec.architecture, path, len(self.heads[head]))
            self.identity["sha256"][head] = w.sha256

    def _load(self, arch: str, path: Path, n_classes: int):
        import timm
        from safetensors.torch import load_file

        model = timm.create_model(arch, pretrained=False, num_classes=n_classes)
        state = load_file(str(path))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise HarnessError(f"scorer: {path.name} does not fit {arch} with {n_classes} classes (missing {len(missing)}, unexpected {len(unexpected)} tensors)")
        return model.to(self.device).eval()

    def predict(self, images: list[np.ndarray], batch_size: int = 32) -> dict[str, list[str]]:
        import torch
        import torch.nn.functional as F

        out: dict[str, list[str]] = {h: [] for h in self.models}
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.stack(images[i : i + batch_size])).permute(0, 3, 1, 2).float().div(255)
            x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
            x = ((x - 0.5) / 0.5).to(self.device)
            with torch.inference_mode():
                for head, model in self.models.items():
                    out[head] += [self.heads[head][j] for j in model(x).argmax(1).tolist()]
        return out


class NudeNetDetector:
    """NudeNet's 320n detector (harness.metrics.nudity) as a scorer: per image, its detections
    (class, score, box)."""

    def __init__(self):
        from harness.scorers.detectors import detector

        _, self.identity = detector()

    def predict(self, images: list[np.ndarray]) -> dict[str, list]:
        from harness.scorers.detectors import detect

        return {"detections": detect(images)}


class ImageNetResNet50:
    """torchvision's ImageNet ResNet-50 (harness.metrics.objects) as a scorer: per image, its
    top-1 class index; weights at ``path``, pinned by ``sha256``."""

    def __init__(self, path: str | Path, sha256: str):
        self.path = str(path)
        self.identity = {"id": "resnet50", "sha256": sha256}

    def predict(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        from harness.scorers.detectors import top1

        return {"class_index": top1(images, self.path)}


def load_scorer(spec: ScorerSpec, root: Path, device: str = "cpu"):
    """The suite's scorer, by its backend (harness.scorers.SCORERS)."""
    from harness.scorers import SCORERS

    return SCORERS.get(spec.backend)(spec, root, device)
