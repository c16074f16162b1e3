"""CA: Concept Ablation, model-based variant (Kumari et al., ICCV 2023, arXiv 2303.13516).

The model is fine-tuned so that, on noised images of the anchor concept, its noise prediction for
the target concept's prompt c* matches its own prediction for the anchor prompt c (stop-gradient):

    L = E_{x0 ~ anchor images, t, eps} || eps_theta(x_t, c*, t) - sg(eps_theta(x_t, c, t)) ||^2

with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t uniform in [0, 1000), x0 images the base
model generated for the anchor prompts, c* the anchor prompt with the anchor word replaced by the
target's (the authors' object rule; the toy world's style prompts have the same form).

Taken from nupurkmr9/concept-ablation: ``diffusers/train.py`` (``loss_type_reverse`` "model-based":
the target is the *same* UNet under ``torch.no_grad`` on the anchor prompt, not a frozen copy;
``parameter_group`` "cross-attn" = ``attn2.to_k`` / ``attn2.to_v`` (default), "attn" and
"full-weight" options; AdamW betas (0.9, 0.999), weight decay 1e-2, eps 1e-8; gradient clipping at
norm 1; constant lr), ``diffusers/README.md`` (style and object runs: batch 4 on 2 GPUs, lr 2e-6
with ``--scale_lr`` = 2e-6 x 4 x 2 = 1.6e-5, 100 steps), ``diffusers/utils.py`` (the anchor->target
prompt rule), ``compvis/src/model.py`` (the same objective in the paper's CompVis code, 110 steps
in ``configs/finetune_style.yaml``) and the anchor images (``num_class_images`` 1000, generated
with 25 steps at guidance 6.0).
Deliberate differences (docs/fidelity-methods.md): no resize augmentation and therefore no
valid-region mask (the authors' mask also drops a one-latent border), no prior-preservation
term (the authors add it only for overlapping captions such as "grumpy cat"/"cat"), anchor
images generated in code rather than from their prompt files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.methods import MethodInfo
from harness.methods.common import ConceptPrompts, denoiser, text_embeddings
from harness.methods.finetune import adamw, base_latents, changed_tensors, fit, noisy, seeded, snapshot, trainable

PRESETS: dict[str, dict] = {
    "paper": {"steps": 100, "lr": 1.6e-5, "batch": 8, "train": "kv", "weight_decay": 0.01, "max_grad_norm": 1.0,
              "n_images": 1000, "sample_steps": 25, "sample_guidance": 6.0, "seed": 0},
    "toy": {"steps": 100, "lr": 1e-3, "batch": 8, "train": "kv", "weight_decay": 0.01, "max_grad_norm": 1.0,
            "n_images": 40, "sample_steps": 20, "sample_guidance": 5.0, "seed": 0},
}

INFO = MethodInfo(
    name="ca",
    module=__name__,
    paper="https://arxiv.org/abs/2303.13516",
    code="https://github.com/nupurkmr9/concept-ablation",
    presets=PRESETS,
    committed_toy=True,  # the toy preset as it is
    needs=frozenset({"cross_attention", "unet"}),  # trains the cross-attention K/V (train=kv) of the UNet
    families=frozenset({"sd1"}),
    families_why="its authors' code runs Stable Diffusion 1.x only",
)


def ca_loss(unet, x_t, t, emb_target, emb_anchor) -> torch.Tensor:
    """The model-based ablation objective at one batch: the current model's anchor prediction,
    without gradient, is the target of its prediction for the concept's prompt."""
    with torch.no_grad():
        goal = unet(x_t, t, encoder_hidden_states=emb_anchor).sample
    return F.mse_loss(unet(x_t, t, encoder_hidden_states=emb_target).sample.float(), goal.float())


def erase(
    pipe,
    concepts: list[ConceptPrompts],
    steps: int = 100,
    lr: float = 1.6e-5,
    batch: int = 8,
    train: str = "kv",
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    n_images: int = 1000,
    sample_steps: int = 25,
    sample_guidance: float = 6.0,
    seed: int = 0,
    progress: bool = True,
    history: list[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Fine-tune the UNet in place (``train``: "kv", "xattn", "attn" or "full"); return the
    changed tensors."""
    rng, g = seeded(seed)
    anchors = [p for cp in concepts for p in cp.anchored()]
    targets = [p for cp in concepts for p in cp.erased()]  # same template order: targets[i] <-> anchors[i]
    x0, which = base_latents(pipe, anchors, n_images, sample_steps, sample_guidance, seed)
    emb_a, emb_c = text_embeddings(pipe, anchors), text_embeddings(pipe, targets)
    unet = denoiser(pipe)
    params = trainable(unet, train)
    before = snapshot(params)
    opt = adamw(params, lr, weight_decay)

    def step_loss(_step):
        pick = [rng.randrange(len(x0)) for _ in range(batch)]
        rows = [which[i] for i in pick]
        x_t, t, _noise = noisy(pipe, x0[pick], g)
        return ca_loss(unet, x_t, t, emb_c[rows], emb_a[rows])

    fit(unet, params, opt, step_loss, steps, desc="ca", progress=progress, history=history, max_grad_norm=max_grad_norm,
        loss_format=".5f")
    return changed_tensors(params, before)
