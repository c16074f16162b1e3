"""SA: Selective Amnesia (Heng & Soh, NeurIPS 2023, arXiv 2305.10120), the Stable Diffusion variant.

Continual learning turned around: the model theta (initialised at the base theta*) is trained to
forget the concept c_f by learning a surrogate distribution q(x | c_f) in its place, while elastic
weight consolidation (EWC) and generative replay keep everything else:

    L(theta) =  E_{x ~ q(x|c_f), t, eps} || eps - eps_theta(x_t, c_f, t) ||^2           (forget: learn the surrogate)
             + gamma E_{(x, c) ~ D_r, t, eps} || eps - eps_theta(x_t, c, t) ||^2        (generative replay)
             + lmbda sum_i F_i (theta_i - theta*_i)^2                                   (EWC)

with x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps, t uniform in [0, T). D_r is the replay set: the
base model's own generations of prompts unrelated to c_f; q(x | c_f) the base model's generations
of a surrogate prompt (the anchor: "a middle aged man" for Brad Pitt). F is the diagonal of the
empirical Fisher information of the base model on the replay set, each sample's gradient taken of
the diffusion loss summed over every timestep (one noise draw each):

    F_i = 1/N sum_{n=1..N} ( d/dtheta_i sum_{t=0..T-1} || eps_{n,t} - eps_theta*(x_{n,t}, c_n, t) ||^2 )^2

(the per-timestep loss is the mean over latent elements). ``fisher_timesteps`` K < T takes K
evenly spaced timesteps and scales the summed gradient by T / K (an estimate of the same sum).

Taken from clear-nus/selective-amnesia at b736571 (``sd/``): ``ldm/models/diffusion/ddpm_forget.py``
(``training_step``: loss_corrupt + gamma loss_remember + lmbda sum F (theta - theta*)^2, no 1/2,
theta* the weights at the start; ``configure_optimizers``: AdamW, torch defaults (weight decay
0.01), ``train_method`` full / xattn / noxattn), ``ldm/models/diffusion/ddpm_fim.py`` (the Fisher:
batch 1, the loss summed over all 1000 timesteps before the gradient is squared, divided by the
number of samples), ``ldm/data/__init__.py`` (``ForgettingDataset``: surrogate image i paired with
replay image i, so an epoch is min(#surrogate, #replay) pairs and only the first 1000 replay
images are ever replayed; the forget caption drawn from the comma-separated ``forget_prompt``),
``configs/stable-diffusion/forget_brad_pitt.yaml`` (lmbda 50, gamma 1, base lr 1e-5 scaled by
4 GPUs x batch 4 = 1.6e-4, 200 epochs, train_method full; nudity: noxattn, 500 epochs),
``scripts/txt2img_fim_prompts.py`` / ``txt2img_make_n_samples.py`` (one image per replay prompt,
1000 surrogate images; DDIM 50 steps, eta 0, guidance 7.5, seed 42) and ``fim_prompts.txt`` (their
5000 replay prompts, fetched at that commit by the ``paper`` preset; not copied here).

Deliberate differences (docs/fidelity.md, docs/fidelity-methods.md): images are kept as latents
(no decode / re-encode; as every fine-tuning method here); the Fisher is computed here from the
base model (their precomputed ``full_fisher_dict.pkl`` is a pickle keyed by CompVis names for SD
v1.4 only; pickles are refused); the one-step warm-up of their scheduler (first step at lr x 1e-6)
and their EMA copy (not what their sampling scripts load) are not reproduced; a surrogate image
generated for template k of the anchor is captioned with template k of the concept.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.families import family_of_pipeline
from harness.families.base import call_denoiser, cat_conditioning
from harness.methods import MethodInfo
from harness.methods.common import ConceptPrompts, check_bounds, denoiser
from harness.methods.finetune import adamw, base_latents, changed_tensors, fit, noisy, seeded, snapshot, trainable

# their replay prompts (5000 GPT-3.5 prompts, one image each), read at commit b736571
AUTHORS_COMMIT = "b736571c2a4d75c5c9a1fdbbf94ba6c9d0faa7b7"
AUTHORS_PROMPTS_URL = f"https://raw.githubusercontent.com/clear-nus/selective-amnesia/{AUTHORS_COMMIT}/sd/fim_prompts.txt"
AUTHORS_PROMPTS_SHA256 = "4522438847be2f70903063093d48f38f53a1eab64ebff01f00cecd85618a190a"
SURROGATES = ("anchor", "noise")  # or a folder of images inside the repository
REPLAYS = ("world", "authors")  # or a text file of prompts inside the repository
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

PRESETS: dict[str, dict] = {
    # configs/stable-diffusion/forget_brad_pitt.yaml as main_forget.py runs it on 4 GPUs: lmbda 50,
    # gamma 1, lr 1e-5 x 4 GPUs x batch 4 (--scale_lr, on by default), batch 16 in all, 200 epochs of
    # min(1000 surrogate, 5000 replay) = 1000 pairs, the whole UNet; the Fisher on all 5000 replay
    # images over all 1000 timesteps; images by DDIM 50 steps at guidance 7.5, seed 42. The
    # surrogate is the run's anchor (theirs: --anchor "a middle aged man"); nudity: --param
    # train=noxattn --param epochs=500 with the anchor their clothed set's prompt.
    "paper": {"lmbda": 50.0, "gamma": 1.0, "lr": 1.6e-4, "batch": 16, "epochs": 200, "train": "full", "surrogate": "anchor",
              "n_surrogate": 1000, "replay_prompts": "authors", "n_replay": 1000, "n_fisher": 5000, "fisher_timesteps": 1000,
              "fisher_chunk": 50, "sample_steps": 50, "sample_guidance": 7.5, "seed": 42},
    # The toy world (2 CPU cores, ~2 minutes): the replay set is the toy world's prompts without the
    # concept (its other concepts, every template); 40 surrogate / 40 replay / 20 Fisher images (not
    # 1000 / 1000 / 5000), the Fisher over 50 evenly spaced timesteps (not all 1000; the summed gradient
    # scaled by 1000 / 50), 25 epochs of batch 8 (125 steps, not 12,600) at lr 1e-3 (the toy UNet
    # is 1.7M weights: at 1.6e-4 it barely moves in 125 steps); lmbda 0.03, not 50: the toy
    # model's Fisher is on another scale (docs/fidelity-methods.md has the measurements and sweep);
    # images by the toy pipeline's 20 steps at guidance 5.
    "toy": {"lmbda": 0.03, "gamma": 1.0, "lr": 1e-3, "batch": 8, "epochs": 25, "train": "full", "surrogate": "anchor",
            "n_surrogate": 40, "replay_prompts": "world", "n_replay": 40, "n_fisher": 20, "fisher_timesteps": 50,
            "fisher_chunk": 50, "sample_steps": 20, "sample_guidance": 5.0, "seed": 42},
}

INFO = MethodInfo(
    name="sa",
    module=__name__,
    paper="https://arxiv.org/abs/2305.10120",
    code="https://github.com/clear-nus/selective-amnesia",
    presets=PRESETS,
    committed_toy=True,  # the toy preset as it is
    # fine-tunes the denoiser's weights (train: full / xattn / noxattn) through the family contract
    # (encoded conditioning, the denoiser call, the VAE): the authors' code is SD v1.4 only; this one
    # also runs on SDXL (tests/test_method_sa.py)
    needs=frozenset({"unet"}),
)


# -- the three terms ---------------------------------------------------------------------------


def diffusion_loss(unet, pipe, x0: torch.Tensor, cond, g: torch.Generator) -> torch.Tensor:
    """The simple diffusion loss of one batch: MSE(eps, eps_theta(x_t, c, t)), t uniform."""
    x_t, t, noise = noisy(pipe, x0, g)
    return torch.nn.functional.mse_loss(call_denoiser(unet, x_t, t, cond).float(), noise.float())


def ewc_penalty(params: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], star: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 over the trained tensors (no 1/2, as the authors')."""
    terms = [(fisher[n].to(p.device) * (p - star[n].to(p.device)) ** 2).sum() for n, p in params.items()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def fisher_diagonal(pipe, params: dict[str, torch.nn.Parameter], x0: torch.Tensor, conds: list, timesteps: int, chunk: int,
                    g: torch.Generator, progress: bool = False) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher of the denoiser as it is, for ``params``: per sample n (latent
    ``x0[n]``, conditioning ``conds[n]``), the gradient of sum_t MSE(eps_t, eps_theta(x_t, t)) over
    ``timesteps`` evenly spaced t (all T when equal to T; the sum scaled by T / timesteps), one
    noise draw of shape (timesteps, *latent) per sample from ``g``, squared, averaged over the
    samples. ``chunk``: timesteps per backward pass (memory only; the result is the same)."""
    from tqdm.auto import tqdm

    unet = denoiser(pipe)
    n_t = pipe.scheduler.config.num_train_timesteps
    ts = torch.linspace(0, n_t - 1, timesteps).round().long() if timesteps < n_t else torch.arange(n_t)
    scale = n_t / len(ts)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was = unet.training
    unet.train()  # as theirs (training_step); the SD UNet has no dropout or batch statistics
    try:
        for i in tqdm(range(len(x0)), desc="sa fisher", unit="image", disable=not progress):
            noise = torch.randn((len(ts), *x0.shape[1:]), generator=g).to(x0.device)
            for p in params.values():
                p.grad = None
            for s in range(0, len(ts), chunk):
                t = ts[s : s + chunk].to(x0.device)
                x = x0[i : i + 1].expand(len(t), *x0.shape[1:])
                x_t = pipe.scheduler.add_noise(x, noise[s : s + chunk], t)
                cond = cat_conditioning([conds[i]] * len(t))
                pred = call_denoiser(unet, x_t, t, cond).float()
                ((pred - noise[s : s + chunk].float()) ** 2).mean(dim=tuple(range(1, pred.ndim))).sum().backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += (scale * p.grad.detach().float()) ** 2 / len(x0)
    finally:
        for p in params.values():
            p.grad = None
        unet.train(was)
    return fisher


# -- inputs: surrogate images and replay prompts -------------------------------------------------


def _repo_path(value: str, what: str, folder: bool) -> Path:
    """A path a parameter names, confined to the repository (``find_root``: the current folder's),
    symbolic links resolved before the check; a folder or a regular file as ``folder`` says."""
    from harness.store.fsutil import find_root
    from harness.store.safefs import inside, regular_file

    p = inside(find_root(), value, what)
    if folder:
        if not p.is_dir():
            raise HarnessError(f"{what}: {value!r} is not a folder inside the repository (or one of {', '.join(SURROGATES)})")
        return p
    if not p.exists():
        raise HarnessError(f"{what}: {value!r}: no such file (or one of {', '.join(REPLAYS)})")
    return regular_file(p, what)


def read_prompts(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HarnessError(f"{what}: {path.name} cannot be read as UTF-8 text ({type(e).__name__})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise HarnessError(f"{what}: {path.name} holds no prompts (one per line)")
    return prompts


def authors_prompts(url: str = AUTHORS_PROMPTS_URL, sha256: str = AUTHORS_PROMPTS_SHA256, cache: Path | None = None) -> list[str]:
    """The authors' replay prompts (``fim_prompts.txt`` at the pinned commit) through the harness's
    one downloader (``harness.store.fetch``: timeout, size cap, host allow-list, sha256), cached."""
    from harness.store.fetch import fetch
    from harness.store.fsutil import cache_dir, find_root

    path = fetch(url, sha256, cache or cache_dir(find_root()), "--param replay_prompts=authors")
    return read_prompts(path, "--param replay_prompts=authors")


def replay_set(concepts: list[ConceptPrompts], replay_prompts: str) -> list[str]:
    """The prompts of the replay (and Fisher) images: ``world`` = every concept's anchored and
    preserved prompts (the run's prompts without the concept), ``authors`` = their 5000 prompts,
    else a text file inside the repository (one prompt a line)."""
    what = "--param replay_prompts"
    if replay_prompts == "world":
        erased = {p for cp in concepts for p in cp.erased()}
        prompts = list(dict.fromkeys(p for cp in concepts for p in [*cp.anchored(), *cp.preserved()] if p.strip() and p not in erased))
        if not prompts:
            raise HarnessError(f"{what}=world: the run has no prompts without the concept (no anchor, nothing preserved); "
                               "name a prompt file inside the repository or use 'authors'")
        return prompts
    if replay_prompts == "authors":
        return authors_prompts()
    return read_prompts(_repo_path(replay_prompts, what, folder=False), what)


@torch.no_grad()
def surrogate_latents(pipe, concepts: list[ConceptPrompts], surrogate: str, n: int, steps: int, guidance: float,
                      seed: int) -> tuple[torch.Tensor, list[int] | None]:
    """``n`` latents of q(x | c_f) and, for ``anchor``, the index into the concepts' erased prompts
    each one is captioned with (None: a caption drawn at random each time, as the authors').
    ``anchor``: the base model's images of the anchored prompts; ``noise``: uniform noise images
    (the paper's MNIST / CIFAR surrogate), VAE-encoded; else a folder of images inside the repository."""
    fam = family_of_pipeline(pipe)
    if surrogate == "anchor":
        anchored = [p for cp in concepts for p in cp.anchored()]
        return base_latents(pipe, anchored, n, steps, guidance, seed)
    net = denoiser(pipe)
    px = net.config.sample_size * pipe.vae_scale_factor
    if surrogate == "noise":
        g = torch.Generator().manual_seed(seed)
        images = torch.rand((n, 3, px, px), generator=g) * 2 - 1
    else:
        import numpy as np
        from PIL import Image

        from harness.store.safefs import tree_files

        folder = _repo_path(surrogate, "--param surrogate", folder=True)
        files = [f for f in tree_files(folder, "--param surrogate") if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise HarnessError(f"--param surrogate: {surrogate!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        arrays = []
        for i in range(n):  # the folder's images cycled in name order
            f = files[i % len(files)]
            try:
                with Image.open(f) as im:
                    arrays.append(np.asarray(im.convert("RGB").resize((px, px), Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1)
            except (OSError, ValueError) as e:
                raise HarnessError(f"--param surrogate: {f.name} is not a readable image ({type(e).__name__})") from None
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    out = []
    for s in range(0, n, 16):
        dist = fam.encode_images(pipe, images[s : s + 16].to(net.device, net.dtype))
        out.append(dist.mean * fam.latent_scale(pipe))
    return torch.cat(out), None


# -- the whole method --------------------------------------------------------------------------


def _check(lmbda: float, gamma: float, lr: float, batch: int, epochs: int, train: str, surrogate: str, replay_prompts: str,
           counts: dict[str, int], fisher_timesteps: int, fisher_chunk: int) -> None:
    for name, value in (("lmbda", lmbda), ("gamma", gamma), ("lr", lr)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise HarnessError(f"--param {name}: must be a finite number >= 0, not {value!r}")
    check_bounds((("batch", batch, 1), ("epochs", epochs, 0), ("fisher_timesteps", fisher_timesteps, 1),
                  ("fisher_chunk", fisher_chunk, 1), *((k, c, 1) for k, c in counts.items())))
    if train not in ("full", "xattn", "noxattn"):
        raise HarnessError(f"--param train: must be one of full, xattn, noxattn, not {train!r}")
    for field, text in (("surrogate", surrogate), ("replay_prompts", replay_prompts)):
        if not isinstance(text, str) or not text.strip():
            raise HarnessError(f"--param {field}: must be a name or a path inside the repository, not {text!r}")
    if surrogate not in SURROGATES:
        _repo_path(surrogate, "--param surrogate", folder=True)
    if replay_prompts not in REPLAYS:
        _repo_path(replay_prompts, "--param replay_prompts", folder=False)


def erase(
    pipe,
    concepts: list[ConceptPrompts],
    lmbda: float = 50.0,
    gamma: float = 1.0,
    lr: float = 1.6e-4,
    batch: int = 16,
    epochs: int = 200,
    train: str = "full",
    surrogate: str = "anchor",
    n_surrogate: int = 1000,
    replay_prompts: str = "authors",
    n_replay: int = 1000,
    n_fisher: int = 5000,
    fisher_timesteps: int = 1000,
    fisher_chunk: int = 50,
    sample_steps: int = 50,
    sample_guidance: float = 7.5,
    seed: int = 42,
    progress: bool = True,
    history: list[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Fine-tune the denoiser in place (``train``: full, xattn or noxattn) to forget every concept
    of ``concepts``; return the changed tensors. ``history`` gets every step's total loss;
    the Fisher is ``fisher_diagonal``'s."""
    _check(lmbda, gamma, lr, batch, epochs, train, surrogate, replay_prompts,
           {"n_surrogate": n_surrogate, "n_replay": n_replay, "n_fisher": n_fisher}, fisher_timesteps, fisher_chunk)
    if not concepts:
        raise HarnessError("sa: no concepts to erase")
    fam = family_of_pipeline(pipe)
    n_t = pipe.scheduler.config.num_train_timesteps
    if fisher_timesteps > n_t:
        raise HarnessError(f"--param fisher_timesteps: must be at most the model's {n_t} training timesteps, not {fisher_timesteps}")
    replay = replay_set(concepts, replay_prompts)
    rng, g = seeded(seed)
    captions = [p for cp in concepts for p in cp.erased()]
    x_s, caption_of = surrogate_latents(pipe, concepts, surrogate, n_surrogate, sample_steps, sample_guidance, seed)
    x_r, which = base_latents(pipe, replay, max(n_replay, n_fisher), sample_steps, sample_guidance, seed + 1)
    with torch.no_grad():
        emb_f = fam.encode_conditioning(pipe, captions)
        emb_r = fam.encode_conditioning(pipe, replay)
    unet = denoiser(pipe)
    params = trainable(unet, train)
    before = snapshot(params)
    fisher = fisher_diagonal(pipe, params, x_r[:n_fisher], [emb_r[which[i] : which[i] + 1] for i in range(n_fisher)],
                             fisher_timesteps, fisher_chunk, g, progress)
    opt = adamw(params, lr, 0.01)  # torch.optim.AdamW's defaults, as theirs
    pairs = min(n_surrogate, n_replay)  # their ConcatDataset: surrogate i with replay i

    def batches():
        for _ in range(epochs):
            order = list(range(pairs))
            rng.shuffle(order)
            for s in range(0, pairs, batch):
                yield order[s : s + batch]

    def step_loss(pick):
        cap = [caption_of[i] if caption_of is not None else rng.randrange(len(captions)) for i in pick]
        forget = diffusion_loss(unet, pipe, x_s[pick], emb_f[cap], g)
        remember = diffusion_loss(unet, pipe, x_r[pick], emb_r[[which[i] for i in pick]], g)
        return forget + gamma * remember + lmbda * ewc_penalty(params, fisher, before).to(forget.device)

    steps = epochs * math.ceil(pairs / batch)
    fit(unet, params, opt, step_loss, steps, batches=batches(), desc="sa", progress=progress, history=history, postfix_every=5)
    return changed_tensors(params, before)
