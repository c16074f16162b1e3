"""The harness's version, recorded in every results file (``harness.version`` of its provenance)."""

__version__ = "0.1.0"
