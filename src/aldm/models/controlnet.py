"""The ControlNet of §3.2.3 (Zhang et al. 2023) on the mask-derived control maps.

Input: the noisy latent z_t (B, zC, s, s, s), the timestep, and the control maps
c = [mask, edge, soft distance] at latent resolution (B, 3, s, s, s) from
:func:`aldm.data.control.control_maps`. The hint goes through a small stem ending in a zero
convolution and is added to the latent stem; a light encoder at s, s/2, s/4 (e.g. 28/14/7)
produces one residual per level through zero-initialised 1x1 convolutions, so at initialisation
the U-Net is unchanged. The U-Net scales the residuals by lambda_ctrl.

With ``UNetConfig.inpaint_context`` (scan editing, not in the paper) the hint also reads the known part of the
latent, context = [z0 * keep, keep] (B, zC + 1, s, s, s), through a zero-initialised convolution added before the
hint stem's activation: a model fine-tuned from one without it starts as that model, and an all-zero context
(nothing known: plain generation) gives exactly the hint of the control maps alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import UNetConfig
from .blocks import Downsample, GuidanceEmbedding, ResBlock, TimeEmbedding, guidance_term, repeat_batch, zero_module


class ControlNet3D(nn.Module):
    """The ControlNet of §3.2.3: a trainable encoder of the control maps c = f(m) (B, 3, s, s, s)
    beside z_t and t, whose zero-initialised 1x1 outputs are residuals added to the U-Net's skips
    (scaled by lambda_ctrl)."""
    def __init__(self, config: UNetConfig, latent_channels: int):
        super().__init__()
        c = config.control_channels
        self.time = TimeEmbedding(config.time_dim, config.time_dim)
        self.guidance = GuidanceEmbedding(config.time_dim, config.time_dim) if config.guidance_input else None
        self.latent_stem = nn.Conv3d(latent_channels, c[0], 3, padding=1)
        self.hint_stem = nn.Sequential(
            nn.Conv3d(config.control_in, c[0], 3, padding=1), nn.SiLU(),
            zero_module(nn.Conv3d(c[0], c[0], 3, padding=1)),
        )
        self.context_stem = zero_module(nn.Conv3d(latent_channels + 1, c[0], 3, padding=1, bias=False)) \
            if config.inpaint_context else None
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for level, ch in enumerate(c):
            ch_in = c[level - 1] if level else c[0]
            self.downs.append(Downsample(ch_in, ch_in) if level else nn.Identity())
            self.blocks.append(ResBlock(ch_in, ch, config.time_dim, None, config.groups))
        self.outputs = nn.ModuleList(zero_module(nn.Conv3d(ch, out, 1)) for ch, out in zip(c, config.channels))

    def hint(self, control: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The hint stem's features (B, C_0, s, s, s) of the control maps (B, 3, s, s, s) and, with
        ``inpaint_context``, of the known latent ``context`` (B, zC + 1, s, s, s; None: nothing known): they do
        not depend on z_t or t, so a sampler computes them once per run."""
        h = self.hint_stem[0](control)
        if self.context_stem is not None and context is not None:
            h = h + self.context_stem(context.to(h.dtype))
        elif context is not None:
            raise ValueError("this ControlNet was not trained with the known latent (inpaint_context): pass no context")
        return self.hint_stem[2](self.hint_stem[1](h))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, control: torch.Tensor | None,
                hint: torch.Tensor | None = None, copies: int = 1,
                context: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Residuals [(copies * B, C_l, s_l, s_l, s_l) for each U-Net level l].

        z_t (B, zC, s, s, s) and t (B,) are shared by the ``copies`` conditions stacked in ``control``
        (copies * B, 3, s, s, s) and ``context`` (copies * B, zC + 1, s, s, s), or in ``hint`` = :meth:`hint` of
        them when given; ``guidance`` (B,): a student's guidance scale s (``guidance_input``).
        """
        temb = repeat_batch(F.silu(self.time(t) + guidance_term(self.guidance, guidance)), copies)
        h = repeat_batch(self.latent_stem(z_t), copies) + (self.hint(control, context) if hint is None else hint)
        residuals = []
        for down, block, out in zip(self.downs, self.blocks, self.outputs):
            h = block(down(h), temb)
            residuals.append(out(h))
        return residuals
