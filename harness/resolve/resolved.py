"""A submission resolved once: what every later step of a run needs to know about it, verified.

``ResolvedSubmission`` is made by the start-up check (``harness.resolve.check.prepare``, the one
path of the pytest plugin and ``unlearn check``) and handed to the pytest session, the evaluator,
the run estimate and the plan, so none of them hashes the checkpoint, walks the base folder or locates a
hub snapshot again: the spec and its path, the verified checkpoint and its sha256, the base folder
(a local folder or the cached hub snapshot) and the two model fingerprints that key the image
cache, the model family, the native image size, the component shapes the checks read, the
suites, and the lines ``unlearn check`` prints.

``resolve_models`` makes the same object without the start-up checks, for callers that hand the
evaluator a bare ``Submission`` (scripts, benchmarks): the fingerprints and the verified
checkpoint alone, in the order the evaluator has always met them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from harness.errors import HarnessError
from harness.families.guidance import InferenceRecipe
from harness.spec import Submission, Suite



@dataclass(frozen=True, eq=False)
class ResolvedSubmission:
    """One submission as the start-up check verified it (frozen: nothing downstream changes it)."""

    path: str  # the submission YAML as given
    spec: Submission
    checkpoint: Path | None  # the verified local checkpoint file or folder (a URL's: fetched into the cache); None: an inference-time method alone
    checkpoint_sha256: str | None
    base_folder: Path | None  # a local base folder, or the cached hub snapshot; None: a hub base not in the cache
    base_fingerprint: str  # ``sha256:<tree>`` or ``hub:<id>@<revision>`` (keys the base's images)
    unlearned_fingerprint: str  # keys the unlearned model's images
    family: str  # the model family of the base (``family_name``)
    native_size: int | None = None  # the base's native image size; None: not read (no suite needs it, or a hub base not cached)
    shapes: Mapping[str, Mapping[str, tuple[int, ...]]] = field(default_factory=dict)  # component -> tensor name -> shape, where read
    suites: Mapping[str, Suite] = field(default_factory=dict)  # every suite of the submission, by id
    checked: tuple[str, ...] = ()  # what the start-up check verified, one line each (``unlearn check`` prints them)
    checkpoint_state: tuple | None = None  # ``families.sd1.file_state`` of the checkpoint right after its sha256 check
    inference: InferenceRecipe | None = None  # an inference-time method (``method.kind: inference``), resolved
    inference_preset: str | None = None  # the preset its parameters start from

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def fingerprints(self) -> tuple[str, str]:
        """(base, unlearned): the identities that key the image cache."""
        return self.base_fingerprint, self.unlearned_fingerprint


def family_name(folder: Path | None, what: str = "base_model") -> str:
    """The model family of a base (``harness.families``): the family that recognises its
    ``model_index.json``, one line naming the folder otherwise. A hub base not in the cache
    (``None``) is loaded by the default family (SD-1.x)."""
    from harness.families import default, family_of

    return default().name if folder is None else family_of(folder, what=what).name


def cached_base_folder(sub: Submission, root: Path) -> Path | None:
    """The base's folder on this machine: a local folder (``base_model.local_dir``, the toy
    pipeline), or a pinned hub base's snapshot when the Hugging Face cache holds it complete
    (never downloaded here); None otherwise."""
    from harness.families.sd1 import base_dir

    d = base_dir(sub.base_model, root)
    if d is None and sub.base_model.hub_id and sub.base_model.revision:
        from harness.store.hub import pipeline_snapshot

        try:
            d = pipeline_snapshot(sub.base_model.hub_id, sub.base_model.revision, download=False)
        except HarnessError:  # not cached: located again where it is downloaded (load_base)
            d = None
    return d


def read_native_size(folder: Path | None) -> int | None:
    """The native image size of a base folder, None where it cannot be read (the plan reads it
    again where a suite needs it, and reports why)."""
    if folder is None:
        return None
    from harness.run.plan import native_size_at

    try:
        return native_size_at(folder)
    except (HarnessError, OSError, ValueError, KeyError):
        return None


def resolve_models(path: str, sub: Submission, root: Path, cache: Path, allow_pickle: bool = False) -> ResolvedSubmission:
    """The models of a submission without the start-up checks (an evaluator given a bare
    ``Submission``): the base's fingerprint (its folder hashed once), the checkpoint verified
    (``families.sd1.checkpoint_file``), the base's folder, family and native size."""
    from harness.families.sd1 import base_fingerprint, unlearned_fingerprint, verified_checkpoint

    base_fp = base_fingerprint(sub.base_model, root)
    ckpt, state = verified_checkpoint(sub.checkpoint, root, cache, allow_pickle) if sub.checkpoint else (None, None)
    folder = cached_base_folder(sub, root)
    recipe, preset = resolve_inference(sub, folder)
    return ResolvedSubmission(path=str(path), spec=sub, checkpoint=ckpt, checkpoint_sha256=sub.checkpoint.sha256 if sub.checkpoint else None,
                              base_folder=folder, base_fingerprint=base_fp, unlearned_fingerprint=unlearned_fingerprint(sub, base_fp, recipe),
                              family=family_name(folder), native_size=read_native_size(folder), checkpoint_state=state,
                              inference=recipe, inference_preset=preset)


def resolve_inference(sub: Submission, folder: Path | None) -> tuple[InferenceRecipe | None, str | None]:
    """A submission's inference-time method resolved for its base (``harness.methods.inference``)."""
    from harness.families import default, family_of
    from harness.methods.inference import inference_recipe

    family = default() if folder is None else family_of(folder, what="base_model")
    return inference_recipe(sub, folder, family)
