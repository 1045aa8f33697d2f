"""The pixel-space diffusion peer of Table 1, in the manner of Med-DDPM (Dorjsembe et al.,
"Conditional Diffusion Models for Semantic 3D Brain MRI Synthesis", IEEE JBHI 2024): the denoiser works on
the volume itself, x_t (B, C, S, S, S), with the condition's control maps (B, 3 M, S, S, S) concatenated to
it channel-wise at the U-Net's input; no VAE, no ControlNet, no FiLM statistics.

It is ALDM's U-Net (:class:`aldm.models.unet.ConditionalDenoiser`) built at image resolution with
``input_control`` on and the ControlNet off, one level per width of :class:`aldm.config.PixelDiffusionConfig`;
its FiLM layers get a constant zero input (one statistic, always 0), so they are learnt constant scales and
shifts. The forward process, CFG dropout and samplers are ALDM's, so the peer samples through the same code.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..conditions import control_channel_count
from ..config import DiffusionConfig, Profile, UNetConfig
from .unet import ConditionalDenoiser

STATS_DIM = 1  # the FiLM input of every block: one statistic, always zero (no mask statistics)


def pixel_unet_config(profile: Profile) -> UNetConfig:
    """The U-Net of the pixel peer for ``profile``: ``profile.pixel``'s widths, the condition's control maps at
    the input (``input_control``), no ControlNet."""
    cfg = profile.pixel
    return UNetConfig(channels=tuple(cfg.channels), res_blocks=cfg.res_blocks, groups=cfg.groups,
                      # control_channels: one width per level, as UNetConfig requires; unused without a ControlNet
                      time_dim=cfg.time_dim, stats_dim=STATS_DIM, control_channels=tuple(cfg.channels),
                      control_in=control_channel_count(profile.condition), input_control=True, controlnet=False)


def pixel_diffusion_config(profile: Profile) -> DiffusionConfig:
    """ALDM's forward process (T, betas, CFG dropout) with the pixel peer's own prediction target."""
    return replace(profile.diffusion, prediction=profile.pixel.prediction)


def pixel_denoiser(profile: Profile) -> ConditionalDenoiser:
    """eps_theta(x_t, t, c) on volumes (B, C, S, S, S), C the profile's modalities (``vae.in_channels``)."""
    return ConditionalDenoiser(pixel_unet_config(profile), profile.vae.in_channels)


def null_statistics(batch: int, like: torch.Tensor) -> torch.Tensor:
    """The FiLM input the peer always gets: zeros (batch, 1) on ``like``'s device and dtype."""
    return like.new_zeros((batch, STATS_DIM))
