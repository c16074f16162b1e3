"""Resolving a submission before anything runs: verifying its files and pins, converting checkpoint formats, and the ``unlearn fetch`` / ``unlearn pin`` logic."""
