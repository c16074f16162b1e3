"""Where the toy world's trained assets live (light: no model library imported, so the CLI's
parser can show the defaults)."""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
PIPELINE_DIR = ASSETS / "pipeline"  # the toy diffusers pipeline
CLASSIFIER_DIR = ASSETS / "classifier"  # the toy classifier
