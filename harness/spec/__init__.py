"""The declarative inputs: submissions and suites, as pydantic models (unknown keys refused).

Submission YAML comes from strangers' pull requests, so it is read with ``yaml.safe_load`` only,
every path must stay inside the repository, and every error is reported as one line naming the
file and the field. By concern:

- ``common``: the strict base model, field types (sha256, slug, https), pinned files, ``inside``;
- ``submission``: the submission YAML; ``suite``: the suite YAML (metrics, thresholds, attacks);
- ``yamlio``: the safe YAML reader and one-line errors; ``load``: file -> model (includes, locks);
- ``prompts``: a suite's prompt set expanded into labelled prompts; ``labels``: the label maps of real
  classifiers (``scorer.labels``); ``pins``: what a spec names, its lock file, a run's pins.
"""

from harness.spec.common import (HTTPS_URL, PICKLE_SUFFIXES, SHA256, SLUG, HubRef, PinnedRef, Strict, WeightsFile, inside, one_line_error,
                     pinned_file)
from harness.spec.load import _with_includes, is_suite_file, load_submission, load_suite
from harness.spec.prompts import MAX_CSV_BYTES, MAX_PROMPT_CHARS, MAX_PROMPTS, Prompt, expand_prompts
from harness.spec.submission import BaseModelSpec, CheckpointSpec, EfficiencySpec, MethodSpec, Submission, TargetSpec
from harness.spec.suite import (THRESHOLD, Attacks, CsvPrompts, GenerationSettings, JudgeSpec, MetricSpec, PartialDiffusionAttack, PromptAttack,
                    PromptSet, ScorerSpec, SmokeSpec, Suite, TemplatePrompts, Threshold)
from harness.spec.yamlio import (MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, SpecErrors, _format_validation, _SafeUniqueLoader,
                     validate_yaml_file, read_yaml)


__all__ = [
    "HTTPS_URL", "PICKLE_SUFFIXES", "SHA256", "SLUG", "THRESHOLD", "Attacks", "BaseModelSpec",
    "CheckpointSpec", "CsvPrompts", "EfficiencySpec", "GenerationSettings", "HubRef", "JudgeSpec", "PinnedRef", "MAX_CSV_BYTES", "MAX_PROMPTS",
    "MAX_PROMPT_CHARS", "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "MethodSpec", "MetricSpec",
    "PartialDiffusionAttack", "Prompt", "PromptAttack", "PromptSet", "ScorerSpec", "SmokeSpec", "SpecErrors", "Strict",
    "Submission", "Suite", "TargetSpec", "TemplatePrompts", "Threshold", "WeightsFile", "_SafeUniqueLoader",
    "_format_validation", "_with_includes", "expand_prompts", "inside", "is_suite_file", "validate_yaml_file", "load_submission",
    "load_suite", "one_line_error", "pinned_file", "read_yaml",
]
