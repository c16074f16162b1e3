"""Property-based tests of the spec loader: whatever YAML a stranger sends, the loader answers
with a valid model or one-line errors naming the file, never a traceback."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError
from harness.spec import SpecErrors, Submission, Suite, Threshold, load_submission, load_suite

KEYS = ["name", "method", "base_model", "checkpoint", "targets", "suites", "kind", "path", "sha256", "concept",
        "prompts", "generation", "metrics", "threshold", "seeds", "steps", "template", "values", "id", "version", "include"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=20), st.sampled_from(["toy", "unet", "style", ">= 0.8", "a" * 64]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), c, max_size=5), max_leaves=20)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)


def _check(tmp_path, doc, loader, model):
    f = tmp_path / "doc.yaml"
    f.write_text(yaml.safe_dump(doc))
    try:
        assert isinstance(loader(f), model)
    except SpecErrors as e:
        assert e.lines and all(line.startswith(f"{f}: ") and "\n" not in line for line in e.lines)
    except HarnessError as e:
        assert "\n" not in str(e) and str(f) in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents)
def test_any_submission_document_is_accepted_or_refused_in_one_line_errors(tmp_path, doc):
    _check(tmp_path, doc, load_submission, Submission)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents)
def test_any_suite_document_is_accepted_or_refused_in_one_line_errors(tmp_path, doc):
    _check(tmp_path, doc, load_suite, Suite)


@given(op=st.sampled_from([">=", "<=", ">", "<"]), x=st.floats(-100, 100, allow_nan=False).map(lambda v: round(v, 3)),
       form=st.sampled_from(["abs", "scale", "offset"]), base=st.floats(-10, 10, allow_nan=False))
def test_threshold_text_round_trips(op, x, form, base):
    text = {"abs": f"{op} {x}", "scale": f"{op} {x} * base", "offset": f"{op} base + {abs(x)}"}[form]
    t = Threshold.parse(text)
    again = Threshold.parse(str(t))
    assert again.bound(base) == t.bound(base) and again.holds(x, base) == t.holds(x, base)
