"""Classifier-free guidance (§3.2.4, Eq. 3.8), conditional and unconditional passes in one batch."""

from __future__ import annotations

from collections.abc import Callable

import torch


def combine_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Eq. 3.8: eps_uncond + s (eps_cond - eps_uncond), for every s (s < 1 included)."""
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def guided_noise(model: Callable, z_t: torch.Tensor, t: torch.Tensor, control: torch.Tensor, stats: torch.Tensor,
                 guidance: float) -> torch.Tensor:
    """eps_guided for a batch; ``model(z, t, control, stats)`` is the conditional denoiser.

    The conditional and null-conditioned inputs are stacked into one forward of batch 2B. At s = 1
    Eq. 3.8 reduces exactly to eps_cond, and at s = 0 to eps_uncond: one pass of batch B suffices.
    """
    if guidance == 1.0:
        return model(z_t, t, control, stats)
    if guidance == 0.0:
        return model(z_t, t, torch.zeros_like(control), torch.zeros_like(stats))
    both = model(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([control, torch.zeros_like(control)]),
                 torch.cat([stats, torch.zeros_like(stats)]))
    eps_cond, eps_uncond = both.chunk(2)
    return combine_guidance(eps_cond, eps_uncond, guidance)


class GuidedNoise:
    """eps_guided(z_t, t) of Eq. 3.8 for one fixed condition over a whole sampling run, for a
    :class:`aldm.models.unet.ConditionalDenoiser`; equal to :func:`guided_noise` (tested), with less work per step.

    Once per run: the [condition, null condition] stack of control maps and statistics, and the
    ControlNet's hint features of that stack (they depend on the control maps only). Per step: one
    forward in which the layers that see only z_t and t (time embedding, stems, the first block up to its
    FiLM) run on B and are shared by both halves (``copies=2``). With s = 1 (or 0) only the conditional
    (or null) half is evaluated, as in :func:`guided_noise`.

    control (B, 3, s, s, s), stats (B, stats_dim); ``__call__(z_t (B, zC, s, s, s), t (B,))`` -> (B, zC, s, s, s).
    ``context`` (B, zC + 1, s, s, s): the known latent of an inpainting-trained ControlNet; it is no condition,
    so both halves see it (training drops the condition, never the context).

    A guidance-conditioned student (``denoiser.takes_guidance``, :mod:`aldm.train.distillation`) takes s as an input
    and gives eps_guided in one forward of batch B: one network evaluation per step instead of two.
    """

    def __init__(self, denoiser, control: torch.Tensor, stats: torch.Tensor, guidance: float,
                 context: torch.Tensor | None = None):
        self.denoiser, self.guidance = denoiser, guidance
        self.scale = None
        if denoiser.takes_guidance:
            parts = [(control, stats)]
            self.scale = torch.full((control.shape[0],), float(guidance), device=control.device)
        elif guidance == 1.0:
            parts = [(control, stats)]
        elif guidance == 0.0:
            parts = [(torch.zeros_like(control), torch.zeros_like(stats))]
        else:
            parts = [(control, stats), (torch.zeros_like(control), torch.zeros_like(stats))]
        self.copies = len(parts)
        self.stats = torch.cat([p[1] for p in parts])
        control_stack = torch.cat([p[0] for p in parts])
        contexts = None if context is None else torch.cat([context] * self.copies)
        self.hint = denoiser.hint(control_stack, contexts)
        # the U-Net's own input needs the maps too when it takes them (UNetConfig.input_control)
        self.control = control_stack if denoiser.unet.control_stem is not None else None

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.denoiser(z_t, t, self.control, self.stats, hint=self.hint, copies=self.copies, guidance=self.scale)
        if self.copies == 1:
            return out
        eps_cond, eps_uncond = out.chunk(2)
        return combine_guidance(eps_cond, eps_uncond, self.guidance)


class EvaluationCounter:
    """Counts a denoiser's network evaluations (NFE) from now on: each forward adds its batch of z_t times the
    conditions stacked on it (``copies``: a guided step's conditional and null halves count 2). Wraps the
    instance's ``forward``; ``nfe`` the count so far (set it to 0 to start again)."""

    def __init__(self, denoiser):
        self.nfe = 0
        forward = denoiser.forward

        def counted(z_t, *args, copies=1, **kwargs):
            self.nfe += z_t.shape[0] * copies
            return forward(z_t, *args, copies=copies, **kwargs)

        denoiser.forward = counted
