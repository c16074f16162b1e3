"""Scorers (judges): the classifiers and detectors that look at images, and the success judge of attacks. Their label
maps are data a suite names (``harness.spec.labels``).

The contract every scorer meets (``Scorer``): ``predict(images)`` gives, per output ("object",
"style", "detections", "class_index"), one value per image, and ``identity`` says who it is (an
id and the weights' sha256 or revision) for the results' provenance and the attack cache keys.
Two registries (harness.registry): ``SCORERS``, a suite's ``scorer.backend`` -> the class that
loads it (``cls(spec, root, device)``; third-party ones by the entry-point group
``unlearn_harness.scorers``), and ``JUDGES``, an attack judge's kind -> its factory
(harness.scorers.judge).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from harness.registry import GROUPS, Registry


@runtime_checkable
class Scorer(Protocol):
    """Scores images: ``predict`` -> {output: one value per image}; ``identity``: {"id", "sha256" | "revision", ...}."""

    identity: dict[str, Any]

    def predict(self, images: list) -> dict[str, Any]: ...


def _scorer_class(name: str, obj):
    if not callable(obj) or not callable(getattr(obj, "predict", None)):
        raise TypeError(f"{getattr(obj, '__name__', obj)!r} is not a scorer class (constructed with (spec, root, device), with predict(images))")
    return obj


def _judge_factory(name: str, obj):
    if not callable(obj):
        raise TypeError(f"{obj!r} is not a judge factory (suite, scorer, target, params, root) -> Judge")
    return obj


#: A suite's ``scorer.backend`` -> the scorer class.
SCORERS: Registry = Registry("scorer", GROUPS["scorer"], _scorer_class)
SCORERS.register("toy", "harness.scorers.classifiers:ToyScorer")
SCORERS.register("unlearncanvas-vit", "harness.scorers.classifiers:UnlearnCanvasViT")

#: An attack judge's kind (the suite's ``attacks.<block>.judge.kind``) -> its factory.
JUDGES: Registry = Registry("judge", None, _judge_factory)
for _kind in ("classifier", "nudenet", "resnet50"):
    JUDGES.register(_kind, f"harness.scorers.judge:{_kind}_judge")
