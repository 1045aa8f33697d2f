"""Reverse-process samplers: ancestral DDPM (the paper, Eq. 3.10) and DDIM with any number of steps.

Written as the equations (Ho et al. 2020; Song et al. 2021), with one ``torch.Generator`` per
sample so that a sample's noise depends only on its own seed, not on the batch it is in.
``eps_fn(z_t, t)`` returns the (guided) noise prediction for a batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from .schedule import NoiseSchedule

SAMPLERS = ("ddpm", "ddim")


def _randn_like(z: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Per-sample standard normal noise: row i drawn from generators[i] (on the CPU, then moved)."""
    rows = [torch.randn(z.shape[1:], generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=z.device, dtype=z.dtype)


def initial_noise(shape: tuple, generators: list[torch.Generator], device) -> torch.Tensor:
    """z_T ~ N(0, I) of ``shape`` (B, zC, s, s, s), one generator per sample."""
    return _randn_like(torch.empty(shape, device=device), generators)


def ddim_timesteps(total: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps from T-1 down to 0 (both ends included)."""
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be in [1, {total}], got {steps}")
    grid = torch.linspace(total - 1, 0, steps).round().long().tolist()
    return sorted(set(grid), reverse=True)


@torch.inference_mode()
def sample_ddpm(eps_fn: Callable, schedule: NoiseSchedule, z_T: torch.Tensor, generators: list[torch.Generator],
                progress: bool = False) -> torch.Tensor:
    """Ancestral DDPM over all T steps:
    z_{t-1} = (z_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t n,
    sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t) (the posterior variance), no noise at t = 0."""
    z = z_T
    abar = schedule.alphas_cumprod
    for t in tqdm(range(schedule.timesteps - 1, -1, -1), desc="DDPM", disable=not progress, leave=False):
        tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
        eps = eps_fn(z, tt).to(torch.float64)
        beta, a_bar = schedule.betas[t], abar[t]
        a_prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        mean = (z.double() - beta / (1 - a_bar).sqrt() * eps) / (1 - beta).sqrt()
        if t > 0:
            sigma = (beta * (1 - a_prev) / (1 - a_bar)).sqrt()
            mean = mean + sigma * _randn_like(z, generators).double()
        z = mean.to(z_T.dtype)
    return z


@torch.inference_mode()
def sample_ddim(eps_fn: Callable, schedule: NoiseSchedule, z_T: torch.Tensor, steps: int, eta: float = 0.0,
                generators: list[torch.Generator] | None = None, progress: bool = False) -> torch.Tensor:
    """DDIM: z0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t);
    z_prev = sqrt(abar_prev) z0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma n (eta = 0: deterministic)."""
    z = z_T
    abar = schedule.alphas_cumprod
    ts = ddim_timesteps(schedule.timesteps, steps)
    for i, t in enumerate(tqdm(ts, desc="DDIM", disable=not progress, leave=False)):
        tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
        eps = eps_fn(z, tt).to(torch.float64)
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        z0 = (z.double() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        z_new = a_prev.sqrt() * z0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < len(ts):
            z_new = z_new + sigma * _randn_like(z, generators).double()
        z = z_new.to(z_T.dtype)
    return z
