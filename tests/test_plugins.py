"""Third-party plugins by entry point (harness.registry): a distribution that declares a method
under ``unlearn_harness.methods`` runs through ``unlearn erase`` like a reference method, is
listed by the registry, and a broken entry point is a one-line error, never a traceback."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.registry import GROUPS, Registry, RegistryView

REPO = Path(__file__).resolve().parent.parent

PLUGIN_METHOD = '''\
"""HalfKV: halves every cross-attention key / value projection (a test plugin, no paper)."""

import torch

from harness.methods import MethodInfo

PRESETS = {"paper": {"scale": 0.5}, "toy": {"scale": 0.25}}

INFO = MethodInfo(name="halfkv", module=__name__, paper="https://example.org/halfkv", code="https://example.org/halfkv-code",
                  presets=PRESETS, tolerance="closed_form", fidelity_params={"scale": 1.0}, needs=frozenset({"cross_attention"}))


@torch.no_grad()
def erase(pipe, concepts, scale: float = 0.5):
    changed = {}
    for name, mod in pipe.unet.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.endswith(("attn2.to_k", "attn2.to_v")):
            mod.weight.mul_(scale)
            changed[f"{name}.weight"] = mod.weight.detach().cpu().clone()
    return changed
'''

PLUGIN_METRIC = '''\
"""A metric family of a test plugin: the number of targets (no images)."""

from harness.metrics import Measurement, MetricInfo

METRICS = {"plugin_count": MetricInfo("Count", True, "a test plugin's metric", needs_images=False, role="quality")}


def compute(name, run, target, params):
    return Measurement(1.0, None)
'''

PLUGIN_ATTACK = '''\
"""A prompt attack of a test plugin: gives up at once (budget 0)."""

from harness.attacks.contract import AttackInfo

DEFAULTS = {"steps": 0, "seed": 0}
INFO = AttackInfo("giveup", "1", "steps", needs=frozenset({"text_encoder"}))


def params_of(params):
    return {**DEFAULTS, **params}


def budgets(p):
    return [0]


def attack(pipe, items, judge, params, progress=True, counter=None, on_record=None):
    return []
'''


def make_plugin(root: Path, entry_points: str) -> Path:
    """A tiny installed distribution in ``root``: package ``toyplug`` + ``toyplug-0.1.dist-info``
    (METADATA, entry_points.txt), found by importlib.metadata once ``root`` is on sys.path."""
    pkg = root / "toyplug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "halfkv.py").write_text(PLUGIN_METHOD)
    (pkg / "countmetric.py").write_text(PLUGIN_METRIC)
    (pkg / "giveup.py").write_text(PLUGIN_ATTACK)
    (pkg / "raises.py").write_text("raise RuntimeError('this plugin is broken\\nsecond line')\n")
    dist = root / "toyplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return root


ENTRY_POINTS = """\
    [unlearn_harness.methods]
    halfkv = toyplug.halfkv:INFO
    missing = toyplug.nowhere:INFO
    raising = toyplug.raises:INFO
    misnamed = toyplug.halfkv
    uce = toyplug.halfkv:INFO

    [unlearn_harness.metrics]
    plugin_count = toyplug.countmetric

    [unlearn_harness.attacks]
    giveup = toyplug.giveup
    notanattack = toyplug.countmetric

    [unlearn_harness.scorers]
    brokenscorer = toyplug.raises:Scorer
"""


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    return make_plugin(tmp_path_factory.mktemp("site"), ENTRY_POINTS)


def _run(args, plugin_dir, cwd):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "UNLEARN_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(plugin_dir)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_plugin_method_is_listed_and_runs_through_unlearn_erase(plugin_dir, tiny_dir, tmp_path):
    r = _run(["-c", "import json, sys; from harness.methods import REGISTRY, PAPERS; "
                    "print(json.dumps([REGISTRY.names(), REGISTRY.plugin_names(), PAPERS['halfkv'], 'torch' in sys.modules]))"], plugin_dir, tmp_path)
    assert r.returncode == 0, r.stderr
    names, plugins, paper, torch_loaded = json.loads(r.stdout)
    assert names[:13] == ["advunlearn", "ca", "esd", "fmn", "mace", "negprompt", "rece", "sa", "safree", "salun", "sld", "spm", "uce"]  # the harness's own first
    assert plugins == ["halfkv", "misnamed", "missing", "raising"]  # "uce" is the harness's: not overridden
    assert paper == "https://example.org/halfkv" and torch_loaded  # reading a value loads the module

    out = tmp_path / "out"
    r = _run(["-m", "harness.cli", "erase", "halfkv", "--base", str(tiny_dir), "--concept", "striped", "--out", str(out)], plugin_dir, tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "method.json").read_text())
    assert rec["method"] == "halfkv" and rec["paper"] == "https://example.org/halfkv"
    assert rec["preset"] == "paper" and rec["params"] == {"scale": 0.5}  # not the builtin toy base: the paper preset
    assert rec["checkpoint"]["tensors"] == 14 and rec["anchor"] == "solid"  # every K / V projection of the tiny UNet
    from safetensors.torch import load_file

    assert all(".attn2.to_" in k for k in load_file(str(out / "unet.safetensors")))
    # an unknown --param is refused by the plugin's erase() signature like a reference method's
    r = _run(["-m", "harness.cli", "erase", "halfkv", "--base", str(tiny_dir), "--concept", "striped", "--out", str(tmp_path / "o2"),
              "--param", "steps=3"], plugin_dir, tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "unlearn: error: --param steps: halfkv has no parameter 'steps'; known: scale", r.stderr


@pytest.mark.parametrize("name, needle", [
    ("missing", "entry point missing = toyplug.nowhere:INFO (group unlearn_harness.methods) cannot be loaded (ModuleNotFoundError"),
    ("raising", "cannot be loaded (RuntimeError: this plugin is broken)"),
    ("misnamed", "its MethodInfo is named 'halfkv', not 'misnamed'"),
])
def test_a_broken_entry_point_is_a_one_line_error(plugin_dir, tiny_dir, tmp_path, name, needle):
    r = _run(["-m", "harness.cli", "erase", name, "--base", str(tiny_dir), "--concept", "striped", "--out", str(tmp_path / "out")],
             plugin_dir, tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"method {name!r}: " in r.stderr and needle in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_plugin_metric_family_is_registered(plugin_dir, tmp_path):
    r = _run(["-c", "import json; from harness import metrics; "
                    "print(json.dumps(['plugin_count' in metrics.known_metrics(), metrics.info('plugin_count').label, "
                    "metrics.family('plugin_count').__name__, 'ua' in metrics.known_metrics()]))"], plugin_dir, tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [True, "Count", "toyplug.countmetric", True]


def test_plugin_attack_is_registered_and_a_suite_may_name_it(plugin_dir, tmp_path):
    code = ("import json; from harness.attacks.runner import attacks, attack_module; from harness.spec.suite import PromptAttack; "
            "from harness.errors import HarnessError\n"
            "m = attack_module('giveup', 's'); p = PromptAttack(attack='giveup', params={'steps': 0})\n"
            "try:\n    attack_module('notanattack', 's'); err = None\nexcept HarnessError as e:\n    err = str(e)\n"
            "print(json.dumps([sorted(attacks()), m.INFO.budget_unit, sorted(m.INFO.needs), p.attack, err]))")
    r = _run(["-c", code], plugin_dir, tmp_path)
    assert r.returncode == 0, r.stderr
    names, unit, needs, named, err = json.loads(r.stdout)
    assert names == ["giveup", "notanattack", "ringabell", "ti", "unlearndiffatk"] and unit == "steps" and needs == ["text_encoder"]
    assert named == "giveup"
    assert err.startswith("attack 'notanattack': entry point notanattack = toyplug.countmetric (group unlearn_harness.attacks): "
                          "'toyplug.countmetric' defines no INFO"), err


def test_a_broken_scorer_entry_point_is_one_line(plugin_dir, tmp_path):
    code = ("from harness.scorers import SCORERS\nprint(SCORERS.names())\nSCORERS.get('brokenscorer')")
    r = _run(["-c", code], plugin_dir, tmp_path)
    assert r.returncode == 1 and "['toy', 'unlearncanvas-vit', 'brokenscorer']" in r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith(
        "harness.errors.HarnessError: scorer 'brokenscorer': entry point brokenscorer = toyplug.raises:Scorer (group unlearn_harness.scorers) "
        "cannot be loaded (RuntimeError: this plugin is broken)")


# ----------------------------------------------------------------------------- the contracts of the harness's own entries
def test_every_reference_method_declares_its_contract():
    import inspect

    from harness.methods import CODE, METHODS, PAPERS, REGISTRY, MethodInfo, get_method
    from harness.toy.submissions import PARAMS, committed_methods

    assert list(METHODS) == ["advunlearn", "ca", "esd", "fmn", "mace", "negprompt", "rece", "sa", "safree", "salun", "sld", "spm", "uce"]
    inference = [n for n in METHODS if REGISTRY.get(n).kind == "inference"]
    assert inference == ["negprompt", "safree", "sld"]
    for name in inference:  # setup(pipe, family, concepts, **params); no checkpoint, nothing committed
        info, mod = REGISTRY.get(name), get_method(name)
        assert info is mod.INFO and callable(mod.setup) and not info.committed_toy and info.on_checkpoint
        assert info.presets is None or set(info.presets["toy"]) <= set(list(inspect.signature(mod.setup).parameters)[3:])
    for name in [n for n in METHODS if n not in inference]:
        info = REGISTRY.get(name)
        mod = get_method(name)
        assert isinstance(info, MethodInfo) and info is mod.INFO and info.name == name and info.module == mod.__name__
        assert {"paper", "toy"} <= set(info.presets) and info.presets is mod.PRESETS
        assert PAPERS[name] == info.paper and PAPERS[name].startswith("https://arxiv.org/abs/") and CODE[name].startswith("https://github.com/")
        assert info.needs and info.needs <= {"cross_attention", "unet", "text_encoder", "token_embeddings"}
        params = list(inspect.signature(mod.erase).parameters)[2:]
        assert set(info.presets["toy"]) <= set(params), name  # every preset key is a parameter of erase()
        assert PARAMS.get(name) is None or set(PARAMS[name]) == set(info.presets["toy"])
    assert committed_methods() == sorted(n for n in METHODS if n not in inference)
    from harness.methods import method_tolerance
    from harness.run.reproduce import CLOSED_FORM, LONG_FINE_TUNE

    assert [m for m in METHODS if m not in inference and method_tolerance(m) is CLOSED_FORM] == ["rece", "uce"]
    assert method_tolerance("not-a-method") is LONG_FINE_TUNE


def test_every_attack_declares_its_contract():
    from harness.attacks import ringabell, ti, unlearndiffatk
    from harness.attacks.contract import REGISTRY, Attack, AttackInfo
    from harness.attacks.runner import attacks, task_units

    assert sorted(attacks()) == ["ringabell", "ti", "unlearndiffatk"]
    for mod in (ringabell, ti, unlearndiffatk):
        assert isinstance(mod.INFO, AttackInfo) and isinstance(mod, Attack) and REGISTRY.get(mod.NAME) is mod
        assert (mod.INFO.name, mod.INFO.version, mod.INFO.budget_unit) == (mod.NAME, mod.VERSION, mod.BUDGET_UNIT)
    assert ti.INFO.unit == "target" and ti.INFO.learns_on_items and ringabell.INFO.concept_pairs
    assert ringabell.INFO.needs == {"text_encoder"} and "token_embeddings" in unlearndiffatk.INFO.needs
    from harness.families.base import FEATURES

    for name in attacks():  # needs speak the families' vocabulary (harness.families.base.require checks them)
        assert attacks()[name].INFO.needs <= FEATURES, name
    assert all(m.INFO.model_key == "unlearned" for m in (ringabell, ti, unlearndiffatk))
    assert task_units(ti, [object(), object()]) == [[0, 1]]


def test_scorers_meet_the_protocol_and_judges_are_registered(tmp_path):
    from harness.scorers import JUDGES, SCORERS, Scorer
    from harness.scorers.classifiers import ImageNetResNet50, ToyScorer, UnlearnCanvasViT, load_scorer
    from harness.spec import ScorerSpec

    # by name: an in-process pytester run earlier in the session may have re-imported the module
    name = lambda c: f"{c.__module__}.{c.__qualname__}"  # noqa: E731
    assert name(SCORERS.get("toy")) == name(ToyScorer) and name(SCORERS.get("unlearncanvas-vit")) == name(UnlearnCanvasViT)
    assert JUDGES.names() == ["classifier", "nudenet", "resnet50"]
    toy = load_scorer(ScorerSpec(backend="toy"), REPO)
    assert isinstance(toy, Scorer) and toy.identity["id"] == "toy-classifier" and len(toy.identity["sha256"]) == 64
    import numpy as np

    out = toy.predict([np.zeros((32, 32, 3), np.uint8)] * 2)
    assert set(out) == {"object", "style"} and all(len(v) == 2 for v in out.values())
    assert isinstance(ImageNetResNet50(tmp_path / "w.safetensors", "ab" * 32), Scorer)


# ----------------------------------------------------------------------------- the registry itself
def test_registry_loads_lazily_and_names_close_matches(monkeypatch):
    loads = []
    reg: Registry[int] = Registry("widget", None, lambda name, obj: loads.append(name) or obj)
    reg.register("alpha", 1)
    reg.register("alphabet", "math:pi")  # lazy: "module:attribute"
    reg.register("broken", "harness.no_such_module:X")
    assert reg.names() == ["alpha", "alphabet", "broken"] and loads == []
    assert reg.get("alphabet") == pytest.approx(3.14159, abs=1e-5) and reg.get("alphabet") and loads == ["alphabet"]  # loaded once
    with pytest.raises(HarnessError, match=r"^unknown widget 'alpah'; did you mean alpha or alphabet\? \(known: alpha, alphabet, broken\)$"):
        reg.get("alpah")
    with pytest.raises(HarnessError, match=r"^widget 'broken': harness.no_such_module:X cannot be loaded \(ModuleNotFoundError"):
        reg.get("broken")
    assert reg.find("nothing") is None and reg.find(3) is None and "alpha" in reg and 7 not in reg
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("alpha", 2)
    view = RegistryView(reg, lambda v: v * 2)
    assert view["alpha"] == 2 and view.get("gamma") is None and list(view) == reg.names() and "broken" in view


def test_registry_adapter_refuses_what_is_not_an_entry():
    from harness.methods import _method_info

    reg = Registry("method", None, _method_info)
    reg.register("json", "json")  # a module without INFO
    with pytest.raises(HarnessError, match=r"^method 'json': json: is a module, not a harness.methods.MethodInfo"):
        reg.get("json")


def test_entry_point_groups_are_the_documented_ones():
    assert GROUPS == {"method": "unlearn_harness.methods", "metric": "unlearn_harness.metrics",
                      "attack": "unlearn_harness.attacks", "scorer": "unlearn_harness.scorers",
                      "family": "unlearn_harness.families"}
    text = (REPO / "CONTRIBUTING.md").read_text()
    assert all(g in text for g in GROUPS.values())
