"""UCE's token-position variants against small cases computed by hand / independently, method
presets (paper vs toy) and what ``unlearn erase`` records (issue 11)."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.methods import esd, preset_params, run_erase, uce
from harness.methods.common import ConceptPrompts
from harness.families.sd1 import TOY_PIPELINE

ROOT = Path(__file__).resolve().parents[1]
VOCAB = {"<s>": 0, "</s>": 1, "a": 2, "cat": 3, "dog": 4, "big": 5, "bird": 6}


class _Tok:
    """Word-level stand-in tokenizer: <s> words </s>, padded with </s> to 5; the mask covers
    <s>, the words and the first </s> (as CLIP's does)."""

    model_max_length = 5

    def __call__(self, prompts, padding=None, max_length=None, truncation=None, return_tensors=None):
        ids, mask = [], []
        for p in prompts:
            w = [VOCAB[x] for x in p.split()]
            row = [0, *w, 1][:5]
            ids.append(row + [1] * (5 - len(row)))
            mask.append([1] * len(row) + [0] * (5 - len(row)))
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)})


class _Enc(torch.nn.Module):
    """emb[n, j] = E[token] + P[j] (a 'causal' encoder would mix more; this keeps it checkable)."""

    def __init__(self, E, P):
        super().__init__()
        self.E, self.P = torch.tensor(E, dtype=torch.float32), torch.tensor(P, dtype=torch.float32)
        self.device = torch.device("cpu")

    def forward(self, ids):
        return (self.E[ids] + self.P[None, : ids.shape[1]],)


class _UNet(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.blk = torch.nn.Module()
        self.blk.attn2 = torch.nn.Module()
        self.blk.attn2.to_k = torch.nn.Linear(len(w[0]), len(w), bias=False)
        with torch.no_grad():
            self.blk.attn2.to_k.weight.copy_(torch.tensor(w))


class _Pipe:
    def __init__(self, E, P, W):
        self.tokenizer, self.text_encoder, self.unet = _Tok(), _Enc(E, P), _UNet(W)


def test_uce_last_hand_computed_2d():
    """One erased vector c = [1, 0] -> anchor a = [0, 1], W = I, lamb = 1, scale 1, nothing kept:
    W' = (I + W a c^T)(I + c c^T)^-1 = [[1, 0], [1, 1]] diag(1/2, 1) = [[0.5, 0], [0.5, 1]]."""
    E = [[0, 0], [0, 0], [0, 0], [1, 0], [0, 1], [0, 0], [0, 0]]  # <s>, </s>, a: zero; cat e1; dog e2
    pipe = _Pipe(E, [[0, 0]] * 5, [[1.0, 0.0], [0.0, 1.0]])
    cp = ConceptPrompts("cat", "dog", ("{}",))  # the authors' form: the bare concept word
    out = uce.erase(pipe, [cp], erase_scale=1.0, preserve_scale=1.0, lamb=1.0, token_positions="last")
    assert torch.allclose(out["blk.attn2.to_k.weight"], torch.tensor([[0.5, 0.0], [0.5, 1.0]]), atol=1e-6)
    # 'all' also maps the start / end tokens (zero here) and so gives the same W'; 'tail'
    # keeps '' in the preserved set, which is zero too: all three agree on this degenerate case.
    for v in ("all", "tail"):
        pipe = _Pipe(E, [[0, 0]] * 5, [[1.0, 0.0], [0.0, 1.0]])
        got = uce.erase(pipe, [cp], erase_scale=1.0, preserve_scale=1.0, lamb=1.0, token_positions=v)["blk.attn2.to_k.weight"]
        assert torch.allclose(got, torch.tensor([[0.5, 0.0], [0.5, 1.0]]), atol=1e-6), v


def _lstsq(W, lamb, groups):
    """argmin lamb ||W' - W||^2 + sum_s s ||W' x - W y||^2 as a stacked least-squares problem
    (independent of the method's normal equations). groups: [(scale, X rows, Y rows)]."""
    W = np.asarray(W, float)
    A = [np.sqrt(lamb) * np.eye(W.shape[1])]
    B = [np.sqrt(lamb) * W.T]
    for s, X, Y in groups:
        if len(X):
            A.append(np.sqrt(s) * np.asarray(X, float))
            B.append(np.sqrt(s) * (np.asarray(Y, float) @ W.T))
    sol, *_ = np.linalg.lstsq(np.vstack(A), np.vstack(B), rcond=None)
    return sol.T


E3 = np.array([[0.2, 0.0, 0.1], [0.0, 0.3, 0.0], [0.5, 0.1, 0.0], [1.0, 0.0, 0.2], [0.0, 1.0, 0.0],
               [0.1, 0.2, 0.7], [0.3, 0.0, 0.6]])
P3 = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1], [0.1, 0.1, 0.1]])
W3 = [[1.0, 0.2, 0.0], [0.0, 0.9, 0.1], [0.3, 0.0, 1.1], [0.5, 0.5, 0.5]]


def _emb(prompt):
    ids = _Tok()([prompt])["input_ids"][0].tolist()
    return [E3[t] + P3[j] for j, t in enumerate(ids)]


# erased "a cat" = <s> a cat </s> </s> (last content index 2); anchor "a big dog" = <s> a big dog
# </s> (index 3); preserved "a bird" (index 2). Rows each variant must use, written out by hand:
CASES = {
    "last": lambda: [(1.0, [_emb("a cat")[2]], [_emb("a big dog")[3]]), (1.0, [_emb("a bird")[2]], [_emb("a bird")[2]])],
    # tail: farthest = 3; erased positions 2 .. 5-(3-2) = 2, 3; anchor positions 3 .. 5 = 3, 4;
    # preserved: '' and "a bird", all 5 positions, scale max(0.1, 1/2) = 0.5
    "tail": lambda: [(1.0, _emb("a cat")[2:4], _emb("a big dog")[3:5]), (0.5, _emb("")[:] + _emb("a bird")[:], _emb("")[:] + _emb("a bird")[:])],
    # all: position j onto position j, every position; preserved "a bird" at every position
    "all": lambda: [(1.0, _emb("a cat"), _emb("a big dog")), (1.0, _emb("a bird"), _emb("a bird"))],
}


@pytest.mark.parametrize("variant", sorted(CASES))
def test_uce_variants_match_an_independent_closed_form(variant):
    cp = ConceptPrompts("cat", "big dog", ("a {}",), ("bird",))
    pipe = _Pipe(E3.tolist(), P3.tolist(), W3)
    params = uce.resolve({"token_positions": variant, "preserve_scale": None}, [cp])
    assert params["preserve_scale"] == (0.5 if variant == "tail" else 1.0)
    got = uce.erase(pipe, [cp], erase_scale=1.0, lamb=0.5, **params)["blk.attn2.to_k.weight"].double().numpy()
    want = _lstsq(W3, 0.5, CASES[variant]())
    assert np.allclose(got, want, atol=1e-5), (variant, got, want)
    others = [_lstsq(W3, 0.5, CASES[v]()) for v in CASES if v != variant]
    assert all(not np.allclose(got, o, atol=1e-3) for o in others)  # the variants really differ


def test_uce_tail_uses_a_space_for_an_empty_anchor():
    """The paper-era code maps onto ' ' when the anchor is empty; both tokenise to nothing, so the
    anchor rows are <s>-less end tokens from position 1 on."""
    cp = ConceptPrompts("cat", "", ("{}",))
    pipe = _Pipe(E3.tolist(), P3.tolist(), W3)
    c, a, p = uce.rows(pipe, [cp], "tail")
    # erased "cat": last index 1; anchor ' ': last index 0; farthest 1 -> erased 1..5, anchor 0..4
    assert torch.allclose(c, torch.tensor(np.array(_emb("cat")[1:5]))) and torch.allclose(a, torch.tensor(np.array(_emb("")[0:4])))
    assert p.shape[0] == 5  # '' at every position


def test_presets_exist_and_explicit_params_override(tmp_path):
    for mod in (uce, esd):
        assert set(mod.PRESETS) >= {"paper", "toy"}
    assert esd.PRESETS["paper"] == {"steps": 1000, "lr": 1e-5, "eta": 1.0, "batch": 1, "sample_steps": 50, "sample_guidance": 3.0, "seed": 0}
    assert uce.PRESETS["paper"]["token_positions"] == "last" and uce.PRESETS["toy"]["token_positions"] == "all"
    assert preset_params(esd, "esd", None, TOY_PIPELINE, {})[0] == "toy"
    assert preset_params(esd, "esd", None, tmp_path, {}) == ("paper", esd.PRESETS["paper"])
    assert preset_params(esd, "esd", "toy", tmp_path, {"lr": 3e-4})[1] == {**esd.PRESETS["toy"], "lr": 3e-4}
    with pytest.raises(HarnessError, match="no parameter 'colour'"):
        preset_params(esd, "esd", None, tmp_path, {"colour": 1})
    with pytest.raises(HarnessError, match="no preset 'fast'"):
        preset_params(uce, "uce", "fast", tmp_path, {})


def test_committed_toy_esd_checkpoints_are_the_toy_preset():
    from harness.methods import get_method
    from harness.toy.submissions import PARAMS

    assert PARAMS["esd"] == esd.PRESETS["toy"]
    assert uce.resolve(uce.PRESETS["toy"], []) == PARAMS["uce"]
    for d in sorted((ROOT / "submissions" / "checkpoints").glob("*-*-*")):
        rec = json.loads((d / "method.json").read_text())
        want = PARAMS.get(rec["method"]) or get_method(rec["method"]).PRESETS["toy"]  # FMN, CA, SalUn: the toy preset as it is
        assert rec["preset"] == "toy" and rec["params"] == want, d.name


@pytest.mark.parametrize("kind, concept", [("style", "striped"), ("object", "triangle")])
def test_toy_uce_checkpoints_reproduce(tmp_path, kind, concept):
    """Re-made by ``unlearn erase``: bitwise the committed checkpoint where its method.json
    records this platform, else within the closed-form tolerance (harness.run.reproduce)."""
    from harness.methods import method_tolerance
    from harness.run.reproduce import CLOSED_FORM, compare_checkpoint

    committed_dir = ROOT / "submissions" / "checkpoints" / f"uce-{kind}-{concept}"
    committed = json.loads((committed_dir / "method.json").read_text())
    rec = run_erase("uce", TOY_PIPELINE, concept, tmp_path / "out", threads=committed["efficiency"]["threads"])  # default preset on the toy base: toy
    assert rec["preset"] == "toy" and rec["params"]["token_positions"] == "all" and rec["display_name"] == "UCE (all-token)"
    c = compare_checkpoint(tmp_path / "out", committed_dir, method_tolerance)
    print(c.line())
    assert c.ok, c.line()
    assert c.tolerance == CLOSED_FORM and c.max_abs <= CLOSED_FORM.atol
    if c.same_platform:
        assert c.bitwise and rec["checkpoint"]["sha256"] == committed["checkpoint"]["sha256"]


def test_erase_on_a_real_base_defaults_to_the_papers_uce_and_records_params(tiny_pipe_factory, tmp_path):
    base = tmp_path / "base"
    tiny_pipe_factory(seed=3).save_pretrained(base)
    rec = run_erase("uce", base, "striped", tmp_path / "out", world="generic")
    assert rec["preset"] == "paper" and rec["display_name"] == "UCE"
    assert rec["params"] == {"token_positions": "last", "erase_scale": 1.0, "preserve_scale": 1.0, "lamb": 0.5}
    on_disk = json.loads((tmp_path / "out" / "method.json").read_text())
    assert on_disk["params"] == rec["params"] and on_disk["preset"] == "paper"
    rec = run_erase("uce", base, "striped", tmp_path / "out2", world="generic", params={"token_positions": "tail"})
    assert rec["params"]["preserve_scale"] == 1.0  # the preserved set is just '': max(0.1, 1/1)


def test_erase_runs_at_the_thread_count_asked_records_it_and_restores_the_callers():
    """Float reductions differ with torch's thread count, so a re-made checkpoint is bitwise the
    committed one only at the count it was made with: run_erase sets it for the erasure, records
    it with the CPU seconds in method.json, and leaves the caller's count as it was."""
    import torch

    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    rec = run_erase("uce", TOY_PIPELINE, "striped", Path(tempfile.mkdtemp()) / "out", threads=want)
    assert rec["efficiency"]["threads"] == want and rec["efficiency"]["cpu_s"] >= 0
    assert torch.get_num_threads() == before
    committed = json.loads((ROOT / "submissions" / "checkpoints" / "uce-style-striped" / "method.json").read_text())
    assert committed["efficiency"]["threads"] == 1  # the toy checkpoints: one thread (harness.toy.submissions.TOY_THREADS)
