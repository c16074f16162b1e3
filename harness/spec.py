"""The declarative inputs: submissions and suites, as pydantic models (unknown keys refused).

Submission YAML comes from strangers' pull requests, so it is read with ``yaml.safe_load`` only,
every path must stay inside the repository, and every error is reported as one line naming the
file and the field. ``Result`` documents the results JSON (``RESULTS_SCHEMA_VERSION``).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import HarnessError
from .hashing import sha256_file

RESULTS_SCHEMA_VERSION = "1.0"
SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex sha256")]
SLUG = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")]
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")


def _https(url: str) -> str:
    from .fetch import check_url

    try:
        return check_url(url, "url")
    except HarnessError as e:
        raise ValueError(str(e).removeprefix("url: ")) from None


# https only (plain http to 127.0.0.1 only under the tests' explicit allowance: fetch.check_url)
HTTPS_URL = Annotated[str, AfterValidator(_https), Field(json_schema_extra={"pattern": "^https://"})]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- submissions
class MethodSpec(Strict):
    name: str = Field(min_length=1, max_length=80)
    params: dict[str, Any] = {}
    paper_url: str | None = Field(default=None, pattern=r"^https://")
    code_url: str | None = Field(default=None, pattern=r"^https://")
    authors: list[str] = []
    license: str | None = None


class BaseModelSpec(Strict):
    """Exactly one of: the toy world's pipeline, a local folder, a hub id at a pinned revision."""

    builtin: Literal["toy"] | None = None
    local_dir: str | None = None
    hub_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$",
                               description="owner/name on the hub; never a local path")
    revision: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$", description="a full commit sha")
    sha256: SHA256 | None = Field(default=None, description="folder hash of local_dir (optional pin)")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("builtin", "local_dir", "hub_id") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of builtin, local_dir, hub_id")
        if self.hub_id and not self.revision:
            raise ValueError("hub_id needs a pinned revision (a 40-character commit sha)")
        if self.revision and not self.hub_id:
            raise ValueError("revision only goes with hub_id")
        if self.hub_id and (".." in self.hub_id or Path(self.hub_id).exists()):
            # diffusers loads a local folder of that name, ignoring the revision and hashing nothing
            raise ValueError(f"hub_id {self.hub_id!r} names a local path; use local_dir for a folder in the repository")
        return self


class CheckpointSpec(Strict):
    """The unlearned weights: a whole pipeline folder, or UNet / text-encoder tensors that
    replace the base's (a subset is fine: only the changed tensors), or a LoRA."""

    kind: Literal["pipeline", "unet", "text_encoder", "lora"]
    path: str | None = None
    url: HTTPS_URL | None = None
    sha256: SHA256

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.path) == bool(self.url):
            raise ValueError("give exactly one of path, url")
        return self


class TargetSpec(Strict):
    concept: str = Field(min_length=1, max_length=100)
    kind: Literal["style", "object", "nudity", "identity"]


class EfficiencySpec(Strict):
    """Figures the submitter declares (shown as declared, never as measured)."""

    time_s: float | None = Field(default=None, ge=0)
    peak_memory_gb: float | None = Field(default=None, ge=0)
    storage_gb: float | None = Field(default=None, ge=0)
    device: str | None = None


class Submission(Strict):
    name: SLUG
    method: MethodSpec
    base_model: BaseModelSpec
    checkpoint: CheckpointSpec
    targets: list[TargetSpec] = Field(min_length=1)
    suites: list[SLUG] | None = Field(default=None, description="suite ids; default: every suite of the base's world that applies to a target kind")
    method_record: str | None = Field(default=None, description="method.json written by `unlearn erase` (measured efficiency)")
    efficiency: EfficiencySpec | None = None

    @field_validator("targets")
    @classmethod
    def _distinct_targets(cls, v):
        seen = set()
        for t in v:
            if t.concept in seen:
                raise ValueError(f"target {t.concept!r} is listed twice (one record per metric and target)")
            seen.add(t.concept)
        return v


# ----------------------------------------------------------------------------- suites
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
        if bool(self.path) == bool(self.url):
            raise ValueError("give exactly one of path, url")
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
        given = [k for k in ("inline", "template", "csv") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of inline, template, csv")
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
        return self.scale * base if self.scale is not None else base + self.offset

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
        from .metrics import known_metrics

        if v not in known_metrics():
            raise ValueError(f"unknown metric {v!r}; known: {', '.join(sorted(known_metrics()))}")
        return v

    @field_validator("threshold")
    @classmethod
    def _parse(cls, v):
        if v is not None:
            Threshold.parse(v)
        return v

    def parsed_threshold(self) -> Threshold | None:
        return Threshold.parse(self.threshold) if self.threshold else None


class HubRef(Strict):
    """A file (``filename``) or folder (``subfolder``) of a hub repository at a pinned commit."""

    repo: str = Field(pattern=r"^\w[\w.-]*/\w[\w.-]*$", description="owner/name; no part may start with '.'")
    revision: str = Field(pattern=r"^[0-9a-f]{40}$", description="a full commit sha")
    filename: str | None = Field(default=None, pattern=r"^\w[\w.-]*(/\w[\w.-]*)*$", description="path in the repository; no '..', no leading '/'")
    subfolder: str | None = Field(default=None, pattern=r"^(\w[\w.-]*(/\w[\w.-]*)*)?$")
    repo_type: Literal["model", "dataset"] = "model"


class WeightsFile(Strict):
    """A weights file in the repository (``path``) or on the hub (``hub``), pinned by sha256
    (an all-zero placeholder is filled in from ``suites/<id>.lock.yaml``: ``unlearn pin``)."""

    path: str | None = None
    hub: HubRef | None = None
    sha256: SHA256

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.path) == bool(self.hub):
            raise ValueError("give exactly one of path, hub")
        if self.hub and not self.hub.filename:
            raise ValueError("hub: needs filename")
        return self


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
            from .labels import LABEL_MAPS, label_map

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


class Suite(Strict):
    id: SLUG
    version: str = Field(pattern=r"^\d+(\.\d+)*$")
    description: str = ""
    applies_to: list[Literal["style", "object", "nudity", "identity"]] = Field(min_length=1)
    world: Literal["toy", "real"] = Field(default="real", description="toy: runs on the toy world's builtin base")
    prompts: PromptSet
    generation: GenerationSettings
    scorer: ScorerSpec | None = Field(default=None, description="classifier for UA/IRA/CRA (and the toy feature metrics)")
    metrics: list[MetricSpec] = Field(min_length=1)
    smoke: SmokeSpec | None = None

    @field_validator("metrics")
    @classmethod
    def _unique_metrics(cls, v):
        names = [m.name for m in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"metric {twice[0]!r} is listed twice")
        return v


# ----------------------------------------------------------------------------- loading
def _format_validation(path: Path, err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]).replace("\r", "\\r").replace("\n", "\\n") or "(top level)"  # one line, whatever the keys
        msg = e["msg"].removeprefix("Value error, ").replace("\n", " ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{path}: {loc}: {msg}")
    return out


class _SafeUniqueLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader that also refuses a key given twice in one mapping (YAML
    would silently keep the last one, e.g. a second ``sha256``)."""

    def compose_node(self, parent, index):
        # An alias (``*a``) can multiply a small file into 10^9 nodes (an "alias bomb"), and a
        # merge key needs one: untrusted YAML gets neither anchors nor aliases.
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) are not accepted", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: SafeLoader's own check reports it
                    continue
                if dup:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        return super().construct_mapping(node, deep)


MAX_YAML_BYTES = 256 << 10
MAX_YAML_DEPTH = 16
MAX_YAML_NODES = 100_000


def _too_deep(data: Any) -> str | None:
    """Why a parsed document is refused for its shape (deeper or larger than any real one)."""
    stack, seen = [(data, 0, "(top level)")], 0
    while stack:
        x, depth, where = stack.pop()
        seen += 1
        if seen > MAX_YAML_NODES:
            return f"(yaml): more than {MAX_YAML_NODES} values"
        if depth > MAX_YAML_DEPTH:
            return f"{where}: nested more than {MAX_YAML_DEPTH} deep"
        if isinstance(x, dict):
            stack += [(v, depth + 1, f"{where}.{k}" if depth else str(k)) for k, v in x.items()]
        elif isinstance(x, list):
            stack += [(v, depth + 1, f"{where}.{i}" if depth else str(i)) for i, v in enumerate(x)]
        elif isinstance(x, bytes):
            return f"{where}: binary data (!!binary) is not accepted"
    return None


def read_yaml(path: str | Path) -> Any:
    """Parse YAML with the safe loader only; one-line errors for a missing file or bad YAML."""
    import os
    import stat

    p = Path(path)
    try:
        if "\x00" in str(p):
            raise ValueError("NUL in the path")
        if p.is_symlink():
            raise HarnessError(f"{p}: is a symbolic link (refused before reading: it could point outside the repository)")
        mode = os.stat(p).st_mode
    except (OSError, ValueError, RuntimeError):
        raise HarnessError(f"{p!s:.200}: no such file") from None
    if stat.S_ISDIR(mode):
        raise HarnessError(f"{p}: no such file (a folder)")
    if not stat.S_ISREG(mode):
        raise HarnessError(f"{p}: not a regular file (a FIFO, socket or device is not opened)")
    if os.stat(p).st_size > MAX_YAML_BYTES:
        raise HarnessError(f"{p}: larger than {MAX_YAML_BYTES >> 10} KiB (submission and suite files are small)")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_SafeUniqueLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HarnessError(f"{p}: (yaml) {where}: {problem}") from None
    except UnicodeDecodeError:
        raise HarnessError(f"{p}: not UTF-8 text") from None
    except RecursionError:
        raise HarnessError(f"{p}: (yaml): nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a !!binary that is not base64, a bad timestamp
        raise HarnessError(f"{p}: (yaml): {one_line_error(e)}") from None
    why = _too_deep(data)
    if why:
        raise HarnessError(f"{p}: {why}")
    if not isinstance(data, dict):
        raise HarnessError(f"{p}: (top level): expected a mapping, got {type(data).__name__}")
    return data


class SpecErrors(HarnessError):
    """Several one-line problems with one file."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def load_model(cls, path: str | Path):
    p = Path(path)
    data = read_yaml(p)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise SpecErrors(_format_validation(p, e)) from None


def load_submission(path: str | Path) -> Submission:
    return load_model(Submission, path)


def _with_includes(path: Path, data: dict, depth: int = 0) -> dict:
    """``include: <suite id>`` takes every key of that suite (same folder) that this file does
    not set: suites that share prompts and generation settings (hence cached images) say so
    once."""
    inc = data.get("include")
    if inc is None:
        return data
    if not isinstance(inc, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", inc):
        raise SpecErrors([f"{path}: include: must be a suite id"])
    if depth >= 3:
        raise SpecErrors([f"{path}: include: nested more than 3 deep"])
    parent_path = path.parent / f"{inc}.yaml"
    if not parent_path.is_file():
        raise SpecErrors([f"{path}: include: no suite {inc!r} beside this file"])
    parent = _with_includes(parent_path, read_yaml(parent_path), depth + 1)
    merged = {k: v for k, v in parent.items() if k not in ("id", "version", "description", "metrics")}
    merged.update({k: v for k, v in data.items() if k != "include"})
    return merged


def load_suite(path: str | Path) -> Suite:
    from .pins import apply_lock

    p = Path(path)
    data = apply_lock(p, _with_includes(p, read_yaml(p)))
    try:
        return Suite.model_validate(data)
    except ValidationError as e:
        raise SpecErrors(_format_validation(p, e)) from None


def is_suite_file(data: dict) -> bool:
    return "metrics" in data and ("prompts" in data or "include" in data)


def inside(root: Path, rel: str, what: str) -> Path:
    """Resolve a repository-relative path; refuse absolute paths and escapes (``..``, links)."""
    if not rel or "\x00" in rel or Path(rel).is_absolute():
        raise HarnessError(f"{what}: {rel!r} must be a path relative to the repository")
    try:
        root = root.resolve()
        p = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a name too long
        raise HarnessError(f"{what}: {rel!r} cannot be resolved ({one_line_error(e)})") from None
    if not p.is_relative_to(root):
        raise HarnessError(f"{what}: {rel!r} leaves the repository")
    return p


def one_line_error(e: BaseException) -> str:
    return " ".join(str(getattr(e, "strerror", None) or e).split())[:200]


def pinned_file(root: Path, path: str, sha256: str, what: str) -> Path:
    """A file inside the repository whose sha256 must match before anything reads it."""
    p = inside(root, path, f"{what}.path")
    if not p.is_file():
        raise HarnessError(f"{what}.path: {path}: no such file")
    got = sha256_file(p)
    if got != sha256:
        raise HarnessError(f"{what}.sha256: {path} has sha256 {got}, expected {sha256}")
    return p


# ----------------------------------------------------------------------------- prompts
class Prompt(BaseModel):
    """One prompt of a suite with its labels (e.g. object, style) and optional per-prompt
    seed / guidance (CSV prompt sets)."""

    model_config = ConfigDict(frozen=True)
    text: str
    labels: dict[str, str] = {}
    seed: int | None = None
    guidance: float | None = None


MAX_CSV_BYTES = 16 << 20
MAX_PROMPTS = 100_000
MAX_PROMPT_CHARS = 2_000


def _csv_seed(text: str) -> int:
    """A seed from a CSV cell: an integer (``12`` or ``12.0``) in [0, 2**63); ``1e400`` or
    ``nan`` is a ValueError, never an OverflowError."""
    x = float(text)
    if not x.is_integer() or not 0 <= x < 2**63:
        raise ValueError(text)
    return int(x)


def expand_prompts(suite: Suite, root: Path, cache_dir: Path | None = None) -> list[Prompt]:
    ps = suite.prompts
    if ps.inline is not None:
        return [Prompt(text=t) for t in ps.inline]
    if ps.template is not None:
        keys = list(ps.template.values)
        n = 1
        for v in ps.template.values.values():
            n *= len(v)
        if n > MAX_PROMPTS:
            raise HarnessError(f"suite {suite.id}: prompts.template: {n} prompts (more than {MAX_PROMPTS})")
        out: list[Prompt] = []

        def rec(i: int, labels: dict[str, str]):
            if i == len(keys):
                shown = {k: v.replace("_", " ") for k, v in labels.items()} if ps.template.underscores_to_spaces else labels
                out.append(Prompt(text=ps.template.template.format(**shown), labels=dict(labels)))
                return
            for v in ps.template.values[keys[i]]:
                rec(i + 1, {**labels, keys[i]: v})

        rec(0, {})
        return out
    src = ps.csv.path or ps.csv.url
    if ps.csv.url:
        from .fetch import fetch

        path = fetch(ps.csv.url, ps.csv.sha256, cache_dir or root / ".unlearn-cache", f"suite {suite.id}: prompts.csv.url")
    else:
        path = inside(root, ps.csv.path, f"suite {suite.id}: prompts.csv.path")
        if not path.is_file():
            raise HarnessError(f"suite {suite.id}: prompts.csv.path: {src}: no such file")
    got = sha256_file(path)
    if got != ps.csv.sha256:
        raise HarnessError(f"suite {suite.id}: prompts.csv.sha256: {src} has sha256 {got}, expected {ps.csv.sha256}")
    col = {"prompt": "prompt", "seed": "seed", "guidance": "guidance", **ps.csv.columns}
    where = f"suite {suite.id}: prompts.csv: {src}"
    if path.stat().st_size > MAX_CSV_BYTES:
        raise HarnessError(f"{where}: larger than {MAX_CSV_BYTES >> 20} MiB")
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
        rows = list(reader)
    except UnicodeDecodeError as e:
        raise HarnessError(f"{where}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:  # e.g. a field over csv's field size limit
        raise HarnessError(f"{where}: line {reader.line_num}: {one_line_error(e)}") from None
    if len(rows) > MAX_PROMPTS:
        raise HarnessError(f"{where}: more than {MAX_PROMPTS} rows")
    if not rows:
        raise HarnessError(f"suite {suite.id}: prompts.csv: {src} has no rows")
    if col["prompt"] not in rows[0]:
        raise HarnessError(f"suite {suite.id}: prompts.csv: {src} has no {col['prompt']!r} column")
    out = []
    for i, r in enumerate(rows):
        try:
            seed = _csv_seed(r[col["seed"]]) if r.get(col["seed"]) not in (None, "") else None
            guidance = float(r[col["guidance"]]) if r.get(col["guidance"]) not in (None, "") else None
        except (ValueError, OverflowError):
            raise HarnessError(f"suite {suite.id}: prompts.csv: {src} row {i + 2}: seed/guidance is not a number") from None
        if guidance is not None and not 0 <= guidance <= 50:
            raise HarnessError(f"{where} row {i + 2}: guidance {guidance!r} is not a number in [0, 50]")
        if not isinstance(r.get(col["prompt"]), str) or len(r[col["prompt"]]) > MAX_PROMPT_CHARS:
            raise HarnessError(f"{where} row {i + 2}: prompt missing or longer than {MAX_PROMPT_CHARS} characters")
        labels = {k: v for k, v in r.items() if k not in col.values() and k and v is not None}
        out.append(Prompt(text=r[col["prompt"]], labels=labels, seed=seed, guidance=guidance))
    return out
