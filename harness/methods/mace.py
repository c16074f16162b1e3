"""MACE: Mass Concept Erasure (Lu et al., CVPR 2024, arXiv 2403.06135), for one or many concepts.

Three stages edit the cross-attention key / value projections W (out x d) of the denoiser:

1. Closed-form refinement (CFR). For each concept i and each of its prompts, the prompt with the
   concept phrase (old) is paired with the same prompt with the mapping (anchor) phrase (new);
   the tokens the two share at the start and at the end, continued position by position over
   the padding, are the matched positions (the concept's own tokens are not among them). With
   c the old prompt's embedding at a matched position and a the new prompt's at its partner,

       W_cfr = argmin_W  lamb ||W - W0||^2 + sum_(c,a) ||W c - W0 a||^2 + k_t sum_p ||W p - W0 p||^2
             = (lamb W0 + sum W0 a c^T + k_t sum W0 p p^T) (lamb I + sum c c^T + k_t sum p p^T)^-1

   (p every position of every preserved prompt; k_t = train_preserve_scale^2 * preserve_weight:
   the authors' code multiplies the cached preservation sums by the scale twice in this stage).
   The words around the concept then carry no residue of it into the keys and values.

2. One LoRA per concept (rank r, on every cross-attention to_k and to_v: W_cfr + B A, B = 0 at the
   start), trained alone on images of the concept x0 with noise eps at timestep t
   (x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps) so that the concept tokens stop being attended
   inside the concept's segmentation mask M:

       L_i = sum_l || A_l(x_t, c)[:, M_l, P] ||_F          (A_l: softmax attention probabilities of
                                                             cross-attention layer l, heads x queries x
                                                             tokens; M_l the mask resized to layer l's
                                                             map by nearest neighbour; P the concept's
                                                             tokens and, with use_pooler, every
                                                             end-of-text position)

   t is drawn with the authors' "relation-focal importance sampling" density
   f(t) = sigmoid(0.05 (t - 200)) - sigmoid(0.05 (t - 400)) (``importance_sampling``), else uniformly.

3. Closed-form fusion of the LoRAs into one W, each concept's prompts (every token position e)
   keeping what its own LoRA-tuned projection W_i = W_cfr + B_i A_i gives them:

       W* = argmin_W  lamb ||W - W_cfr||^2 + sum_i sum_e ||W e - W_i e||^2 + k_f sum_p ||W p - W0 p||^2
          = (lamb W_cfr + sum_i sum W_i e e^T + k_f sum W0 p p^T) (lamb I + sum e e^T + k_f sum p p^T)^-1

   with k_f = fuse_preserve_scale * preserve_weight.

Taken from Shilin-LU/MACE at 057e7a6 (``src/cfr_utils.py``: ``find_matching_indices``,
``prepare_k_v``, ``closed_form_refinement``, ``AttnController``, ``importance_sampling_fn``;
``src/cfr_lora_training.py``; ``src/fuse_lora_close_form.py``; ``src/dataset.py``;
``src/mace_lora_atten_processor.py``; ``configs/object/erase_ship.yaml``, the README's example).
Masks: the authors segment 8 generated images of each concept with Grounded-SAM (objects; no mask
for styles, so the whole image). There is no segmenter here: ``mask="shape"`` trains on images of
the toy world's procedural renderer with the object's exact filled shape as the mask (a style: the
whole image, as the authors'), ``mask="image"`` on the base model's own generations of the concept
prompts with the whole image as the mask (what a real model gets here). Differences, all in
docs/fidelity.md: the prompts are the harness's templates (the authors' 30 caption templates per
concept are not copied), the preserved set is the harness's preserved prompts (the authors' cached
MS-COCO captions and domain lists are not available), the closed forms are solved in float64, and
a batch larger than 1 applies each sample's own mask and positions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.errors import HarnessError
from harness.families import family_of_pipeline
from harness.families.base import call_denoiser, cat_conditioning
from harness.methods import MethodInfo
from harness.methods.common import ConceptPrompts, check_bounds, denoiser
from harness.methods.finetune import base_latents, seeded
from harness.methods.fmn import concept_positions

MASKS = ("image", "shape")

PRESETS: dict[str, dict] = {
    # configs/object/erase_ship.yaml (the README's example; MACE at 057e7a6): lamb 1e3, no
    # preservation (train/fuse_preserve_scale 0, preserve_weight 0), LoRA rank 1 trained 50 steps at
    # lr 1e-5 with batch 1, AdamW (0.9, 0.999) weight decay 0.01 eps 1e-8, gradient clipping at 1,
    # use_pooler, importance sampling, seed 2024; 8 training images per concept, generated with 30
    # steps at guidance 7.5. No Grounded-SAM here: the whole image is the mask (their style path).
    "paper": {"lamb": 1e3, "train_preserve_scale": 0.0, "fuse_preserve_scale": 0.0, "preserve_weight": 0.0,
              "steps": 50, "lr": 1e-5, "rank": 1, "batch": 1, "use_pooler": True, "importance_sampling": True,
              "weight_decay": 0.01, "max_grad_norm": 1.0, "mask": "image", "n_images": 8, "sample_steps": 30,
              "sample_guidance": 7.5, "seed": 2024},
    # The toy world (docs/fidelity.md has the sweep): exact shape masks of rendered images; lamb 10
    # (the toy embeddings are 64 wide over 16 tokens, far smaller sums than SD's 768 x 77: at 1e3
    # the triangle is not erased, at 0.1 retention drops); the toy world's other concepts
    # preserved at scale 1; lr 1e-3 for 100 steps (lr 1e-5 for 50 steps barely moves the LoRAs).
    "toy": {"lamb": 10.0, "train_preserve_scale": 1.0, "fuse_preserve_scale": 1.0, "preserve_weight": 1.0,
            "steps": 100, "lr": 1e-3, "rank": 1, "batch": 1, "use_pooler": True, "importance_sampling": True,
            "weight_decay": 0.01, "max_grad_norm": 1.0, "mask": "shape", "n_images": 8, "sample_steps": 20,
            "sample_guidance": 5.0, "seed": 2024},
}

INFO = MethodInfo(
    name="mace",
    module=__name__,
    paper="https://arxiv.org/abs/2403.06135",
    code="https://github.com/Shilin-LU/MACE",
    presets=PRESETS,
    committed_toy=True,  # the toy preset as it is
    # edits to_k / to_v; trains LoRAs through the UNet's attention. The authors' code is SD-1.x only;
    # this one runs on every family through the family contract (the K / V modules, the encoded
    # prompts, the whole conditioning, the VAE), SDXL included (tests/test_method_mace.py)
    needs=frozenset({"cross_attention", "unet"}),
)


# -- stage 1: closed-form refinement ---------------------------------------------------------


def matching_positions(old: list[int], new: list[int], length: int) -> tuple[list[int], list[int]]:
    """The token positions an old prompt (token ids with start and end tokens, unpadded) and a new
    one share: the common start, the common end, then the padding up to ``length`` aligned from
    their ends (the longer prompt's padding is shorter), as the authors' ``find_matching_indices``
    and ``prepare_k_v`` pair them. Returns (old positions, new positions), of equal length."""
    start = 0
    for a, b in zip(old, new):
        if a != b:
            break
        start += 1
    eo, en = len(old) - 1, len(new) - 1
    while eo >= start and en >= start and old[eo] == new[en]:
        eo, en = eo - 1, en - 1
    po = list(range(start)) + list(range(eo + 1, len(old)))
    pn = list(range(start)) + list(range(en + 1, len(new)))
    lo, ln = po[-1], pn[-1]
    shift = abs(lo - ln)
    po += list(range(lo + 1, length - (shift if ln > lo else 0)))
    pn += list(range(ln + 1, length - (shift if lo > ln else 0)))
    return po, pn


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, truncation=True, max_length=tokenizer.model_max_length).input_ids


@torch.no_grad()
def cfr_rows(pipe, concepts: list[ConceptPrompts]) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, a): the old prompts' embeddings at the matched positions and the new (anchored)
    prompts' at their partners, one row each (float64), over every prompt of every concept."""
    fam = family_of_pipeline(pipe)
    tok = fam.text_encoders(pipe)[0][0]
    length = tok.model_max_length
    cs, as_ = [], []
    for cp in concepts:
        olds, news = cp.erased(), cp.anchored()
        emb_o, emb_n = fam.encode_prompts(pipe, olds), fam.encode_prompts(pipe, news)
        for k, (o, n) in enumerate(zip(olds, news)):
            po, pn = matching_positions(_ids(tok, o), _ids(tok, n), length)
            cs.append(emb_o[k, po])
            as_.append(emb_n[k, pn])
    return torch.cat(cs).double().cpu(), torch.cat(as_).double().cpu()


@torch.no_grad()
def all_rows(pipe, prompts: list[str]) -> torch.Tensor:
    """Every token position of every prompt (padded to the tokenizer's length), one row each."""
    if not prompts:
        return torch.zeros((0, 0), dtype=torch.float64)
    emb = family_of_pipeline(pipe).encode_prompts(pipe, prompts)
    return emb.reshape(-1, emb.shape[-1]).double().cpu()


def closed_form(w_ref: torch.Tensor, lamb: float, terms: list[tuple[float, torch.Tensor, torch.Tensor]], what: str) -> torch.Tensor:
    """argmin_W lamb ||W - w_ref||^2 + sum_k s_k ||W X_k^T - Y_k||^2 for terms (s_k, X_k rows (n x d),
    Y_k targets (out x n)): (lamb w_ref + sum s Y X)(lamb I + sum s X^T X)^-1, float64."""
    d = w_ref.shape[1]
    mat1 = lamb * w_ref.double()
    mat2 = lamb * torch.eye(d, dtype=torch.float64)
    for s, x, y in terms:
        if s and x.numel():
            mat1 = mat1 + s * (y @ x)
            mat2 = mat2 + s * (x.T @ x)
    try:
        return torch.linalg.solve(mat2, mat1.T).T  # mat2 is symmetric
    except torch.linalg.LinAlgError:
        raise HarnessError(f"mace: the {what} closed form is singular (lamb {lamb} and too few rows to determine W); "
                           "use --param lamb=... > 0") from None


# -- stage 2: one LoRA per concept, attention inside the mask suppressed -----------------------


class LoRA(torch.nn.Module):
    """x -> up(down(x)), rank r, no scaling: diffusers' LoRALinearLayer as the authors use it
    (down ~ N(0, (1/r)^2), up = 0, so an untrained LoRA changes nothing)."""

    def __init__(self, d_in: int, d_out: int, rank: int, g: torch.Generator):
        super().__init__()
        self.down = torch.nn.Linear(d_in, rank, bias=False)
        self.up = torch.nn.Linear(rank, d_out, bias=False)
        with torch.no_grad():
            self.down.weight.copy_(torch.randn(self.down.weight.shape, generator=g) / rank)
            self.up.weight.zero_()

    def forward(self, x):
        return self.up(self.down(x))

    def delta(self) -> torch.Tensor:
        return (self.up.weight @ self.down.weight).detach()


class AttentionProbe:
    """The state every cross-attention layer's processor shares during a training step: which
    token positions (batch x tokens, bool) and which image region (batch x H x W, bool; None:
    the whole image) are penalised, and each layer's norm of the penalised probabilities."""

    def __init__(self):
        self.positions: torch.Tensor | None = None
        self.masks: torch.Tensor | None = None
        self.norms: list[torch.Tensor] = []

    def record(self, probs: torch.Tensor, b: int) -> None:
        if self.positions is None:
            return
        heads, queries = probs.shape[0] // b, probs.shape[1]
        region = None if self.masks is None else _resize(self.masks, queries)
        kept = []
        for i in range(b):
            p = probs[i * heads : (i + 1) * heads]  # rows b * heads + h (head_to_batch_dim)
            if region is not None:
                p = p[:, region[i]]
            kept.append(p[:, :, self.positions[i]].reshape(-1))
        self.norms.append(torch.cat(kept).norm())

    def loss(self) -> torch.Tensor:
        return torch.stack(self.norms).sum()


def _resize(masks: torch.Tensor, queries: int) -> torch.Tensor:
    """Masks (b, H, W) resized by nearest neighbour to a layer's query grid (h * w = queries,
    h / w = H / W), flattened: (b, queries) bool (the authors' ``F.interpolate(mode='nearest') > 0.5``)."""
    hh, ww = masks.shape[1:]
    h = int(round(math.sqrt(queries * hh / ww)))
    w = queries // h
    if h * w != queries:
        raise HarnessError(f"mace: a cross-attention map of {queries} queries is not a {hh}:{ww} grid")
    return (F.interpolate(masks[:, None].float(), size=(h, w), mode="nearest") > 0.5).reshape(len(masks), -1)


class MaceAttention:
    """A cross-attention processor: diffusers' plain attention (softmax(QK^T)V), with a LoRA
    added to the key and value projections, handing its probabilities to the probe."""

    def __init__(self, probe: AttentionProbe, k_lora: LoRA, v_lora: LoRA):
        self.probe, self.k_lora, self.v_lora = probe, k_lora, v_lora

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, ch, hgt, wid = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, hgt * wid).transpose(1, 2)
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b, seq, _ = ctx.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, b)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            ctx = attn.norm_encoder_hidden_states(ctx)
        key = attn.to_k(ctx) + self.k_lora(ctx)
        value = attn.to_v(ctx) + self.v_lora(ctx)
        query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.probe.record(probs, hidden_states.shape[0])
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, ch, hgt, wid)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install(unet, kv: dict, rank: int, g: torch.Generator) -> tuple[AttentionProbe, dict[str, tuple[LoRA, LoRA]], dict]:
    """A fresh LoRA pair on every cross-attention layer (``kv``: the family's to_k / to_v modules
    by name), the probe they share, and the processors to restore afterwards."""
    original = dict(unet.attn_processors)
    probe = AttentionProbe()
    loras: dict[str, tuple[LoRA, LoRA]] = {}
    modules = dict(unet.named_modules())
    for name in sorted({n.rsplit(".", 1)[0] for n in kv}):
        k, v = kv[f"{name}.to_k"], kv[f"{name}.to_v"]
        pair = (LoRA(k.in_features, k.out_features, rank, g).to(k.weight.device),
                LoRA(v.in_features, v.out_features, rank, g).to(v.weight.device))
        loras[name] = pair
        modules[name].set_processor(MaceAttention(probe, *pair))
    return probe, loras, original


def importance_weights(n: int) -> torch.Tensor:
    """The authors' timestep density f(t) = sigmoid(0.05 (t - 200)) - sigmoid(0.05 (t - 400)), normalised over 0..n-1."""
    t = torch.arange(n, dtype=torch.float64)
    f = torch.sigmoid(0.05 * (t - 200)) - torch.sigmoid(0.05 * (t - 400))
    return f / f.sum()


def mace_loss(unet, probe: AttentionProbe, x_t, t, cond, positions, masks) -> torch.Tensor:
    """The attention loss of one batch: the sum over cross-attention layers of the Frobenius norm
    of the probabilities at the penalised positions inside each sample's mask."""
    probe.norms, probe.positions, probe.masks = [], positions, masks
    try:
        call_denoiser(unet, x_t, t, cond)
        return probe.loss()
    finally:
        probe.norms, probe.positions, probe.masks = [], None, None


@torch.no_grad()
def training_images(pipe, cp: ConceptPrompts, mask: str, n_images: int, sample_steps: int, sample_guidance: float,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(latent means, latent stds, masks or None) of a concept's training images. ``shape``: the
    toy world's renderer draws the concept (the other factor uniform) and gives the object's
    exact shape (a style: the whole image); the images are encoded by the pipeline's VAE, a
    latent drawn from its distribution at every step, as the authors' loader does. ``image``:
    the base model's own generations of the concept prompts (latents, std 0), the whole image."""
    fam = family_of_pipeline(pipe)
    if mask == "image":
        x0, _ = base_latents(pipe, cp.erased(), n_images, sample_steps, sample_guidance, seed)
        return x0, torch.zeros_like(x0), None
    from harness.toy import world

    if cp.concept not in world.OBJECTS + world.STYLES:
        raise HarnessError(f"--param mask=shape: the toy world's renderer knows no concept {cp.concept!r} (objects: "
                           f"{', '.join(world.OBJECTS)}; styles: {', '.join(world.STYLES)}); use mask=image")
    rng = np.random.default_rng([seed, world.OBJECTS.index(cp.concept) if cp.concept in world.OBJECTS else 10 + world.STYLES.index(cp.concept)])
    imgs, shapes = [], []
    for _ in range(n_images):
        if cp.concept in world.OBJECTS:
            img, shape = world.render_with_mask(cp.concept, world.STYLES[rng.integers(len(world.STYLES))], rng)
        else:
            img, shape = world.render_with_mask(world.OBJECTS[rng.integers(len(world.OBJECTS))], cp.concept, rng)
            shape = np.ones_like(shape)
        imgs.append(img)
        shapes.append(shape)
    net = denoiser(pipe)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).to(net.device, net.dtype) * 2 - 1
    dist = fam.encode_images(pipe, x)
    scale = fam.latent_scale(pipe)
    masks = torch.from_numpy(np.stack(shapes)).to(net.device)
    return dist.mean * scale, dist.std * scale, None if all(m.all() for m in shapes) else masks


def train_lora(pipe, cp: ConceptPrompts, kv: dict, *, steps: int, lr: float, rank: int, batch: int, use_pooler: bool,
               importance_sampling: bool, weight_decay: float, max_grad_norm: float, mask: str, n_images: int,
               sample_steps: int, sample_guidance: float, seed: int, index: int, progress: bool,
               history: list[float] | None) -> dict[str, torch.Tensor]:
    """Stage 2 for one concept: its LoRA trained on the current (refined) weights; returns each
    K/V projection's update B A by module name (float64, CPU). The UNet is unchanged after it."""
    fam = family_of_pipeline(pipe)
    unet = denoiser(pipe)
    rng, g = seeded(seed + index)
    mean, std, masks = training_images(pipe, cp, mask, n_images, sample_steps, sample_guidance, seed + index)
    prompts = cp.erased()
    tok = fam.text_encoders(pipe)[0][0]
    positions = concept_positions(tok, prompts, cp.concept, use_pooler).to(mean.device)
    with torch.no_grad():
        conds = [fam.encode_conditioning(pipe, [p]) for p in prompts]
    sched = pipe.scheduler
    n_t = sched.config.num_train_timesteps
    weights = importance_weights(n_t) if importance_sampling else torch.ones(n_t, dtype=torch.float64) / n_t
    unet.requires_grad_(False)
    probe, loras, original = install(unet, kv, rank, g)
    params = [p for pair in loras.values() for m in pair for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-8)
    order: list[int] = []
    history = history if history is not None else []
    bar = tqdm(total=steps, desc=f"mace lora {cp.concept}", unit="step", disable=not progress)
    try:
        for _ in range(steps):
            pick = []
            for _ in range(batch):  # images in a fresh shuffled order each epoch, as the authors' loader
                if not order:
                    order = list(range(len(mean)))
                    rng.shuffle(order)
                pick.append(order.pop())
            rows = [rng.randrange(len(prompts)) for _ in pick]
            x0 = mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=g).to(mean.device)
            noise = torch.randn(x0.shape, generator=g).to(x0.device)
            t = torch.multinomial(weights, len(pick), replacement=True, generator=g).to(x0.device)
            x_t = sched.add_noise(x0, noise, t)
            cond = cat_conditioning([conds[r] for r in rows])
            loss = mace_loss(unet, probe, x_t, t, cond, positions[rows], None if masks is None else masks[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            history.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    finally:
        bar.close()
        unet.set_attn_processor(original)
    out = {}
    for name, (k, v) in loras.items():
        out[f"{name}.to_k"], out[f"{name}.to_v"] = k.delta().double().cpu(), v.delta().double().cpu()
    return out


# -- the whole method --------------------------------------------------------------------------


def _check(mask: str, steps: int, rank: int, batch: int, n_images: int, lamb: float, scales: dict[str, float]) -> None:
    if mask not in MASKS:
        raise HarnessError(f"--param mask: must be one of {', '.join(MASKS)}, not {mask!r}")
    check_bounds((("steps", steps, 0), ("rank", rank, 1), ("batch", batch, 1), ("n_images", n_images, 1)), {"lamb": lamb, **scales}.items())


def erase(
    pipe,
    concepts: list[ConceptPrompts],
    lamb: float = 1e3,
    train_preserve_scale: float = 0.0,
    fuse_preserve_scale: float = 0.0,
    preserve_weight: float = 0.0,
    steps: int = 50,
    lr: float = 1e-5,
    rank: int = 1,
    batch: int = 1,
    use_pooler: bool = True,
    importance_sampling: bool = True,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    mask: str = "image",
    n_images: int = 8,
    sample_steps: int = 30,
    sample_guidance: float = 7.5,
    seed: int = 2024,
    progress: bool = True,
    history: list[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Erase every concept of ``concepts`` together (CFR over all, one LoRA each, one fusion);
    edit the denoiser's cross-attention K / V in place and return them (state-dict names). The
    losses of every LoRA step, concept after concept, are appended to ``history`` when given."""
    _check(mask, steps, rank, batch, n_images, lamb, {"train_preserve_scale": train_preserve_scale,
                                                        "fuse_preserve_scale": fuse_preserve_scale, "preserve_weight": preserve_weight})
    if not concepts:
        raise HarnessError("mace: no concepts to erase")
    fam = family_of_pipeline(pipe)
    unet = denoiser(pipe)
    kv = fam.cross_attention(unet)
    w0 = {n: m.weight.detach().double().cpu().clone() for n, m in kv.items()}
    preserved = [p for cp in concepts for p in cp.preserved()]
    p = all_rows(pipe, preserved)
    # stage 1: closed-form refinement over every concept at once
    c, a = cfr_rows(pipe, concepts)
    k_t = train_preserve_scale ** 2 * preserve_weight
    w_cfr = {}
    for n, w in w0.items():
        terms = [(1.0, c, w @ a.T)] + ([(k_t, p, w @ p.T)] if preserved else [])
        w_cfr[n] = closed_form(w, lamb, terms, "refinement")
    _write(kv, w_cfr)
    # stage 2: one LoRA per concept, each from the refined weights
    deltas = [train_lora(pipe, cp, kv, steps=steps, lr=lr, rank=rank, batch=batch, use_pooler=use_pooler,
                         importance_sampling=importance_sampling, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                         mask=mask, n_images=n_images, sample_steps=sample_steps, sample_guidance=sample_guidance, seed=seed,
                         index=i, progress=progress, history=history) for i, cp in enumerate(concepts)]
    # stage 3: the LoRAs fused in closed form
    rows = [all_rows(pipe, cp.erased()) for cp in concepts]
    k_f = fuse_preserve_scale * preserve_weight
    final = {}
    for n in kv:
        terms = [(1.0, e, (w_cfr[n] + d[n]) @ e.T) for e, d in zip(rows, deltas)]
        if preserved:
            terms.append((k_f, p, w0[n] @ p.T))
        final[n] = closed_form(w_cfr[n], lamb, terms, "fusion")
    _write(kv, final)
    return {f"{n}.weight": m.weight.detach().cpu().clone() for n, m in kv.items()}


@torch.no_grad()
def _write(kv: dict, weights: dict[str, torch.Tensor]) -> None:
    for n, m in kv.items():
        m.weight.copy_(weights[n].to(device=m.weight.device, dtype=m.weight.dtype))
