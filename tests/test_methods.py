"""Reference methods on a tiny random pipeline built in code, and the ``unlearn erase`` command."""

import json
import os
import subprocess
import sys

import pytest
import torch

from harness.methods import METHODS, REGISTRY, esd, uce
from harness.methods.common import cross_attention_kv, for_toy_world, text_embeddings


def _flat(pipe, prompts):
    return text_embeddings(pipe, prompts).reshape(-1, pipe.text_encoder.config.hidden_size).double()


def test_uce_changes_only_kv_and_solves_its_objective(tiny_pipe_factory):
    pipe = tiny_pipe_factory(seed=4)
    cp = for_toy_world("striped", "solid")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    old_kv = {n: m.weight.detach().double().clone() for n, m in cross_attention_kv(pipe.unet).items()}
    changed = uce.erase(pipe, [cp], erase_scale=1.0, preserve_scale=1.0, lamb=0.5)

    after = pipe.unet.state_dict()
    assert set(changed) == {f"{n}.weight" for n in old_kv} and len(changed) == 14
    assert all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in changed)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k not in changed)

    c, a, p = _flat(pipe, cp.erased()), _flat(pipe, cp.anchored()), _flat(pipe, cp.preserved())
    for name, w in old_kv.items():
        new = cross_attention_kv(pipe.unet)[name].weight.detach().double()
        # Known answer: the closed form is the minimiser, so the objective's gradient vanishes there.
        grad = 0.5 * (new - w) + (new @ c.T - w @ a.T) @ c + (new @ p.T - w @ p.T) @ p
        scale = (w @ p.T) @ p
        assert grad.norm() / scale.norm() < 1e-5
        # Preserved concepts keep their projections; erased ones move towards the anchor's.
        assert (new @ p.T - w @ p.T).norm() / (w @ p.T).norm() < 0.1
        assert (new @ c.T - w @ a.T).norm() < 0.5 * (w @ c.T - w @ a.T).norm()


def test_uce_is_deterministic(tiny_pipe_factory):
    cp = for_toy_world("triangle")
    a = uce.erase(tiny_pipe_factory(seed=5), [cp])
    b = uce.erase(tiny_pipe_factory(seed=5), [cp])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_esd_lowers_its_loss_and_touches_only_cross_attention(tiny_pipe_factory):
    pipe = tiny_pipe_factory(seed=6)
    frozen = tiny_pipe_factory(seed=6).unet.eval()
    cp = for_toy_world("dotted")
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 4, 16, 16, generator=g)
    t = torch.tensor(500)
    emb_c = text_embeddings(pipe, cp.erased()[:4])
    emb_0 = text_embeddings(pipe, [""]).expand_as(emb_c)
    with torch.no_grad():
        loss0 = esd.esd_loss(pipe.unet, frozen, x_t, t, emb_c, emb_0, 1.0).item()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    history = []
    changed = esd.erase(pipe, [cp], steps=12, lr=3e-3, batch=4, sample_steps=4, progress=False, history=history)
    with torch.no_grad():
        loss1 = esd.esd_loss(pipe.unet, frozen, x_t, t, emb_c, emb_0, 1.0).item()
    assert len(history) == 12
    assert loss1 < 0.7 * loss0
    after = pipe.unet.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".attn2." in k for k in moved)
    assert set(changed) == {k for k in before if ".attn2." in k}


def _erase(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.cli.main", "erase", *args], capture_output=True, text=True, cwd=cwd,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "UNLEARN_THREADS": "1",
                               **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {})})  # the tree under test


def test_erase_command_writes_changed_tensors_and_method_json(tiny_dir, tmp_path):
    r = _erase("uce", "--base", str(tiny_dir), "--concept", "striped", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "method.json").read_text())
    # a base that is not a toy world: the paper preset, fed the authors' inputs (UCE guides a style to 'art')
    assert rec["checkpoint"]["tensors"] == 14 and (rec["preset"], rec["prompt_source"], rec["anchor"]) == ("paper", "authors", "art")
    eff = rec["efficiency"]
    assert eff["storage_bytes"] == (tmp_path / "out" / "unet.safetensors").stat().st_size
    assert eff["time_s"] > 0 and eff["peak_memory_bytes"] > 10 * 2**20
    r = _erase("uce", "--base", str(tiny_dir), "--concept", "striped", "--out", str(tmp_path / "toy"), "--prompts", "toy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "toy" / "method.json").read_text())
    assert (rec["prompt_source"], rec["anchor"]) == ("toy", "solid") and len(rec["templates"]) == 5


def test_erase_repeats_record_every_run_and_the_results_give_their_interval(tiny_dir, tmp_path, monkeypatch, capsys):
    """``unlearn erase --repeats 2``: two erasures (each in its own spawned process; here in this
    one, to keep the test fast); method.json holds their mean and every run's figures; the
    results' efficiency figure carries the runs and the metric their t interval (one run would
    say "single run")."""
    from harness import methods
    from harness.cli import main as cli
    from harness.stats import intervals as stats
    from harness.metrics import efficiency
    from harness.results.assemble import load_method_record

    calls = []
    monkeypatch.setattr(methods, "run_erase_isolated", lambda *a, **k: calls.append(k.get("threads")) or methods.run_erase(*a, **k))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["erase", "uce", "--base", str(tiny_dir), "--concept", "striped", "--out", str(tmp_path / "out"), "--repeats", "2"]) == 0
    assert len(calls) == 2 and all(isinstance(c, int) for c in calls)  # each run at the thread count of the command
    assert "mean of 2 runs" in capsys.readouterr().out and sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the scratch runs removed
    eff = json.loads((tmp_path / "out" / "method.json").read_text())["efficiency"]
    reps = eff["repeats"]
    assert reps["n"] == 2 and len(reps["time_s"]) == len(reps["peak_memory_bytes"]) == 2 and reps["same_checkpoint"] is True
    assert eff["time_s"] == round(sum(reps["time_s"]) / 2, 3)
    rec = load_method_record(tmp_path, "out/method.json")["efficiency"]
    assert rec["repeats"]["time_s"] == reps["time_s"]
    figure = {"value": eff["time_s"], "source": "measured", "runs": reps["time_s"]}
    meas = efficiency.compute("erase_time_s", type("R", (), {"efficiency": {"time_s": figure}})(), None, {})
    ci = stats.uncertainty(meas, None)["ci"]
    assert ci["method"].startswith("t over 2 repeated runs") and ci["low"] <= min(reps["time_s"]) and max(reps["time_s"]) <= ci["high"]
    from harness.errors import HarnessError

    doc = json.loads((tmp_path / "out" / "method.json").read_text())
    for bad in ("x", [], ["1"], [-1.0], [1.0] * 1001):
        doc["efficiency"]["repeats"]["time_s"] = bad
        (tmp_path / "out" / "method.json").write_text(json.dumps(doc))
        with pytest.raises(HarnessError, match=r"^method_record: out/method.json: efficiency.repeats.time_s: not a list of 1-1000 non-negative numbers$"):
            load_method_record(tmp_path, "out/method.json")


GENERIC_ERRORS = [
    (["--concept", "zebra"], "concept word 'zebra' is not a single token"),
    (["--concept", "striped", "--base", "/nonexistent"], "--base /nonexistent: no diffusers pipeline there"),
    (["--concept", "striped", "--out", "EXISTING"], "exists; pass --force"),
]


@pytest.mark.parametrize("method", sorted(m for m in METHODS if REGISTRY.get(m).kind == "checkpoint"))  # inference-time ones: test_inference_methods
@pytest.mark.parametrize("args, message", GENERIC_ERRORS, ids=["subword-concept", "missing-base", "existing-out"])
def test_erase_command_one_line_errors_for_every_method(tiny_dir, tmp_path, monkeypatch, capsys, method, args, message):
    """The inputs every method's ``unlearn erase`` refuses the same way (``run_erase``'s checks),
    in this process (``cli.main``: what the console script runs); one subprocess below shows the
    exit code and the one stderr line of the real command."""
    from harness.cli import main as cli

    (tmp_path / "EXISTING").mkdir()
    base = ["--base", str(tiny_dir)] if "--base" not in args else []
    out = ["--out", str(tmp_path / "new")] if "--out" not in args else []
    args = [str(tmp_path / "EXISTING") if a == "EXISTING" else a for a in args]
    monkeypatch.chdir(tmp_path)
    assert cli.main(["erase", method, *base, *out, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unlearn: error: ") and message in err[0], err
    assert not (tmp_path / "new").exists() and not any((tmp_path / "EXISTING").iterdir())


def test_erase_command_one_line_error_as_a_process(tiny_dir, tmp_path):
    r = _erase("uce", "--base", str(tiny_dir), "--concept", "zebra", "--out", str(tmp_path / "new"), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: ") and "concept word 'zebra' is not a single token" in lines[0], r.stderr


def test_peak_memory_of_an_erasure_is_not_charged_an_earlier_peak_of_the_process():
    """``unlearn toy checkpoints`` erases several times in one process: each method.json's peak
    is its own (VmHWM reset before the erasure where Linux allows), not the process's maximum."""
    import numpy as np

    from harness.methods import _peak_memory_bytes, _reset_peak_rss

    big = np.ones(400_000_000 // 8)  # an earlier, larger peak of this process (~400 MB touched)
    del big
    process_peak, _ = _peak_memory_bytes("cpu")
    if not _reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs here: the process's max RSS is what can be measured")
    own_peak, how = _peak_memory_bytes("cpu", reset=True)
    assert "VmHWM" in how and own_peak < process_peak - 200_000_000


def test_toy_checkpoints_measure_each_erasure_in_its_own_process(tmp_path):
    """``unlearn toy checkpoints`` erases each (method, target) in a fresh process, so a method's
    peak memory is never what this process (or an earlier erasure) already held: here this process
    holds 2 GB while UCE's two toy erasures (about 0.9 GB each) are made."""
    import numpy as np

    from harness.toy.submissions import make_checkpoints

    held = np.ones(2 * 2**30 // 8)  # 2 GB resident in this process
    made = make_checkpoints(tmp_path, methods=("uce",), force=True)
    assert [d.name for d in made] == ["uce-style-striped", "uce-object-triangle"]
    for d in made:
        eff = json.loads((d / "method.json").read_text())["efficiency"]
        assert 100 * 2**20 < eff["peak_memory_bytes"] < 1.5 * 2**30, eff
        assert eff["threads"] == 1
    del held
