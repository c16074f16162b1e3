"""Scorers (judges): the classifiers and detectors that look at images, and the success judge of attacks. Their label maps are data a suite names (``harness.spec.labels``)."""
