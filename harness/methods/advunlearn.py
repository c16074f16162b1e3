"""AdvUnlearn: defensive unlearning with adversarial training (Zhang et al., NeurIPS 2024, arXiv 2405.15234).

The text encoder E_theta is fine-tuned (the UNet, VAE and token embeddings never change) by a
min-max problem: an attacker looks for a prompt perturbation that brings the concept back, the
defender erases the concept from what E_theta makes of the attacked prompt, while a retain set
keeps E_theta's other prompts as they were:

    min_theta  l_u(theta, c + delta*(theta))  +  gamma * l_r(theta)

    l_u(theta, c') = || eps(x_t, E_theta(c'), t) - [ eps*(x_t, c0, t) - eta (eps*(x_t, c, t) - eps*(x_t, c0, t)) ] ||^2
                     (ESD's negatively guided target: eps* the frozen model with the original
                      encoder E_0, c0 the empty prompt, x_t a partial DDIM sample of c)
    l_r(theta)     = || eps(x_t', E_theta(r), t) - eps*(x_t', r, t) ||^2      (r a batch of retain prompts,
                                                                              x_t' a partial sample of r)
    delta*(theta)  = argmin_delta || eps(x_t, E_theta(c + delta), t) - eps*(x_t, c, t) ||^2

The attack is the authors' soft prompt attack: ``attack_tokens`` free vectors in the token
embedding space, inserted right after the start token (``prefix_k``), optimised for
``attack_steps`` steps by Adam at ``attack_lr`` on the gradient (``pgd``) or on its sign
(``fast_at``, the fast-AT variant), from the embeddings of random vocabulary tokens
(``attack_init=random``) or from the previous round's vectors (``latest``). As their code runs,
the attack's gradient is not zeroed between its steps (each step sees the sum of the gradients so
far; with ``fast_at`` the running sum is signed in place before the step). Each step draws its own
x_t. The first ``warmup`` iterations train on the clean prompt (no attack); after them a new
attack runs every ``attack_every`` iterations and the defender trains on the attacked prompt.

Taken from OPTML-Group/AdvUnlearn at 9d23124 (``train-scripts/AdvUnlearn.py``;
``train-scripts/utils/attack_util.py``: ``soft_prompt_attack``, ``init_adv``, ``split_embd``,
``construct_embd``; ``train-scripts/utils/get_loss.py``: ``get_train_loss_retain``;
``train-scripts/utils/util.py``: ``param_choices``, ``retain_prompt``; the README's commands).
``train=text_encoder_full`` with ``component=all`` trains every encoder layer and the final layer
norm (``component=attn`` / ``ffn``: the self-attention / MLP weights only); the token and position
embeddings stay. Differences, all in docs/fidelity.md: the retain set is the run's preserved
prompts (the toy world's other concepts) or ``retain_prompts`` (their 243 COCO-object prompts
are not copied); the prompts are the harness's templates; the attack's prefix is placed by the
prompt's token count (theirs: its word count); x_t comes from the harness's ESD sampler (the
DDIM timestep itself, not a DDPM timestep drawn inside its interval); seeded. SD-1.x only, as
theirs (one CLIP text encoder; SDXL's second encoder and pooled embedding are not in their code).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.families import family_of_pipeline
from harness.families.base import call_denoiser
from harness.methods import MethodInfo
from harness.methods.common import ConceptPrompts, check_bounds, denoiser
from harness.methods.esd import _sample_until
from harness.methods.finetune import fit, seeded

ATTACKS = ("pgd", "fast_at")
INITS = ("random", "latest")
COMPONENTS = ("all", "attn", "ffn")

PRESETS: dict[str, dict] = {
    # The README's multi-step command (OPTML-Group/AdvUnlearn at 9d23124): --attack_init random
    # --attack_step 30 --retain_train reg --train_method text_encoder_full --retain_loss_w 0.3, the
    # rest the script's defaults: 1000 iterations, Adam lr 1e-5, start guidance 3, negative
    # guidance 1, 50 DDIM steps, warm-up 200, pgd with attack lr 1e-3 and one prefix token, a new
    # attack every iteration, retain batch 5, component all. Their fast-AT command differs in
    # attack=fast_at only. Their retain set (coco_object: 243 "a photo of <object>" prompts) is
    # not copied: the run's preserved prompts, or pass retain_prompts.
    "paper": {"steps": 1000, "lr": 1e-5, "eta": 1.0, "sample_steps": 50, "sample_guidance": 3.0, "warmup": 200,
              "attack": "pgd", "attack_steps": 30, "attack_lr": 1e-3, "attack_tokens": 1, "attack_init": "random",
              "attack_every": 1, "retain_weight": 0.3, "retain_batch": 5, "retain_prompts": None, "component": "all",
              "seed": 0},
    # The toy world on 2 CPU cores in minutes (docs/fidelity-methods.md has the sweep): 150
    # iterations (not 1000) at lr 1e-3 (the toy encoder is 2 layers of width 64; at 1e-4 neither
    # target is erased, UA 0), warm-up 50; the fast-AT attack with 3 steps at attack lr 1e-2 (not 30
    # at 1e-3: each attack step samples an x_t, most of the cost), a new attack every 2 iterations;
    # x_t from 10 DDIM steps at guidance 5 (the toy world's guidance; 10 not 50 steps for time);
    # retain batch 2 (not 5) at weight 1.0 (not 0.3) over the toy world's other concepts.
    "toy": {"steps": 150, "lr": 1e-3, "eta": 1.0, "sample_steps": 10, "sample_guidance": 5.0, "warmup": 50,
            "attack": "fast_at", "attack_steps": 3, "attack_lr": 1e-2, "attack_tokens": 1, "attack_init": "random",
            "attack_every": 2, "retain_weight": 1.0, "retain_batch": 2, "retain_prompts": None, "component": "all",
            "seed": 0},
}

INFO = MethodInfo(
    name="advunlearn",
    module=__name__,
    paper="https://arxiv.org/abs/2405.15234",
    code="https://github.com/OPTML-Group/AdvUnlearn",
    presets=PRESETS,
    committed_toy=True,  # the toy preset as it is
    # trains the text encoder (attacked through its token embeddings); the UNet only predicts noise
    needs=frozenset({"unet", "text_encoder", "token_embeddings"}),
    families=frozenset({"sd1"}),
    families_why="its authors' code runs Stable Diffusion 1.x only (one CLIP text encoder; SDXL's second encoder is not in it)",
    checkpoint_kind="text_encoder",  # the changed text-encoder tensors: text_encoder.safetensors
)


def trainable_encoder(text_encoder, component: str = "all") -> dict[str, torch.nn.Parameter]:
    """Freeze the text encoder, then switch on gradients for what their ``param_choices`` picks
    for ``text_encoder_full``: every parameter of the transformer layers (``component=all``; the
    self-attention ones for ``attn``, the MLP ones for ``ffn``) and, for ``all``, the final layer
    norm. The embeddings (token, position) are never trained."""
    if component not in COMPONENTS:
        raise HarnessError(f"--param component: must be one of {', '.join(COMPONENTS)}, not {component!r}")
    text_encoder.requires_grad_(False)
    chosen = {}
    for n, p in text_encoder.named_parameters():
        inner = n.removeprefix("text_model.")
        if inner.startswith("final_layer_norm."):
            keep = component == "all"
        elif inner.startswith("encoder."):
            keep = component == "all" or (component == "attn" and ".self_attn." in inner) or (component == "ffn" and ".mlp." in inner)
        else:
            keep = False
        if keep:
            chosen[n] = p
    for p in chosen.values():
        p.requires_grad_(True)
    return chosen


def prefixed(word_embeds: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """A prompt's token embeddings (1, L, d) with the ``k`` adversarial vectors ``adv`` (1, k, d)
    inserted after the start token; the last ``k`` positions (padding) drop, so the length stays
    L (their ``construct_embd`` with ``prefix_k``)."""
    k = adv.shape[1]
    return torch.cat([word_embeds[:, :1], adv, word_embeds[:, 1 : word_embeds.shape[1] - k]], dim=1)


def _token_count(tokenizer, prompt: str) -> int:
    return len(tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids)


class Setting:
    """What an attack and a training step share: the pipeline's parts, the frozen original
    encodings (E_0) of the prompts, the sampling settings and the random sources."""

    def __init__(self, pipe, eta: float, sample_steps: int, sample_guidance: float, seed: int):
        self.fam = family_of_pipeline(pipe)
        self.pipe, self.unet = pipe, denoiser(pipe)
        (self.tok, self.enc), = self.fam.text_encoders(pipe)  # one text encoder: the family (sd1) says which
        self.eta, self.sample_steps, self.sample_guidance = eta, sample_steps, sample_guidance
        self.rng, self.g = seeded(seed)
        self.frozen_enc = copy.deepcopy(self.enc).eval().requires_grad_(False)  # E_0: the encoder before training
        self._orig: dict[str, torch.Tensor] = {}
        self.emb_0 = self.original([""])  # c0 under E_0

    @torch.no_grad()
    def original(self, prompts: list[str]) -> torch.Tensor:
        """E_0(prompts): the frozen original encoder's hidden states (cached per prompt)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._orig]
        if new:
            tok = self.tok(new, padding="max_length", max_length=self.tok.model_max_length, truncation=True, return_tensors="pt")
            for p, e in zip(new, self.frozen_enc(tok.input_ids.to(self.enc.device))[0]):
                self._orig[p] = e
        return torch.stack([self._orig[p] for p in prompts])

    def ids(self, prompts: list[str]) -> torch.Tensor:
        return self.tok(prompts, padding="max_length", max_length=self.tok.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(self.enc.device)

    def word_embeds(self, prompt: str) -> torch.Tensor:
        """The prompt's token embeddings (1, L, d) (the embeddings are never trained)."""
        with torch.no_grad():
            return self.fam.token_embeddings(self.enc)[self.ids([prompt])].detach()

    def encode_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """E_theta from token embeddings (the current encoder, gradients as its parameters say)."""
        return self.fam.encode_embeds(self.enc, embeds)

    def sample(self, emb: torch.Tensor, stop: int):
        """x_t of the frozen model (the UNet never changes) for E_0-encoded prompts after ``stop``
        of ``sample_steps`` DDIM steps at ``sample_guidance``, and t."""
        return _sample_until(self.pipe, emb, self.emb_0.expand(len(emb), -1, -1), self.sample_steps, stop, self.sample_guidance, self.g)

    def draw(self, emb: torch.Tensor):
        """A random stop and the x_t, t it gives."""
        stop = self.rng.randrange(self.sample_steps)
        x_t, t = self.sample(emb, stop)
        return stop, x_t, t

    def predict(self, x_t, t, emb):
        return call_denoiser(self.unet, x_t, t, emb)


def adversarial_prompt(s: Setting, prompt: str, steps: int, lr: float, tokens: int, method: str = "pgd",
                       init: torch.Tensor | None = None, losses: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft prompt attack on the current encoder: ``tokens`` vectors prefixed to ``prompt``'s
    token embeddings, moved by Adam (``lr``) for ``steps`` steps to minimise
    ||eps(x_t, E_theta(prompt + delta), t) - eps*(x_t, E_0(prompt), t)||^2 (a fresh x_t each step).
    ``init``: the starting vectors (1, tokens, d); None: embeddings of random vocabulary tokens.
    Each step's loss is appended to ``losses``. Returns (the attacked prompt's token embeddings
    (1, L, d), the vectors (1, tokens, d))."""
    base = s.word_embeds(prompt)
    table = s.fam.token_embeddings(s.enc)
    if init is None:
        ids = torch.randint(0, table.shape[0], (1, tokens), generator=s.g).to(table.device)
        init = table[ids]
    adv = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([adv], lr=lr)
    emb_p = s.original([prompt])
    for _ in range(steps):
        _, x_t, t = s.draw(emb_p)
        with torch.no_grad():
            e_p = s.predict(x_t, t, emb_p)
        e_n = s.predict(x_t, t, s.encode_embeds(prefixed(base, adv)))
        loss = F.mse_loss(e_n, e_p)
        loss.backward()  # their attack never zeroes this gradient: it accumulates over the steps
        if method == "fast_at":
            assert adv.grad is not None
            adv.grad.sign_()
        opt.step()
        if losses is not None:
            losses.append(loss.item())
    adv = adv.detach()
    return prefixed(base, adv), adv


def _retain_set(concepts: list[ConceptPrompts], retain_prompts) -> list[str]:
    if retain_prompts is None:
        out = [p for cp in concepts for p in (cp.preserved() + (cp.anchored() if cp.anchor else []))]
        return list(dict.fromkeys(out))
    if (not isinstance(retain_prompts, (list, tuple)) or not retain_prompts
            or not all(isinstance(p, str) and p.strip() for p in retain_prompts)):
        raise HarnessError("--param retain_prompts: must be a non-empty JSON list of prompts, e.g. '[\"a photo of chair\", \"a photo of dog\"]'")
    return list(dict.fromkeys(retain_prompts))


def _check(method: str, init: str, ints: dict[str, int], floats: dict[str, float]) -> None:
    if method not in ATTACKS:
        raise HarnessError(f"--param attack: must be one of {', '.join(ATTACKS)}, not {method!r}")
    if init not in INITS:
        raise HarnessError(f"--param attack_init: must be one of {', '.join(INITS)}, not {init!r}")
    lows = {"steps": 0, "warmup": 0, "attack_steps": 0, "sample_steps": 1, "attack_tokens": 1, "attack_every": 1, "retain_batch": 1}
    check_bounds(((k, v, lows[k]) for k, v in ints.items()), floats.items())


def erase(
    pipe,
    concepts: list[ConceptPrompts],
    steps: int = 1000,
    lr: float = 1e-5,
    eta: float = 1.0,
    sample_steps: int = 50,
    sample_guidance: float = 3.0,
    warmup: int = 200,
    attack: str = "pgd",
    attack_steps: int = 30,
    attack_lr: float = 1e-3,
    attack_tokens: int = 1,
    attack_init: str = "random",
    attack_every: int = 1,
    retain_weight: float = 0.3,
    retain_batch: int = 5,
    retain_prompts: list[str] | None = None,
    component: str = "all",
    seed: int = 0,
    progress: bool = True,
    history: list[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Adversarially fine-tune the text encoder in place; return its trained tensors (the text
    encoder's state-dict names). Every iteration's loss (l_u + gamma l_r) is appended to
    ``history`` when given."""
    _check(attack, attack_init, {"steps": steps, "warmup": warmup, "attack_steps": attack_steps, "sample_steps": sample_steps,
                                 "attack_tokens": attack_tokens, "attack_every": attack_every, "retain_batch": retain_batch},
           {"lr": lr, "eta": eta, "sample_guidance": sample_guidance, "attack_lr": attack_lr, "retain_weight": retain_weight})
    if not concepts:
        raise HarnessError("advunlearn: no concepts to erase")
    words = [p for cp in concepts for p in cp.erased()]
    retain = _retain_set(concepts, retain_prompts) if retain_weight > 0 else []
    if retain_weight > 0 and not retain:
        raise HarnessError("advunlearn: no retain prompts (the run preserves no other concept); pass --param "
                           "'retain_prompts=[\"a photo of chair\", ...]' (the authors use 243 COCO-object prompts) or retain_weight=0")
    s = Setting(pipe, eta, sample_steps, sample_guidance, seed)
    for w in words:
        if _token_count(s.tok, w) + attack_tokens > s.tok.model_max_length:
            raise HarnessError(f"advunlearn: prompt {w!r} leaves no room for {attack_tokens} attack token(s) in "
                               f"{s.tok.model_max_length} positions")
    s.unet.requires_grad_(False)
    params = trainable_encoder(s.enc, component)
    opt = torch.optim.Adam(params.values(), lr=lr)
    pool: list[str] = []
    state: dict = {"word": words[0], "adv_embeds": None, "adv": None}

    def step_loss(i) -> torch.Tensor:  # i: the iteration (fit passes the step index)
        if i % attack_every == 0:
            state["word"] = s.rng.choice(words)
            if i >= warmup:
                for p in params.values():
                    p.requires_grad_(False)
                init = state["adv"] if attack_init == "latest" else None
                state["adv_embeds"], state["adv"] = adversarial_prompt(s, state["word"], attack_steps, attack_lr, attack_tokens,
                                                                       attack, init)
                for p in params.values():
                    p.requires_grad_(True)
        word = state["word"]
        emb_p = s.original([word])
        stop, x_t, t = s.draw(emb_p)
        with torch.no_grad():
            e_0, e_p = s.predict(x_t, t, s.emb_0), s.predict(x_t, t, emb_p)
        if i >= warmup and state["adv_embeds"] is not None:
            emb_n = s.encode_embeds(state["adv_embeds"])
        else:
            emb_n = s.enc(s.ids([word]))[0]
        loss = F.mse_loss(s.predict(x_t, t, emb_n), e_0 - eta * (e_p - e_0))
        if retain:
            if len(pool) < retain_batch:  # each retain prompt once before any repeats (their PromptDataset)
                pool[:] = list(retain)
            chosen = [pool.pop(s.rng.randrange(len(pool))) for _ in range(min(retain_batch, len(pool)))]
            r_orig = s.original(chosen)
            r_x, r_t = s.sample(r_orig, stop)
            with torch.no_grad():
                r_p = s.predict(r_x, r_t, r_orig)
            r_n = s.predict(r_x, r_t, s.enc(s.ids(chosen))[0])
            loss = loss + retain_weight * F.mse_loss(r_n, r_p)
        return loss

    fit(s.enc, params, opt, step_loss, steps, desc="advunlearn", progress=progress, history=history, postfix_every=10)
    return {n: p.detach().cpu().clone() for n, p in params.items()}
