"""SalUn: saliency unlearning (Fan et al., ICLR 2024, arXiv 2310.12508), random-label variant.

1. Weight saliency. Over one pass of the forget set D_f (images x0 of the concept, prompt c),
   accumulate the gradient of the guided forgetting loss

       l_f(theta) = - || eps - [(1 + w) eps_theta(x_t, c) - w eps_theta(x_t, "")] ||^2   (w = 7.5)

   and keep the top ``threshold`` fraction of all UNet weights by |sum of gradients| (one global
   ranking): m = 1[|g| in the top fraction].
2. Fine-tune only the salient weights (gradients multiplied by m) on

       L = E_{D_f} || eps_theta(x_t, c) - sg(eps_theta(x_t, c')) ||^2              (random label c')
         + alpha * E_{D_r} || eps_theta(x_t, c_r) - eps ||^2                       (retain: the diffusion loss)

   where c' is another concept's prompt (the authors use the next class, (k + 1) mod 10) on the
   same noised image, and D_r holds images of the other concepts with their own prompts.

Taken from OPTML-Group/Unlearn-Saliency: ``SD/train-scripts/generate_mask.py`` (the loss above
with ``c_guidance`` 7.5, MSE with mean reduction, batch 8, one epoch, gradients summed over
batches then abs, one global ranking, threshold 0.5), ``SD/train-scripts/random_label.py`` (the
forget loss with the pseudo prompt's prediction detached, ``alpha`` x the standard loss on the
remain set, Adam (no weight decay), ``grad *= mask`` before the step, train_method "full") and
``SD/README.md`` (``--train_method full --alpha 0.5 --lr 1e-5 --epochs 5``; batch 8 default;
Imagenette class ~ 950 images). Deliberate differences (docs/fidelity-methods.md): D_f and D_r
are the base model's generations (the authors use Imagenette photos), and the number of steps is
``epochs x ceil(n_images / batch)`` over that generated set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.methods import AuthorsInputs, MethodInfo
from harness.methods.common import ConceptPrompts, denoiser, text_embeddings
from harness.methods.finetune import base_latents, changed_tensors, epochs_to_steps, fit, noisy, seeded, snapshot, trainable

PRESETS: dict[str, dict] = {
    "paper": {"epochs": 5, "lr": 1e-5, "batch": 8, "alpha": 0.5, "threshold": 0.5, "mask_guidance": 7.5,
              "train": "full", "n_images": 950, "sample_steps": 50, "sample_guidance": 7.5, "seed": 0},
    "toy": {"epochs": 5, "lr": 1e-3, "batch": 8, "alpha": 0.5, "threshold": 0.5, "mask_guidance": 7.5,
            "train": "full", "n_images": 40, "sample_steps": 20, "sample_guidance": 5.0, "seed": 0},
}

INFO = MethodInfo(
    name="salun",
    module=__name__,
    paper="https://arxiv.org/abs/2310.12508",
    code="https://github.com/OPTML-Group/Unlearn-Saliency",
    presets=PRESETS,
    committed_toy=True,  # the toy preset as it is
    needs=frozenset({"unet"}),  # the saliency mask over every UNet weight
    families=frozenset({"sd1"}),
    families_why="its authors' code runs Stable Diffusion 1.x only",
    # OPTML-Group/Unlearn-Saliency at a6e89fd SD/train-scripts: classes only (no style pipeline),
    # prompt "an image of a {label}", the random-label anchor is the next class, the remain set
    # every other class
    authors_inputs=AuthorsInputs(templates={"object": ("an image of a {}",)}, anchor={"object": "{next}"}, preserve={"object": "others"},
                                 source="OPTML-Group/Unlearn-Saliency@a6e89fd SD/train-scripts/dataset.py:36-41,144-164; random_label.py:80-91"),
)


def saliency_mask(unet, params: dict, pipe, x0, emb_c, emb_0, batch: int, guidance: float, threshold: float,
                  g: torch.Generator) -> dict[str, torch.Tensor]:
    """0/1 masks (same shapes as ``params``): the top ``threshold`` fraction of |accumulated
    gradient| of the guided forgetting loss, ranked over all parameters together."""
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    for s in range(0, len(x0), batch):
        x_t, t, eps = noisy(pipe, x0[s : s + batch], g)
        e_c = unet(x_t, t, encoder_hidden_states=emb_c[s : s + batch]).sample
        e_0 = unet(x_t, t, encoder_hidden_states=emb_0.expand(x_t.shape[0], -1, -1)).sample
        loss = -F.mse_loss(eps, (1 + guidance) * e_c - guidance * e_0)
        unet.zero_grad(set_to_none=True)
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                acc[n] += p.grad
    unet.zero_grad(set_to_none=True)
    return top_fraction(acc, threshold)


def top_fraction(grads: dict[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """1 where |g| is among the top ``threshold`` fraction of all entries of all tensors (one
    ranking; ties broken by position, as a stable sort), else 0."""
    flat = torch.cat([a.abs().flatten() for a in grads.values()])
    keep = torch.zeros(len(flat), dtype=torch.bool)
    keep[torch.argsort(-flat, stable=True)[: int(len(flat) * threshold)]] = True
    masks, start = {}, 0
    for n, a in grads.items():
        masks[n] = keep[start : start + a.numel()].reshape(a.shape).to(a.dtype)
        start += a.numel()
    return masks


def forget_loss(unet, x_t, t, emb_c, emb_pseudo) -> torch.Tensor:
    with torch.no_grad():
        goal = unet(x_t, t, encoder_hidden_states=emb_pseudo).sample
    return F.mse_loss(unet(x_t, t, encoder_hidden_states=emb_c).sample, goal)


def erase(
    pipe,
    concepts: list[ConceptPrompts],
    epochs: int = 5,
    lr: float = 1e-5,
    batch: int = 8,
    alpha: float = 0.5,
    threshold: float = 0.5,
    mask_guidance: float = 7.5,
    train: str = "full",
    n_images: int = 950,
    sample_steps: int = 50,
    sample_guidance: float = 7.5,
    seed: int = 0,
    progress: bool = True,
    history: list[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Saliency mask, then masked fine-tuning of the UNet in place; return the changed tensors."""
    rng, g = seeded(seed)
    forget = [p for cp in concepts for p in cp.erased()]
    pseudo = [p for cp in concepts for p in cp.anchored()]  # forget[i] <-> pseudo[i], same context
    remain = [p for cp in concepts for p in cp.anchored() + cp.preserved()]
    xf, wf = base_latents(pipe, forget, n_images, sample_steps, sample_guidance, seed)
    xr, wr = base_latents(pipe, remain, n_images, sample_steps, sample_guidance, seed + 7)
    emb_f, emb_p, emb_r = text_embeddings(pipe, forget), text_embeddings(pipe, pseudo), text_embeddings(pipe, remain)
    emb_0 = text_embeddings(pipe, [""])
    unet = denoiser(pipe)
    params = trainable(unet, train)
    before = snapshot(params)
    order = list(range(len(xf)))
    rng.shuffle(order)
    masks = saliency_mask(unet, params, pipe, xf[order], emb_f[[wf[i] for i in order]], emb_0, batch, mask_guidance, threshold, g)
    opt = torch.optim.Adam(params.values(), lr=lr)

    def batches():  # epochs of the shuffled forget set, drawn lazily (the shuffle is part of the RNG order)
        for _ in range(epochs):
            rng.shuffle(order)
            for s in range(0, len(order), batch):
                yield order[s : s + batch]

    def step_loss(pick):
        rpick = [rng.randrange(len(xr)) for _ in pick]
        x_t, t, _ = noisy(pipe, xf[pick], g)
        rows = [wf[i] for i in pick]
        lf = forget_loss(unet, x_t, t, emb_f[rows], emb_p[rows])
        xr_t, tr, eps_r = noisy(pipe, xr[rpick], g)
        lr_ = F.mse_loss(unet(xr_t, tr, encoder_hidden_states=emb_r[[wr[i] for i in rpick]]).sample, eps_r)
        return lf + alpha * lr_

    fit(unet, params, opt, step_loss, epochs_to_steps(len(xf), batch, epochs), batches=batches(), desc="salun", progress=progress,
        history=history, grad_masks=masks)
    return changed_tensors(params, before)
