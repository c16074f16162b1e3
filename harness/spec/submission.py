"""The submission YAML: a method, its checkpoint (sha256-pinned), the base model and its targets.

An inference-time method (``method.kind: inference``) changes the sampling instead of the
weights: it names a registered method and its parameters, and has no checkpoint (or one its
contract lets it run on top of)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from harness.spec.common import HTTPS_URL, SHA256, SLUG, Strict, exactly_one

class MethodSpec(Strict):
    name: str = Field(min_length=1, max_length=80)
    kind: Literal["checkpoint", "inference"] = Field(
        default="checkpoint", description="checkpoint: the method changed weights (the submission's checkpoint); inference: a registered "
        "inference-time method (harness.methods, e.g. negprompt, sld) that changes the sampling, with no checkpoint or on top of one")
    params: dict[str, Any] = {}
    paper_url: str | None = Field(default=None, pattern=r"^https://")
    code_url: str | None = Field(default=None, pattern=r"^https://")
    authors: list[str] = []
    license: str | None = None


class BaseModelSpec(Strict):
    """Exactly one of: the toy world's pipeline, a local folder, a hub id at a pinned revision."""

    builtin: Literal["toy", "toy-xl"] | None = Field(default=None, description="toy: the toy world's SD-1.x pipeline; toy-xl: its SDXL one")
    local_dir: str | None = None
    hub_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$",
                               description="owner/name on the hub; never a local path")
    revision: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$", description="a full commit sha")
    sha256: SHA256 | None = Field(default=None, description="folder hash of local_dir (optional pin)")

    @model_validator(mode="after")
    def _one_source(self):
        exactly_one(self, "builtin", "local_dir", "hub_id")
        if self.hub_id and not self.revision:
            raise ValueError("hub_id needs a pinned revision (a 40-character commit sha)")
        if self.revision and not self.hub_id:
            raise ValueError("revision only goes with hub_id")
        if self.hub_id and (".." in self.hub_id or Path(self.hub_id).exists()):
            # diffusers loads a local folder of that name, ignoring the revision and hashing nothing
            raise ValueError(f"hub_id {self.hub_id!r} names a local path; use local_dir for a folder in the repository")
        return self


# A checkpoint's kinds: a whole pipeline folder, a LoRA, or the tensors of one component that
# some model family has (``harness.families``: ``ModelFamily.checkpoint_kinds``); the base's
# family refuses a component it does not have (SD-1.x: unet, text_encoder).
CheckpointKind = Literal["pipeline", "unet", "text_encoder", "text_encoder_2", "transformer", "lora"]


class CheckpointSpec(Strict):
    """The unlearned weights: a whole pipeline folder, or one component's tensors (UNet, text
    encoder, ...) that replace the base's (a subset is fine: only the changed tensors), or a LoRA."""

    kind: CheckpointKind
    path: str | None = None
    url: HTTPS_URL | None = None
    sha256: SHA256

    @model_validator(mode="after")
    def _one_source(self):
        exactly_one(self, "path", "url")
        return self


class TargetSpec(Strict):
    concept: str = Field(min_length=1, max_length=100)
    kind: Literal["style", "object", "nudity", "identity"]


class EfficiencySpec(Strict):
    """Figures the submitter declares (shown as declared, never as measured)."""

    time_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    peak_memory_gb: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    storage_gb: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    device: str | None = Field(default=None, max_length=80)


class Submission(Strict):
    name: SLUG
    method: MethodSpec
    base_model: BaseModelSpec
    checkpoint: CheckpointSpec | None = Field(default=None, validate_default=True, description="required unless method.kind is inference")
    targets: list[TargetSpec] = Field(min_length=1)
    suites: list[SLUG] | None = Field(default=None, description="suite ids; default: every suite of the base's world that applies to a target kind")
    method_record: str | None = Field(default=None, description="method.json written by `unlearn erase` (measured efficiency)")
    efficiency: EfficiencySpec | None = None

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_for_kind(cls, v, info):
        m = info.data.get("method")  # validated before: declared above
        if v is None and (m is None or m.kind == "checkpoint"):
            raise ValueError("Field required (only a method.kind: inference submission may have none)")
        return v

    @field_validator("targets")
    @classmethod
    def _distinct_targets(cls, v):
        seen = set()
        for t in v:
            if t.concept in seen:
                raise ValueError(f"target {t.concept!r} is listed twice (one record per metric and target)")
            seen.add(t.concept)
        return v
