"""unlearn-harness: evaluation harness and leaderboard for concept erasure in text-to-image
diffusion models. The library is usable without pytest; ``harness.plugin.hooks`` is the pytest face.

This root connects the metric and attack registries to ``harness.catalog``, through which the
suite's checks (``harness.spec.suite``, at the bottom of the layers) look them up."""

from harness import catalog as _catalog
from harness.version import __version__

__all__ = ["__version__"]


def _metric_registry():
    from harness import metrics

    return metrics


def _attack_modules():
    from harness.attacks.runner import attacks

    return attacks()


_catalog.connect(_metric_registry, _attack_modules)
