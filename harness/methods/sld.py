"""SLD: Safe Latent Diffusion (Schramowski et al., CVPR 2023), an inference-time guidance term.

With eps_u, eps_c, eps_s the predictions for the unconditional, the prompt's and the safety
concept's conditioning, each step's guidance eps_c - eps_u loses a safety term (the paper's
equations 3-8, as diffusers' ``StableDiffusionPipelineSafe`` and the authors' code compute it):

    mu      = clamp(|eps_c - eps_s| * s_S, max=1) where eps_c - eps_s < lambda, else 0   (eq. 6)
    gamma   = mu * (eps_s - eps_u) + s_m * nu                                            (eqs. 4, 7)
    nu     <- beta_m * nu + (1 - beta_m) * gamma                                          (eq. 8)
    eps~    = eps_u + w * (eps_c - eps_u - gamma)      from step delta on (warm-up)       (eq. 3)

s_S the safety guidance scale, lambda the threshold, s_m / beta_m the momentum scale and beta,
delta the warm-up steps: the Weak / Medium / Strong / Max configurations are the presets. The
safety concept is the authors' list of inappropriate content for a nudity target, else the
target concepts themselves, as erasure papers run SLD on artists and objects.

In a single prediction outside a sampling run (an attack's loss) there is no step index and no
momentum: the term applies with nu = 0 (docs/fidelity.md).
"""

from __future__ import annotations

from harness.families.guidance import Guidance
from harness.methods import MethodInfo

# The authors' safety concept (the default ``safety_concept`` of diffusers' safe pipeline and of
# ml-research/safe-latent-diffusion): the text SLD steers away from for inappropriate content.
I2P_CONCEPT = ("an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily fluids, "
               "blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child abuse, brutality, cruelty")

_CONFIGS = {  # diffusers SafetyConfig (= the paper's Table 1 / the authors' repository)
    "weak": {"warmup_steps": 15, "guidance_scale": 20.0, "threshold": 0.0, "momentum_scale": 0.0, "mom_beta": 0.0},
    "medium": {"warmup_steps": 10, "guidance_scale": 1000.0, "threshold": 0.01, "momentum_scale": 0.3, "mom_beta": 0.4},
    "strong": {"warmup_steps": 7, "guidance_scale": 2000.0, "threshold": 0.025, "momentum_scale": 0.5, "mom_beta": 0.7},
    "max": {"warmup_steps": 0, "guidance_scale": 5000.0, "threshold": 1.0, "momentum_scale": 0.5, "mom_beta": 0.7},
}
PRESETS = {
    **_CONFIGS,
    "paper": _CONFIGS["medium"],  # the pipeline's default configuration
    # The toy world's 20-step sampling: SLD-Max's term (no warm-up: a 15-step warm-up of 20 would
    # leave 5 steps); measured in docs/fidelity.md
    "toy": _CONFIGS["max"],
}

INFO = MethodInfo(
    name="sld",
    module=__name__,
    paper="https://arxiv.org/abs/2211.05105",
    code="https://github.com/ml-research/safe-latent-diffusion",
    presets=PRESETS,
    kind="inference",
    on_checkpoint=True,  # the erasure papers also run SLD on top of erased models
    needs=frozenset({"unet"}),
)


def safety_text(concepts: list[str], concept: str | None) -> str:
    """The safety concept: ``concept`` when given; the authors' list for a nudity target; else the targets."""
    if concept:
        return concept
    if any(c.strip().lower() in ("nudity", "nude", "naked", "sexual") for c in concepts):
        return I2P_CONCEPT
    return ", ".join(concepts)


def safety_term(eu, ec, es, momentum, guidance_scale: float, threshold: float, momentum_scale: float):
    """gamma (eqs. 4, 6, 7) for the predictions and the momentum nu (None: zeros)."""
    import torch

    diff = ec - es
    scale = torch.clamp(diff.abs() * guidance_scale, max=1.0)
    mu = torch.where(diff >= threshold, torch.zeros_like(scale), scale)
    gamma = (es - eu) * mu
    return gamma if momentum is None else gamma + momentum_scale * momentum


class SafeLatentDiffusion(Guidance):
    def __init__(self, pipe, family, text: str, warmup_steps: int, guidance_scale: float, threshold: float, momentum_scale: float,
                 mom_beta: float):
        import torch

        self.family = family
        self.text, self.warmup, self.s_s, self.lam, self.s_m, self.beta = text, warmup_steps, guidance_scale, threshold, momentum_scale, mom_beta
        with torch.no_grad():
            self.one = family.encode_conditioning(pipe, [text])
        self.momentum = None

    def reset(self) -> None:
        self.momentum = None

    def adjust(self, call, x, t, cond_u, cond_c, eu, ec, step):
        if self.s_s <= 1.0:  # the safe pipeline's switch: no safety guidance at a scale <= 1
            return eu, ec
        es = call(x, t, self.family.conditioning_like(self.one, cond_c))
        if step is None:  # a single prediction: no run, no momentum, no warm-up
            return eu, ec - safety_term(eu, ec, es, None, self.s_s, self.lam, self.s_m)
        gamma = safety_term(eu, ec, es, self.momentum, self.s_s, self.lam, self.s_m)
        prev = self.momentum if self.momentum is not None else gamma.new_zeros(gamma.shape)
        self.momentum = self.beta * prev + (1 - self.beta) * gamma
        return (eu, ec - gamma) if step >= self.warmup else (eu, ec)


def setup(pipe, family, concepts: list[str], warmup_steps: int = 10, guidance_scale: float = 1000.0, threshold: float = 0.01,
          momentum_scale: float = 0.3, mom_beta: float = 0.4, concept: str | None = None) -> Guidance:
    """SLD with the given configuration (default: Medium) steering away from ``concept`` (default: ``safety_text``)."""
    return SafeLatentDiffusion(pipe, family, safety_text(concepts, concept), warmup_steps, guidance_scale, threshold, momentum_scale, mom_beta)
