"""Scorers (judges): the classifiers and detectors that look at images, their label maps, and the success judge of attacks."""
