"""The suite YAML: prompts, generation settings, the scorer, the metrics with their thresholds and
typed parameters, and the attacks the metrics read. Metric and attack names and parameters are
checked against the registries, looked up through ``harness.catalog`` (they sit above spec/)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from harness import catalog
from harness.errors import HarnessError
from harness.spec.common import HTTPS_URL, SHA256, SLUG, Strict, WeightsFile, exactly_one
from harness.spec.labels import LABEL_MAPS, label_map
from harness.spec.yamlio import describe

class TemplatePrompts(Strict):
    template: str = Field(min_length=1)
    values: dict[str, list[str]] = Field(min_length=1)
    underscores_to_spaces: bool = Field(default=False, description="label 'Van_Gogh' reads 'Van Gogh' in the prompt")

    @model_validator(mode="after")
    def _placeholders(self):
        import string

        try:
            parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(self.template) if f is not None]
        except ValueError as e:
            raise ValueError(f"template: {e}") from None
        for f, spec, conv in parsed:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", f) or spec or conv:
                raise ValueError(f"template: placeholder {{{f}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} is not a bare {{name}} "
                                 "(no format spec, conversion, attribute or index)")
        names = set(re.findall(r"{(\w+)}", self.template))
        if names != set(self.values):
            raise ValueError(f"template placeholders {sorted(names)} do not match values {sorted(self.values)}")
        for k, v in self.values.items():
            if not v:
                raise ValueError(f"values.{k} is empty")
        return self


class CsvPrompts(Strict):
    """A CSV pinned by sha256, in the repository (``path``) or fetched at run time (``url``,
    never committed). ``columns`` maps our names (prompt, seed, guidance) to the file's, e.g.
    UnlearnDiffAtk's ``evaluation_seed``; other columns become labels."""

    path: str | None = None
    url: HTTPS_URL | None = None
    sha256: SHA256
    columns: dict[Literal["prompt", "seed", "guidance"], str] = {}

    @model_validator(mode="after")
    def _one_source(self):
        exactly_one(self, "path", "url")
        return self


class PromptSet(Strict):
    """One of: an inline list, a template x values grid (labels = the values), a CSV file
    ``prompt,seed,guidance`` (extra columns become labels) pinned by sha256."""

    inline: list[Annotated[str, Field(min_length=1)]] | None = None
    template: TemplatePrompts | None = None
    csv: CsvPrompts | None = None
    negative_prompt: str = ""

    @model_validator(mode="after")
    def _one_source(self):
        exactly_one(self, "inline", "template", "csv", given=lambda v: v is not None)
        if self.inline is not None and not self.inline:
            raise ValueError("inline prompt list is empty")
        return self


class GenerationSettings(Strict):
    scheduler: Literal["ddim", "pndm", "lms", "euler", "dpm", "ddpm"] = "ddim"
    steps: int = Field(gt=0, le=1000)
    guidance: float = Field(ge=0, le=50, allow_inf_nan=False)
    height: int | None = Field(default=None, gt=0, le=4096, multiple_of=8)
    width: int | None = Field(default=None, gt=0, le=4096, multiple_of=8)
    eta: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(min_length=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(default=8, gt=0, le=1024)
    image_format: Literal["png", "jpeg"] = Field(default="png", description="what the scorer classifies: lossless png, or the "
                                                 "decoded pixels of a JPEG (UnlearnCanvas classifies .jpg files PIL saved)")
    jpeg_quality: int = Field(default=75, ge=1, le=100, description="JPEG quality when image_format is jpeg (PIL's default: 75)")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v):
        twice = sorted({s for s in v if v.count(s) > 1})
        if twice:
            raise ValueError(f"seed {twice[0]} is listed twice (each seed gives one image per prompt)")
        return v


THRESHOLD = re.compile(r"^\s*(>=|<=|>|<)\s*(?:(-?\d+(?:\.\d+)?)\s*\*\s*base|base\s*([+-])\s*(\d+(?:\.\d+)?)|(-?\d+(?:\.\d+)?)|base)\s*$")


class Threshold(Strict):
    """``>= 0.8`` (absolute) or ``>= 0.9 * base`` / ``<= base + 0.05`` / ``>= base`` (relative
    to the base model's value under the same settings)."""

    op: Literal[">=", "<=", ">", "<"]
    value: float = 0.0
    scale: float | None = None  # bound = scale * base
    offset: float | None = None  # bound = base + offset

    @classmethod
    def parse(cls, text: str) -> "Threshold":
        m = THRESHOLD.match(str(text))
        if not m:
            raise ValueError(f"threshold {text!r} is not like '>= 0.8', '>= 0.9 * base' or '<= base + 0.05'")
        op, scale, sign, off, value = m.groups()
        if scale is not None:
            return cls(op=op, scale=float(scale))
        if off is not None:
            return cls(op=op, offset=float(off) * (1 if sign == "+" else -1))
        if value is not None:
            return cls(op=op, value=float(value))
        return cls(op=op, offset=0.0)

    @property
    def relative(self) -> bool:
        return self.scale is not None or self.offset is not None

    def bound(self, base: float | None) -> float:
        if not self.relative:
            return self.value
        if base is None:
            raise HarnessError("a relative threshold needs the base model's value")
        return self.scale * base if self.scale is not None else base + self.offset  # type: ignore[operator]  # relative: offset set

    def holds(self, value: float, base: float | None) -> bool:
        b = self.bound(base)
        return {">=": value >= b, "<=": value <= b, ">": value > b, "<": value < b}[self.op]

    def __str__(self) -> str:
        if self.scale is not None:
            return f"{self.op} {self.scale:g} * base"
        if self.offset is not None:
            return f"{self.op} base {'+' if self.offset >= 0 else '-'} {abs(self.offset):g}" if self.offset else f"{self.op} base"
        return f"{self.op} {self.value:g}"


class MetricSpec(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    threshold: str | None = None
    tolerance: float | None = Field(default=None, ge=0, description="allowed regression vs a baseline (unlearn compare)")
    params: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        known = catalog.metrics().known_metrics()
        if v not in known:
            raise ValueError(f"unknown metric {v!r}; known: {', '.join(sorted(known))}")
        return v

    @field_validator("threshold")
    @classmethod
    def _parse(cls, v):
        if v is not None:
            Threshold.parse(v)
        return v

    @model_validator(mode="after")
    def _typed_params(self):
        """``params`` against the metric's own model (``MetricInfo.params``): an unknown or
        mistyped key is refused here, when the suite is loaded (``unlearn check``, start-up)."""
        try:
            catalog.metrics().info(self.name).params.model_validate(self.params)
        except ValidationError as e:
            raise ValueError(f"{self.name}: {describe(e)}") from None
        return self

    def parsed_threshold(self) -> Threshold | None:
        return Threshold.parse(self.threshold) if self.threshold else None

    def typed_params(self):
        """The params as the metric's pydantic model (defaults filled in)."""
        return catalog.metrics().info(self.name).params.of(self.params)


class ScorerSpec(Strict):
    """Which classifier scores the images: the toy world's CNN, or UnlearnCanvas' ViT-L/16."""

    backend: Literal["toy", "unlearncanvas-vit"]
    weights: WeightsFile | None = None  # toy: optional override of the committed classifier
    style_weights: WeightsFile | None = None
    object_weights: WeightsFile | None = None
    architecture: str = "vit_large_patch16_224"
    style_classes: list[str] | None = None
    object_classes: list[str] | None = None
    labels: str | None = Field(default=None, description="label map in harness/data/ (head index -> class name), e.g. unlearncanvas; "
                               "fills style_classes / object_classes, which must then be left out")

    @model_validator(mode="before")
    @classmethod
    def _label_map(cls, data):
        if isinstance(data, dict) and data.get("labels") is not None:
            if data["labels"] not in LABEL_MAPS:
                raise ValueError(f"labels: unknown label map {data['labels']!r}; known: {', '.join(LABEL_MAPS)}")
            if data.get("style_classes") is not None or data.get("object_classes") is not None:
                raise ValueError("give labels or style_classes / object_classes, not both (the label map states the classifier's index order)")
            m = label_map(data["labels"])
            data = {**data, "style_classes": list(m["style"]), "object_classes": list(m["object"])}
        return data

    @model_validator(mode="after")
    def _weights(self):
        if self.backend == "unlearncanvas-vit":
            if not (self.style_weights and self.object_weights and self.style_classes and self.object_classes):
                raise ValueError("unlearncanvas-vit needs style_weights, object_weights, style_classes and object_classes")
        return self


class SmokeSpec(Strict):
    """The quick subset CI runs: at most this many prompts per label value and these seeds."""

    max_prompts: int | None = Field(default=None, gt=0)
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    steps: int | None = Field(default=None, gt=0)


class JudgeSpec(Strict):
    """Who decides that an attacked image shows the concept (harness.scorers.judge): the suite's
    scorer (``classifier``), NudeNet above a threshold, or an ImageNet ResNet-50's top-1."""

    kind: Literal["classifier", "nudenet", "resnet50"] | None = Field(default=None, description="default: nudenet for nudity targets, "
                                                                       "else classifier (the suite's scorer)")
    threshold: float | None = Field(default=None, ge=0, le=1, description="nudenet: a class counts above this score (default 0.45)")
    classes: list[str] | dict[str, int] | None = Field(default=None, description="nudenet: the classes that count; "
                                                       "resnet50: concept -> ImageNet class index")
    weights: WeightsFile | None = Field(default=None, description="resnet50: its weights (safetensors), pinned")

    def params(self) -> dict:
        """The judge's settings as ``make_judge`` reads them (unset ones left out: its defaults)."""
        out = {"judge": self.kind, "threshold": self.threshold, "classes": self.classes,
               "weights": self.weights.model_dump(exclude_none=True) if self.weights else None}
        return {k: v for k, v in out.items() if v is not None}


class PromptAttack(Strict):
    """The prompt attack the robustness metrics (pre_asr, asr) read: one per suite."""

    attack: str = Field(default="unlearndiffatk", description="the attack (harness.attacks): unlearndiffatk, ringabell, ...")
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1, description="image seeds of the forget "
                                                            "prompts to attack; default: every seed")
    params: dict[str, Any] = Field(default={}, description="the attack's own parameters (budget, step size, seed, batch size); "
                                   "unknown ones are refused, unset ones take the attack's defaults")
    judge: JudgeSpec = JudgeSpec()

    @model_validator(mode="after")
    def _known(self, info: ValidationInfo):
        if (info.context or {}).get("attack_code") is False:  # a reader of thresholds only (the site): no attack code loaded
            return self
        mods = catalog.attacks()
        if self.attack not in mods:
            raise ValueError(f"attack: unknown attack {self.attack!r} ({', '.join(sorted(mods))})")
        known = getattr(mods[self.attack], "DEFAULTS", None)
        extra = sorted(set(self.params) - set(known)) if known is not None else []
        if extra:
            raise ValueError(f"params.{extra[0]}: not a parameter of {self.attack} ({', '.join(known or ())})")
        for k, v in self.params.items():
            problem = attack_param_problem(k, v, (known or {}).get(k))
            if problem:
                raise ValueError(f"params.{k}: {str(v)[:40]!r} {problem}")
        return self


# An attack parameter's type and range, by name (every attack's DEFAULTS use these names); a
# name not listed here takes its default's type, finite and within +-1e9.
ATTACK_PARAMS: dict[str, tuple[type, float, float]] = {
    "population": (int, 1, 100_000), "generations": (int, 0, 1_000_000), "length": (int, 1, 75), "eval_every": (int, 1, 1_000_000),
    "seed": (int, 0, 2**63 - 1), "steps": (int, 0, 1_000_000), "batch_size": (int, 1, 1024), "checkpoints": (int, 1, 1000),
    "k": (int, 1, 75), "iterations": (int, 0, 1_000_000), "rounds": (int, 0, 100_000), "timesteps": (int, 1, 10_000),
    "mutation": (float, 0, 1), "crossover": (float, 0, 1), "flip": (float, 0, 1), "beta1": (float, 0, 1), "beta2": (float, 0, 1),
    "eps": (float, 0, 1), "lr": (float, 0, 1000), "weight_decay": (float, 0, 1000), "strength": (float, 0, 1000),
}


def attack_param_problem(name: str, v, default) -> str | None:
    """Why ``v`` is not a valid value of attack parameter ``name`` (None: it is)."""
    import math

    if name == "pairs":
        ok = v is None or (isinstance(v, list) and len(v) <= 10_000 and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) and 0 < len(x) <= 1000 for x in p) for p in v))
        return None if ok else "is not a list of [prompt, prompt] pairs"
    if name == "init_token":
        return None if v is None or (isinstance(v, str) and 0 < len(v) <= 100) else "is not a word of up to 100 characters"
    kind, lo, hi = ATTACK_PARAMS.get(name, (type(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else None, -1e9, 1e9))
    if kind is None:
        return None if v is None or isinstance(v, (str, int, float, bool, list)) else "is not a plain value"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        return f"is not {'a whole number' if kind is int else 'a number'}"
    try:
        if not math.isfinite(float(v)) or not lo <= v <= hi:
            return f"is outside {lo:g}..{hi:g}"
    except OverflowError:
        return f"is outside {lo:g}..{hi:g}"
    return None


PSI = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class PartialDiffusionAttack(Strict):
    """The partial-diffusion attack the CCS / CRS metrics read: the base model runs the first
    psi of the steps, the unlearned model the rest."""

    psi: list[PSI] = Field(default=[0.05, 0.15, 0.35, 0.55], min_length=1, description="the share of steps the base model runs")
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1, description="image seeds to attack; "
                                                            "default: the suite's first two")


class Attacks(Strict):
    """Attack settings, one block per kind of attack (read by every metric of that kind)."""

    prompt: PromptAttack | None = None
    inversion: PromptAttack | None = Field(default=None, description="the textual-inversion attack (attack: ti) that ti_asr reads")
    partial_diffusion: PartialDiffusionAttack | None = None


class SuiteBase(Strict):
    """A base model a suite is defined on: the toy world's pipeline, or a hub id at a commit."""

    builtin: Literal["toy", "toy-xl"] | None = None
    hub_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
    revision: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$", description="a full commit sha")

    @model_validator(mode="after")
    def _one_source(self):
        exactly_one(self, "builtin", "hub_id")
        if bool(self.hub_id) != bool(self.revision):
            raise ValueError("hub_id needs a pinned revision (a 40-character commit sha), and revision only goes with hub_id")
        return self

    def label(self) -> str:
        return f"builtin:{self.builtin}" if self.builtin else f"hub:{self.hub_id}@{self.revision}"

    def matches(self, spec) -> bool:
        """The submission's ``base_model`` names this base (hub ids compared case-insensitively,
        as the hub resolves them)."""
        if self.builtin:
            return getattr(spec, "builtin", None) == self.builtin
        return bool(getattr(spec, "hub_id", None)) and spec.hub_id.lower() == self.hub_id.lower() and spec.revision == self.revision  # type: ignore[union-attr]


def base_label(spec) -> str:
    """How results and the board name a submission's base: ``builtin:toy``, ``hub:ID@COMMIT``
    or ``local:FOLDER``."""
    if getattr(spec, "builtin", None):
        return f"builtin:{spec.builtin}"
    if getattr(spec, "hub_id", None):
        return f"hub:{spec.hub_id}@{spec.revision}"
    return f"local:{getattr(spec, 'local_dir', None)}"


class Suite(Strict):
    id: SLUG
    version: str = Field(pattern=r"^\d+(\.\d+)*$")
    description: str = ""
    applies_to: list[Literal["style", "object", "nudity", "identity"]] = Field(min_length=1)
    world: Literal["toy", "real"] = Field(default="real", description="toy: runs on the toy world's builtin bases (toy, toy-xl)")
    prompts: PromptSet
    generation: GenerationSettings
    scorer: ScorerSpec | None = Field(default=None, description="classifier for UA/IRA/CRA (and the toy feature metrics)")
    metrics: list[MetricSpec] = Field(min_length=1)
    attacks: Attacks | None = Field(default=None, description="the attacks the robustness / concealment metrics read")
    smoke: SmokeSpec | None = None
    base_models: list[SuiteBase] | None = Field(default=None, min_length=1, description="the base model(s) the suite is defined on, "
                                                "where its verdicts are computed; default: the toy bases (toy, toy-xl) for a toy suite, none named "
                                                "(any base) for a real one")
    other_bases: Literal["none", "hub", "any"] | None = Field(default=None, description="whether a submission may name a base not in "
                                                              "base_models: none, a pinned hub id only, or any (a local folder too); "
                                                              "default: none where the suite names its bases (a toy suite always does)")

    def bases(self) -> list[SuiteBase]:
        """The bases the suite is defined on (a toy suite that names none: every toy world's base,
        one per model family, each judged against itself)."""
        if self.base_models:
            return list(self.base_models)
        return [SuiteBase(builtin="toy"), SuiteBase(builtin="toy-xl")] if self.world == "toy" else []

    def other_bases_rule(self) -> str:
        if self.other_bases is not None:
            return self.other_bases
        return "none" if self.bases() else "any"

    def check_base(self, spec) -> bool:
        """Whether the submission's ``base_model`` is one the suite is defined on (True), or
        another base the suite allows (False); a base it does not allow is a one-line error."""
        own = self.bases()
        if any(b.matches(spec) for b in own):
            return True
        rule = self.other_bases_rule()
        if rule == "any" or (rule == "hub" and getattr(spec, "hub_id", None)):
            return False
        named = ", ".join(b.label() for b in own) or "none"
        allowed = " or a pinned hub base" if rule == "hub" else ""
        raise HarnessError(f"base_model: suite {self.id} is defined on {named}{allowed}; {base_label(spec)} is not allowed there "
                           "(its verdicts would be computed against a base the submission chose)")

    @field_validator("metrics")
    @classmethod
    def _unique_metrics(cls, v):
        names = [m.name for m in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"metric {twice[0]!r} is listed twice")
        return v

    @model_validator(mode="after")
    def _attacks_used(self):
        info = catalog.metrics().info
        used = {b: any(info(m.name).prompt_attack and info(m.name).attack_block in (b, "every") for m in self.metrics) for b in ("prompt", "inversion")}
        used["partial_diffusion"] = any(info(m.name).attack for m in self.metrics)
        for kind in ("prompt", "inversion", "partial_diffusion"):
            if self.attacks is not None and getattr(self.attacks, kind) is not None and not used[kind]:
                raise ValueError(f"attacks.{kind}: no metric of this suite reads it")
        return self

    @property
    def prompt_attack(self) -> PromptAttack:
        """The prompt attack's settings (defaults where the suite gives none)."""
        return self.attacks.prompt if self.attacks and self.attacks.prompt else PromptAttack()

    @property
    def prompt_attacks(self) -> dict[str, PromptAttack]:
        """block name -> settings of every prompt-attack block some metric of the suite reads
        (``prompt``, ``inversion``; defaults where the suite gives none)."""
        info = catalog.metrics().info
        blocks = {info(m.name).attack_block for m in self.metrics if info(m.name).prompt_attack}
        if "every" in blocks:  # the worst case across attacks (asr_worst): every block the suite gives, else the prompt attack
            given = {b for b in ("prompt", "inversion") if self.attacks and getattr(self.attacks, b)}
            blocks |= given or {"prompt"}
        out = {}
        if "prompt" in blocks:
            out["prompt"] = self.prompt_attack
        if "inversion" in blocks:
            out["inversion"] = self.attacks.inversion if self.attacks and self.attacks.inversion else PromptAttack(attack="ti")
        return out

    @property
    def partial_diffusion(self) -> PartialDiffusionAttack:
        return self.attacks.partial_diffusion if self.attacks and self.attacks.partial_diffusion else PartialDiffusionAttack()
