"""The sampling side of every baseline (CGAN, 3M-CGAN, VAE-GAN) as one network: what a baseline run's
``weights.pt`` holds under ``generator`` and what :class:`aldm.pipeline.BaselinePipeline` runs."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...conditions import control_channel_count
from ...config import Profile
from ..vae import VAE3D
from .networks import Generator3D, coordinate_channels


class BaselineGenerator(nn.Module):
    """Control maps (B, 3 M, S, S, S) of the profile's condition (M masks: 1 for the paper's ``mask``) + domain
    flag (B,) + per-sample noise (B, *noise_shape) -> volumes
    (B, C, S, S, S) in [-1, 1], C = ``profile.vae.in_channels`` (the cache's modalities). CGAN and 3M-CGAN:
    the U-Net generator :class:`Generator3D`; VAE-GAN: the conditional decoder of a :class:`VAE3D` sampled
    from its prior (never a reconstruction)."""

    def __init__(self, kind: str, profile: Profile):
        super().__init__()
        self.kind = kind
        self.size = profile.image_size
        cfg = profile.baseline
        control = control_channel_count(profile.condition)
        self.coordinates = cfg.coordinates
        if kind == "vaegan":
            # the paper's VAE-GAN: its condition enters at the latent resolution only (never a decoder_regions one)
            self.net = VAE3D(replace(profile.vae, decoder_regions=False),
                             cond_channels=control + 1 + (3 if cfg.coordinates else 0))
            self.noise_shape = (profile.vae.latent_channels,) + (profile.latent_size,) * 3
        else:
            self.net = Generator3D(cfg, out_channels=profile.vae.in_channels, control_channels=control)
            self.noise_shape = (cfg.noise_channels,) + (profile.latent_size,) * 3

    def condition(self, control_full: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """VAE-GAN decoder condition: control maps pooled to latent resolution + the domain flag (+ the latent
        grid's voxel coordinates with ``baseline.coordinates``)."""
        c = F.adaptive_avg_pool3d(control_full, self.noise_shape[1:])
        flag = domain.view(-1, 1, 1, 1, 1).to(c.dtype).expand(-1, 1, *c.shape[2:])
        return torch.cat([c, flag] + ([coordinate_channels(c)] if self.coordinates else []), 1)

    def forward(self, control_full: torch.Tensor, domain: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One generator pass; shapes as in the class docstring."""
        if self.kind == "vaegan":
            return self.net.decode(noise, self.condition(control_full, domain))
        return self.net(control_full, domain, noise)
