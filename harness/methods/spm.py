"""SPM: concept Semi-Permeable Membrane (Lyu et al., CVPR 2024, "One-dimensional Adapter to Rule
Them All: Concepts, Diffusion Models and Erasing Applications", arXiv 2312.16145).

A one-dimensional (rank-1) adapter is attached to every linear and convolution layer inside the
denoiser's transformer blocks (``Transformer2DModel``: proj_in, the self- and cross-attention
projections, the feed-forward layers, proj_out); the base weights stay frozen:

    W x  ->  W x + (alpha / r) B (A x)          (A: r x in, Kaiming-uniform; B: out x r, zero; r = 1)

so the adapted model starts as the original. Only A and B are trained, with two terms:

    L = || eps_a(x_t, c) - [eps0(x_t, c0) - g (eps0(x_t, c) - eps0(x_t, c0))] ||^2          (erasure)
      + la_strength * mean_k || eps_a(x_t, e_k) - eps0(x_t, e_k) ||^2                      (latent anchoring)

(eps_a the adapted model, eps0 the frozen original, c the target prompt, c0 the empty prompt, g
the prompt's ``guidance_scale``; MSE means over every element). As in ESD, x_t comes from
sampling the adapted model with the target prompt from pure noise (DDIM, ``sample_steps`` steps,
guidance 3) and stopping after a random 1..sample_steps-1 of them; t is the 1000-step schedule's
timestep at the same fraction. The anchors e_k are random text embeddings drawn around the
target's: a Gaussian direction, accepted with probability 1 - cos(direction, target) (so
directions unlike the target are kept), rescaled to the target embedding's norm times U(0.8, 1.2).
The anchoring term keeps the adapted model's predictions for such "other concepts" equal to the
original's, which is what lets the membrane pass everything but the target.

Taken from Con6924/SPM at 3dd762e (``train_spm.py``, ``src/models/spm.py``: ``SPMLayer``,
``SPMNetwork``; ``src/engine/sampling.py``: ``sample``; ``src/engine/train_util.py``;
``src/configs/prompt.py``: ``PromptEmbedsPair._erase`` / ``_erase_with_la``; ``src/configs/config.py``;
``configs/snoopy/*.yaml``). Their anchor batch, as their code runs it: the K sampled embeddings are
interleaved with the empty prompt ([c0, e_1, c0, e_2, ...]) and fed through their classifier-free
``predict_noise`` at guidance 1, which keeps the second half of that 2K batch: for K = 4 the anchors
are c0, e_3, c0, e_4. This module does the same (``anchor_batch``).

The adapters are merged into the weights at the end (W + (alpha / r) B A, multiplier 1), so the
checkpoint is an ordinary UNet checkpoint of the changed tensors. The authors' "facilitated
transport" (``infer_spm.py``: each prompt scales the adapter by its similarity to the erased
prompt) is an inference-time mechanism of an unmerged adapter and is not part of a checkpoint;
merged, SPM behaves as their SD-WebUI route does (docs/fidelity.md).
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.families import family_of_pipeline
from harness.families.base import call_denoiser
from harness.methods import MethodInfo
from harness.methods.common import ConceptPrompts, check_bounds, denoiser
from harness.methods.finetune import fit, seeded

PRESETS: dict[str, dict] = {
    # configs/snoopy/config.yaml + prompt.yaml (Con6924/SPM at 3dd762e): rank 1, alpha 1, 3000
    # iterations, lr 1e-4 (AdamW8bit there: betas (0.9, 0.999), weight decay 0.01), cosine with
    # hard restarts (3 cycles) after 500 warm-up steps, no gradient clipping, DDIM 30 steps for x_t
    # at guidance 3, guidance_scale 1.0 of the erasure target, la_strength 1000, 4 sampled anchors,
    # batch 1, dynamic_resolution (each step's size drawn in the bucket below the native size).
    "paper": {"steps": 3000, "lr": 1e-4, "rank": 1, "alpha": 1.0, "guidance": 1.0, "la_strength": 1000.0, "anchors": 4,
              "sample_steps": 30, "sample_guidance": 3.0, "warmup": 500, "cycles": 3, "weight_decay": 0.01,
              "max_grad_norm": 0.0, "dynamic_resolution": True, "seed": 0},
    # The toy world (2 CPU cores, a few minutes): 200 steps at lr 1e-2 (lr 1e-3 for 200 steps leaves
    # the triangle drawn, UA 0.000: a rank-1 adapter moves slowly), warm-up scaled with the steps
    # (500 / 3000 -> 35 / 200), DDIM 20 steps for x_t, the native 32 px (the toy model draws nothing
    # else), la_strength 10 (docs/fidelity.md).
    "toy": {"steps": 200, "lr": 1e-2, "rank": 1, "alpha": 1.0, "guidance": 1.0, "la_strength": 10.0, "anchors": 4,
            "sample_steps": 20, "sample_guidance": 3.0, "warmup": 35, "cycles": 3, "weight_decay": 0.01,
            "max_grad_norm": 0.0, "dynamic_resolution": False, "seed": 0},
}

INFO = MethodInfo(
    name="spm",
    module=__name__,
    paper="https://arxiv.org/abs/2312.16145",
    code="https://github.com/Con6924/SPM",
    presets=PRESETS,
    committed_toy=True,  # the toy preset as it is
    fidelity_preset=True,
    needs=frozenset({"unet"}),
    families=frozenset({"sd1"}),
    families_why="ported for Stable Diffusion 1.x only: the authors' SDXL script (train_spm_xl.py: pooled-embedding anchors, "
                 "guidance-rescaled sampling) is not",
)

ADAPTED = ("Linear", "Conv2d")  # the layer types inside a transformer block that get an adapter (SPMNetwork)
BLOCK = "Transformer2DModel"


class Adapter(torch.nn.Module):
    """A rank-r adapter of one Linear / Conv2d: down (the layer's input width -> r; a Conv2d keeps
    the layer's kernel, stride and padding) and up (r -> the layer's output, 1x1), Kaiming-uniform
    (a = sqrt(5)) and zero initialised, scaled by alpha / r and by ``multiplier`` (0: off)."""

    down: Any
    up: Any

    def __init__(self, layer: Any, rank: int, alpha: float, g: torch.Generator):
        super().__init__()
        if isinstance(layer, torch.nn.Conv2d):
            geometry: dict[str, Any] = {"kernel_size": layer.kernel_size, "stride": layer.stride, "padding": layer.padding}
            self.down = torch.nn.Conv2d(layer.in_channels, rank, bias=False, **geometry)
            self.up = torch.nn.Conv2d(rank, layer.out_channels, 1, 1, bias=False)
        else:
            self.down = torch.nn.Linear(layer.in_features, rank, bias=False)
            self.up = torch.nn.Linear(rank, layer.out_features, bias=False)
        fan_in = self.down.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in)
        with torch.no_grad():
            self.down.weight.copy_(torch.rand(self.down.weight.shape, generator=g) * 2 * bound - bound)
            self.up.weight.zero_()
        self.scale = alpha / rank
        self.multiplier = 1.0
        self.shape_of_layer = tuple(layer.weight.shape)
        w = layer.weight
        self.to(device=w.device, dtype=w.dtype)

    def delta(self) -> torch.Tensor:
        """The merged update (alpha / r) B A in the layer's weight shape."""
        up = self.up.weight.reshape(self.up.weight.shape[0], -1)
        down = self.down.weight.reshape(self.down.weight.shape[0], -1)
        return (self.scale * up @ down).reshape(self.shape_of_layer)

    def hook(self, _module, args, out):
        if self.multiplier == 0:
            return out
        return out + self.up(self.down(args[0])) * (self.multiplier * self.scale)


def adapted_layers(unet) -> dict[str, torch.nn.Module]:
    """Every Linear / Conv2d inside the denoiser's transformer blocks, by state-dict name (without
    ``.weight``), as SPMNetwork.create_modules selects them."""
    out: dict[str, torch.nn.Module] = {}
    for name, module in unet.named_modules():
        if type(module).__name__ == BLOCK:
            for child, layer in module.named_modules():
                if type(layer).__name__ in ADAPTED:
                    out[f"{name}.{child}"] = layer
    return out


def install(unet, rank: int, alpha: float, g: torch.Generator):
    """One adapter per adapted layer, hooked into its forward; returns (adapters, hook handles)."""
    adapters, handles = {}, []
    for name, layer in adapted_layers(unet).items():
        a = Adapter(layer, rank, alpha, g)
        adapters[name] = a
        handles.append(layer.register_forward_hook(a.hook))
    return adapters, handles


class Membrane:
    """The adapters switched on (``with``: multiplier 1) or off (multiplier 0, the original model),
    as SPMNetwork's __enter__ / __exit__ do."""

    def __init__(self, adapters: dict[str, Adapter]):
        self.adapters = adapters

    def set(self, m: float) -> None:
        for a in self.adapters.values():
            a.multiplier = m

    def __enter__(self):
        self.set(1.0)

    def __exit__(self, *exc):
        self.set(0.0)


def sample_anchors(target: torch.Tensor, k: int, rng: random.Random, g: torch.Generator) -> list[torch.Tensor]:
    """``k`` random embeddings shaped as ``target`` (1, tokens, dim) (sampling.py ``sample``): a
    Gaussian direction of unit norm, accepted with probability 1 - cos(target, direction), scaled to
    U(0.8, 1.2) times the target's norm."""
    flat = target.reshape(-1)
    norm = flat.norm()
    out: list[torch.Tensor] = []
    while len(out) < k:
        while True:
            noise = torch.randn(target.shape, generator=g).to(target.device, target.dtype)
            noise = noise / noise.reshape(-1).norm()
            sim = float(F.cosine_similarity(flat, noise.reshape(-1), dim=0))
            if rng.random() < 1 - sim:
                break
        out.append((rng.random() * 0.4 + 0.8) * noise * norm)
    return out


def anchor_batch(uncond: torch.Tensor, samples: list[torch.Tensor]) -> torch.Tensor:
    """The anchors the authors' code conditions on: [c0, e_1, c0, e_2, ...] (2K) through
    ``predict_noise`` at guidance 1 keeps the conditional half, the last K of that list."""
    both = torch.cat([torch.cat([uncond, s]) for s in samples])
    return both[len(samples):]


def spm_loss(target_eps, positive_eps, neutral_eps, guidance: float, anchor_eps=None, anchor_eps0=None,
             la_strength: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, erasure, anchoring): ``PromptEmbedsPair._erase`` / ``_erase_with_la``."""
    erase = F.mse_loss(target_eps, neutral_eps - guidance * (positive_eps - neutral_eps))
    if anchor_eps is None:
        zero = torch.zeros((), device=erase.device)
        return erase, erase, zero
    anchor = F.mse_loss(anchor_eps, anchor_eps0)
    return erase + la_strength * anchor, erase, anchor


class History(list):
    """A loss history that also collects each step's (erasure, anchoring) terms in ``parts``."""

    def __init__(self):
        super().__init__()
        self.parts: list[tuple[float, float]] = []


def _hard_restarts(warmup: int, steps: int, cycles: int):
    """diffusers' cosine-with-hard-restarts schedule (the authors' ``cosine_with_restarts``) as a
    multiplier of the step index."""

    def f(i: int) -> float:
        if i < warmup:
            return i / max(1, warmup)
        progress = (i - warmup) / max(1, steps - warmup)
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))

    return f


def _check(steps, lr, rank, alpha, la_strength, anchors, sample_steps, warmup, cycles, weight_decay, max_grad_norm) -> None:
    check_bounds((("steps", steps, 0), ("rank", rank, 1), ("anchors", anchors, 1), ("sample_steps", sample_steps, 2),
                  ("warmup", warmup, 0), ("cycles", cycles, 1)),
                 (("lr", lr), ("la_strength", la_strength), ("weight_decay", weight_decay), ("max_grad_norm", max_grad_norm)))
    if not alpha > 0:
        raise HarnessError(f"--param alpha: must be > 0, not {alpha}")


def erase(
    pipe,
    concepts: list[ConceptPrompts],
    steps: int = 3000,
    lr: float = 1e-4,
    rank: int = 1,
    alpha: float = 1.0,
    guidance: float = 1.0,
    la_strength: float = 1000.0,
    anchors: int = 4,
    sample_steps: int = 30,
    sample_guidance: float = 3.0,
    warmup: int = 500,
    cycles: int = 3,
    weight_decay: float = 0.01,
    max_grad_norm: float = 0.0,
    dynamic_resolution: bool = True,
    seed: int = 0,
    progress: bool = True,
    history: list[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Train one rank-``rank`` membrane for all ``concepts`` (each of their prompts is a target,
    one drawn per step, as the authors' prompt list), merge it into the UNet in place and return
    the changed weights. ``history`` receives each step's total loss, and where it is a
    ``History`` its ``parts`` each step's (erasure, anchoring) terms."""
    _check(steps, lr, rank, alpha, la_strength, anchors, sample_steps, warmup, cycles, weight_decay, max_grad_norm)
    rng, g = seeded(seed)
    fam = family_of_pipeline(pipe)
    unet = denoiser(pipe)
    unet.requires_grad_(False)
    targets = [p for cp in concepts for p in cp.erased()]
    if not targets:
        raise HarnessError("spm: no prompts to erase")
    with torch.no_grad():
        emb_t = fam.encode_prompts(pipe, targets)
        uncond = fam.encode_prompts(pipe, [""])
    adapters, handles = install(unet, rank, alpha, g)
    membrane = Membrane(adapters)
    params = {f"{n}.{p}": w for n, a in adapters.items() for p, w in a.named_parameters()}
    for w in params.values():
        w.requires_grad_(True)
    opt = torch.optim.AdamW(params.values(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    sched_lr = torch.optim.lr_scheduler.LambdaLR(opt, _hard_restarts(warmup, steps, cycles))
    sampler = copy.deepcopy(pipe.scheduler)
    fine = copy.deepcopy(pipe.scheduler)
    fine.set_timesteps(1000)
    c = unet.config
    native = c.sample_size
    parts: list[tuple[float, float]] = []

    def step_loss(i: Any) -> torch.Tensor:
        if i > 0:
            sched_lr.step()  # after the previous step's optimizer step, as their loop does
        k = rng.randrange(len(targets))
        target = emb_t[k : k + 1]
        stop = rng.randint(1, sample_steps - 1)
        h = w = native
        if dynamic_resolution:  # get_random_resolution_in_bucket, in latent cells (64 px = 8 at SD's scale)
            lo, hi = max(1, (native // 2) // 8), max(1, native // 8)
            h = (lo if hi <= lo else int(torch.randint(lo, hi, (1,), generator=g))) * 8
            w = (lo if hi <= lo else int(torch.randint(lo, hi, (1,), generator=g))) * 8
        with torch.no_grad():
            sampler.set_timesteps(sample_steps)
            x = torch.randn((1, c.in_channels, h, w), generator=g).to(unet.device) * sampler.init_noise_sigma
            both = torch.cat([uncond, target])
            with membrane:
                for t in sampler.timesteps[:stop]:
                    inp = sampler.scale_model_input(torch.cat([x, x]), t)
                    e0, ec = call_denoiser(unet, inp, t, both).chunk(2)
                    x = sampler.step(e0 + sample_guidance * (ec - e0), t, x).prev_sample
            t = fine.timesteps[int(stop * 1000 / sample_steps)]
            positive = call_denoiser(unet, x, t, target)
            neutral = call_denoiser(unet, x, t, uncond)
        with membrane:
            target_eps = call_denoiser(unet, x, t, target)
        a_eps = a_eps0 = None
        if la_strength > 0:  # action erase_with_la (their "erase" action has no anchors)
            conds = anchor_batch(uncond, sample_anchors(target, anchors, rng, g))
            xs = x.repeat(len(conds), 1, 1, 1)
            with membrane:
                a_eps = call_denoiser(unet, xs, t, conds)
            with torch.no_grad():
                a_eps0 = call_denoiser(unet, xs, t, conds)
        loss, e, a = spm_loss(target_eps, positive, neutral, guidance, a_eps, a_eps0, la_strength)
        parts.append((float(e.detach()), float(a.detach())))
        return loss

    membrane.set(0.0)
    try:
        fit(unet, params, opt, step_loss, steps, desc="spm", progress=progress, history=history,
            max_grad_norm=max_grad_norm if max_grad_norm > 0 else None, postfix_every=10)
    finally:
        for hd in handles:
            hd.remove()
    if isinstance(history, History):
        history.parts.extend(parts)
    layers = adapted_layers(unet)
    changed = {}
    with torch.no_grad():
        for name, a in adapters.items():
            layer: Any = layers[name]
            layer.weight += a.delta().to(layer.weight.dtype)
            changed[f"{name}.weight"] = layer.weight.detach().cpu().clone()
    unet.requires_grad_(False)
    return changed

