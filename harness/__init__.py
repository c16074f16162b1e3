"""unlearn-harness: evaluation harness and leaderboard for concept erasure in text-to-image
diffusion models. The library is usable without pytest; ``harness.plugin.hooks`` is the pytest face."""

__version__ = "0.1.0"
