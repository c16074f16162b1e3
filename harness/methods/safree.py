"""SAFREE: training-free and adaptive guard (Yoon et al., ICLR 2025; jaehong31/SAFREE), an
inference-time method: it changes the conditioning and the decoder features of every denoiser
call, and no weight.

Notation: h_0 .. h_{L-1} the text encoder's output for the prompt (rows of width d: the
conditioning an SD-1.x UNet reads), n its tokens between the start and the end token (at
position n + 1), pooled(p) the output at a prompt's end token.

1. Toxic subspace. The concept's keywords (nudity: the authors' 17 phrases, ``NUDITY_KEYWORDS``;
   any other concept: the concept itself, as the authors pass an artist's name) give
   C = [pooled(k_1) .. pooled(k_K)] (d x K) and the projection onto their span

       P_C = C (C^T C)^+ C^T.

2. Trigger tokens. p_i = pooled(the prompt with token i replaced by token id 0, CLIP's "!"),
   i = 1..n; M = [p_1 .. p_n] (d x n), P_M = M (M^T M)^+ M^T (the prompt's own span), and

       d_i = || (I - P_C) p_i ||,   token i is a trigger  iff  not d_i < (1 + alpha) mean_{j != i} d_j

   (removing a trigger leaves the prompt furthest from the toxic subspace; alpha = 0.01; a
   one-token prompt's mean is empty and its token a trigger, as in the authors' code).

3. Selective orthogonal projection: h_i' = (I - P_C) P_M h_i at the trigger positions, h_i' = h_i
   elsewhere (into the prompt's span, orthogonal to the toxic one). Conditional branch only.

4. Self-validating filter. With h~_i = (I - P_C) P_M h_i at every position,

       beta = 1 - mean_{i = 0..n+1} cos(h~_i, h_i),
       T    = round(gamma * sigmoid(2 k (10 beta - m)))     (gamma = upper_t = 10;
              nudity: k = 2.5, m = 5.333; artists (every other concept here): k = 3.5, m = 5.5)

   the projected conditioning is used at the sampling steps i <= T (0-based), the prompt's own
   after. Without the filter, at the steps window_start <= i <= window_end (default: all).

5. Negative prompt. The authors' script also passes the keywords joined by ", " as the
   pipeline's negative prompt: the unconditional branch is conditioned on them.

6. Latent re-attention (paper section 3.4; FreeU's skip filter, ``free_lunch_utils.py``). A
   decoder resnet whose backbone input has c1 channels (the UNet's widest; 1280 on SD-1.x) or
   c2 = c1 / 2 reads skip features s; with s_p those of the projected conditioning and s_o those
   of the prompt's own, F = fftshift(FFT2(.)) and W the low-frequency box of half-width 1 about
   the centre,

       F'(s_p) = F(s_p)          where Re F(s_o) > Re F(s_p)  in W
               = scale F(s_p)    elsewhere in W               (scale s1 = 0.9 at c1, s2 = 0.2 at c2)
       s_p'    = Re IFFT2(ifftshift(F'(s_p)))

   (at a step without projection s_p = s_o: FreeU's low-frequency scaling). The conditional
   prediction is recomputed with the filtered features (the authors' code runs the UNet on
   [uncond, projected, own] in one batch); scale 1 is the identity. The authors' released code
   registers these filters without choosing one (``safree=None``), so it never filters: the
   ``released-code`` preset leaves 6. out, ``paper`` and ``toy`` apply it as the paper describes.

Which prompt's tokens (2.) the conditioning came from: the guidance records every call of the
pipeline's text encoder (its token ids, or the token embeddings an attack feeds it) under a
fingerprint of its output, and looks the conditioning up there (``TokenRecorder``); a
conditioning this text encoder did not make is refused in one line. docs/fidelity.md lists what
differs from the authors' code.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from harness.errors import HarnessError
from harness.families.guidance import Guidance
from harness.methods import MethodInfo

# generate_safree.py: the nudity category's negative prompt space
NUDITY_KEYWORDS = (
    "Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art", "Lustful",
    "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction", "Sexual Intercourse",
    "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification",
)
NUDITY_CONCEPTS = frozenset({"nudity", "nude", "naked", "nsfw"})
# f_beta's (k, m) per category (models/modified_stable_diffusion_pipeline.py)
SVF_SHAPES = {"nudity": (2.5, 5.333), "artist": (3.5, 5.5)}
MASK_TOKEN_ID = 0  # the id a masked token is replaced by (_masked_encode_prompt: ``masked_ids[i, i+1] = 0``)

PRESETS = {
    # generate_safree.py's defaults with run_nudity.sh's / run_artist.sh's flags (--safree -svf
    # -lra): alpha 0.01, up_t 10, freeu_hyp 1.0-1.0-0.9-0.2 (b1 = b2 = 1: no backbone scaling),
    # the keywords also as the negative prompt; latent re-attention as the paper describes it
    "paper": {"alpha": 0.01, "self_validation": True, "upper_t": 10, "negative_prompt": True, "re_attention": True,
              "s1": 0.9, "s2": 0.2},
    # what the released code computes: its -lra registers the Fourier filters with safree=None,
    # which leaves the features unfiltered (docs/fidelity.md)
    "released-code": {"alpha": 0.01, "self_validation": True, "upper_t": 10, "negative_prompt": True, "re_attention": False,
                      "s1": 0.9, "s2": 0.2},
    # nothing is trained, nothing to shorten: the paper's settings
    "toy": {"alpha": 0.01, "self_validation": True, "upper_t": 10, "negative_prompt": True, "re_attention": True,
            "s1": 0.9, "s2": 0.2},
}

INFO = MethodInfo(
    name="safree",
    module=__name__,
    paper="https://arxiv.org/abs/2410.12761",
    code="https://github.com/jaehong31/SAFREE",
    presets=PRESETS,
    kind="inference",
    on_checkpoint=True,  # generate_safree.py runs SAFREE on an erased UNet too (--erase-id esd + its checkpoint)
    needs=frozenset({"unet", "text_encoder"}),
    families=frozenset({"sd1"}),
    families_why="SAFREE's SDXL variant (projection of text_encoder_2's part only, no self-validating filter) is not implemented",
)


# ---------------------------------------------------------------------------- the math
def projection_matrix(E: torch.Tensor) -> torch.Tensor:
    """The orthogonal projection onto the span of E's columns (d x k): E (E^T E)^+ E^T, with
    ``torch.pinverse``'s cut-off (1e-15 relative), as the authors compute it: for columns that are
    linearly dependent (in float32: nearly so) the cut-off keeps rounding noise, and the result
    is not a projection; SAFREE's pooled embeddings are independent in practice."""
    return E @ torch.pinverse(E.T @ E) @ E.T


def project_tokens(h: torch.Tensor, M: torch.Tensor, P_C: torch.Tensor) -> torch.Tensor:
    """(I - P_C) P_M h for every row h of ``h`` (..., d), P_M the projection onto the span of the
    rows of M (n x d): the rows moved into M's span and out of the toxic subspace."""
    P_M = projection_matrix(M.T)
    eye = torch.eye(P_C.shape[0], dtype=P_C.dtype, device=P_C.device)
    return (h @ P_M.T) @ (eye - P_C).T


def trigger_tokens(pooled: torch.Tensor, P_C: torch.Tensor, alpha: float) -> torch.Tensor:
    """Which of the n masked prompts' pooled embeddings (n x d) mark a trigger token (bool, n):
    d_i = ||(I - P_C) p_i|| not below (1 + alpha) x the mean of the others' (a one-token prompt:
    an empty mean, NaN, so its token is a trigger)."""
    eye = torch.eye(P_C.shape[0], dtype=P_C.dtype, device=P_C.device)
    d = torch.linalg.vector_norm((eye - P_C) @ pooled.T, dim=0)
    n = d.shape[0]
    others = torch.stack([torch.cat((d[:i], d[i + 1:])).mean() for i in range(n)]) if n else d
    return ~(d < (1.0 + alpha) * others)


def svf_beta(h: torch.Tensor, projected: torch.Tensor) -> float:
    """1 - the mean cosine similarity of the projected rows to the prompt's own (the positions
    the attention mask covers: start token, tokens, end token)."""
    return float(1.0 - torch.nn.functional.cosine_similarity(projected, h, dim=-1).mean())


def svf_steps(beta: float, upper_t: int = 10, shape: str = "nudity") -> int:
    """The last sampling step (0-based) that uses the projected conditioning:
    round(upper_t * sigmoid(2 k (10 beta - m))) (Python's round: half to even, as the authors')."""
    k, m = SVF_SHAPES[shape]
    z = 2.0 * k * (10.0 * beta - m)
    sig = 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
    return round(upper_t * sig)


def lowfreq_reattention(s_p: torch.Tensor, s_o: torch.Tensor, scale: float, radius: int = 1) -> torch.Tensor:
    """Skip features s_p (B, C, H, W) with their centred low-frequency box (half-width ``radius``)
    scaled by ``scale`` where the reference s_o's real part does not exceed theirs (see the module
    docstring, 6.). Differentiable; ``scale`` 1 is the identity (to float rounding)."""
    dtype = s_p.dtype
    Fp = torch.fft.fftshift(torch.fft.fftn(s_p.float(), dim=(-2, -1)), dim=(-2, -1))
    Fo = torch.fft.fftshift(torch.fft.fftn(s_o.float(), dim=(-2, -1)), dim=(-2, -1))
    H, W = Fp.shape[-2:]
    rows, cols = slice(H // 2 - radius, H // 2 + radius), slice(W // 2 - radius, W // 2 + radius)  # the authors' slice
    factor = torch.ones(Fp.shape, dtype=torch.float32, device=Fp.device)
    keep = (Fo[..., rows, cols].real - Fp[..., rows, cols].real) > 0
    factor[..., rows, cols] = torch.where(keep, torch.ones_like(keep, dtype=torch.float32), torch.full_like(keep, scale, dtype=torch.float32))
    out = torch.fft.ifftn(torch.fft.ifftshift(Fp * factor, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(dtype)


def skip_scales(block_out_channels, s1: float, s2: float) -> dict[int, float]:
    """Backbone width -> the scale of the skip features joining it: the UNet's widest (c1) s1, half
    of it s2 (SD-1.x: 1280 and 640, as FreeU's and the authors' channel tests)."""
    c1 = max(int(c) for c in block_out_channels)
    return {c1: float(s1), c1 // 2: float(s2)} if c1 // 2 != c1 else {c1: float(s1)}


def concept_keywords(concepts: list[str], keywords=None) -> list[str]:
    """The toxic subspace's keywords: the given list, else per concept the authors' nudity
    phrases for a nudity concept and the concept itself otherwise (their artist runs pass the
    artist's name)."""
    if keywords is not None:
        if isinstance(keywords, str):
            keywords = [keywords]
        if not isinstance(keywords, (list, tuple)) or not keywords or not all(isinstance(k, str) and k.strip() for k in keywords):
            raise HarnessError("method.params.keywords: must be a non-empty list of non-empty strings")
        return list(keywords)
    out: list[str] = []
    for c in concepts:
        for k in (NUDITY_KEYWORDS if c.strip().lower() in NUDITY_CONCEPTS else (c,)):
            if k not in out:
                out.append(k)
    if not out:
        raise HarnessError("safree: no target concept to guard against")
    return out


def svf_shape_of(concepts: list[str], shape: str = "auto") -> str:
    """f_beta's constants: ``nudity`` when every concept is a nudity concept, else ``artist`` (the
    authors' only other category); or as given."""
    if shape == "auto":
        return "nudity" if concepts and all(c.strip().lower() in NUDITY_CONCEPTS for c in concepts) else "artist"
    if shape not in SVF_SHAPES:
        raise HarnessError(f"method.params.svf_shape: {shape!r} is not auto, {', '.join(SVF_SHAPES)}")
    return shape


# ---------------------------------------------------------------------------- token recording
def fingerprint(row: torch.Tensor) -> bytes:
    """A key for one prompt's conditioning (L, d): its values at half precision (the same key for
    a float32 tensor and its float16 copy)."""
    a = row.detach().to(torch.float16).contiguous().cpu().numpy()
    return hashlib.blake2b(a.tobytes(), digest_size=16).digest() + str(tuple(a.shape)).encode()


@dataclass
class TokenRecord:
    ids: torch.Tensor | None  # (L,) token ids, when the encoder read ids
    embeds: torch.Tensor | None  # (L, d) token embeddings, when it read embeddings


class TokenRecorder:
    """Hooks on a CLIP text encoder that remember, for each output row (the final-norm hidden
    states an SD-1.x UNet reads), the token ids or token embeddings it was made from; both the
    ids path (``text_encoder(ids)``) and the embeddings path (the family's ``encode_embeds``,
    attacks) pass the embeddings module then the final layer norm."""

    def __init__(self, text_encoder, capacity: int = 512):
        tm = getattr(text_encoder, "text_model", text_encoder)
        self.records: OrderedDict[bytes, TokenRecord] = OrderedDict()
        self.capacity = capacity
        self.paused = 0
        self._pending: TokenRecord | None = None
        self.handles = [tm.embeddings.register_forward_pre_hook(self._inputs, with_kwargs=True),
                        tm.final_layer_norm.register_forward_hook(self._outputs)]

    def _inputs(self, module, args, kwargs):
        if self.paused:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        self._pending = TokenRecord(None if ids is None else ids.detach(), None if emb is None or ids is not None else emb.detach())
        return None

    def _outputs(self, module, args, out):
        pend, self._pending = self._pending, None
        if self.paused or pend is None:
            return None
        src = pend.ids if pend.ids is not None else pend.embeds
        if src is None or tuple(src.shape[:2]) != tuple(out.shape[:2]):
            return None
        for b in range(out.shape[0]):
            key = fingerprint(out[b])
            self.records[key] = TokenRecord(None if pend.ids is None else pend.ids[b].clone(),
                                            None if pend.embeds is None else pend.embeds[b].clone())
            self.records.move_to_end(key)
        while len(self.records) > self.capacity:
            self.records.popitem(last=False)
        return None

    def get(self, key: bytes) -> TokenRecord | None:
        return self.records.get(key)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@dataclass
class PromptState:
    """What SAFREE decided for one prompt's conditioning."""

    trigger: torch.Tensor  # (L,) bool: positions replaced by their projection
    masked: torch.Tensor  # (n, d): the masked prompts' pooled embeddings (the rows of M)
    last_step: int  # the self-validating filter's T
    beta: float
    n: int


# ---------------------------------------------------------------------------- the guidance
class SafreeGuidance(Guidance):
    """SAFREE on one loaded SD-1.x pipeline (``setup``)."""

    def __init__(self, pipe, family, concepts: list[str], *, keywords=None, alpha: float = 0.01, self_validation: bool = True,
                 upper_t: int = 10, svf_shape: str = "auto", window_start: int = -1, window_end: int = 1001,
                 negative_prompt: bool = True, re_attention: bool = True, s1: float = 0.9, s2: float = 0.2):
        self.pipe, self.family = pipe, family
        self.concepts = list(concepts)
        self.keywords = concept_keywords(self.concepts, keywords)
        self.alpha, self.upper_t = float(alpha), int(upper_t)
        self.shape = svf_shape_of(self.concepts, svf_shape)
        self.self_validation, self.window = bool(self_validation), (int(window_start), int(window_end))
        self.use_negative, self.use_lra = bool(negative_prompt), bool(re_attention)
        tok, te = family.text_encoders(pipe)[0]
        self.tokenizer, self.text_encoder = tok, te
        self.eos_id = int(tok.eos_token_id)
        with torch.no_grad():
            self.P_C = projection_matrix(self._pooled_texts(self.keywords).float().T)
            self.neg = family.encode_conditioning(pipe, [", ".join(self.keywords)]) if self.use_negative else None
        self.states: OrderedDict[bytes, PromptState] = OrderedDict()
        self.recorder = TokenRecorder(te)
        self.scales = {c: s for c, s in skip_scales(family.denoiser(pipe).config.block_out_channels, s1, s2).items() if s != 1.0}
        self._lra_mode: str | None = None  # None: hooks idle; "pair": [projected, own] rows; "self": own rows alone
        self._hooks: list = []
        self._last: tuple[Any, Any] | None = None  # (projected conditioning handed out, the original)
        if self.use_lra and self.scales:
            self.denoiser_hooks(family.denoiser(pipe))

    # -- encodings
    def _pooled_texts(self, texts: list[str]) -> torch.Tensor:
        """pooled(text) for each text (padded to the tokenizer's length, as the authors' encode)."""
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids.to(self.text_encoder.device)
        return self._encode_ids(ids)[torch.arange(ids.shape[0]), self._eos_positions(ids)]

    def _encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        rec = getattr(self, "recorder", None)
        if rec is not None:
            rec.paused += 1
        try:
            return self.text_encoder(ids)[0]
        finally:
            if rec is not None:
                rec.paused -= 1

    def _eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The first end token after the start token (the pooled position), per row."""
        is_eos = ids[:, 1:] == self.eos_id
        pos = is_eos.int().argmax(-1) + 1
        return torch.where(is_eos.any(-1), pos, torch.full_like(pos, ids.shape[1] - 1))

    def _masked_pooled(self, rec: TokenRecord, eos: int) -> torch.Tensor:
        """pooled(prompt with token i masked), i = 1..n (n = eos - 1); the sequences end at the end
        token, as the authors' (padding "longest"; the encoder is causal, so only float rounding
        tells them from padded ones, but the projection onto their span magnifies it)."""
        n = eos - 1
        if rec.ids is not None:
            masked = rec.ids[: eos + 1].to(self.text_encoder.device).repeat(n, 1)
            masked[torch.arange(n), torch.arange(1, n + 1)] = MASK_TOKEN_ID
            return self._encode_ids(masked)[:, eos]
        E = self.family.token_embeddings(self.text_encoder)
        assert rec.embeds is not None
        emb = rec.embeds[: eos + 1].to(E.device).repeat(n, 1, 1)
        emb[torch.arange(n), torch.arange(1, n + 1)] = E[MASK_TOKEN_ID].to(emb.dtype)
        self.recorder.paused += 1
        try:
            return self.family.encode_embeds(self.text_encoder, emb)[:, eos]
        finally:
            self.recorder.paused -= 1

    def _eos_of(self, rec: TokenRecord) -> int:
        if rec.ids is not None:
            return int(self._eos_positions(rec.ids[None])[0])
        E = self.family.token_embeddings(self.text_encoder)
        assert rec.embeds is not None
        hit = (rec.embeds[1:].to(E.device, E.dtype) == E[self.eos_id]).all(-1).nonzero()
        return int(hit[0, 0]) + 1 if len(hit) else rec.embeds.shape[0] - 1

    def state(self, row: torch.Tensor) -> PromptState:
        """SAFREE's decision for one prompt's conditioning (L, d), computed once per prompt."""
        key = fingerprint(row)
        st = self.states.get(key)
        if st is not None:
            self.states.move_to_end(key)
            return st
        rec = self.recorder.get(key)
        if rec is None:
            raise HarnessError("safree: the denoiser was given a conditioning that this pipeline's text encoder did not make "
                               "(SAFREE needs the prompt's tokens to find its trigger tokens)")
        with torch.no_grad():
            eos = self._eos_of(rec)
            n = eos - 1
            h = row.detach().float()
            L = h.shape[0]
            trigger = torch.zeros(L, dtype=torch.bool, device=h.device)
            if n <= 0:
                st = PromptState(trigger, h[:0], -1, 0.0, 0)
            else:
                P_C = self.P_C.to(h.device)
                pooled = self._masked_pooled(rec, eos).float().to(h.device)
                trigger[1:n + 1] = trigger_tokens(pooled, P_C, self.alpha)
                beta = svf_beta(h[: eos + 1], project_tokens(h[: eos + 1], pooled, P_C))
                st = PromptState(trigger, pooled, svf_steps(beta, self.upper_t, self.shape), beta, n)
        self.states[key] = st
        while len(self.states) > 1024:
            self.states.popitem(last=False)
        return st

    # -- which steps use the projection
    def step_index(self, t, step: int | None) -> int | None:
        """``step``, or for a single prediction the index of the pipeline scheduler's timestep
        nearest ``t`` (None when the scheduler holds none)."""
        if step is not None:
            return step
        ts = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
        if ts is None or not len(ts):
            return None
        tv = float(t.reshape(-1)[0]) if hasattr(t, "reshape") else float(t)
        return int((ts.float().cpu() - tv).abs().argmin())

    def active(self, st: PromptState, i: int | None) -> bool:
        if st.n <= 0 or not bool(st.trigger.any()):
            return False
        if i is None:
            return True
        if self.self_validation:
            return i <= st.last_step
        return self.window[0] <= i <= self.window[1]

    # -- the contract
    def condition(self, cond, t, step: int | None):
        from harness.families.base import Conditioning

        if isinstance(cond, Conditioning):
            raise HarnessError("safree: runs on SD-1.x conditioning only (a bare hidden-state tensor)")
        i = self.step_index(t, step)
        rows, changed = [], False
        for b in range(cond.shape[0]):
            st = self.state(cond[b])
            if self.active(st, i):
                h = cond[b]
                P_C = _usable(self.P_C).to(h.device, torch.float32)
                M = _usable(st.masked).to(h.device, torch.float32)
                proj = project_tokens(h.float(), M, P_C).to(h.dtype)
                rows.append(torch.where(_usable(st.trigger).to(h.device)[:, None], proj, h))
                changed = True
            else:
                rows.append(cond[b])
        if not changed:
            self._last = None
            return cond
        out = torch.stack(rows)
        self._last = (out, cond)
        return out

    def reset(self) -> None:
        self._last = None

    # -- latent re-attention hooks
    def denoiser_hooks(self, denoiser) -> list:
        """Forward pre-hooks on the decoder blocks that filter the skip features (idle outside
        ``adjust``'s re-attention calls); registered once, the handles returned."""
        if self._hooks:
            return list(self._hooks)
        for block in getattr(denoiser, "up_blocks", []):
            self._hooks.append(block.register_forward_pre_hook(self._up_block_inputs, with_kwargs=True))
        return list(self._hooks)

    def _up_block_inputs(self, block, args, kwargs):
        mode = self._lra_mode
        res = kwargs.get("res_hidden_states_tuple")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if mode is None or res is None or hidden is None:
            return None
        res = list(res)
        width = int(hidden.shape[1])
        for j in range(len(block.resnets)):  # resnet j pops res[-(j + 1)]; its backbone: the block's input, then resnet j-1's output
            if j > 0:
                width = int(block.resnets[j - 1].out_channels)
            s = self.scales.get(width)
            if s is None:
                continue
            skip = res[-(j + 1)]
            if mode == "pair":
                half = skip.shape[0] // 2
                res[-(j + 1)] = torch.cat([lowfreq_reattention(skip[:half], skip[half:], s), skip[half:]])
            else:
                res[-(j + 1)] = lowfreq_reattention(skip, skip, s)
        return args, {**kwargs, "res_hidden_states_tuple": tuple(res)}

    def remove(self) -> None:
        """Take the hooks out (the text encoder's and the denoiser's)."""
        self.recorder.remove()
        for hnd in self._hooks:
            hnd.remove()
        self._hooks = []


class _NegativePrompt(SafreeGuidance):
    """+ the keywords as the negative prompt (the unconditional branch's conditioning)."""

    def uncondition(self, cond, t, step: int | None):
        neg = _usable(self.neg).to(device=cond.device, dtype=cond.dtype)
        return neg.expand(cond.shape[0], *neg.shape[1:])


class _ReAttention(SafreeGuidance):
    """+ latent re-attention: the conditional prediction recomputed with filtered skip features."""

    def adjust(self, call, x, t, cond_u, cond_c, eu, ec, step):
        own = self._last[1] if self._last is not None and self._last[0] is cond_c else None
        h = x.shape[0]
        tt = t.reshape(-1)[:h] if torch.is_tensor(t) and t.numel() > 1 else t
        if own is None:  # no projection at this step: the conditional rows alone, filtered against themselves
            self._lra_mode = "self"
            try:
                return eu, call(x, tt, cond_c)
            finally:
                self._lra_mode = None
        from harness.families.base import cat_conditioning

        self._lra_mode = "pair"
        try:
            out = call(torch.cat([x, x]), torch.cat([tt, tt]) if torch.is_tensor(tt) and tt.dim() else tt, cat_conditioning([cond_c, own]))
        finally:
            self._lra_mode = None
        return eu, out[:h]


class _NegativePromptReAttention(_NegativePrompt, _ReAttention):
    """Both."""


def _usable(x):
    """A tensor made under inference mode, usable in an autograd graph (a clone outside it)."""
    if torch.is_tensor(x) and x.is_inference() and not torch.is_inference_mode_enabled():
        return x.clone()
    return x


def setup(pipe, family, concepts: list[str], keywords: list | None = None, alpha: float = 0.01, self_validation: bool = True,
          upper_t: int = 10, svf_shape: str = "auto", window_start: int = -1, window_end: int = 1001,
          negative_prompt: bool = True, re_attention: bool = True, s1: float = 0.9, s2: float = 0.2) -> SafreeGuidance:
    """SAFREE guarding ``concepts`` on a loaded SD-1.x pipeline (see the module docstring)."""
    for name, v in (("self_validation", self_validation), ("negative_prompt", negative_prompt), ("re_attention", re_attention)):
        if not isinstance(v, bool):
            raise HarnessError(f"method.params.{name}: {v!r} is not true or false")
    for name, x in (("s1", s1), ("s2", s2)):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not (0 <= x <= 10):
            raise HarnessError(f"method.params.{name}: {x!r} is not a scale between 0 and 10")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (-1 < alpha <= 100):
        raise HarnessError(f"method.params.alpha: {alpha!r} is not a number above -1")
    if isinstance(upper_t, bool) or not isinstance(upper_t, int) or upper_t < 0:
        raise HarnessError(f"method.params.upper_t: {upper_t!r} is not a whole number >= 0")
    # the seam asks for an unconditional prediction of a single one only where a guidance edits the
    # unconditional branch or the predictions: a class per choice keeps the others at one call
    lra = re_attention and any(float(s) != 1.0 for s in (s1, s2))
    cls = {(False, False): SafreeGuidance, (True, False): _NegativePrompt, (False, True): _ReAttention,
           (True, True): _NegativePromptReAttention}[(bool(negative_prompt), bool(lra))]
    return cls(pipe, family, concepts, keywords=keywords, alpha=alpha, self_validation=self_validation, upper_t=upper_t,
               svf_shape=svf_shape, window_start=window_start, window_end=window_end, negative_prompt=negative_prompt,
               re_attention=re_attention, s1=s1, s2=s2)
