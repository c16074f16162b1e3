"""UA, IRA, CRA: classifier accuracy as UnlearnCanvas defines it (shared/docs/metrics.md).

For an unlearning target of kind K (style or object) and concept c, with the other kind K':
  UA  = 1 - acc_K[c]                                  unlearning accuracy: c is no longer drawn
  IRA = mean over the other concepts c' of K of acc_K[c']   in-domain retain accuracy
  CRA = mean over all concepts of K' of acc_K'[c'']          cross-domain retain accuracy
where acc_K[x] is the share of images generated from prompts labelled K = x that the
classifier's K head assigns to x, over every (style, object, seed) image of the answer set.
Means are over classes (equal to pooled accuracy on the full, balanced grid). The base model's
value is the same formula on the base model's images (matched prompts and noise).
"""

from __future__ import annotations

import numpy as np

from harness.errors import HarnessError
from harness.metrics import Measurement, MetricInfo

METRICS = {
    "ua": MetricInfo("UA", True, "unlearning accuracy: 1 - accuracy on the target concept's prompts", needs_scorer=True, role="erasure", plot="x",
                    prompts="forget"),
    "ira": MetricInfo("IRA", True, "in-domain retain accuracy: accuracy on the other concepts of the target's kind", needs_scorer=True, plot="y"),
    "cra": MetricInfo("CRA", True, "cross-domain retain accuracy: accuracy of the other kind's head on all prompts", needs_scorer=True, plot="y",
                     prompts="all"),
}
OTHER_KIND = {"style": "object", "object": "style"}


def per_class_accuracy(labels: list[str], preds: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    lab = np.array(labels)
    pr = np.array(preds)
    for c in dict.fromkeys(labels):
        m = lab == c
        out[c] = float((pr[m] == c).mean())
    return out


def _value(name: str, kind: str, concept: str, labels: dict[str, list[str]], preds: dict[str, list[str]]) -> tuple[float, dict]:
    acc = per_class_accuracy(labels[kind], preds[kind])
    if concept not in acc:
        raise HarnessError(f"target {concept!r} ({kind}) has no prompts in this suite (its {kind}s: {', '.join(acc)})")
    if name == "ua":
        return 1.0 - acc[concept], {"accuracy_on_target": acc[concept]}
    if name == "ira":
        others = {c: a for c, a in acc.items() if c != concept}
        if not others:
            raise HarnessError(f"IRA needs prompts of at least one {kind} other than {concept!r}")
        return float(np.mean(list(others.values()))), {"per_class": others}
    other = OTHER_KIND[kind]
    acc2 = per_class_accuracy(labels[other], preds[other])
    return float(np.mean(list(acc2.values()))), {"per_class": acc2}


def compute(name: str, run, target, params) -> Measurement:
    """``run`` is an ``evaluate.SuiteRun``: prompt labels and both models' predictions."""
    METRICS[name].params.of(params, f"{METRICS[name].label} params")
    if target.kind not in OTHER_KIND:
        raise HarnessError(f"{METRICS[name].label} is defined for style and object targets, not {target.kind}")
    if run.scorer is None:
        raise HarnessError(f"suite {run.suite.id}: {METRICS[name].label} needs a scorer (the suite sets none)")
    labels = run.labels()
    for k in ("style", "object"):
        if k not in labels:
            raise HarnessError(f"suite {run.suite.id}: prompts carry no {k!r} label, which {METRICS[name].label} needs")
    value, details = _value(name, target.kind, target.concept, labels, run.predictions("unlearned"))
    base, base_details = _value(name, target.kind, target.concept, labels, run.predictions("base"))
    return Measurement(value, base, {"unlearned": details, "base": base_details, "averaging": "mean over classes"},
                       scores=item_scores(name, run, target, labels))


def item_scores(name: str, run, target, labels: dict[str, list[str]]):
    """Per-image scores the value is the (class-)mean of: UA 1 - correct on the target's prompts
    (a proportion); IRA correct on the other concepts' prompts, CRA the other head's correct on
    every prompt, each grouped by class (means over classes)."""
    from harness.stats.intervals import item_scores as scores

    kind = target.kind
    head = kind if name != "cra" else OTHER_KIND[kind]
    lab = np.array(labels[head])
    own = np.array(labels[kind])
    idx = np.flatnonzero(own == target.concept) if name == "ua" else np.flatnonzero(own != target.concept) if name == "ira" else np.arange(len(own))
    correct = {w: (np.array(run.predictions(w)[head]) == lab)[idx].astype(float) for w in ("unlearned", "base")}
    if name == "ua":
        return scores(run, idx, 1 - correct["unlearned"], 1 - correct["base"], binary=True)
    return scores(run, idx, correct["unlearned"], correct["base"], groups=lab[idx])
