"""Classifier-free guidance (§3.2.4, Eq. 3.8), conditional and unconditional passes in one batch."""

from __future__ import annotations

from collections.abc import Callable

import torch


def combine_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 3.8: eps_uncond + s (eps_cond - eps_uncond), for every s (s < 1 included)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided_noise(model: Callable, z_t: torch.Tensor, t: torch.Tensor, control: torch.Tensor, stats: torch.Tensor,
                 scale: float) -> torch.Tensor:
    """eps_guided for a batch; ``model(z, t, control, stats)`` is the conditional denoiser.

    The conditional and null-conditioned inputs are stacked into one forward of batch 2B. At s = 1
    Eq. 3.8 reduces exactly to eps_cond, and at s = 0 to eps_uncond: one pass of batch B suffices.
    """
    if scale == 1.0:
        return model(z_t, t, control, stats)
    if scale == 0.0:
        return model(z_t, t, torch.zeros_like(control), torch.zeros_like(stats))
    both = model(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([control, torch.zeros_like(control)]),
                 torch.cat([stats, torch.zeros_like(stats)]))
    eps_cond, eps_uncond = both.chunk(2)
    return combine_guidance(eps_cond, eps_uncond, scale)
