"""Where the toy world's trained assets live (light: no model library imported, so the CLI's
parser can show the defaults)."""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
PIPELINE_DIR = ASSETS / "pipeline"  # the toy diffusers pipeline
CLASSIFIER_DIR = ASSETS / "classifier"  # the toy classifier
PIPELINE_XL_DIR = ASSETS / "pipeline-xl"  # the toy world's SDXL-architecture pipeline (``builtin: toy-xl``)
# the toy worlds by ``base_model.builtin`` name: one procedural world, one classifier, a pipeline per model family
PIPELINES = {"toy": PIPELINE_DIR, "toy-xl": PIPELINE_XL_DIR}


def world_of_base(path: str) -> str | None:
    """The toy world a method record's ``base.path`` names (``builtin:toy``, ``builtin:toy-xl``, or
    the folder's own path, as records made before the ``builtin:`` form say), else None."""
    for name, folder in PIPELINES.items():
        if path in (f"builtin:{name}", str(folder)):
            return name
    return None
