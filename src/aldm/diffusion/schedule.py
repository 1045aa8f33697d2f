"""The forward process of §3.2.1 and the training objective of §3.2.3-3.2.4.

The linear beta schedule comes from MONAI's ``DDPMScheduler`` (``linear_beta``, 1e-4 -> 2e-2,
T = 1000 in the paper profile); everything else is written as the paper's equations.
"""

from __future__ import annotations

import torch

from ..config import DiffusionConfig


class NoiseSchedule:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) for t = 0..T-1 (index t is the paper's step t+1)."""

    def __init__(self, config: DiffusionConfig):
        from monai.networks.schedulers import DDPMScheduler  # MONAI loads with the first schedule, not the CLI

        self.config = config
        monai = DDPMScheduler(num_train_timesteps=config.timesteps, schedule="linear_beta",
                              beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=False)
        self.betas = monai.betas.double()
        self.alphas_cumprod = monai.alphas_cumprod.double()
        self.timesteps = config.timesteps

    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t broadcast to ``like``'s shape (B, 1, 1, 1, 1), in its dtype/device."""
        a = self.alphas_cumprod.to(like.device)[t.long().to(like.device)]
        return a.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Eq. 3.5: z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps."""
        a = self.alpha_bar(t, z0)
        return a.sqrt() * z0 + (1.0 - a).sqrt() * noise

    def v_target(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) z_0 (Salimans & Ho 2022, §4), the target of a
        v-predicting denoiser."""
        a = self.alpha_bar(t, z0)
        return a.sqrt() * noise - (1.0 - a).sqrt() * z0

    def eps_from_v(self, v: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise implied by a v prediction at z_t: eps = sqrt(alpha_bar_t) v + sqrt(1 - alpha_bar_t) z_t
        (affine in v for fixed z_t and t, so classifier-free guidance may combine v before converting)."""
        a = self.alpha_bar(t, v)
        return a.sqrt() * v + (1.0 - a).sqrt() * z_t

    def training_target(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to output (DiffusionConfig.prediction): eps, or :meth:`v_target`."""
        return self.v_target(z0, t, noise) if self.config.prediction == "v" else noise

    def min_snr_weight(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma (Hang et al. 2023) per sample (B,) for the loss on :meth:`training_target`:
        min(SNR_t, gamma) / SNR_t for eps, min(SNR_t, gamma) / (SNR_t + 1) for v."""
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        snr = abar / (1.0 - abar)
        return (snr.clamp(max=gamma) / (snr + 1.0 if self.config.prediction == "v" else snr)).float()

    def predicted_x0(self, output: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean sample a denoiser's output implies at z_t: sqrt(abar_t) z_t - sqrt(1 - abar_t) v under ``v``
        prediction, (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) under ``epsilon`` (ill-conditioned where abar_t is
        tiny: why a few-step student wants v)."""
        a = self.alpha_bar(t, z_t)
        if self.config.prediction == "v":
            return a.sqrt() * z_t - (1.0 - a).sqrt() * output
        return (z_t - (1.0 - a).sqrt() * output) / a.sqrt()

    def as_noise(self, output: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A denoiser's output as the noise eps that samplers and probes use: itself under ``epsilon``
        prediction, :meth:`eps_from_v` under ``v`` (DiffusionConfig.prediction)."""
        return self.eps_from_v(output, z_t, t) if self.config.prediction == "v" else output


def tumour_weighted_mse(eps: torch.Tensor, eps_hat: torch.Tensor, weight_mask: torch.Tensor,
                        tumour_weight: float, sample_weight: torch.Tensor | None = None,
                        region: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3.9: E[w(m) ||eps - eps_theta||^2] with w = 1 + tumour_weight * (dilated latent tumour mask).

    ``weight_mask`` (B, 1, s, s, s) from :func:`aldm.data.control.latent_tumour_weight_mask`;
    ``sample_weight`` (B,) an optional per-sample factor (Min-SNR-gamma), 1 when None; ``region`` (B, 1, s, s, s)
    in {0, 1}: only these cells count (the generated region of an inpainting example, where the known latent
    fixes the rest), the mean taken over them.
    """
    w = 1.0 + tumour_weight * weight_mask
    if sample_weight is not None:
        w = w * sample_weight.view(-1, *([1] * (w.ndim - 1)))
    if region is not None:
        return torch.mean(w * region * (eps - eps_hat).square()) / region.mean().clamp(min=1e-8)
    return torch.mean(w * (eps - eps_hat).square())
