"""FMN: Forget-Me-Not, attention re-steering (Zhang et al., CVPR-W 2024, arXiv 2303.17591).

The UNet is fine-tuned so that the cross-attention maps of the concept's tokens vanish. For a
noised image x_t of the concept (prompt c, concept token positions P), with A_l(x_t, c) the
softmax attention probabilities of cross-attention layer l (heads x queries x tokens):

    L = || concat_l  A_l(x_t, c)[:, :, P] ||_2          (Frobenius norm, not squared, not averaged)

P holds the concept's tokens and, with ``use_pooler``, every position whose token is the
end-of-text token (which on SD-1.x tokenizers is also the padding token: the authors' code marks
them all). The noise prediction itself is not in the loss.

Taken from SHI-Labs/Forget-Me-Not, ``src/train_attn.py`` (AttnController.loss: ``torch.cat(
attn_probs).norm()``; the processor that records ``get_attention_scores``; concept positions
incl. the pooler token; random DDPM timestep in [0, 1000); AdamW betas (0.9, 0.999), weight decay
0.01, eps 1e-8, gradient clipping at norm 1, constant lr) and ``configs/attn.yaml`` (lr 2e-6,
35 steps, batch 1, ``only_optimize_ca: false`` = the whole UNet is trained, ``use_pooler: true``).
Deliberate differences (docs/fidelity-methods.md): the concept word itself is used instead of the
textual-inversion tokens of the authors' first stage (``use_ti``; their code supports this
path), and the images are the base model's own generations of the concept prompts (the authors
ship 10 real photos per concept); with batch > 1 each sample's positions are applied to its own
heads (the authors' mask layout is only right for their batch of 1).
"""

from __future__ import annotations

import torch

from harness.methods import AuthorsInputs, MethodInfo
from harness.methods.common import ConceptPrompts, denoiser, text_embeddings
from harness.methods.finetune import adamw, base_latents, changed_tensors, fit, noisy, seeded, snapshot, trainable

# Authors' settings (configs/attn.yaml) and the toy world's (README sweep; 16-token prompts,
# 1.7M-parameter UNet: lr 2e-6 for 35 steps moves nothing there).
PRESETS: dict[str, dict] = {
    "paper": {"steps": 35, "lr": 2e-6, "batch": 1, "train": "full", "use_pooler": True, "weight_decay": 0.01,
              "max_grad_norm": 1.0, "n_images": 10, "sample_steps": 50, "sample_guidance": 7.5, "seed": 0},
    "toy": {"steps": 100, "lr": 2e-4, "batch": 4, "train": "xattn", "use_pooler": True, "weight_decay": 0.01,
            "max_grad_norm": 1.0, "n_images": 40, "sample_steps": 20, "sample_guidance": 5.0, "seed": 0},
}

INFO = MethodInfo(
    name="fmn",
    module=__name__,
    paper="https://arxiv.org/abs/2303.17591",
    code="https://github.com/SHI-Labs/Forget-Me-Not",
    presets=PRESETS,
    committed_toy=True,  # the toy preset as it is
    needs=frozenset({"cross_attention", "unet"}),  # attention maps of the concept's tokens; trains the UNet (train=)
    families=frozenset({"sd1"}),
    families_why="its authors' code runs Stable Diffusion 1.x only",
    # SHI-Labs/Forget-Me-Not at a4a81e8 src/train_attn.py:90-96: one template per type; no anchor,
    # no preserve set. Their {x} is the textual-inversion tokens (use_ti: true), not reproduced:
    # the concept word itself stands there (their use_ti: false)
    authors_inputs=AuthorsInputs(templates={"style": ("a photo in the style of {}",), "object": ("a photo of {}",)},
                                 anchor={"style": "", "object": ""}, preserve={"style": "none", "object": "none"},
                                 source="SHI-Labs/Forget-Me-Not@a4a81e8 src/train_attn.py:90-96, configs/attn.yaml:3-22"),
)


class AttentionProbe:
    """A cross-attention processor that computes attention the plain way (softmax(QK^T)V,
    as the authors' does) and keeps the probabilities on the marked token positions."""

    def __init__(self):
        self.positions: torch.Tensor | None = None  # (batch, tokens) bool
        self.kept: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        b, seq, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, b)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key = attn.head_to_batch_dim(attn.to_k(ctx))
        value = attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (b * heads, queries, tokens), row = b * heads + h
        if self.positions is not None:
            heads = probs.shape[0] // b
            for i in range(b):
                self.kept.append(probs[i * heads : (i + 1) * heads][:, :, self.positions[i]].reshape(-1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    def loss(self) -> torch.Tensor:
        return torch.cat(self.kept).norm()


def concept_positions(tokenizer, prompts: list[str], concept: str, use_pooler: bool) -> torch.Tensor:
    """(len(prompts), max_length) bool: the concept's token span(s) and, with ``use_pooler``,
    every end-of-text position."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    cid = tokenizer(concept, add_special_tokens=False).input_ids
    eot = tokenizer("<|endoftext|>", add_special_tokens=False).input_ids[0] if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token_id
    out = torch.zeros((len(prompts), tokenizer.model_max_length), dtype=torch.bool)
    for r, row in enumerate(ids):
        for i, tok in enumerate(row):
            if row[i : i + len(cid)] == cid:
                out[r, i : i + len(cid)] = True
            if use_pooler and tok == eot:
                out[r, i] = True
    return out


def install_probe(unet) -> tuple[AttentionProbe, dict]:
    """Put the probe on every cross-attention layer; returns it and the processors to restore."""
    original = dict(unet.attn_processors)
    probe = AttentionProbe()
    unet.set_attn_processor({n: (probe if ".attn2." in n else p) for n, p in original.items()})
    return probe, original


def fmn_loss(unet, probe: AttentionProbe, x_t, t, emb, positions) -> torch.Tensor:
    probe.kept, probe.positions = [], positions
    unet(x_t, t, encoder_hidden_states=emb)
    loss = probe.loss()
    probe.kept, probe.positions = [], None
    return loss


def erase(
    pipe,
    concepts: list[ConceptPrompts],
    steps: int = 35,
    lr: float = 2e-6,
    batch: int = 1,
    train: str = "full",
    use_pooler: bool = True,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    n_images: int = 10,
    sample_steps: int = 50,
    sample_guidance: float = 7.5,
    seed: int = 0,
    progress: bool = True,
    history: list[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Fine-tune the UNet in place (``train``: "full" or "xattn"); return the changed tensors."""
    rng, g = seeded(seed)
    prompts = [p for cp in concepts for p in cp.erased()]
    words = [cp.concept for cp in concepts for _ in cp.erased()]
    x0, which = base_latents(pipe, prompts, n_images, sample_steps, sample_guidance, seed)
    emb_all = text_embeddings(pipe, prompts)
    pos_all = torch.cat([concept_positions(pipe.tokenizer, [p], w, use_pooler) for p, w in zip(prompts, words)])
    unet = denoiser(pipe)
    params = trainable(unet, train)
    before = snapshot(params)
    opt = adamw(params, lr, weight_decay)
    probe, original = install_probe(unet)

    def step_loss(_step):
        pick = [rng.randrange(len(x0)) for _ in range(batch)]
        x_t, t, _noise = noisy(pipe, x0[pick], g)
        rows = [which[i] for i in pick]
        return fmn_loss(unet, probe, x_t, t, emb_all[rows], pos_all[rows])

    try:
        fit(unet, params, opt, step_loss, steps, desc="fmn", progress=progress, history=history, max_grad_norm=max_grad_norm)
    finally:
        unet.set_attn_processor(original)
    return changed_tensors(params, before)
