"""Object erasure (ESD / UCE protocol): ImageNet ResNet-50 top-1 on the Imagenette classes.

``object_acc``: accuracy on the erased class's prompts (should drop; lower is better);
``object_acc_others``: mean accuracy over the other classes' prompts (should stay). A prompt's
class comes from its ``object`` label, mapped to an ImageNet index by ``params.classes``. The
classifier is torchvision's ResNet-50 with weights from a safetensors file pinned by sha256
(``params.weights``), preprocessed as those weights' own ``transforms()`` do, which is what the
ESD and UCE authors' ``evalscripts/imageclassify.py`` runs (``ResNet50_Weights.DEFAULT`` =
IMAGENET1K_V2: resize the shorter side to 232, centre crop 224, ImageNet mean / std; the V1
weights' 256 is ``params.resize: 256``).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from harness.errors import HarnessError
from harness.metrics import Measurement, MetricInfo
from harness.metrics.common import MetricParams, PinnedRef, pinned_weights
from harness.scorers import detectors


class Params(MetricParams):
    classes: dict[str, int] = Field(default={}, description="object label -> ImageNet class index")
    weights: PinnedRef | None = Field(default=None, description="torchvision ResNet-50 weights (safetensors), pinned")
    resize: int = Field(default=232, gt=0, description="shorter side before the 224 centre crop (V2 weights: 232, V1: 256)")


METRICS = {
    "object_acc": MetricInfo("Object-acc", False, "ResNet-50 top-1 accuracy on the erased class's prompts", params=Params, role="erasure",
                             prompts="forget"),
    "object_acc_others": MetricInfo("Object-acc-others", True, "ResNet-50 top-1 accuracy on the other classes' prompts", params=Params),
}
def compute(name: str, run, target, params) -> Measurement:
    p = Params.of(params, "object erasure params")
    classes = p.classes
    if not classes or p.weights is None:
        raise HarnessError("object erasure: the suite must give params.classes (label -> ImageNet index) and params.weights {path, sha256}")
    path = pinned_weights(run, p.weights, "object erasure params.weights")
    labels = run.labels().get("object")
    if labels is None or target.concept not in classes:
        raise HarnessError(f"object erasure: {target.concept!r} is not a class of this suite ({', '.join(classes)})")
    resize = p.resize
    key = ("resnet50-top1", str(path), resize)
    if key not in run.memo:
        run.memo[key] = {which: detectors.top1(run.images[which], str(path), resize=resize) for which in ("base", "unlearned")}
    preds = run.memo[key]
    want = np.array([classes.get(lab, -1) for lab in labels])
    mask = np.array(labels) == target.concept
    sel = mask if name == "object_acc" else ~mask

    def acc(p):
        if name == "object_acc":
            return float((p[sel] == want[sel]).mean())
        per = [float((p[np.array(labels) == c] == classes[c]).mean()) for c in dict.fromkeys(np.array(labels)[sel])]
        return float(np.mean(per))

    from harness.stats.intervals import item_scores

    idx = np.flatnonzero(sel)
    correct = {k: (preds[k] == want)[idx].astype(float) for k in ("unlearned", "base")}
    scores = item_scores(run, idx, correct["unlearned"], correct["base"], groups=None if name == "object_acc" else np.array(labels)[idx], binary=name == "object_acc")
    return Measurement(acc(preds["unlearned"]), acc(preds["base"]), {"classifier": "torchvision resnet50", "weights_sha256": p.weights.sha256, "resize": resize, "images": int(sel.sum())},
                       scores=scores)
