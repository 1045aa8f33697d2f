"""Sampling with part of the latent known: the reverse process draws only where a region is unknown, and keeps
the forward-noised known latent everywhere else (blended latent diffusion, Avrahami et al. 2023; RePaint,
Lugmayr et al. 2022).

The constraint is put on the noise prediction, so every sampler of :mod:`aldm.diffusion.samplers` obeys it
unchanged: where the latent is known, eps is replaced by the noise that z_t itself carries,

    eps_known = (z_t - sqrt(abar_t) z0) / sqrt(1 - abar_t),

so the sampler's data prediction there is exactly z0, and a DDIM, DPM-Solver++ or DDPM step maps
z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) n onto z_{t'} = sqrt(abar_t') z0 + sqrt(1 - abar_t') n' — the
known region follows a forward-noised trajectory of z0 while the unknown region is denoised beside it, each
step of the network seeing both. RePaint's resampling (:func:`sample_resampled`) goes back and forth between
neighbouring timesteps so that the generated region harmonises with its surroundings, at ``jumps`` times the
network evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .samplers import _randn_like, ddim_timesteps
from .schedule import NoiseSchedule


@dataclass
class KnownLatent:
    """What is known of x_0: ``z0`` (B, zC, s, s, s) the (normalised) latent of the input, ``keep``
    (B, 1, s, s, s) 1 where z0 is kept, 0 where the sampler generates; ``jumps`` > 1: RePaint's resampling
    (:func:`sample_resampled`) instead of the settings' sampler."""

    z0: torch.Tensor
    keep: torch.Tensor
    jumps: int = 1

    def evaluations(self, steps: int) -> int:
        """Guided network evaluations of a run of ``steps`` sampler steps (resampling repeats all but the last)."""
        return steps + (self.jumps - 1) * (steps - 1)

    def _alpha_sigma(self, schedule: NoiseSchedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(abar_t), sqrt(1 - abar_t) for the timesteps ``t`` (B,), shaped to broadcast over z."""
        abar = schedule.alphas_cumprod.to(self.z0.device)[t.to(self.z0.device)].to(self.z0.dtype)
        abar = abar.view(-1, *([1] * (self.z0.ndim - 1)))
        return abar.sqrt(), (1 - abar).sqrt()

    def constrain(self, eps: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """``eps`` (B, zC, s, s, s) with the known region's noise replaced by the noise z_t carries there."""
        alpha, sigma = self._alpha_sigma(schedule, t)
        known = (z_t.to(self.z0.dtype) - alpha * self.z0) / sigma
        return torch.lerp(eps, known.to(eps.dtype), self.keep.to(eps.dtype))

    def context(self) -> torch.Tensor:
        """[z0 * keep, keep] (B, zC + 1, s, s, s): what an inpainting-trained ControlNet reads of the known latent
        (``UNetConfig.inpaint_context``; all zeros = nothing known, plain generation)."""
        return torch.cat([self.z0 * self.keep, self.keep], dim=1)

    def start(self, z_T: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
        """z_T with the known region set to sqrt(abar_T) z0 + sqrt(1 - abar_T) z_T (its own noise kept)."""
        t = torch.full((z_T.shape[0],), schedule.timesteps - 1, dtype=torch.long)
        alpha, sigma = self._alpha_sigma(schedule, t)
        return torch.lerp(z_T, alpha * self.z0 + sigma * z_T, self.keep)

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        """The sampled z_0 with the known region exactly z0 (the sampler reaches it up to rounding)."""
        return torch.where(self.keep > 0.5, self.z0.to(z.dtype), z)


def constrained(eps_fn: Callable, known: KnownLatent, schedule: NoiseSchedule) -> Callable:
    """``eps_fn(z_t, t)`` with the known region constrained (:meth:`KnownLatent.constrain`)."""
    return lambda z, t: known.constrain(eps_fn(z, t), z, t, schedule)


@torch.inference_mode()
def sample_resampled(eps_fn: Callable, schedule: NoiseSchedule, z_T: torch.Tensor, steps: int, jumps: int,
                     generators: list[torch.Generator], progress: bool = False) -> torch.Tensor:
    """RePaint's resampling on DDIM (eta = 0) steps: between neighbouring timesteps t > t', step to t', noise back
    to t with q(z_t | z_t') = N(sqrt(abar_t / abar_t') z_t', (1 - abar_t / abar_t') I) and step again, ``jumps``
    times in all (1: plain DDIM). Network evaluations: steps + (jumps - 1) (steps - 1)."""
    abar = schedule.alphas_cumprod
    ts = ddim_timesteps(schedule.timesteps, steps)
    z = z_T.double()
    for i, t in enumerate(tqdm(ts, desc="DDIM + resampling", disable=not progress, leave=False)):
        last = i + 1 == len(ts)
        a_t = abar[t]
        a_prev = torch.tensor(1.0, dtype=torch.float64) if last else abar[ts[i + 1]]
        for jump in range(1 if last else jumps):
            tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
            eps = eps_fn(z.to(z_T.dtype), tt).to(torch.float64)
            z0 = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            z_prev = a_prev.sqrt() * z0 + (1 - a_prev).sqrt() * eps
            if jump + 1 < jumps and not last:
                ratio = a_t / a_prev
                z = ratio.sqrt() * z_prev + (1 - ratio).sqrt() * _randn_like(z, generators).double()
        z = z_prev
    return z.to(z_T.dtype)
