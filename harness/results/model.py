"""What a results JSON holds: one pydantic model that the evaluator and the plugin write through
and every reader (compare, summary, regress, attest, the site) reads through.

Two modes, one model. Writing (``MetricRecord(...)``, ``ResultsFile(...)``) validates the
types loosely (a numpy float becomes a float) and keeps ints as ints. Reading
(``ResultsFile.read(data)``, ``harness.results.io``) validates strictly (a string is not a
number, a bool is not a count): results files travel through pull requests and CI artifacts.
Either way every model keeps fields it does not know (``extra="allow"``: older and newer
files load), keeps a field absent when it was absent (``to_json`` dumps only the fields that
were given), and keeps the order in which fields were given, so a file loaded and dumped
again is the same file, key for key. ``docs/results-schema.md`` is generated from this
module (``python -m harness.results.schema_doc``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_serializer, model_validator

SCHEMA_VERSION = "1.0"  # a change that removes or renames a field bumps the major number

Number = float | int  # an int stays an int (the JSON written must not change)
Verdict = Literal["pass", "fail", "inconclusive", "error", "info"]
VERDICTS: tuple[str, ...] = ("pass", "fail", "inconclusive", "error", "info")


class Record(BaseModel):
    """Base of every part of a results file: unknown fields kept, given fields only, in the
    order given."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler):
        inst = handler(data)
        if isinstance(data, dict) and inst is not data:
            inst._order = list(data)
        return inst

    @model_serializer(mode="wrap")
    def _in_order(self, handler) -> dict[str, Any]:
        out = handler(self)
        keys = [k for k in self._order if k in out] + [k for k in out if k not in self._order]
        return {k: out[k] for k in keys}

    def update(self, fields: dict | None = None, **kw: Any) -> None:
        """Set fields (validated) as ``dict.update`` would: a new field goes last."""
        for k, v in {**(fields or {}), **kw}.items():
            setattr(self, k, v)
            if k not in self._order:
                self._order.append(k)

    @classmethod
    def begin(cls, **fields: Any):
        """A record built field by field (each validated as it is set, ``update``) whose required
        fields may come later; ``done`` checks it whole."""
        inst = cls.model_construct()
        inst.update(fields)
        return inst

    def done(self) -> dict[str, Any]:
        """The record checked whole (every required field given), as its JSON object."""
        return type(self).model_validate(self.to_json()).to_json()

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the fields that were given, in their order (``json.dumps`` it)."""
        return self.model_dump(mode="python", exclude_unset=True)


# ----------------------------------------------------------------------------- metrics[]
class Interval(Record):
    """A 95% interval (`harness/stats/intervals.py`): `ci`, `delta_ci` and `margin_ci` of a metric
    record. Other fields it may carry: `n_clusters`, `resamples`, `seed`, `n_items`,
    `n_effective` (Wilson intervals), `se` (jackknife), `sd`, `min`, `max` (repeated runs),
    `note` (what it leaves out, e.g. CCS / CRS: the separator's variance)."""

    low: Number = Field(description="lower end")
    high: Number = Field(description="upper end")
    level: Number | None = Field(None, description="confidence level, 0.95")
    method: str | None = Field(None, description="`cluster-bootstrap-percentile` (prompts drawn with replacement), `wilson` (proportions, on the "
                               "effective size: then `n_effective`, and `resamples`, `seed` null) or `cluster-jackknife-t (delete one seed of every "
                               "prompt | prompt, generated set)` (FID / KID, density / coverage; older files: `cluster-bootstrap-percentile, bias-shifted`) "
                               "or `t over N repeated runs (...)` (efficiency figures of `unlearn erase --repeats N`)")


class MetricRecord(Record):
    """One record per (suite, metric, target). Files written before the intervals existed have
    none of `ci`, `delta_ci`, `margin_ci`, `ci_reason`, `verdict_point`, `scores`: every reader
    accepts them, the leaderboard shows their values without intervals and `unlearn compare`
    gates them by tolerance alone."""

    suite: str = Field(min_length=1, description="suite id, e.g. `toy-canvas`")
    metric: str = Field(min_length=1, description="metric name, e.g. `ua`")
    label: str | None = Field(None, description="the metric's display name, e.g. `UA`")
    target: str = Field(min_length=1, description="the unlearning target (concept) the value is about")
    target_kind: str | None = Field(None, description="its kind (`style`, `object`, ...)")
    higher_is_better: bool | None = Field(None, description="direction of the metric")
    metric_version: str | None = Field(None, description="version of the metric's definition, e.g. `1`")
    threshold: str | None = Field(None, description="the suite's threshold (`>= 0.8`, `>= 0.9 * base`); null: none, the verdict is `info`")
    tolerance: Number | None = Field(None, description="allowed regression against a baseline as the suite said when the run was made "
                                     "(`unlearn compare` reads the current suite's, never this one)")
    value: Number | None = Field(None, description="the unlearned model's value; null when it could not be computed")
    base_value: Number | None = Field(None, description="the base model's value under the same settings (matched pairs), or null")
    details: Any = Field(None, description="metric-specific breakdown (e.g. per-class accuracies for both models)")
    ci: Interval | None = Field(None, description="the value's 95% interval; null when there is none, then `ci_reason` says why (docs/statistics.md)")
    delta_ci: Interval | None = Field(None, description="95% interval of `value - base_value`, paired (the same resample for both models); "
                                      "null without a base value or interval")
    margin_ci: Interval | None = Field(None, description="95% interval of `value - bound(base)` (paired), the interval the verdict reads; "
                                       "records with a threshold and an interval")
    ci_reason: str | None = Field(None, description="why `ci` is null; it opens with a short tag the tables show in the interval's place "
                                  "(`single run: ...`, `exact: ...`, `declared: ...`, `too few clusters: ...`)")
    scores: dict[str, Any] | None = Field(None, description="per-item scores behind the value, for the regression gate's paired test and the "
                                          "leaderboard's rank bootstrap: `keys` (`<sha256[:12] of the prompt>:<seed>` per item), `unlearned`, "
                                          "`base` (or null), `groups` (class per item for means over classes, or null), `binary` (a proportion); "
                                          "rounded to 6 decimals. Absent for set statistics (FID / KID) and metrics without an interval")
    bound: Number | None = Field(None, description="the number the threshold resolved to (`0.9 * base` with the base value)")
    verdict: Verdict = Field(description="`pass` / `fail` / `inconclusive` (decided by `margin_ci`); `info` when the suite sets no threshold; "
                             "`error` when the metric could not be computed or its images were flagged (then `error` says why)")
    verdict_point: Literal["pass", "fail"] | None = Field(None, description="`pass` / `fail` of the point estimate alone (records with a threshold); "
                                                          "equal to `verdict` when there is no interval")
    flagged_images: int | None = Field(None, description="how many images of the suite were flagged (non-finite output, constant image); "
                                       "a record with flagged images is an `error`")
    error: str | None = Field(None, description="why the verdict is `error`, one line")


# ----------------------------------------------------------------------------- suites[]
class Sample(Record):
    """One matched image pair shown by the leaderboard."""

    prompt: str = Field(description="the prompt text")
    seed: int = Field(description="its seed (both images share the noise)")
    base: str = Field(description="sha256 of the base model's PNG in the image cache (`unlearn leaderboard refresh` exports it as `images/<sha256>.png`)")
    unlearned: str = Field(description="sha256 of the unlearned model's PNG")
    target: bool = Field(False, description="whether the prompt names a target concept (by its labels, else by whole-word match)")


class SuiteRecord(Record):
    """One entry per suite that ran: what was generated, where, how, and with which files."""

    id: str = Field(min_length=1, description="the suite's id")
    version: str | None = Field(None, description="the suite's version")
    file_sha256: str | None = Field(None, description="sha256 of the suite YAML, hashed when it was loaded")
    prompt_set_sha256: str | None = Field(None, description="sha256 of the canonical JSON of the expanded prompt list (text, labels, "
                                          "per-prompt seed and guidance), after any smoke subsetting")
    n_prompts: int | None = Field(None, description="prompts generated per model")
    n_images_per_model: int | None = Field(None, description="images generated per model (prompts x seeds)")
    smoke: bool | None = Field(None, description="a smoke subset of the suite (`--unlearn-smoke`)")
    generation: dict[str, Any] | None = Field(None, description="scheduler, steps, guidance, height, width, eta, dtype, batch size, image format, negative prompt; "
                                              "`conditioning`: what the base's model family adds (SDXL: `original_size`, `crops_coords_top_left`, "
                                              "`target_size`), absent where it adds nothing")
    seeds: list[int] = Field([], description="the seeds of the images")
    device: str | None = Field(None, description="where the pipelines ran")
    cuda_visible_devices: str | None = Field(None, description="`$CUDA_VISIBLE_DEVICES` of the run, or null")
    dtype: str | None = Field(None, description="precision the pipelines ran in")
    executor: dict[str, Any] | None = Field(None, description="how the images were made: `name` (`local`: in the pytest process; `ray`: as Ray "
                                            "tasks), `tasks` (batches run locally, or Ray tasks, one per chunk of `batch_size` jobs), `retries` "
                                            "(Ray task attempts that failed and were retried: a dead worker or an exception; 0 locally); with "
                                            "Ray also `address` (the `--unlearn-ray-address` or `RAY_ADDRESS` given, null: a new local "
                                            "instance), `nodes` (how many Ray nodes ran tasks) and `max_retries`. 0 tasks: every image came from the cache")
    pipeline: dict[str, Any] | None = Field(None, description="the fast path: `compile` (`--unlearn-compile` given), and of the pipelines that ran "
                                            "in this run, `attention` (the UNet's attention processor classes, e.g. `[\"AttnProcessor2_0\"]` = "
                                            "PyTorch SDPA), `channels_last` (UNet / VAE memory format; on CUDA), `compiled` (UNet under "
                                            "`torch.compile`); these three are null when no model was loaded (every image cached)")
    batching: dict[str, Any] | None = Field(None, description="`batch_size`: the batch size generation ended with; `oom_backoffs`: how many times "
                                            "a batch was halved after CUDA ran out of memory (the same jobs retried at half the size, down to 1; "
                                            "each image's noise comes from its own seed, so a back-off never changes an image)")
    scorer: dict[str, Any] | None = Field(None, description="scorer id and the sha256 of its weights; null: the suite needs none")
    pins: dict[str, Any] | None = Field(None, description="every file the suite names, by its place in the suite (e.g. `scorer.style_weights`): "
                                        "`source#sha256` (source = `hub:REPO@COMMIT:FILE`, URL or `path:...`), a hub model by `revision` the "
                                        "commit; the suite's own pins filled from `suites/locks/<id>.lock.yaml` (`unlearn pin`). The "
                                        "leaderboard accepts a result of a `world: real` suite only when these equal the pins of the suite in its checkout")
    models: dict[str, Any] | None = Field(None, description="`base`, `unlearned`: fingerprints of the weights (folder sha256, hub id@commit, plus "
                                          "checkpoint sha256); they key the image cache")
    base_model: dict[str, Any] | None = Field(None, description="the base the numbers are against: `label` (`builtin:toy`, `hub:ID@COMMIT`, "
                                              "`local:FOLDER`), `suite_base` (true: a base the suite is defined on; false: another base "
                                              "its `other_bases` allows), `suite_bases` (the suite's own) and `family` (the base's model family: "
                                              "`sd1`, `sdxl`; absent in files made before families, which are SD-1.x; the leaderboard ranks within a family)")
    images: dict[str, Any] | None = Field(None, description="`base`, `unlearned` (and `attack`): `generated` / `cached` counts and `flagged` images "
                                          "(non-finite output, constant image)")
    samples: list[Sample] = Field([], description="up to 8 matched image pairs: one per prompt at its first seed, prompts naming a target first "
                                  "(up to half), chosen from the prompt texts alone, so every run and every submission with the same targets "
                                  "shows the same prompts; empty when the suite generates no images")
    conventions: dict[str, Any] | None = Field(None, description="the choices this project made where the papers are silent")
    fidelity: dict[str, Any] | None = Field(None, description="the reference-fidelity choices the numbers were made with (docs/fidelity.md): "
                                            "`image_format`, `scorer.labels` (label map), `ccs.separator_recipe`, `uce.token_positions`, "
                                            "`uce.preset` / `esd.preset`; `inference` (an inference-time method's `method`, `preset`, "
                                            "`params`, `code_sha256` and the `guidance_scale` its single predictions assume)")
    seconds: Number | None = Field(None, description="wall time of the suite in this process")
    error: str | None = Field(None, description="set instead of the above when the suite did not run")


# ----------------------------------------------------------------------------- submission
class Target(Record):
    """An unlearning target of the submission."""

    concept: str = Field(min_length=1, description="the concept erased, e.g. `van gogh`")
    kind: str = Field(min_length=1, description="`style`, `object`, ...")


class Method(Record):
    """The method that made the checkpoint (the submission's `method`)."""

    name: str = Field(description="method name, e.g. `uce`")
    kind: str = Field("checkpoint", description="`checkpoint` (the method changed weights) or `inference` (a registered inference-time method "
                      "changes the sampling; its resolved preset, parameters and code sha256 are each suite's `fidelity.inference`); "
                      "files made before inference methods existed are `checkpoint`")
    params: dict[str, Any] = Field({}, description="its hyper-parameters as the submission declares them")
    paper_url: str | None = Field(None, description="the paper")
    code_url: str | None = Field(None, description="the authors' code")


class Checkpoint(Record):
    """The checkpoint evaluated (the submission's `checkpoint`)."""

    kind: str | None = Field(None, description="`unet`, `pipeline`, ...")
    path: str | None = Field(None, description="inside the repository, or null (then `url`)")
    url: str | None = Field(None, description="where it is downloaded from")
    sha256: str | None = Field(None, description="the sha256 it is pinned to")


class SubmissionRecord(Record):
    """The validated submission YAML as it was evaluated (every field of `harness.spec.Submission`:
    `base_model`, `suites`, `method_record`, `efficiency`, ...), plus the file it came from."""

    file: str | None = Field(None, description="the submission YAML, as given to pytest")
    file_sha256: str | None = Field(None, description="its sha256")
    name: str = Field(min_length=1, max_length=200, description="the submission's name (readers accept 1-80 printable ASCII characters)")
    method: Method
    checkpoint: Checkpoint | None = Field(None, description="null for an inference-time method alone (`method.kind: inference`)")
    targets: list[Target] = Field(min_length=1, description="the unlearning targets")


# ----------------------------------------------------------------------------- the file
class Harness(Record):
    """The harness that made the file."""

    version: str | None = Field(None, description="harness version")
    git_sha: str | None = Field(None, description="commit of the checkout (`-dirty` when tracked files differ), or null")


class Environment(Record):
    """Where the run was made."""

    platform: str | None = Field(None, description="OS string")
    libraries: dict[str, str] = Field({}, description="versions of python, torch, diffusers, transformers, ...")
    device: list[str] | None = Field(None, description="devices the suites ran on")
    fingerprint: dict[str, Any] | None = Field(
        None, description="where the float output was made (`harness.run.reproduce.fingerprint`): library versions, machine, CPU model "
                          "and instruction set, BLAS / oneDNN builds, torch threads, deterministic flag, device, GPU and CUDA; "
                          "values are bitwise reproducible only where it is equal")


class EfficiencyFigure(Record):
    """One figure of `efficiency`: `storage_bytes` measured from the checkpoint files;
    `time_s`, `peak_memory_bytes` from the method record of `unlearn erase` (measured) or
    `time_s`, `peak_memory_gb`, `storage_gb` from the submission (declared)."""

    value: Number = Field(description="the figure")
    source: str = Field(description="`measured` or `declared`")
    how: str | None = Field(None, description="how it was measured (wall clock of `unlearn erase`, the peak-memory measure)")
    device: str | None = Field(None, description="the device it was measured or declared on")
    runs: list[Number] | None = Field(None, description="every run's figure when the erasure was measured in N >= 2 repeats (`unlearn erase "
                                      "--repeats N`); the metric is then their mean with a t interval; absent: a single run")


class ResultsFile(Record):
    """One file per run of one submission (`results/<submission>/<UTC timestamp>.json` unless
    `--unlearn-results` says otherwise). Written atomically by the pytest controller at the end
    of the session, also when the run is interrupted (then `complete` is `false`). Readers must
    check `schema_version`; a change that removes or renames a field bumps its major number."""

    schema_version: str = Field(pattern=r"^1\.\d+$", description=f"`\"{SCHEMA_VERSION}\"`")
    harness: Harness
    started: str | None = Field(None, description="session start, ISO 8601 UTC")
    finished: str | None = Field(None, description="when the file was written, ISO 8601 UTC")
    complete: bool = Field(True, description="every planned case produced a record and the run was not interrupted")
    submission: SubmissionRecord
    environment: Environment = Field(default_factory=Environment)
    efficiency: dict[str, EfficiencyFigure] = Field({}, description="efficiency figures by name")
    suites: list[SuiteRecord] = Field(description="one entry per suite that ran")
    metrics: list[MetricRecord] = Field(description="one record per (suite, metric, target); a reader refuses a file without any")
    summary: dict[str, int] | None = Field(None, description="counts of verdicts: `pass`, `fail`, `inconclusive`, `error`, `info` "
                                           "(files before the intervals have no `inconclusive`)")
    smoke: bool | None = Field(None, description="a smoke run (`--unlearn-smoke`): readers keep it apart from full runs (older files: see `suites[].smoke`)")

    @classmethod
    def read(cls, data: Any) -> ResultsFile:
        """A parsed results document, validated strictly; ``ValueError`` (one line) when it is not
        one that the readers can use: a field of the wrong type, or two records for one
        (suite, metric, target)."""
        try:
            doc = cls.model_validate(data, strict=True)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
            raise ValueError(f"{loc}: {err['msg']}{more}") from None
        if not doc.metrics:
            raise ValueError("metrics: List should have at least 1 item (a run without records is no result)")
        seen = set()
        for m in doc.metrics:
            key = (m.suite, m.metric, m.target)
            if key in seen:
                raise ValueError(f"metrics: two records for suite {key[0]!r}, metric {key[1]!r}, target {key[2]!r}")
            seen.add(key)
        return doc


def summary_counts(records: list[MetricRecord]) -> dict[str, int]:
    """``summary``: how many records have each verdict."""
    verdicts: list[str] = [r.verdict for r in records]
    return {v: verdicts.count(v) for v in VERDICTS}
